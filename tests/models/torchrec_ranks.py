"""Training steps of a `CollectionLookup` sharded by TorchRec, run in one process (world 1) or on every rank of a
loopback gloo group: `python -m tests.models.torchrec_ranks RANK WORLD PORT_FILE SHARDING MODE OUT` (what the 2-rank
test starts; MODE "lookup" or "din"). Rank 0 binds its store to a free port on 127.0.0.1 only and writes the port to
PORT_FILE; the others read it.

Every rank builds the same tables (or DIN) and the same global batches (seeded) and looks up its own part of each
batch. TorchRec divides the table gradients summed over the ranks by W (`torchrec.distributed.comm_ops`, gradient
division, on by default), as DDP averages the dense ones, so each rank's loss is its sum times W: the ranks together
then give the single-process gradient of the summed loss on the whole batch, tables and dense part alike. The lookup
mode trains with fused SGD, whose step is linear in the gradient (row-wise Adagrad's first step is nearly blind to a
gradient's scale, and hid a missing x W); DIN with fused row-wise Adagrad. Rank 0 writes the gathered tables (and
DIN's dense gradients of the last step, "grad.NAME") to OUT.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

from longrec.models.torchrec_tables import CollectionLookup, shard, use_torchrec_tables

NUM_ITEMS, NUM_CATEGORIES, NUM_TIMES, D, M = 40, 12, 9, 4, 2
B, L, STEPS, LR = 8, 5, 3, 0.1


def tables(seed: int = 0) -> list[nn.Embedding]:
    """item and category (padding id 0), time (no padding), N(0, 1) rows."""
    torch.manual_seed(seed)
    item = nn.Embedding(NUM_ITEMS, D, padding_idx=0)
    category = nn.Embedding(NUM_CATEGORIES, D, padding_idx=0)
    time = nn.Embedding(NUM_TIMES, D)
    with torch.no_grad():
        item.weight[0].zero_()
        category.weight[0].zero_()
    return [item, category, time]


def batch_ids(step: int) -> list[Tensor]:
    """The global batch of step `step`: item [B, L], category path [B, L, M], time [B, L], with padding (id 0)."""
    g = torch.Generator().manual_seed(100 + step)
    item = torch.randint(0, NUM_ITEMS, (B, L), generator=g)  # [B, L], repeated ids and some 0
    category = torch.randint(0, NUM_CATEGORIES, (B, L, M), generator=g)  # [B, L, M]
    time = torch.randint(0, NUM_TIMES, (B, L), generator=g)  # [B, L], 0 is a real row here
    return [item, category, time]


def weights(step: int) -> Tensor:
    """Fixed per-position loss weights [B, L, J·D], so the loss is sum(out * w) and every row gets its own gradient."""
    return torch.randn(B, L, (2 + M) * D, generator=torch.Generator().manual_seed(200 + step))  # [B, L, J·D]


def run(rank: int, world: int, sharding: str, optimizer: str = "rowwise_adagrad") -> dict[str, Tensor]:
    """STEPS fused steps on this rank's rows of each global batch; the full tables after them (on rank 0)."""
    lookup = CollectionLookup(tables(), ["item", "category", "time"], [1, M, 1])
    model = shard(lookup, sharding, optimizer, lr=LR, eps=1e-8)
    part = slice(rank * B // world, (rank + 1) * B // world)
    for step in range(STEPS):
        out = model([ids[part] for ids in batch_ids(step)])  # [B/W, L, J·D]
        # x W: TorchRec divides the table gradients by W (as DDP averages), so the ranks together give the full sum
        ((out * weights(step)[part]).sum() * world).backward()  # the fused optimizer updates the touched rows here
    return gathered_tables(model, rank)


def run_din(rank: int, world: int, sharding: str) -> dict[str, Tensor]:
    """DIN (tables converted, the whole model under DMP): STEPS steps on this rank's samples of each global batch, no
    dense optimizer; the tables after them and the dense gradients of the last step (on rank 0)."""
    from tests.models.conftest import _make_model, make_batch

    model = shard(use_torchrec_tables(_make_model("din")), sharding, "rowwise_adagrad", lr=LR, eps=1e-8)
    for step in range(STEPS):
        batch = make_batch(seed=step)
        part = slice(rank * len(batch) // world, (rank + 1) * len(batch) // world)
        model.zero_grad()
        local = batch.replace(**{k: v[part] for k, v in batch.fields().items()})
        (model(local).sum() * world).backward()  # x W: DDP and TorchRec both divide the summed gradient by W
    full = gathered_tables(model, rank)
    for name, parameter in model.named_parameters():
        if parameter.grad is not None and rank == 0:
            full[f"grad.{name}"] = parameter.grad
    return full


def gathered_tables(model: nn.Module, rank: int) -> dict[str, Tensor]:
    """Every sharded table of `model` whole, by table name, on rank 0 (empty on the other ranks)."""
    full: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        if not hasattr(value, "local_shards"):
            continue  # a dense parameter
        target = torch.empty(value.size()) if rank == 0 else None
        value.gather(dst=0, out=target)  # ShardedTensor -> the whole table on rank 0
        if target is not None:
            full[key.rsplit(".", 2)[-2]] = target
    return full


def _store(rank: int, world: int, port_file: Path) -> tuple[dist.TCPStore, socket.socket | None]:
    """Rank 0: a store listening on a free 127.0.0.1 port, written to `port_file`; other ranks: connect to it."""
    timeout = timedelta(seconds=60)
    if rank == 0:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        port = int(listener.getsockname()[1])
        store = dist.TCPStore(
            "127.0.0.1", port, world, True, timeout, wait_for_workers=False, master_listen_fd=listener.fileno()
        )
        port_file.with_suffix(".tmp").write_text(str(port))
        os.replace(port_file.with_suffix(".tmp"), port_file)
        return store, listener  # the listener stays open as long as the store
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank {rank}: rank 0 wrote no port to {port_file} within 60 s")
        time.sleep(0.05)
    return dist.TCPStore("127.0.0.1", int(port_file.read_text()), world, False, timeout), None


def main(argv: list[str]) -> None:
    rank, world, port_file, sharding, mode, out = int(argv[0]), int(argv[1]), Path(argv[2]), argv[3], argv[4], argv[5]
    store, _listener = _store(rank, world, port_file)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timedelta(seconds=60))
    try:
        full = run(rank, world, sharding, "sgd") if mode == "lookup" else run_din(rank, world, sharding)
        if rank == 0:
            torch.save(full, out)
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
