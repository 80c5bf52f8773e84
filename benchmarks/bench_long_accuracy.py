"""End-to-end accuracy at L = 10^5: do DARE, TWIN, VISTA and VQL trained on 10^5-event histories use the far past?

Synthetic histories of `--events` behaviours per user (no spread) with mechanisms (a) (recent same-SPU relevance
with a time decay) and (g) (long-range memories: each user's oldest behaviours are a few memory-SPU ad behaviours,
`--g-target-prob` of the impressions show a memory-SPU item, and the label gets +w_g only when a same-SPU behaviour
lies more than `--g-min-back` behaviours back). Impressions are spread over each user's timeline; Protocol T splits
them 0.7 / 0.1 / 0.2 by time, so the test impressions have 0.8-1.0 x `--events` behaviours before them and their
memories lie that far back: a window of L = 10^4 holds none of them, L = 10^5 holds all.

Each method is trained at every L of `--lengths` (collate keeps the L most recent behaviours before the cutoff) and
seed of `--seeds`, for `--epochs` epochs of batch `--batch-size` (Adam lr `--lr`, `train_step` through the harness's
`Trainer`; the last model is scored, no validation-based selection), and scored on every test impression:
- **DARE** and **TWIN**: soft search keeps K = `--k` of the L behaviours (`search.chunk` auto: chunked over L when the
  keys exceed 16 MiB, identical result), then target attention over the K;
- **VISTA (two-stage)** and **VQL (two-stage)**: stage 1 trains the model end to end on the `--stage1-window` most
  recent behaviours (min(L, window)), `compute_summaries` stores each train and test sample's user state over its L
  most recent behaviours before the cutoff (float16), and stage 2 trains the candidate side on the stored states for
  `--stage2-epochs` epochs with the user side frozen (`data.summaries`); test samples are scored from their stored
  states. End to end over all L would cost about L / window times stage 1 per step (bench_vista_two_stage.py);
- **category + TIN (control)**: SIM-style hard search on the finest taxonomy level (the SPU; memory SPUs occur
  nowhere else, so it keeps exactly the memories for a memory target) + TIN, the one method that used memories in
  bench_long_history.py: it shows what this data and training budget allow a model that is handed the memory;
- **VISTA / VQL (end to end)**: trained over all L, at the lengths up to `--end-to-end-max-length` only (skipped beyond,
  the reason recorded), as a reference for the two-stage rows.
VQL uses `temporal = "none"`: its default position kernel weighs a behaviour 10^4 back by exp(-19)
(docs/long_histories.md section 4), which would rule it out of this task by construction.

Reported per (method, L): test AUC over all impressions, on the memory-target impressions (truth column
`memory_target`) and on the others, mean ± half-range over the seeds; the true probability's AUC on the same rows
(the ceiling); seconds of training, of the summary precompute, and of scoring.

Run:       python benchmarks/bench_long_accuracy.py --update-readme
Quick:     python benchmarks/bench_long_accuracy.py --quick --json /tmp/long_accuracy.json
Re-render: python benchmarks/bench_long_accuracy.py --from-json benchmarks/results/long_accuracy.json --update-readme
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
import polars as pl
import torch

from longrec.data.dataset import collate, make_loader
from longrec.data.prepare import prepare
from longrec.data.protocols import ProtocolConfig
from longrec.data.store import TrajectoryStore
from longrec.data.summaries import SummaryStore
from longrec.eval.evaluate import predict
from longrec.eval.metrics import auc
from longrec.ingest.synthetic import SyntheticConfig, generate
from longrec.models import build_model_for_sizes
from longrec.run.summaries import compute_summaries, user_side_parameters
from longrec.search.config import SearchConfig
from longrec.train.step import reuse_freed_memory

# method -> (model name, model params, search fields, mode)
METHODS: dict[str, tuple[str, dict[str, Any], dict[str, Any], str]] = {
    "DARE (soft, chunked)": ("dare", {}, {"method": "soft"}, "end_to_end"),
    "TWIN (soft, chunked)": ("twin", {}, {"method": "soft"}, "end_to_end"),
    "VISTA (two-stage)": ("vista", {}, {"method": "none"}, "two_stage"),
    "VQL (two-stage)": ("vql", {"temporal": "none"}, {"method": "none"}, "two_stage"),
    "category + TIN (control)": ("tin", {}, {"method": "category", "level": -1}, "end_to_end"),
    "VISTA (end to end)": ("vista", {}, {"method": "none"}, "whole"),
    "VQL (end to end)": ("vql", {"temporal": "none"}, {"method": "none"}, "whole"),
}


def make_store(
    args: argparse.Namespace, stores: harness.Stores
) -> tuple[TrajectoryStore, pl.DataFrame, dict[str, Any]]:
    config = SyntheticConfig(
        num_users=args.users,
        events_per_user=args.events,
        events_spread=0.0,
        impressions_per_user=args.impressions,
        mechanisms=("a", "g"),
        g_min_back=args.g_min_back,
        g_target_prob=args.g_target_prob,
        weight_g=args.weight_g,
        seed=args.data_seed,
    )

    def build(folder: Path) -> dict[str, Any]:
        started = time.perf_counter()
        data = generate(config)
        generated = time.perf_counter() - started
        protocol = ProtocolConfig.for_protocol("T", split_fractions=(0.7, 0.1, 0.2))
        result = prepare(data.log, folder / "store", protocol, force=True)
        (folder / "raw").mkdir(exist_ok=True)
        data.truth.select("event_id", "memory_target", "term_g", "prob", "label").write_parquet(
            folder / "raw" / "truth.parquet"
        )
        return {
            "behaviours": data.stats["num_behaviours"],
            "samples": {s: result.manifest["counts"]["samples"][s] for s in ("train", "valid", "test")},
            "positive_rate": data.stats["positive_rate"],
            "generate_s": round(generated, 1),
            "prepare_s": round(time.perf_counter() - started - generated, 1),
            "store_mb": round(harness.folder_bytes(folder / "store") / 1e6, 1),
        }

    store = stores.get("long-accuracy", {"config": repr(config)}, build)
    return store.open(), store.truth(), store.info


def train_epochs(trainer: harness.Trainer, store: TrajectoryStore, L: int, epochs: int, seed: int,
                 args: argparse.Namespace, summaries: SummaryStore | None = None) -> float:  # fmt: skip
    started = time.perf_counter()
    for epoch in range(epochs):
        loader = make_loader(store, "train", args.batch_size, L, shuffle=True, seed=seed, epoch=epoch,
                             summaries=summaries)  # fmt: skip
        trainer.epoch(loader)
    return time.perf_counter() - started


def fit_and_score(
    method: str, L: int, seed: int, store: TrajectoryStore, args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    """Train `method` at L with `seed`; its test logits and the seconds of each phase."""
    name, params, search_fields, mode = METHODS[method]
    search = SearchConfig.from_table({"k": args.k, **search_fields})
    torch.manual_seed(seed)
    model = build_model_for_sizes(name, params, store.sizes)
    trainer = harness.Trainer(model, search, args.lr)
    out: dict[str, Any] = {"mode": mode}
    summaries = None
    if mode == "two_stage":
        window = min(L, args.stage1_window)
        out["stage1_s"] = train_epochs(trainer, store, window, args.epochs, seed, args)
        started = time.perf_counter()
        folder = work / f"summaries-{name}-{L}-{seed}"
        compute_summaries(model, store, folder, name, params, L, args.summary_batch, splits=("train", "test"),
                          force=True)  # fmt: skip
        out["precompute_s"] = time.perf_counter() - started
        summaries = SummaryStore.open(folder, store)
        probe = collate(store, store.samples("train"), np.arange(2), 8)
        frozen = user_side_parameters(model, probe)
        for parameter_name, parameter in model.named_parameters():
            parameter.requires_grad_(parameter_name not in frozen)
        trainer = harness.Trainer(model, search, args.lr)
        out["stage2_s"] = train_epochs(trainer, store, L, args.stage2_epochs, seed, args, summaries)
        out["train_s"] = out["stage1_s"] + out["stage2_s"]
    else:
        out["train_s"] = train_epochs(trainer, store, L, args.epochs, seed, args)
    started = time.perf_counter()
    loader = make_loader(store, "test", args.eval_batch_size, L, summaries=summaries)
    out["logits"] = predict(model, loader, search=search)["logits"]
    out["eval_s"] = time.perf_counter() - started
    out["steps"] = len(trainer.losses)
    if summaries is not None:
        for path in summaries.root.iterdir():
            path.unlink()
        summaries.root.rmdir()
    return out


def score(logits: np.ndarray, store: TrajectoryStore, truth: pl.DataFrame) -> dict[str, float]:
    rows = pl.DataFrame({"event_id": np.asarray(store.samples("test").event_id), "logit": logits})
    rows = rows.join(truth, on="event_id", how="inner")
    memory = rows.filter("memory_target")
    other = rows.filter(~pl.col("memory_target"))
    return {
        "auc": auc(rows["label"], rows["logit"]),
        "memory_auc": auc(memory["label"], memory["logit"]),
        "other_auc": auc(other["label"], other["logit"]),
        "oracle_auc": auc(rows["label"], rows["prob"]),
        "oracle_memory_auc": auc(memory["label"], memory["prob"]),
        "test_rows": rows.height,
        "memory_rows": memory.height,
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        args.users, args.events, args.impressions, args.lengths, args.seeds = 12, 20_000, 20, [1000, 20_000], [0]
        args.g_min_back, args.stage1_window = 300, 500
    reuse_freed_memory()
    store, truth, info = make_store(args, harness.Stores(args.cache))
    print(f"data: {info}", flush=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-long-accuracy-"))
    work.mkdir(parents=True, exist_ok=True)
    runs, skipped = [], []
    for seed in args.seeds:
        for L in args.lengths:
            for method in args.methods:
                if METHODS[method][3] == "whole" and args.end_to_end_max_length < L:
                    if seed == args.seeds[0]:
                        skipped.append({"method": method, "L": L, "why": "L > --end-to-end-max-length"})
                    continue
                result = fit_and_score(method, L, seed, store, args, work)
                metrics = score(result.pop("logits"), store, truth)
                runs.append({"method": method, "L": L, "seed": seed, **result, **metrics})
                extra = f" precompute {result['precompute_s']:6.1f} s" if "precompute_s" in result else ""
                print(
                    f"seed {seed} L={L:7,d} {method:22s} AUC {metrics['auc']:.4f} memory {metrics['memory_auc']:.4f} "
                    f"other {metrics['other_auc']:.4f}  train {result['train_s']:6.1f} s{extra} "
                    f"eval {result['eval_s']:5.1f} s ({result['steps']} steps)",
                    flush=True,
                )
    return {"data": info, "runs": runs, "summary": summarise(runs), "skipped": skipped}


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for method in dict.fromkeys(r["method"] for r in runs):
        for L in sorted({r["L"] for r in runs}):
            group = [r for r in runs if r["method"] == method and r["L"] == L]
            if not group:
                continue
            entry: dict[str, Any] = {
                "method": method,
                "L": L,
                "seeds": len(group),
                "memory_rows": group[0]["memory_rows"],
            }
            entry["test_rows"] = group[0]["test_rows"]
            for key in ("auc", "memory_auc", "other_auc", "oracle_auc", "oracle_memory_auc", "train_s", "eval_s",
                        "precompute_s"):  # fmt: skip
                values = [r[key] for r in group if key in r]
                if values:
                    entry[key] = statistics.fmean(values)
                    entry[f"{key}_spread"] = (max(values) - min(values)) / 2
            out.append(entry)
    return out


def render(payload: dict[str, Any]) -> str:
    config, data, summary = payload["config"], payload["data"], payload["summary"]
    Ls = sorted({r["L"] for r in summary})
    plural = "s" if len(config["seeds"]) > 1 else ""

    def cell(by_L: dict[int, dict[str, Any]], L: int, key: str) -> str:
        if L not in by_L:
            return "—"
        r = by_L[L]
        return f"{r[key]:.3f} ± {r[f'{key}_spread']:.3f}" if r["seeds"] > 1 else f"{r[key]:.3f}"

    rows = []
    for method in dict.fromkeys(r["method"] for r in summary):
        by_L = {r["L"]: r for r in summary if r["method"] == method}
        costs = []
        for L in Ls:
            if L in by_L:
                r = by_L[L]
                extra = f" + {r['precompute_s']:.0f}" if "precompute_s" in r else ""
                costs.append(f"{r['train_s']:.0f}{extra}")
            else:
                costs.append("—")
        rows.append(
            [method]
            + [cell(by_L, L, "auc") for L in Ls]
            + [cell(by_L, L, "memory_auc") for L in Ls]
            + [cell(by_L, L, "other_auc") for L in Ls]
            + [" / ".join(costs)]
        )
    top = summary[0]
    blank = ["—"] * len(Ls)
    rows.append(["true probability", *[f"{top['oracle_auc']:.3f}"] * len(Ls),
                 *[f"{top['oracle_memory_auc']:.3f}"] * len(Ls), *blank, "—"])  # fmt: skip
    header = (
        ["method"]
        + [f"AUC L={L:,}" for L in Ls]
        + [f"memory AUC L={L:,}" for L in Ls]
        + [f"other AUC L={L:,}" for L in Ls]
        + ["train s (+ precompute) per L"]
    )
    skipped = "; ".join(f"{s['method']} at L = {s['L']:,} ({s['why']})" for s in payload["skipped"])
    return (
        f"Command: `{payload['command']}` ({payload['seconds'] / 60:.1f} min). "
        f"{harness.machine_line(payload['machine'])} {harness.load_line(payload)}\n\n"
        "Docs: [docs/long_histories.md](../docs/long_histories.md), section 9.\n\n"
        + textwrap.dedent(
            f"""\
            Data: {config["users"]} synthetic users ((a) + (g)) of {config["events"]:,} behaviours each,
            {config["impressions"]} impressions each (Protocol T by time: {data["samples"]["train"]:,} train,
            {data["samples"]["test"]:,} test samples; positive rate {data["positive_rate"]:.2f}), g_min_back =
            {config["g_min_back"]:,}, w_g = {config["weight_g"]}, {config["g_target_prob"]:.0%} of the impressions
            show a memory SPU; store {data["store_mb"]:,.0f} MB. Training: {config["epochs"]} epoch{
                "s" if config["epochs"] > 1 else ""
            } (for the two-stage rows: of stage 1), batch {config["batch_size"]}, Adam lr {config["lr"]}, K =
            {config["k"]}; two-stage: stage 1 on min(L, {config["stage1_window"]:,}) behaviours, summaries over L,
            stage 2 {config["stage2_epochs"]} epochs. Seed{plural} {config["seeds"]} (mean ± half-range). "memory
            AUC" = the {summary[0]["memory_rows"]} of the {summary[0]["test_rows"]} test impressions whose target
            is a memory SPU, "other" = the rest.
            """
        ).replace("\n", " ")
        + "\n\n"
        + harness.markdown_table(header, rows)
        + (f"\n\nNot run: {skipped}." if skipped else "")
    )


def parser() -> argparse.ArgumentParser:
    parser = harness.options(__doc__, "long_accuracy", seeds=[0, 1], threads=1, scratch=True)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, not results")
    parser.add_argument("--users", type=int, default=120)
    parser.add_argument("--events", type=int, default=100_000, help="behaviours per user")
    parser.add_argument("--impressions", type=int, default=40, help="labelled impressions per user")
    parser.add_argument("--g-min-back", type=int, default=1000)
    parser.add_argument("--g-target-prob", type=float, default=0.5)
    parser.add_argument("--weight-g", type=float, default=4.0)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--lengths", nargs="+", type=int, default=[1000, 10_000, 100_000])
    parser.add_argument("--methods", nargs="+", default=list(METHODS)[:5], choices=list(METHODS), metavar="METHOD")
    parser.add_argument("--k", type=int, default=50, help="behaviours kept by soft search")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--stage1-window", type=int, default=1000)
    parser.add_argument("--stage2-epochs", type=int, default=2)
    parser.add_argument("--end-to-end-max-length", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--eval-batch-size", type=int, default=32)
    parser.add_argument("--summary-batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    return parser


if __name__ == "__main__":
    harness.main(parser().parse_args(), "long-accuracy", measure, render)
