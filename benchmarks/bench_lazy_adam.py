"""Lazy (row-wise) Adam against dense Adam: step time as the embedding tables grow, and the test AUC of the switch.

Question: `train.optimizer = "lazy_adam"` (`longrec.train.optim.LazyAdam`) updates only the table rows a batch touched,
from sparse table gradients, where dense Adam reads and writes every row of every table every step. When does that
pay, and does it change the model a run ends with?

1. Speed. DARE and TWIN (the harness's `PROTOCOL_A`: dim 16, soft search K = 20 + auxiliary loss, L = 200) on the
   Taobao slice under Protocol A, with the item table at the slice's size (57,540 rows) and grown to `--table-rows`
   (e.g. 10^6 and 4·10^6 rows, what a real catalogue has). The batches are the same in every setting, so a grown
   table only adds rows no batch touches: the difference is the cost the optimizer (and the dense gradient buffers)
   pay per table row. Each setting builds both models from seed 0, and `train_step` alternates between them step by
   step (the harness's `alternate_steps`), `--rounds` passes of 1 warm-up + `--steps` timed steps; each timed step's
   fastest pass counts (timeit's rule). Parity: the losses of the two paths step by step (equal on step 1, where
   lazy and dense Adam make the same update; they drift after).
2. AUC. DARE and TWIN trained with `longrec train` (2 epochs, batch 256, lr 0.01, L2 1e-6, as bench_throughput.py's
   AUC check) with each optimizer, seeds `--seeds`, at the slice's table size: test AUC mean ± std.

Run:    python benchmarks/bench_lazy_adam.py --update-readme
Quick:  python benchmarks/bench_lazy_adam.py --models DARE --table-rows 1000000 --seeds 0 --json /tmp/lazy.json
Re-render: python benchmarks/bench_lazy_adam.py --from-json benchmarks/results/lazy_adam.json --update-readme
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import _harness as harness
import numpy as np
from _harness import PROTOCOL_A as MODELS
from _harness import Trainer

from longrec.data.dataset import collate, epoch_batches
from longrec.data.store import TrajectoryStore
from longrec.train.step import reuse_freed_memory

L, LR, L2 = 200, 0.01, 1e-6
OPTIMIZERS = ("adam", "lazy_adam")


def speed_rows(store: TrajectoryStore, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Dense vs lazy Adam, alternating step by step, at every table size and batch size."""
    samples = store.samples("train")
    rows = []
    for B in args.batch_sizes:
        plan = [index for index in epoch_batches(len(samples), B, True, 0, 0) if len(index) == B]
        batches = [collate(store, samples, index, L) for index in plan[: 1 + args.steps]]
        touched = float(np.median([b.history[b.history_mask].unique().numel() for b in batches]))
        for name in args.models:
            for table_rows in [store.sizes["num_items"], *args.table_rows]:
                sizes = {**store.sizes, "num_items": table_rows}
                trainers = []
                for optimizer in OPTIMIZERS:
                    model, search = harness.protocol_a_model(name, sizes)
                    trainers.append(Trainer(model, search, LR, L2, optimizer=optimizer))
                harness.alternate_steps(trainers, batches, 1, args.rounds)
                dense, lazy = (t.best_rate() for t in trainers)
                gap = max(abs(a - b) for a, b in zip(trainers[0].losses, trainers[1].losses, strict=True))
                first = abs(trainers[0].losses[0] - trainers[1].losses[0])
                row = {"model": name, "batch_size": B, "table_rows": table_rows, "adam": dense, "lazy_adam": lazy}
                row |= {"touched_item_rows": touched, "max_loss_gap": gap, "first_step_loss_gap": first}
                row["parameters"] = sum(p.numel() for p in trainers[0].model.parameters())
                rows.append(row)
                print(
                    f"{name} B={B} item rows {table_rows:>9,}: adam {dense:8,.0f}/s  lazy {lazy:8,.0f}/s "
                    f"({lazy / dense:.2f}x); max |Δloss| {gap:.1e}",
                    flush=True,
                )
                del trainers
    return rows


def auc_job(job: dict[str, Any]) -> dict[str, Any]:
    params, search = MODELS[job["model"]]
    values = {f"model.{k}": v for k, v in params.items()} | {f"search.{k}": v for k, v in search.items()}
    values |= {"data.path": job["store"], "data.max_history": L, "train.lr": LR, "train.l2": L2}
    values |= {"train.batch_size": 256, "train.epochs": job["epochs"], "train.seed": job["seed"]}
    values |= {"train.threads": 1, "train.progress": False, "train.optimizer": job["optimizer"]}
    result = harness.train_run(values, job["out"])
    return job | {"test_auc": result["test"]["auc"], "seconds": result["seconds"]}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    reuse_freed_memory()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-lazy-adam-"))
    info = harness.Stores(args.cache).taobao(args.min_behaviours)
    store = TrajectoryStore.open(info.path)
    print(f"{info.info['line']}; {len(store.samples('train')):,} training samples", file=sys.stderr)
    rows = speed_rows(store, args)
    jobs = [
        {"model": m, "optimizer": o, "seed": s, "epochs": args.auc_epochs, "store": str(info.path)}
        | {"out": str(work / f"{m}-{o}-{s}")}
        for m in args.models
        for o in OPTIMIZERS
        for s in args.seeds
    ]

    def describe(r: dict[str, Any]) -> str:
        return f"{r['model']} {r['optimizer']} seed {r['seed']}: test AUC {r['test_auc']:.4f} ({r['seconds']:.0f} s)"

    aucs = harness.parallel(auc_job, jobs, args.jobs, describe) if args.auc_epochs else []
    for r in aucs:
        r.pop("out"), r.pop("store")
    return {"data": info.info["line"], "speed": rows, "auc": aucs}


def render(payload: dict[str, Any]) -> str:
    config = payload["config"]
    speed = [
        [
            r["model"],
            str(r["batch_size"]),
            f"{r['table_rows']:,}",
            f"{r['parameters'] / 1e6:.1f}M",
            f"{r['touched_item_rows']:,.0f}",
            f"{r['adam']:,.0f}",
            f"{r['lazy_adam']:,.0f}",
            f"{r['lazy_adam'] / r['adam']:.2f}x",
            f"{r['first_step_loss_gap']:.0e} / {r['max_loss_gap']:.1e}",
        ]
        for r in payload["speed"]
    ]
    header = ["model", "batch", "item table rows", "parameters", "item rows a batch touches", "Adam (samples/s)"]
    header += ["lazy Adam (samples/s)", "lazy / dense", "|Δloss| step 1 / max"]
    out = (
        f"Command: `{payload['command']}`. {harness.machine_line(payload['machine'])} {harness.load_line(payload)} "
        f"Data: {payload['data']}. `train_step` (search + forward + aux + L2 + backward + optimizer) with dense Adam "
        '(fused, what `longrec train` runs by default) and with `train.optimizer = "lazy_adam"`, alternating step by '
        f"step, {config['rounds']} passes of 1 warm-up + {config['steps']} timed steps, each step's fastest pass; the "
        "item table at the slice's size and grown (the same batches: the extra rows are never touched).\n\n"
        + harness.markdown_table(header, speed)
    )
    if payload["auc"]:
        rows = []
        for model in [m for m in MODELS if any(r["model"] == m for r in payload["auc"])]:
            cells = {o: [r["test_auc"] for r in payload["auc"] if r["model"] == model and r["optimizer"] == o]
                     for o in OPTIMIZERS}  # fmt: skip
            diff = float(np.mean(cells["lazy_adam"]) - np.mean(cells["adam"]))
            rows.append([model, harness.mean_std(cells["adam"]), harness.mean_std(cells["lazy_adam"]), f"{diff:+.4f}"])
        out += (
            f"\n\nTest AUC, `longrec train` {config['auc_epochs']} epochs, batch 256, lr {LR}, seeds "
            f"{config['seeds']} (mean ± std), 1 thread per run:\n\n"
            + harness.markdown_table(["model", "Adam", "lazy Adam", "lazy - Adam"], rows)
        )
    return out


def parser() -> argparse.ArgumentParser:
    parser = harness.options(__doc__, "lazy_adam", seeds=[0, 1, 2], threads=2, scratch=True)
    parser.add_argument("--models", nargs="+", default=["DARE", "TWIN"], choices=list(MODELS), metavar="MODEL")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[192, 2048])
    parser.add_argument("--table-rows", nargs="+", type=int, default=[1_000_000, 4_000_000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--auc-epochs", type=int, default=2, help="0 skips the AUC runs")
    parser.add_argument("--jobs", type=int, default=2, help="AUC runs in parallel (1 thread each)")
    parser.add_argument("--min-behaviours", type=int, default=50, help="Protocol A user filter on the slice")
    return parser


if __name__ == "__main__":
    harness.main(parser().parse_args(), "lazy-adam", measure, render)
