"""VISTA's two-stage training (cached summaries): is the stage-2 step flat in L, and does it run at 10^6 events?

The paper caches VISTA's summary tokens as features of the downstream model, so that training does not read the
history. longrec does it in two stages (`longrec.run.summaries`, docs/long_histories.md section 8): stage 1 trains
VISTA end to end (here on a short window), `longrec summarise` stores each sample's summaries of its history strictly
before the cutoff (`compute_summaries`: the frozen `user_state`, float16 `.npy` per split), and stage 2
(`data.summaries`) trains the candidate side from the stored summaries alone.

Data: `--users` synthetic users (mechanisms (a) + (g)) with `--events` behaviours each (no spread) and
`--impressions` labelled impressions each, spread over the timeline; Protocol T split 0.7 / 0.1 / 0.2 by time.

A. **Step cost vs L** at `--lengths`: `--batch` samples whose history before the cutoff holds at least L
   behaviours, collated to exactly L. Per L, in the same process, alternating step by step (`--rounds` rounds after one
   warm-up): the end-to-end VISTA `train_step` (user_state + candidate side + backward + Adam over all parameters)
   against the stage-2 `train_step` on the same samples' stored summaries (a batch with `user_state` and no history;
   the user side frozen, as `data.summaries` trains). Ratio = end-to-end / stage 2, fastest step of each (other
   processes on a shared machine only ever slow a step down; the medians are in the JSON). Also the precompute, i.e.
   `user_state` without gradient (what `longrec summarise` runs per sample), per sample (fastest of the rounds).
B. **10^6 events through both stages** with the run API (each stage in a fresh process: its wall time and peak RSS,
   VmHWM): stage 1 = `longrec.run.train` of VISTA at `data.max_history = --stage1-window` for `--stage1-epochs`
   epochs; `summarise` of every sample at `max_history = --events` (each sample's whole history, up to 10^6
   behaviours; `--summary-batch` samples per call); stage 2 = `train` with `data.summaries` for `--stage2-epochs`
   epochs. The test AUC is printed, but with so few users it measures nothing (item 7, bench_long_accuracy.py,
   measures accuracy).

Run:       python benchmarks/bench_vista_two_stage.py --update-readme
Quick:     python benchmarks/bench_vista_two_stage.py --quick --json /tmp/vista_two_stage.json
Re-render: python benchmarks/bench_vista_two_stage.py --update-readme \
             --from-json benchmarks/results/vista_two_stage.json
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import _harness as harness
import numpy as np
import torch

from longrec.data.batch import Batch
from longrec.data.dataset import collate
from longrec.data.prepare import prepare
from longrec.data.protocols import ProtocolConfig
from longrec.data.store import SPLITS, SampleSet, TrajectoryStore
from longrec.ingest.synthetic import SyntheticConfig, generate
from longrec.models import build_model_for_sizes
from longrec.run.summaries import user_side_parameters
from longrec.search.config import SearchConfig
from longrec.train.step import reuse_freed_memory

HERE = Path(__file__).resolve().parent
MODEL: dict[str, Any] = {"dim": 16, "num_summaries": 16}  # VISTA's defaults otherwise (softmax, position encoding)


def make_store(args: argparse.Namespace, stores: harness.Stores) -> tuple[harness.Store, dict[str, Any]]:
    config = SyntheticConfig(
        num_users=args.users,
        events_per_user=args.events,
        events_spread=0.0,
        impressions_per_user=args.impressions,
        mechanisms=("a", "g"),
        seed=0,
    )

    def build(folder: Path) -> dict[str, Any]:
        started = time.perf_counter()
        data = generate(config)
        generated = time.perf_counter() - started
        protocol = ProtocolConfig.for_protocol("T", split_fractions=(0.7, 0.1, 0.2))
        result = prepare(data.log, folder / "store", protocol, force=True)
        return {
            "behaviours": data.stats["num_behaviours"],
            "samples": {s: result.manifest["counts"]["samples"][s] for s in SPLITS},
            "generate_s": round(generated, 1),
            "prepare_s": round(time.perf_counter() - started - generated, 1),
            "store_mb": round(harness.folder_bytes(folder / "store") / 1e6, 1),
        }

    store = stores.get("vista-two-stage", {"config": repr(config)}, build)
    return store, store.info


def longest(store: TrajectoryStore, L: int, count: int) -> Batch:
    """`count` samples (any split) with at least L behaviours before the cutoff, collated to exactly L."""
    samples = SampleSet.concat([store.samples(split) for split in SPLITS])
    index = np.flatnonzero(np.asarray(samples.end) >= L)[:count]
    if len(index) < count:
        raise SystemExit(f"only {len(index)} samples have >= {L:,} behaviours (need {count}): raise --events.")
    return collate(store, samples, index, L)


# --------------------------------------------------------------------------------------------------------------------
# A. Step cost vs L.


def part_a(store: TrajectoryStore, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    search = SearchConfig()
    for L in args.lengths:
        batch = longest(store, L, args.batch)
        torch.manual_seed(0)
        end_to_end = harness.Trainer(build_model_for_sizes("vista", MODEL, store.sizes), search, args.lr)
        torch.manual_seed(0)
        stage_two = build_model_for_sizes("vista", MODEL, store.sizes)
        frozen = user_side_parameters(stage_two, batch)
        for name, parameter in stage_two.named_parameters():  # as data.summaries trains it
            parameter.requires_grad_(name not in frozen)
        stage_two.eval()
        with torch.no_grad():
            precompute = harness.timings(lambda m=stage_two, b=batch: m.user_state(b), args.rounds)
            state = stage_two.user_state(batch)  # [B, S, E]
        stored = collate(store, store.samples("train"), np.zeros(len(batch), np.int64), 0)  # target-side layout
        stored = batch.replace(
            **{k: v for k, v in stored.fields().items() if k.startswith("history")}, user_state=state.half().float()
        )
        cached = harness.Trainer(stage_two, search, args.lr)
        e2e_steps, cached_steps = [], []
        for i in range(args.rounds + 1):
            e2e, s2 = end_to_end.step(batch), cached.step(stored)
            if i:  # the first round warms up
                e2e_steps.append(e2e)
                cached_steps.append(s2)
        row = {
            "L": L,
            "B": len(batch),
            "end_to_end_s": min(e2e_steps),
            "stage2_s": min(cached_steps),
            "end_to_end_median_s": statistics.median(e2e_steps),
            "stage2_median_s": statistics.median(cached_steps),
            "precompute_s_per_sample": min(precompute) / len(batch),
            "end_to_end_steps": e2e_steps,
            "stage2_steps": cached_steps,
            "batch_mb": sum(v.element_size() * v.numel() for v in batch.fields().values()) / 1e6,
            "stage2_batch_mb": sum(v.element_size() * v.numel() for v in stored.fields().values()) / 1e6,
        }
        row["ratio"] = row["end_to_end_s"] / row["stage2_s"]
        rows.append(row)
        print(
            f"A L={L:9,d} B={len(batch)}: end-to-end step {row['end_to_end_s'] * 1e3:9.1f} ms, stage 2 "
            f"{row['stage2_s'] * 1e3:6.2f} ms ({row['ratio']:,.0f}x), precompute "
            f"{row['precompute_s_per_sample'] * 1e3:8.1f} ms per sample",
            flush=True,
        )
        del stored, end_to_end, cached
    return rows


# --------------------------------------------------------------------------------------------------------------------
# B. Both stages at 10^6 events, each in a fresh process.


def child(job: dict[str, Any]) -> dict[str, Any]:
    """One stage in this (fresh) process: its seconds, peak RSS and what it produced."""
    from longrec.run import summarise

    torch.set_num_threads(job["threads"])
    reuse_freed_memory()
    started = time.perf_counter()
    if job["stage"] == "summarise":
        meta = summarise(job["run"], job["out"], job["max_history"], job["batch"], force=True)
        out: dict[str, Any] = {"seconds_per_split": meta["seconds"], "samples": meta["splits"]}
        out["summary_mb"] = harness.folder_bytes(Path(job["out"])) / 1e6
    else:
        result = harness.train_run(job["values"], job["out"])
        out = {"test_auc": result["test"]["auc"], "steps": result["steps"], "train_seconds": result["train_seconds"]}
    return out | {"seconds": time.perf_counter() - started, "peak_mb": harness.peak_rss_mb()}


def part_b(store: harness.Store, args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    model = {"model.name": "vista", **{f"model.{k}": v for k, v in MODEL.items()}}
    common = {
        "data.path": str(store.path),
        "train.batch_size": args.stage_batch,
        "train.eval_batch_size": args.stage_batch,
        "train.lr": args.lr,
        "train.threads": args.threads,
        "train.progress": False,
    }
    jobs = [
        {
            "stage": "stage 1: end to end, short window",
            "out": str(work / "stage1"),
            "values": model | common | {"data.max_history": args.stage1_window, "train.epochs": args.stage1_epochs},
        },
        {
            "stage": "summarise",
            "run": str(work / "stage1"),
            "out": str(work / "summaries"),
            "max_history": args.events,
            "batch": args.summary_batch,
        },
        {
            "stage": "stage 2: candidate side on stored summaries",
            "out": str(work / "stage2"),
            "values": model
            | common
            | {
                "data.max_history": args.events,
                "data.summaries": str(work / "summaries"),
                "train.epochs": args.stage2_epochs,
            },
        },
    ]
    rows = []
    for job in jobs:
        result = harness.in_subprocess(__file__, job | {"threads": args.threads})
        rows.append({"stage": job["stage"], **result})
        print(
            f"B {job['stage']}: {result['seconds']:.1f} s, peak RSS {result['peak_mb']:,.0f} MB  {result}", flush=True
        )
    return rows


# --------------------------------------------------------------------------------------------------------------------


def measure(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        args.users, args.events, args.impressions, args.lengths, args.rounds = 2, 20_000, 20, [1000, 10_000], 2
        args.stage1_window, args.stage1_epochs, args.stage2_epochs = 500, 1, 1
    reuse_freed_memory()
    store, info = make_store(args, harness.Stores(args.cache))
    print(f"data: {info}", flush=True)
    rows_a = part_a(store.open(), args)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-vista-"))
    rows_b = part_b(store, args, work)
    return {"data": info, "step_cost": rows_a, "two_stage": rows_b}


def render(payload: dict[str, Any]) -> str:
    config, data = payload["config"], payload["data"]
    a = harness.markdown_table(
        [
            "L",
            "B",
            "end-to-end step (ms)",
            "stage-2 step (ms)",
            "end-to-end / stage 2",
            "precompute per sample (ms)",
            "batch MB: end to end / stage 2",
        ],
        [
            [
                f"{r['L']:,}",
                str(r["B"]),
                f"{r['end_to_end_s'] * 1e3:,.1f}",
                f"{r['stage2_s'] * 1e3:.2f}",
                f"{r['ratio']:,.0f}x",
                f"{r['precompute_s_per_sample'] * 1e3:,.1f}",
                f"{r['batch_mb']:,.1f} / {r['stage2_batch_mb']:.3f}",
            ]
            for r in payload["step_cost"]
        ],
    )
    b = harness.markdown_table(
        ["stage", "wall s", "peak RSS (MB)", "result"],
        [
            [
                r["stage"],
                f"{r['seconds']:.1f}",
                f"{r['peak_mb']:,.0f}",
                (
                    f"{sum(r['samples'].values())} samples summarised ({r['summary_mb']:.2f} MB on disk)"
                    if "samples" in r
                    else f"{r['steps']} steps, test AUC {r['test_auc']:.3f}"
                ),
            ]
            for r in payload["two_stage"]
        ],
    )
    return (
        f"Command: `{payload['command']}` ({payload['seconds'] / 60:.1f} min). "
        f"{harness.machine_line(payload['machine'])} {harness.load_line(payload)}\n\n"
        "Docs: [docs/long_histories.md](../docs/long_histories.md), section 8.\n\n"
        + textwrap.dedent(
            f"""\
            Data: {config["users"]} synthetic users ((a) + (g)) of {config["events"]:,} behaviours each,
            {config["impressions"]} impressions each ({data["samples"]["train"]} train, {data["samples"]["valid"]}
            valid, {data["samples"]["test"]} test samples); store {data["store_mb"]:,.0f} MB, generated in
            {data["generate_s"]} s, prepared in {data["prepare_s"]} s. VISTA dim 16 (E = 64 with 3 taxonomy
            levels), S = 16 summaries, softmax summarisation, position encoding.
            """
        ).replace("\n", " ")
        + "\n\n"
        + textwrap.dedent(
            f"""\
            **A. Step cost vs L** (fastest of {config["rounds"]} alternating steps after one warm-up; Adam lr
            {config["lr"]}; the stage-2 state is the float16-rounded `user_state`, as stored).
            """
        ).replace("\n", " ")
        + "\n\n"
        + a
        + "\n\n"
        + textwrap.dedent(
            f"""\
            **B. Both stages at {config["events"]:,} events per user** (run API, each stage a fresh process):
            stage 1 at max_history {config["stage1_window"]:,} for {config["stage1_epochs"]} epochs, summaries of
            each sample's whole history (up to {config["events"]:,} behaviours, {config["summary_batch"]} samples
            per call, float16), stage 2 for {config["stage2_epochs"]} epochs; batch {config["stage_batch"]}.
            """
        ).replace("\n", " ")
        + "\n\n"
        + b
    )


def parser() -> argparse.ArgumentParser:
    parser = harness.options(__doc__, "vista_two_stage", threads=1, scratch=True, child=True)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, not results")
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--events", type=int, default=1_000_000, help="behaviours per user")
    parser.add_argument("--impressions", type=int, default=30, help="labelled impressions per user")
    parser.add_argument("--lengths", nargs="+", type=int, default=[1000, 10_000, 100_000, 900_000], help="part A")
    parser.add_argument("--batch", type=int, default=4, help="part A: samples per step")
    parser.add_argument("--rounds", type=int, default=7, help="part A: timed steps per L")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--stage1-window", type=int, default=1000)
    parser.add_argument("--stage1-epochs", type=int, default=3)
    parser.add_argument("--stage2-epochs", type=int, default=3)
    parser.add_argument("--stage-batch", type=int, default=16, help="part B: train batch size")
    parser.add_argument("--summary-batch", type=int, default=2, help="part B: samples per user_state call")
    return parser


if __name__ == "__main__":
    harness.main(parser().parse_args(), "vista-two-stage", measure, render, child=child)
