"""Data-parallel training on this machine, the bytes DDP all-reduces per step, and a projection to Taobao full size.

Issue 16, item 5. Every number is measured here or derived from measured numbers by a stated formula:

1. **Samples/s, 1 rank x 2 threads vs 2 ranks x 1 thread** (and 1 rank x 1 thread: the per-sample compute c). The
   same experiment (DIN, dim 16, on the Taobao slice under Protocol A; same global batch, steps and seed) trained with
   `longrec train CONFIG --out RUN --nproc W` (`longrec.train.distributed.launch`: torchrun over loopback, gloo;
   W = 1 also goes through torchrun, so every setting pays the same launcher) and `train.threads = T`. The rate is
   read from the run's metrics.csv (one row per `--log-every` steps: global samples over rank 0's wall time), the
   first row left out (warm-up); validation runs only after the last step, outside the rows. The settings alternate
   `--repeats` times; the best repeat of each is kept (other load only slows a run down).
2. **Bytes all-reduced per step**: DDP reduces the gradient of every parameter with requires_grad, 4 bytes each
   (fp32); the embedding tables' gradients are dense here (nn.Embedding, sparse=False), so the whole tables go over
   the wire every step. Counted on the model built for the slice and, on the meta device (no memory), for Taobao
   full size (`--full-items` items, `--full-categories` categories, dim 16). The all-reduce of the slice model's
   bytes (and of its dense layers' alone) is timed between two fresh 1-thread gloo processes over 127.0.0.1.
3. **Projection** of one step at W = 8 and 64 ranks (per-rank batch `--projection-batch`, weak scaling) with dense
   (replicated) tables: T(W) = b·c + P·a + 2(W-1)/W · 4P / BW, where c = seconds per sample on one 1-thread rank
   (1 / samples/s of the 1 x 1 run), a = seconds per parameter of the fused dense Adam update (`make_optimizer`, one
   thread, a `--adam-params` table), P = the full-size parameters, BW = an assumed network bandwidth
   (`--bandwidths`, Gb/s; a ring all-reduce moves 2(W-1)/W · bytes per rank). Against it the sharded-table step
   (TorchRec, docs/scale_out.md): the dense layers all-reduced, the embedding rows a rank's batch reads sent by
   all-to-all forward and backward, 2 · (W-1)/W · b·(L+1)·F·d·4 bytes (L = `--max-history`, F = tables, one row per
   table per behaviour and target), and only those rows updated (at the same a per parameter: an approximation).
4. **TorchRec's fused row-wise Adagrad vs today's dense Adam**, one process, the same DIN and batches: in a fresh
   interpreter that imports torchrec (this one, or `--torchrec-python`, a venv with the optional extra); where none
   does, recorded as not measured (the script never fails for it).

Run:       python benchmarks/bench_distributed.py --cache benchmarks/.cache --update-readme
Quick:     python benchmarks/bench_distributed.py --steps 60 --repeats 1 --json /tmp/distributed.json
Re-render: python benchmarks/bench_distributed.py --from-json benchmarks/results/distributed.json --update-readme
"""

from __future__ import annotations

import argparse
import atexit
import csv
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _harness as harness
import torch
from torch import nn

from longrec.models import build_model_for_sizes
from longrec.train.distributed import LOOPBACK, launch
from longrec.train.step import make_optimizer

MODEL = {"name": "din", "dim": 16}
# (ranks, threads per rank): 2 cores either way, and one rank on one thread (the per-sample compute c)
SETTINGS = ((1, 2), (2, 1), (1, 1))


def write_config(path: Path, store: Path, args: argparse.Namespace, threads: int) -> None:
    path.write_text(
        "\n".join(
            [
                "[model]",
                f'name = "{MODEL["name"]}"',
                f"dim = {MODEL['dim']}",
                "[data]",
                f'path = "{store.as_posix()}"',
                f"max_history = {args.max_history}",
                "[train]",
                "lr = 0.003",
                f"batch_size = {args.batch_size}",
                "epochs = 1",
                f"max_steps = {args.steps}",
                f"threads = {threads}",
                "progress = false",
                'loggers = ["csv"]',
                f"log_every = {args.log_every}",
                "",
            ]
        )
    )


def rate_of(run: Path, batch_size: int, log_every: int) -> dict[str, Any]:
    """Samples/s over the metrics.csv training rows after the first (each row: log_every global batches)."""
    with open(run / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["kind"] == "train"]
    rates = [float(r["samples_per_s"]) for r in rows[1:]]
    samples = log_every * batch_size * len(rates)
    seconds = sum(log_every * batch_size / r for r in rates)
    return {"rows": len(rates), "samples_per_s": samples / seconds, "window_rates": rates}


def one_run(work: Path, store: Path, args: argparse.Namespace, ranks: int, threads: int, repeat: int) -> dict:
    config = work / f"w{ranks}t{threads}.toml"
    write_config(config, store, args, threads)
    out = work / f"run-w{ranks}t{threads}-{repeat}"
    started = time.perf_counter()
    code = launch([str(config), "--out", str(out), "--force"], ranks)
    wall = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"longrec train --nproc {ranks} exited with {code}")
    result = rate_of(out, args.batch_size, args.log_every)
    print(f"{ranks} rank(s) x {threads} thread(s), repeat {repeat}: {result['samples_per_s']:,.0f} samples/s "
          f"(run wall {wall:.1f} s with launch and evaluation)", flush=True)  # fmt: skip
    return {"ranks": ranks, "threads": threads, "repeat": repeat, "wall_s": wall, **result}


def parameter_split(model: nn.Module) -> dict[str, int]:
    """Parameters with requires_grad (what DDP all-reduces): in nn.Embedding tables, and the rest."""
    tables = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding) and m.weight.requires_grad)
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    count = sum(1 for m in model.modules() if isinstance(m, nn.Embedding))
    return {"tables": tables, "dense": total - tables, "total": total, "num_tables": count}


def adam_seconds_per_param(numel: int, repeats: int) -> float:
    """The fused dense Adam update (`make_optimizer`, as training runs it) on one thread, per parameter."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        table = nn.Embedding(numel // 16, 16)
        optimizer = make_optimizer(table, 1e-3)
        table.weight.grad = torch.full_like(table.weight, 1e-3)
        seconds = harness.timings(optimizer.step, repeats, warmup=2)
    finally:
        torch.set_num_threads(threads)
    return min(seconds) / table.weight.numel()


def torchrec_child(job: dict[str, Any]) -> dict[str, Any]:
    """In a fresh interpreter (one with the torchrec extra): ms per step of DIN with today's dense Adam (whole tables,
    `make_optimizer`) and of DIN with TorchRec tables (`use_torchrec_tables`, DMP table-wise in a one-rank gloo group)
    trained by FBGEMM's fused row-wise Adagrad inside backward, the dense layers by the same fused Adam. Same initial
    weights, same batches; the two alternate step by step, each step timed; best of the rounds per batch."""
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    import copy

    import numpy as np
    import torch.distributed as dist
    import torch.nn.functional as F

    from longrec.data.dataset import collate
    from longrec.data.store import TrajectoryStore
    from longrec.models.torchrec_tables import shard, use_torchrec_tables

    torch.set_num_threads(job["threads"])
    store = TrajectoryStore.open(Path(job["store"]))
    samples = store.samples("train")
    rows = np.random.default_rng(0).permutation(len(samples))
    B = job["batch_size"]
    batches = [collate(store, samples, rows[i * B : (i + 1) * B], job["max_history"]) for i in range(job["steps"])]
    model, _ = harness.protocol_a_model("DIN", store.sizes)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        sharded = shard(use_torchrec_tables(copy.deepcopy(model)), "table_wise", "rowwise_adagrad", lr=job["lr"])
        dense = [p for n, p in sharded.named_parameters() if ".collection.embeddings." not in n]
        sides = {
            "dense_adam": (model, make_optimizer(model, job["lr"])),
            "torchrec_rowwise_adagrad": (sharded, torch.optim.Adam(dense, lr=job["lr"], fused=True)),
        }
        seconds: dict[str, list[list[float]]] = {name: [] for name in sides}
        for _ in range(job["rounds"]):
            per = {name: [] for name in sides}
            for batch in batches:
                for name, (module, optimizer) in sides.items():
                    started = time.perf_counter()
                    loss = F.binary_cross_entropy_with_logits(module(batch), batch.label.float())
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()  # TorchRec: the fused row-wise Adagrad updates the rows read, here
                    optimizer.step()
                    per[name].append(time.perf_counter() - started)
            for name in sides:
                seconds[name].append(per[name][job["warmup"] :])
    finally:
        dist.destroy_process_group()
    out: dict[str, Any] = {"dense_tables": sum(1 for _ in dense)}
    for name, rounds in seconds.items():
        out[f"{name}_ms"] = 1e3 * sum(min(ts) for ts in zip(*rounds, strict=True)) / len(rounds[0])
    return out


def allreduce_child(job: dict[str, Any]) -> dict[str, Any]:
    """One of `job["world"]` ranks (gloo over 127.0.0.1, 1 thread): ms of an all-reduce of each size (fp32 numels)."""
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    import torch.distributed as dist

    torch.set_num_threads(1)
    address = f"tcp://{LOOPBACK}:{job['port']}"
    dist.init_process_group("gloo", init_method=address, rank=job["rank"], world_size=job["world"])
    try:
        out = {}
        for numel in job["numels"]:
            tensor = torch.ones(numel)

            def reduce(tensor: torch.Tensor = tensor) -> None:
                dist.all_reduce(tensor)

            out[str(numel)] = 1e3 * min(harness.timings(reduce, job["repeats"], warmup=2))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return out


def child(job: dict[str, Any]) -> dict[str, Any]:
    return {"torchrec": torchrec_child, "allreduce": allreduce_child}[job["kind"]](job)


def run_child(python: str, job: dict[str, Any]) -> subprocess.Popen[str]:
    cmd = [python, str(Path(__file__).resolve()), "--child", json.dumps(job)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def child_result(process: subprocess.Popen[str], what: str) -> dict[str, Any]:
    stdout, stderr = process.communicate(timeout=600)
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"{what} failed:\n{stderr[-3000:]}")
    return dict(json.loads(lines[-1]))


def loopback_allreduce(numels: list[int], repeats: int) -> dict[str, float]:
    """ms of a 2-rank gloo all-reduce over loopback for each size (two fresh 1-thread processes, best of repeats)."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port = probe.getsockname()[1]
    job = {"kind": "allreduce", "world": 2, "port": port, "numels": numels, "repeats": repeats}
    processes = [run_child(sys.executable, {**job, "rank": rank}) for rank in range(2)]
    results = [child_result(p, "the loopback all-reduce") for p in processes]
    return {k: max(r[k] for r in results) for k in results[0]}


def torchrec_step(args: argparse.Namespace, store: Path) -> dict[str, Any]:
    """The fused-optimizer comparison in `--torchrec-python` (or this interpreter, where torchrec imports)."""
    python = str(args.torchrec_python) if args.torchrec_python else sys.executable
    check = subprocess.run([python, "-c", "import torchrec"], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        note = (
            "torchrec does not import in this interpreter (the optional extra, make install-torchrec; or pass "
            "--torchrec-python): not measured"
        )
        print(note, flush=True)
        return {"measured": False, "note": note}
    job = {"kind": "torchrec", "store": str(store), "batch_size": args.batch_size, "max_history": args.max_history,
           "steps": args.torchrec_steps, "rounds": 3, "warmup": 3, "threads": 1, "lr": 0.003}  # fmt: skip
    result = child_result(run_child(python, job), "the TorchRec step timing")
    print(f"TorchRec fused row-wise Adagrad {result['torchrec_rowwise_adagrad_ms']:.1f} ms vs dense Adam "
          f"{result['dense_adam_ms']:.1f} ms per step", flush=True)  # fmt: skip
    return {"measured": True, **result, "steps": args.torchrec_steps, "rounds": 3, "warmup": 3, "threads": 1}


def projection(args: argparse.Namespace, full: dict[str, int], c: float, a: float) -> list[dict[str, Any]]:
    """Step time of the dense-table and the sharded-table step at each W and bandwidth (see the module docstring)."""
    b, L, F, d = args.projection_batch, args.max_history, full["num_tables"], MODEL["dim"]
    rows = []
    for world in args.worlds:
        for gbps in args.bandwidths:
            bw = gbps * 1e9 / 8  # bytes/s
            ring = 2 * (world - 1) / world
            compute = b * c
            dense_update = full["total"] * a
            allreduce = ring * 4 * full["total"] / bw
            touched = b * (L + 1) * F  # rows read by one rank's batch (an upper bound on the distinct ones)
            alltoall_bytes = 2 * (world - 1) / world * touched * d * 4
            sharded_comm = ring * 4 * full["dense"] / bw + alltoall_bytes / bw
            sharded_update = (full["dense"] + min(touched * d, full["tables"])) * a
            dense_step = compute + dense_update + allreduce
            sharded_step = compute + sharded_update + sharded_comm
            rows.append(
                {
                    "world": world,
                    "gbps": gbps,
                    "compute_ms": 1e3 * compute,
                    "dense_update_ms": 1e3 * dense_update,
                    "allreduce_ms": 1e3 * allreduce,
                    "dense_step_ms": 1e3 * dense_step,
                    "dense_samples_per_s": world * b / dense_step,
                    "alltoall_mb": alltoall_bytes / 1e6,
                    "sharded_comm_ms": 1e3 * sharded_comm,
                    "sharded_update_ms": 1e3 * sharded_update,
                    "sharded_step_ms": 1e3 * sharded_step,
                    "sharded_samples_per_s": world * b / sharded_step,
                }
            )
    return rows


def measure(args: argparse.Namespace) -> dict[str, Any]:
    stores = harness.Stores(args.cache)
    store = stores.taobao()
    sizes = store.open().sizes
    work = args.work
    if work is None:
        work = Path(tempfile.mkdtemp(prefix="longrec-distributed-"))
        atexit.register(shutil.rmtree, work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    runs = []
    for repeat in range(args.repeats):
        for ranks, threads in SETTINGS:
            runs.append(one_run(work, store.path, args, ranks, threads, repeat))
    best = {
        f"{w}x{t}": max(r["samples_per_s"] for r in runs if (r["ranks"], r["threads"]) == (w, t)) for w, t in SETTINGS
    }
    ratio = best["2x1"] / best["1x2"]
    efficiency = best["2x1"] / (2 * best["1x1"])
    print(f"2 ranks x 1 thread / 1 rank x 2 threads: {ratio:.2f}; 2 ranks / (2 x 1 rank x 1 thread): "
          f"{efficiency:.2f}", flush=True)  # fmt: skip

    params = {k: v for k, v in MODEL.items() if k != "name"}
    torch.manual_seed(0)
    slice_split = parameter_split(build_model_for_sizes(MODEL["name"], params, sizes))
    full_sizes = {**sizes, "num_items": args.full_items, "num_categories": args.full_categories}
    with torch.device("meta"):
        full_split = parameter_split(build_model_for_sizes(MODEL["name"], params, full_sizes))
    for name, split in (("slice", slice_split), ("full", full_split)):
        print(f"{name}: {4 * split['total'] / 1e6:,.1f} MB all-reduced per step, tables "
              f"{split['tables'] / split['total']:.1%}", flush=True)  # fmt: skip

    allreduce = loopback_allreduce([slice_split["total"], slice_split["dense"]], args.adam_repeats * 4)
    print(f"loopback all-reduce, 2 ranks: {allreduce}", flush=True)
    a = adam_seconds_per_param(args.adam_params, args.adam_repeats)
    c = 1 / best["1x1"]  # seconds per sample on one 1-thread rank, no all-reduce
    print(f"c = {1e6 * c:.1f} µs/sample/rank, a = {1e9 * a:.2f} ns/parameter (dense Adam, 1 thread)", flush=True)
    return {
        "machine": {"cores": os.cpu_count()},
        "store": store.info["line"],
        "counts": store.info["counts"],
        "runs": runs,
        "best": best,
        "ratio": ratio,
        "efficiency": efficiency,
        "parameters": {"slice": slice_split, "full": full_split},
        "constants": {"c_s_per_sample": c, "a_s_per_param": a},
        "projection": projection(args, full_split, c, a),
        "loopback_allreduce_ms": allreduce,
        "torchrec": torchrec_step(args, store.path),
    }


def mb(n_params: int) -> str:
    return f"{4 * n_params / 1e6:,.1f}"


def render(payload: dict[str, Any]) -> str:
    config, best = payload["config"], payload["best"]
    runs = payload["runs"]
    rows = []
    for w, t in SETTINGS:
        mine = [r for r in runs if (r["ranks"], r["threads"]) == (w, t)]
        rates = ", ".join(f"{r['samples_per_s']:,.0f}" for r in mine)
        spread = statistics.median(x for r in mine for x in r["window_rates"])
        rows.append([f"{w} × {t}", rates, f"{best[f'{w}x{t}']:,.0f}", f"{spread:,.0f}"])
    throughput = harness.markdown_table(
        ["ranks × threads", "samples/s per repeat", "best", "median of the log windows"], rows
    )

    split_rows = []
    for name, label in (("slice", "Taobao slice (this run)"), ("full", "Taobao full size (projection)")):
        s = payload["parameters"][name]
        split_rows.append([label, mb(s["tables"]), mb(s["dense"]), mb(s["total"]), f"{s['tables'] / s['total']:.1%}"])
    bytes_table = harness.markdown_table(
        ["model (DIN, dim 16)", "tables (MB)", "dense layers (MB)", "all-reduced per step (MB)", "tables' share"],
        split_rows,
    )
    s, ar = payload["parameters"]["slice"], payload["loopback_allreduce_ms"]
    step_ms = 1e3 * config["batch_size"] / best["2x1"]
    loopback = (
        f"Measured on this machine, 2 ranks (fresh 1-thread processes, gloo over 127.0.0.1, best of "
        f"{config['adam_repeats'] * 4}): an all-reduce of the slice model's {mb(s['total'])} MB takes "
        f"{ar[str(s['total'])]:.2f} ms, of its dense layers' {mb(s['dense'])} MB {ar[str(s['dense'])]:.2f} ms; one "
        f"2-rank training step above takes {step_ms:.1f} ms (global batch / best samples/s)."
    )

    proj_rows = [
        [
            str(p["world"]),
            f"{p['gbps']:g}",
            f"{p['compute_ms']:.1f}",
            f"{p['dense_update_ms']:.0f}",
            f"{p['allreduce_ms']:,.0f}",
            f"{p['dense_step_ms']:,.0f}",
            f"{p['dense_samples_per_s']:,.0f}",
            f"{p['alltoall_mb']:.1f}",
            f"{p['sharded_comm_ms']:.1f}",
            f"{p['sharded_update_ms']:.1f}",
            f"{p['sharded_step_ms']:.1f}",
            f"{p['sharded_samples_per_s']:,.0f}",
        ]
        for p in payload["projection"]
    ]
    proj_table = harness.markdown_table(
        [
            "W",
            "BW (Gb/s)",
            "compute b·c (ms)",
            "dense Adam P·a (ms)",
            "all-reduce (ms)",
            "dense-table step (ms)",
            "samples/s",
            "sharded all-to-all (MB)",
            "sharded comm (ms)",
            "sharded update (ms)",
            "sharded step (ms)",
            "samples/s",
        ],
        proj_rows,
    )
    k = payload["constants"]
    full = payload["parameters"]["full"]
    counts = payload["counts"]
    return (
        f"Command: `{payload['command']}`. {harness.machine_line(payload['machine'])} {harness.load_line(payload)} "
        f"Data: {payload['store']} ({counts['samples']['train']:,} training samples). DIN, dim 16, max history "
        f"{config['max_history']}, global batch {config['batch_size']}, {config['steps']} steps (the same seed and "
        f"batches for both settings), `longrec train --nproc W` with `train.threads = T` (torchrun over loopback, "
        f"gloo, also for W = 1); samples/s from metrics.csv rows of {config['log_every']} steps, the first row "
        f"(warm-up) left out; {config['repeats']} repeats alternating the settings, the best kept.\n\n"
        + throughput
        + f"\n\n**2 ranks × 1 thread / 1 rank × 2 threads = {payload['ratio']:.2f}** (both on "
        f"{payload['machine']['cores']} cores); 2 ranks × 1 thread / (2 × 1 rank × 1 thread) = "
        f"{payload['efficiency']:.2f} (1.00: two ranks add what two separate 1-thread processes would).\n\n"
        "Bytes all-reduced per step (DDP: every parameter with requires_grad, fp32; the tables' gradients are dense):"
        "\n\n" + bytes_table + "\n\n" + loopback + "\n\n"
        f"Projection, Taobao full size ({config['full_items']:,} items, {config['full_categories']:,} categories, "
        f"dim 16: P = {full['total']:,} parameters, {full['num_tables']} tables), per-rank batch b = "
        f"{config['projection_batch']}, weak scaling. Measured constants: c = {1e6 * k['c_s_per_sample']:.1f} µs "
        f"per sample on one 1-thread rank (1 / samples/s of the 1 × 1 run above), "
        f"a = {1e9 * k['a_s_per_param']:.2f} ns per parameter for the fused dense Adam update (one thread, a "
        f"{config['adam_params']:,}-parameter table, best of {config['adam_repeats']}). Dense tables: T(W) = b·c + "
        "P·a + 2(W−1)/W · 4P / BW (ring all-reduce). Sharded tables: T(W) = b·c + (P_dense + min(b·(L+1)·F·d, "
        "P_tables))·a + 2(W−1)/W · 4·P_dense / BW + 2 · (W−1)/W · b·(L+1)·F·d·4 / BW (all-to-all of the rows a "
        "rank's batch reads, forward and backward; the fused row-wise optimizer updates only those rows). BW is "
        "assumed, not measured.\n\n" + proj_table + "\n\n" + torchrec_line(payload["torchrec"], config)
    )


def torchrec_line(tr: dict[str, Any], config: dict[str, Any]) -> str:
    if not tr["measured"]:
        return f"TorchRec fused row-wise Adagrad vs dense Adam: {tr['note']}."
    fused, dense = tr["torchrec_rowwise_adagrad_ms"], tr["dense_adam_ms"]
    return (
        f"TorchRec fused row-wise Adagrad vs dense Adam, the same DIN on the slice, one process, {tr['threads']} "
        f"thread, batch {config['batch_size']}, {tr['steps']} batches ({tr['warmup']} untimed), the two alternating "
        f"step by step, best of {tr['rounds']} rounds per batch: today's dense Adam over the whole tables "
        f"{dense:.1f} ms per step, DIN on TorchRec tables (DMP table-wise, one rank) with FBGEMM's fused row-wise "
        f"Adagrad in backward and fused Adam on the dense layers {fused:.1f} ms ({dense / fused:.2f}x)."
    )


def parser() -> argparse.ArgumentParser:
    parser = harness.options(__doc__, "distributed", scratch=True, child=True)
    parser.add_argument("--batch-size", type=int, default=128, help="global batch of one optimizer step")
    parser.add_argument("--steps", type=int, default=200, help="steps per run (less than one epoch of the slice)")
    parser.add_argument("--log-every", type=int, default=25, help="steps per metrics.csv row (one rate window)")
    parser.add_argument("--max-history", type=int, default=100, help="L, behaviours per sample")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each setting, alternating")
    parser.add_argument("--full-items", type=int, default=4_000_000, help="Taobao full size: items")
    parser.add_argument("--full-categories", type=int, default=10_000, help="Taobao full size: categories")
    parser.add_argument("--projection-batch", type=int, default=256, help="per-rank batch b of the projection")
    parser.add_argument("--worlds", nargs="+", type=int, default=[8, 64], help="ranks W of the projection")
    parser.add_argument("--bandwidths", nargs="+", type=float, default=[10.0, 100.0], help="assumed Gb/s")
    parser.add_argument("--adam-params", type=int, default=2**23, help="table size of the Adam timing")
    parser.add_argument("--adam-repeats", type=int, default=5)
    parser.add_argument(
        "--torchrec-python", type=Path, default=None, help="a Python with the torchrec extra (default: this one)"
    )
    parser.add_argument("--torchrec-steps", type=int, default=20, help="batches of the fused-optimizer timing")
    return parser


if __name__ == "__main__":
    args = parser().parse_args()
    if args.child is None and args.steps <= args.log_every:
        raise SystemExit(f"--steps must exceed --log-every (the first row is warm-up). Got {args.steps}.")
    harness.main(args, "distributed", measure, render, child=child)
