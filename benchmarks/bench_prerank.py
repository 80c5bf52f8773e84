"""TD-SASRec as the paper's pre-ranker: with target heads keyed by category at the paper's scale (~50), does it beat
the mean-pooled user tower and plain SASRec (one query), by AUC and by Recall@N on a candidate pool?

The Tencent paper decouples TD-SASRec's targets into ~50 heads; longrec's earlier study (bench_tencent_ablation.py,
study sasrec) keyed them by the 3 advertising goals only, scored AUC only, and found TD-SASRec behind its own
mean-pooled ablation on every dataset. This script asks the pre-ranking question on its own, so it has its own
grid: other rows (category heads, one query), other data (MovieLens too) and another measurement (Recall@N).

| row                          | user tower                                 | target heads (query token + TDPE tables) |
|------------------------------|--------------------------------------------|------------------------------------------|
| mean tower                   | LN(mean of the behaviours + q_g), no order | one per goal (1 on Taobao, MovieLens)    |
| SASRec, 1 query              | 2 causal blocks, TIN's position + time gap | one for every candidate (target_key=none)|
| TD-SASRec, goal heads        | the same                                   | one per goal, 3 (synthetic only)         |
| TD-SASRec, 50 category heads | the same                                   | the 50 most frequent categories + shared |

Category heads key on the synthetic data's cat_2 (100 categories: (a)'s decay τ is drawn per cat_2), Taobao's only
level (~3,000 categories: the top 50 by behaviours, the tail shares head 0) and MovieLens's first genre (18, all of
them get a head). Every row: dims 16, max_history 50, dot-product scoring, BCE on the protocol's samples, Adam lr
0.003, batch 512, 3 epochs (MovieLens: 1, validated 3 times), validation AUC picks the checkpoint; 1 thread per run,
--jobs runs in parallel.
Measurement: test AUC and GAUC, and each test positive ranked against one candidate pool (`longrec.eval.retrieval`:
1,000 items drawn by popularity without replacement from the items that are train targets, seed 0; ties count
against the positive): Recall@{10, 50, 200} and NDCG@50.

Data: synthetic, mechanisms (a) + (e) (the (a) term decays with a τ per target category, (e) multiplies τ per goal),
2000 users, Protocol T on the labelled impressions; the Taobao slice, Protocol A (users >= 50 behaviours); MovieLens
latest-small, ratings >= 3.5, Protocol B.

Targeted experiments (`--experiments`, each adding rows or data, reported apart from the main grid):
- more_data: the synthetic data with 4x the users (8000);
- fewer_heads: TD-SASRec with 10 category heads (synthetic: the 10 industries, cat_1; Taobao: the top 10);
- more_negatives: the Taobao slice with 8 sampled negatives per positive instead of 2.

Run:    python benchmarks/bench_prerank.py --update-readme
Quick:  python benchmarks/bench_prerank.py --data taobao --seeds 0 --json /tmp/prerank.json
Experiments (only them: --data defaults to none with --experiments), keeping the main grid's runs:
        python benchmarks/bench_prerank.py --experiments fewer_heads --merge --update-readme
Re-render the README section from the JSON alone:
        python benchmarks/bench_prerank.py --from-json benchmarks/results/prerank.json --update-readme
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _harness as harness
import numpy as np
import torch

from longrec.data.dataset import collate
from longrec.eval.retrieval import PoolConfig, evaluate_retrieval
from longrec.models import build_model_for_sizes
from longrec.run import load_run

GOALS = ("click", "cart", "buy")
NS = (10, 50, 200)
POOL = PoolConfig("popularity", size=1000, seed=0, items="train_targets")
MODEL = {"name": "td_sasrec", "dim": 16, "num_blocks": 2, "num_heads": 2, "temporal": "both"}
ROWS: dict[str, dict[str, Any]] = {
    "mean tower": {"encoder": "mean"},
    "SASRec, 1 query": {"target_key": "none"},
    "TD-SASRec, goal heads": {"target_key": "goal"},
    "TD-SASRec, 50 category heads": {"target_key": "category", "heads": 50},
    "TD-SASRec, 10 category heads": {"target_key": "category", "heads": 10, "coarse": True},
}
MAIN_ROWS = ("mean tower", "SASRec, 1 query", "TD-SASRec, goal heads", "TD-SASRec, 50 category heads")
ROWS_AT_INIT = ("mean tower", "SASRec, 1 query", "TD-SASRec, 50 category heads")


@dataclass(frozen=True)
class Data:
    """A dataset of the grid: its store builder's name, the taxonomy level category heads key on (and the level
    of the 10-head experiment), whether it has several goals, and its epochs as a share of --epochs with the
    validations per epoch (MovieLens's Protocol B train split is 3.7x the others': one epoch, validated 3 times,
    is about the others' number of steps and validations)."""

    store: str
    level: int
    coarse_level: int
    goals: bool
    shrink: int = 1  # `harness.schedule`: epochs // shrink epochs, validated shrink times each


DATA = {
    "synthetic": Data("synthetic", 1, 0, True),
    "taobao": Data("taobao", 0, 0, False),
    "movielens": Data("movielens", 0, 0, False, shrink=3),
    "synthetic, 4x users": Data("synthetic_4x", 1, 0, True),
    "taobao, 8 negatives": Data("taobao_neg8", 0, 0, False),
}
MAIN_DATA = ("synthetic", "taobao", "movielens")
EXPERIMENTS: dict[str, list[tuple[str, str]]] = {  # name -> its (data, row) cells
    "more_data": [
        ("synthetic, 4x users", r) for r in ("mean tower", "SASRec, 1 query", "TD-SASRec, 50 category heads")
    ],
    "fewer_heads": [(d, "TD-SASRec, 10 category heads") for d in ("synthetic", "taobao")],
    "more_negatives": [
        ("taobao, 8 negatives", r) for r in ("mean tower", "SASRec, 1 query", "TD-SASRec, 50 category heads")
    ],
}


def store_of(name: str, cache: harness.Stores, users: int) -> harness.Store:
    if name == "synthetic":
        return cache.synthetic(num_users=users, mechanisms=("a", "e"), goals=GOALS)
    if name == "synthetic_4x":
        return cache.synthetic(num_users=4 * users, mechanisms=("a", "e"), goals=GOALS)
    if name == "taobao":
        return cache.taobao(50)
    if name == "taobao_neg8":
        return cache.taobao(50, negatives=8)
    if name == "movielens":
        return cache.movielens()
    raise KeyError(name)


def model_params(row: str, data: Data, store: harness.Store) -> dict[str, Any]:
    """The model table of one row on one dataset; category heads take the store's most frequent categories."""
    params = MODEL | ROWS[row]
    heads, coarse = params.pop("heads", None), params.pop("coarse", False)
    if heads is not None:
        params["head_categories"] = store.open().top_categories(heads, data.coarse_level if coarse else data.level)
    return params


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train one (data, row, seed), then its test AUC and Recall@N on the pool (in a worker process, 1 thread)."""
    logging.getLogger("longrec").setLevel(logging.WARNING)
    values = {f"model.{k}": v for k, v in job["model"].items()}
    values |= harness.run_values(job["store"], job["seed"], job["batch_size"], job["epochs"], 50, job["eval_every"])
    result = harness.train_run(values, job["out"])
    started = time.perf_counter()
    retrieval = load_run(job["out"]).evaluate_retrieval("test", NS, POOL)
    keep = [f"{m}@{n}" for n in NS for m in ("recall", "ndcg")] + ["mean_rank", "positives"]
    return {
        "data": job["data"],
        "row": job["row"],
        "seed": job["seed"],
        "heads": len(job["model"].get("head_categories", ())) + 1 if "head_categories" in job["model"] else None,
        "seconds": result["seconds"],
        "eval_seconds": round(time.perf_counter() - started, 1),
        "test": {k: result["test"][k] for k in ("auc", "gauc", "logloss")},
        "valid_auc": result["valid"]["auc"],
        "retrieval": {k: retrieval[k] for k in keep},
        "pool": retrieval["pool"]["line"],
        "path": retrieval["path"],
    }


def cells(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The (data, row) cells this invocation trains: the main grid on --data, plus --experiments."""
    data = args.data if args.data is not None else ([] if args.experiments else list(MAIN_DATA))
    out = [(d, r) for d in data for r in MAIN_ROWS if DATA[d].goals or r != "TD-SASRec, goal heads"]
    for name in args.experiments:
        out += [cell for cell in EXPERIMENTS[name] if cell not in out]
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("longrec").setLevel(logging.WARNING)
    todo = cells(args)
    kept = []
    if args.merge:
        kept = [r for r in harness.read_results(args.json)["runs"] if (r["data"], r["row"]) not in todo]
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-prerank-"))
    cache = harness.Stores(args.cache)
    info = harness.machine()
    origin = {"commit": info["commit"], "date": info["date"], "cpu": info["cpu"]}
    jobs = []
    for data, row in todo:
        store = store_of(DATA[data].store, cache, args.users)
        model = model_params(row, DATA[data], store)
        for seed in args.seeds:
            name = re.sub(r"[^\w.-]+", "", f"{data}-{row}-{seed}")
            job = {"data": data, "row": row, "seed": seed, "model": model, "store": str(store.path)}
            plan = harness.schedule(store, args.epochs, args.batch_size, DATA[data].shrink)
            jobs.append(job | {"out": str(work / "runs" / name), "batch_size": args.batch_size} | plan)
    started = time.perf_counter()
    runs = harness.parallel(
        run_one,
        jobs,
        args.jobs,
        lambda r: (
            f"{r['data']} / {r['row']} / seed {r['seed']}: AUC {r['test']['auc']:.4f}, R@50 "
            f"{r['retrieval']['recall@50']:.3f} ({r['seconds']:.0f} + {r['eval_seconds']:.0f} s)"
        ),
    )
    seconds = round(time.perf_counter() - started, 1)
    runs = kept + [run | origin for run in runs]
    known = harness.read_results(args.json).get("diagnostics", {}) if args.merge else {}
    diagnosed = {r["data"] for r in runs} & set(MAIN_DATA)
    return {
        "machine": {"torch_threads": 1, "jobs": args.jobs},
        "seconds": seconds,
        "fresh_runs": len(runs) - len(kept),
        "runs": runs,
        "diagnostics": {d: known.get(d) or diagnose(d, store_of(DATA[d].store, cache, args.users)) for d in diagnosed},
    }


def diagnose(data: str, store: harness.Store) -> dict[str, Any]:
    """What the data gives each row before any training: the share of test positives whose item is in their own
    history (max_history 50: a repeat, which an order-blind mean of the history's item vectors scores high by
    construction), the train targets per category head, and Recall@50 of each row's freshly initialised model."""
    opened = store.open()
    test = opened.samples("test")
    positives = np.flatnonzero(np.asarray(test.label) > 0.5)
    batch = collate(opened, test, positives, 50)
    repeat = float(((batch.history == batch.target[:, None]) & batch.history_mask).any(1).float().mean())
    heads = opened.top_categories(50, DATA[data].level)
    train = opened.samples("train")
    category = np.asarray(train.target_category)[:, DATA[data].level]  # [N]
    per_head = np.array([(category == c).sum() for c in heads])  # [50]
    init = {}
    for row in ROWS_AT_INIT:
        torch.manual_seed(0)
        params = {k: v for k, v in model_params(row, DATA[data], store).items() if k != "name"}
        model = build_model_for_sizes("td_sasrec", params, opened.sizes)
        init[row] = evaluate_retrieval(model, opened, "test", NS, POOL, max_history=50)["recall@50"]
    return {
        "repeat": repeat,
        "head_coverage": float(np.isin(category, heads).mean()),
        "per_head": [int(per_head.min()), int(np.median(per_head)), int(per_head.max())],
        "train_samples": len(train),
        "init_recall50": init,
    }


def summarise(runs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(data, row) -> the runs of its seeds."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["data"], run["row"]), []).append(run)
    return {key: {"runs": group} for key, group in groups.items()}


def table(groups: dict[tuple[str, str], dict[str, Any]], datasets: list[str]) -> str:
    header = ["data", "row", "heads", "AUC", "GAUC", *[f"Recall@{n}" for n in NS], "NDCG@50"]
    header += ["ΔAUC vs mean", "ΔRecall@50 vs mean", "s/run (train + pool)"]
    rows = []
    for data in datasets:
        base = groups.get((data, "mean tower"))
        for row in ROWS:
            group = groups.get((data, row))
            if group is None:
                continue
            runs = group["runs"]
            auc = [r["test"]["auc"] for r in runs]
            recall50 = [r["retrieval"]["recall@50"] for r in runs]
            delta_auc = delta_recall = "—"
            if base is not None and row != "mean tower":
                delta_auc = f"{np.mean(auc) - np.mean([r['test']['auc'] for r in base['runs']]):+.4f}"
                delta_recall = (
                    f"{np.mean(recall50) - np.mean([r['retrieval']['recall@50'] for r in base['runs']]):+.3f}"
                )
            heads = runs[0]["heads"] or ("3" if row == "TD-SASRec, goal heads" else "1")
            rows.append(
                [
                    data,
                    row,
                    str(heads),
                    harness.mean_std(auc),
                    harness.mean_std([r["test"]["gauc"] for r in runs]),
                    *[harness.mean_std([r["retrieval"][f"recall@{n}"] for r in runs]) for n in NS],
                    harness.mean_std([r["retrieval"]["ndcg@50"] for r in runs]),
                    delta_auc,
                    delta_recall,
                    f"{np.mean([r['seconds'] for r in runs]):.0f} + {np.mean([r['eval_seconds'] for r in runs]):.0f}",
                ]
            )
    return harness.markdown_table(header, rows)


def provenance(runs: list[dict[str, Any]]) -> str:
    """Which data ran on which commit and date (runs of several invocations meet under --merge)."""
    seen: dict[tuple[str, str], list[str]] = {}
    for run in runs:
        names = seen.setdefault((run["commit"], run["date"]), [])
        if run["data"] not in names:
            names.append(run["data"])
    return "; ".join(f"{', '.join(n)} at commit {c} ({d})" for (c, d), n in sorted(seen.items()))


def render(payload: dict[str, Any]) -> str:
    config, runs = payload["config"], payload["runs"]
    groups = summarise(runs)
    present = [d for d in DATA if any(r["data"] == d for r in runs)]
    main_data = [d for d in present if d in MAIN_DATA]
    pool = runs[0]["pool"] if runs else POOL.line(POOL.size)
    text = (
        f"Command: `{payload['command']}`. Runs: {provenance(runs)}; {payload['machine']['cpu']}, torch "
        f"{payload['machine']['torch']}, one thread per run, {config['jobs']} in parallel; this command's "
        f"{payload['fresh_runs']} runs took {payload['seconds'] / 60:.0f} min. Every row: TD-SASRec family, dims 16, "
        f"max_history 50, dot scoring, BCE, Adam lr 0.003, batch {config['batch_size']}, {config['epochs']} epochs, "
        "validation AUC picks the checkpoint (MovieLens: a third of the epochs, validated 3 times per epoch). "
        f"Synthetic: {config['users']} users, mechanisms (a) + (e), 3 goals, Protocol T; Taobao: the 927-user slice, "
        "Protocol A (users >= 50 behaviours); MovieLens latest-small, ratings >= 3.5, Protocol B. "
        f"Pool: {pool}, the same for every run of a dataset; each test positive ranked against "
        f"it (ties against the positive). Test metrics, mean ± std over seeds {config['seeds']}.\n\n"
        + table(groups, main_data)
    )
    diagnostics = payload.get("diagnostics") or {}
    if diagnostics:
        header = ["data", "test positives in their history", "train samples", "train targets with a head of their own"]
        header += ["train targets per head (min / median / max)", *[f"Recall@50 at init: {r}" for r in ROWS_AT_INIT]]
        lines = [
            [
                data,
                f"{d['repeat']:.1%}",
                f"{d['train_samples']:,}",
                f"{d['head_coverage']:.1%}",
                " / ".join(f"{n:,}" for n in d["per_head"]),
                *[f"{d['init_recall50'][r]:.3f}" for r in ROWS_AT_INIT],
            ]
            for data in MAIN_DATA
            if (d := diagnostics.get(data))
        ]
        text += (
            "\n\nWhat each dataset gives before training (`diagnose`): test positives whose item is in their own "
            "history (50 behaviours), the 50 category heads' share and count of the train targets, and Recall@50 of "
            "freshly initialised models (seed 0) on the same pool.\n\n" + harness.markdown_table(header, lines)
        )
    experiment = {cell for cells in EXPERIMENTS.values() for cell in cells} & set(groups)
    if experiment:
        # each experiment's cells, and on main-grid data the main grid's mean tower and 50-head rows beside them
        reference = {(d, r) for d, _ in experiment if d in MAIN_DATA for r in ("mean tower", MAIN_ROWS[-1])}
        shown = {k: v for k, v in groups.items() if k in experiment | reference}
        text += (
            "\n\nTargeted experiments (`--experiments`); on the main grid's data its mean tower and 50-head rows are "
            "repeated for reference.\n\n" + table(shown, [d for d in DATA if any(k[0] == d for k in shown)])
        )
    return text


def parser() -> argparse.ArgumentParser:
    parser = harness.options(__doc__, "prerank", seeds=[0, 1, 2], scratch=True)
    parser.add_argument(
        "--data",
        nargs="*",
        default=None,
        choices=list(MAIN_DATA),
        help="main-grid datasets (default: all of them, or none with --experiments)",
    )
    parser.add_argument("--experiments", nargs="*", default=[], choices=list(EXPERIMENTS))
    parser.add_argument("--users", type=int, default=2000, help="synthetic users (20 labelled impressions each)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one torch thread each)")
    parser.add_argument(
        "--merge", action="store_true", help="keep the --json file's runs of the cells this invocation does not train"
    )
    return parser


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    harness.main(parser().parse_args(), "prerank", measure, render)
