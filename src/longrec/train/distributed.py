"""Data-parallel training on one machine (torchrun, `DistributedDataParallel`): which rank this process is, how a
global batch is split over the ranks, the DDP-wrapped training loss, and the `--nproc` launcher.

**The batch is global.** `train.batch_size` is the batch of one optimizer step over all ranks, whatever the number
of ranks W: every rank draws the same epoch plan (`longrec.data.dataset.epoch_batches`, a pure function of
(seed, epoch)) of global batches and keeps its part of each (`shard`), so each global batch is exactly the union of
the ranks' batches and every sample is seen once per epoch. A global batch that does not split evenly (a batch size
not divisible by W, or the epoch's short last batch) gives the first ranks one sample more; each rank's loss is
scaled by n_r * W / N (`step_loss(scale=...)`), so the averaged gradient DDP computes is the gradient of the mean
loss over the N samples, the single-process step on the same batch (tests/train/test_distributed.py checks the
parameters after K steps). A rank left with no sample (N < W) runs one sample at scale 0, so it still joins the
gradient all-reduce. Because the batch and the data position are global, `--resume` may change the number of ranks.

Validation and test run sharded too: each rank scores every W-th batch of the split, the logits and labels are
gathered, and every rank computes the metrics over the whole split (so AUC is never an average of per-rank AUCs, and
every rank takes the same early-stopping decision). Only rank 0 writes the run directory.

Networking: the rendezvous and the collectives use loopback only (MASTER_ADDR=127.0.0.1, a free port, gloo and NCCL
told to use the loopback interface); this is single-machine data parallelism. gloo on the CPU, NCCL on CUDA.

Not supported with more than one rank (refused with `check_options`): `train.compile` (DDP and compile are not tested
together here). Models that read the whole batch in their loss (TD-SASRec's in-batch candidates) train, but a rank's
candidates are its own part of the batch, so they do not equal the single-process run. `train.optimizer = "lazy_adam"`
works: its tables are `nn.Embedding(sparse=True)`, so DDP all-reduces their sparse gradients (gloo's sparse
all-reduce; not tested on NCCL) and each rank updates the union of the ranks' rows.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from longrec.data.batch import Batch
from longrec.search.config import SearchConfig
from longrec.train.step import step_loss

__all__ = [
    "LOOPBACK",
    "TIMEOUT",
    "LossModule",
    "Ranks",
    "all_mean",
    "barrier",
    "broadcast",
    "check_nproc",
    "check_options",
    "current_ranks",
    "launch",
    "process_group",
    "setup",
    "shard",
]

LOOPBACK = "127.0.0.1"
TIMEOUT = datetime.timedelta(minutes=30)  # a collective that waits longer (a rank died or hangs) fails the run


@dataclass(frozen=True)
class Ranks:
    """This process's place in a data-parallel run: rank r of W (r = 0 writes), and its GPU index on this machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this rank writes (the run directory, progress, results)."""
        return self.rank == 0


def current_ranks() -> Ranks:
    """The ranks torchrun set in the environment (RANK, WORLD_SIZE, LOCAL_RANK); one rank without them.

    Raises:
        ValueError: a variable that is not an int, or a rank outside [0, WORLD_SIZE).
    """
    values = {}
    for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
        text = os.environ.get(name)
        try:
            values[name] = int(text) if text is not None else default
        except ValueError:
            raise ValueError(f"environment variable {name} must be an int (torchrun sets it). Got {text!r}.") from None
    ranks = Ranks(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])
    if ranks.world < 1 or not 0 <= ranks.rank < ranks.world:
        raise ValueError(f"RANK must be in [0, WORLD_SIZE) = [0, {ranks.world}). Got RANK={ranks.rank}.")
    return ranks


def setup(ranks: Ranks, device: torch.device) -> torch.device:
    """Join the process group (gloo on the CPU, NCCL on CUDA) over loopback; return the device this rank trains on.

    Idempotent; a no-op for one rank. A CUDA device becomes cuda:LOCAL_RANK (one GPU per rank).

    Raises:
        ValueError: MASTER_ADDR is not a loopback address, or `train.device = "cuda:N"` with several ranks.
    """
    if ranks.world == 1:
        return device
    address = os.environ.get("MASTER_ADDR", LOOPBACK)
    if not _is_loopback(address):
        raise ValueError(
            f"MASTER_ADDR must be a loopback address (data-parallel training here is single-machine). Got "
            f"{address!r}. Use MASTER_ADDR={LOOPBACK}, or 'longrec train --nproc N', which sets it."
        )
    if device.type == "cuda":
        if device.index is not None:
            raise ValueError(
                f"train.device = '{device}' pins every rank to one GPU; with {ranks.world} ranks use "
                "train.device = 'cuda' (rank r trains on cuda:LOCAL_RANK)."
            )
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=ranks.rank, world_size=ranks.world, timeout=TIMEOUT)
    return device


@contextlib.contextmanager
def process_group(ranks: Ranks, device: torch.device) -> Iterator[torch.device]:
    """`setup` for the block, and leave the process group at its end if this block joined it."""
    joined = ranks.world > 1 and not dist.is_initialized()
    try:
        yield setup(ranks, device)
        if joined:
            dist.barrier()  # no rank leaves while another still exchanges its last results with it
    finally:
        if joined and dist.is_initialized():
            dist.destroy_process_group()


def check_options(ranks: Ranks, compile: bool) -> None:
    """Refuse options the data-parallel path does not support, before anything is written."""
    if ranks.world > 1 and compile:
        raise ValueError(
            f"train.compile = true is not supported with {ranks.world} ranks (data-parallel training runs the eager "
            "model under DistributedDataParallel). Set train.compile=false, or train with one process."
        )


def check_nproc(nproc: int) -> None:
    """Refuse a bad `--nproc` (what, expected, got)."""
    if nproc < 1:
        raise ValueError(f"--nproc must be a positive int (processes, one rank each). Got {nproc} instead.")
    if nproc > 1 and "WORLD_SIZE" in os.environ:
        raise ValueError(
            f"--nproc {nproc} inside a torchrun worker (WORLD_SIZE={os.environ['WORLD_SIZE']}): torchrun already "
            "started the ranks. Drop --nproc, or run 'longrec train --nproc N' outside torchrun."
        )


def shard(rows: np.ndarray, ranks: Ranks) -> tuple[np.ndarray, float]:
    """Rank r's part of a global batch and the scale of its loss.

    Args:
        rows: [N] sample rows of one global batch.
        ranks: this process's ranks.

    Returns:
        rows [n_r] (contiguous parts; the first N mod W ranks hold one more) and n_r * W / N; a rank with no sample
        gets the batch's first row at scale 0 (it must still join the gradient all-reduce).
    """
    if ranks.world == 1:
        return rows, 1.0
    part = np.array_split(rows, ranks.world)[ranks.rank]  # [n_r]
    if len(part) == 0:
        return rows[:1], 0.0
    return part, len(part) * ranks.world / len(rows)


class LossModule(nn.Module):
    """The training loss as a module, so DDP wraps the whole step: `forward(batch, scale)` is `step_loss`."""

    def __init__(
        self,
        model: nn.Module,
        search: SearchConfig,
        l2: float,
        goal_weight: torch.Tensor | None,
        precision: str,
    ) -> None:
        super().__init__()
        self.model = model
        self.search, self.l2, self.goal_weight, self.precision = search, l2, goal_weight, precision

    def forward(self, batch: Batch, scale: float) -> torch.Tensor:
        return step_loss(self.model, batch, self.search, self.l2, self.goal_weight, self.precision, scale)


def all_mean(value: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """The mean of a scalar over the ranks (every rank gets it); the value itself for one rank."""
    if ranks.world == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total)
    return total / ranks.world


def barrier(ranks: Ranks) -> None:
    """Wait until every rank is here (e.g. until rank 0 has written a file the others read)."""
    if ranks.world > 1:
        dist.barrier()


def broadcast(value: Any, ranks: Ranks) -> Any:
    """Rank 0's `value` on every rank (a picklable object)."""
    if ranks.world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _is_loopback(address: str) -> bool:
    try:
        infos = socket.getaddrinfo(address, None)
    except socket.gaierror:
        return False
    hosts = [str(info[4][0]) for info in infos]
    return bool(hosts) and all(host == "::1" or host.startswith("127.") for host in hosts)


def _loopback_interface() -> str | None:
    """The loopback interface's name ('lo' on Linux, 'lo0' on macOS), for gloo and NCCL; None if none is found."""
    with contextlib.suppress(OSError, AttributeError):
        for _, name in socket.if_nameindex():
            if name in ("lo", "lo0"):
                return name
    return None


def launch(args: Sequence[str], nproc: int, env: dict[str, str] | None = None) -> int:
    """Run `python -m longrec.train ARGS` on `nproc` ranks with torchrun over loopback; return torchrun's exit code.

    torchrun (`torch.distributed.run`, through `python -m longrec.train.distributed`, which gives it a rendezvous
    whose store listens on 127.0.0.1 only) runs in a subprocess, in its own session: if this process is interrupted
    or fails, the whole group (torchrun and its workers) is terminated, then killed after 10 s. A worker that fails
    makes torchrun stop the others (no restarts).
    """
    check_nproc(nproc)
    child_env = {**os.environ, **(env or {}), "MASTER_ADDR": LOOPBACK}
    interface = _loopback_interface()
    if interface is not None:
        child_env.setdefault("GLOO_SOCKET_IFNAME", interface)
        child_env.setdefault("NCCL_SOCKET_IFNAME", interface)
    child_env.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default too; train.threads overrides it per rank
    command = [
        sys.executable,
        "-m",
        "longrec.train.distributed",
        "--nnodes",
        "1",
        "--nproc-per-node",
        str(nproc),
        "--rdzv-backend",
        _RENDEZVOUS,
        "--local-addr",
        LOOPBACK,
        "--max-restarts",
        "0",
        "-m",
        "longrec.train",
        *args,
    ]
    process = subprocess.Popen(command, env=child_env, start_new_session=True)
    try:
        return process.wait()
    finally:
        if process.poll() is None:
            _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the launcher's process group (torchrun forwards it to the workers), SIGKILL after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


_RENDEZVOUS = "longrec-loopback"


def _loopback_rendezvous(params: Any) -> Any:
    """torchrun's static one-node rendezvous, with its store listening on 127.0.0.1 only.

    torch's TCPStore binds every interface unless it is given a socket already bound (`master_listen_fd`), and
    torchrun's own rendezvous backends give none; this one binds a free loopback port itself.
    """
    from torch.distributed.elastic.rendezvous.static_tcp_rendezvous import StaticTCPRendezvous

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((LOOPBACK, 0))
    port = int(listener.getsockname()[1])
    timeout = int(params.config.get("timeout", 900))

    class LoopbackRendezvous(StaticTCPRendezvous):
        def get_backend(self) -> str:
            return _RENDEZVOUS

    rendezvous = LoopbackRendezvous(LOOPBACK, port, 0, 1, params.run_id, timeout)
    rendezvous._store = dist.TCPStore(  # the store `next_rendezvous` would otherwise create on every interface
        LOOPBACK,
        port,
        1,
        True,
        datetime.timedelta(seconds=timeout),
        multi_tenant=True,
        master_listen_fd=listener.fileno(),
    )
    rendezvous._listener = listener  # type: ignore[attr-defined]  # keeps the socket open as long as the store
    return rendezvous


def _torchrun(argv: Sequence[str]) -> None:
    """`torchrun ARGV` with the loopback rendezvous registered (what `launch` runs in its subprocess)."""
    from torch.distributed.elastic.rendezvous import rendezvous_handler_registry
    from torch.distributed.run import main

    rendezvous_handler_registry.register(_RENDEZVOUS, _loopback_rendezvous)
    main(list(argv))


if __name__ == "__main__":
    _torchrun(sys.argv[1:])
