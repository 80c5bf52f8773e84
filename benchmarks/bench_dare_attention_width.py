"""DARE's attention width: AUC and search time against d_a, with the representation width fixed.

DARE (Feng et al., ICLR 2025) decouples the attention embeddings (width d_a, what soft search and the attention
scores read) from the representation embeddings (width d_r, what is pooled), and claims that d_a can shrink ("50%
faster search without significant performance impact"). Question: on our data, what does each halving of d_a cost in
AUC, and what does it save in search time?

Grid: DARE with `attention_dim` d_a ∈ {64, 32, 16, 8} and `dim` d_r = 64 (the paper's middle width, and d_a = d_r is
plain DARE), each trained under DARE's Protocol A as `bench_dare_ablation.py` trains it: history 200, soft search to
K = 20, auxiliary loss, Adam lr 0.01, L2 1e-6, batch 256, 2 epochs, init N(0, 0.05²), validation AUC picks the
checkpoint (about 4 validations per epoch), on
- the Taobao slice (927 users, page views, Protocol A with the user filter lowered to 50 behaviours), and
- synthetic data with mechanism (f) planted (relevance by category, effect by hidden item quality: the attention and
  representation optima disagree), Protocol T on labelled impressions;
test AUC, GAUC and logloss, mean ± std over seeds.

Search time per request at a fixed history length (`--latency-length`, default 1,000): `search_stage` with soft search
(the attention tables' lookup, the scores, top-K and the gather of the K kept behaviours, no gradient) on the seed-0
model of each width, for a batch of `--latency-batch` requests with full histories of random items over the model's
vocabulary, timed in one process with the widths alternating call by call (so load from other processes hits all
widths alike), median of `--repeats` rounds; the ratio to d_a = d_r = 64 is measured, not assumed.

Run:       python benchmarks/bench_dare_attention_width.py --update-readme
Quick:     python benchmarks/bench_dare_attention_width.py --seeds 0 --datasets synthetic --json /tmp/w.json
Re-render: python benchmarks/bench_dare_attention_width.py --from-json benchmarks/results/dare_attention_width.json \
           --update-readme
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import _harness as harness
import numpy as np
import torch

from longrec.run import load_run
from longrec.search import search_stage
from longrec.search.config import SearchConfig
from longrec.train.step import reuse_freed_memory

WIDTHS = (64, 32, 16, 8)
logger = logging.getLogger("bench_dare_attention_width")


def run_one(d_a: int, store: harness.Store, args: argparse.Namespace, seed: int, out: Path) -> dict[str, Any]:
    """Train DARE with attention width d_a under Protocol A into `out`; its final metrics and seconds."""
    steps = -(-len(store.open().samples("train")) // args.batch_size)
    values = {
        "model.name": "dare",
        "model.dim": args.representation_dim,
        "model.attention_dim": d_a,
        "model.aux_loss": True,
        "search.method": "soft",
        "search.k": 20,
        "data.path": str(store.path),
        "data.max_history": 200,
        "train.lr": 0.01,
        "train.l2": 1e-6,
        "train.batch_size": args.batch_size,
        "train.epochs": args.epochs,
        "train.seed": seed,
        "train.metric": "auc",
        "train.progress": False,
        "train.eval_every": max(1, steps // 4),  # about 4 validations per epoch
    }
    return harness.train_run(values, out)


@torch.no_grad()
def search_times(run_dirs: dict[int, Path], args: argparse.Namespace) -> dict[int, float]:
    """Milliseconds per batch of `search_stage` (soft, K = 20) for each width's model, widths alternating call by
    call after one warm-up call each; the median over `args.repeats` rounds."""
    models = {d_a: load_run(path).model for d_a, path in run_dirs.items()}
    sizes = next(iter(models.values())).config
    levels = max(sizes.taxonomy_levels, 1)
    batch = harness.request_batch(
        args.latency_batch, args.latency_length, sizes.num_items, max(sizes.num_categories, 2)
    )
    if sizes.num_categories == 0 or levels != 1:  # the slice and the synthetic data differ: match the model's input
        category = batch.history_category.expand(-1, -1, levels) if sizes.num_categories else None
        batch = batch.replace(
            history_category=category,
            target_category=batch.target_category.expand(-1, levels) if category is not None else None,
        )
    config = SearchConfig(method="soft", k=20)
    seconds: dict[int, list[float]] = {d_a: [] for d_a in models}
    for model in models.values():  # warm-up
        search_stage(batch, model, config)
    for _ in range(args.repeats):
        for d_a, model in models.items():
            started = time.perf_counter()
            search_stage(batch, model, config)
            seconds[d_a].append(time.perf_counter() - started)
    return {d_a: 1e3 * statistics.median(values) for d_a, values in seconds.items()}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("longrec").setLevel(logging.WARNING)
    allocator = "reuse_freed_memory()" if reuse_freed_memory() else "glibc default"
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-dare-width-"))
    stores = harness.Stores(args.cache)
    payload: dict[str, Any] = {"allocator": allocator}
    for dataset in args.datasets:
        if dataset == "taobao":
            store = stores.taobao(args.min_behaviours)
        else:
            store = stores.synthetic(num_users=args.synthetic_users, mechanisms=("f",), weight_f=3.0)
        runs: dict[str, list[dict[str, Any]]] = {}
        first: dict[int, Path] = {}
        for seed in args.seeds:
            for d_a in args.widths:  # widths alternate within a seed: slow phases of the machine hit all of them
                out = work / "runs" / dataset / f"d_a{d_a}-{seed}"
                result = run_one(d_a, store, args, seed, out)
                logger.info(
                    "%s d_a=%d seed %d: AUC %.4f (%.0f s)", dataset, d_a, seed, result["test"]["auc"], result["seconds"]
                )
                runs.setdefault(str(d_a), []).append(
                    {"seed": seed, "seconds": result["seconds"], "test": {k: result["test"][k] for k in METRICS}}
                )
                first.setdefault(d_a, out)
        latency = search_times(first, args)
        payload[dataset] = {
            "counts": store.info["counts"],
            "runs": runs,
            "search_ms": {str(d_a): ms for d_a, ms in latency.items()},
        }
    return payload


METRICS = ("auc", "gauc", "logloss")


def _mean_std(values: list[float]) -> str:
    array = np.array(values, dtype=np.float64)
    return f"{array.mean():.4f} ± {array.std():.4f}"


def render_dataset(dataset: str, part: dict[str, Any], config: dict[str, Any]) -> str:
    widths = sorted((int(d) for d in part["runs"]), reverse=True)
    full = str(config["representation_dim"])
    base_auc = np.mean([r["test"]["auc"] for r in part["runs"][full]]) if full in part["runs"] else None
    base_ms = part["search_ms"].get(full)
    rows = []
    for d_a in widths:
        runs, ms = part["runs"][str(d_a)], part["search_ms"][str(d_a)]
        auc = [r["test"]["auc"] for r in runs]
        wider = part["search_ms"].get(str(2 * d_a))
        rows.append(
            [
                str(d_a),
                _mean_std(auc),
                _mean_std([r["test"]["gauc"] for r in runs]),
                _mean_std([r["test"]["logloss"] for r in runs]),
                "—" if base_auc is None or str(d_a) == full else f"{np.mean(auc) - base_auc:+.4f}",
                f"{1e3 * ms / config['latency_batch']:.0f}",
                "—" if base_ms is None else f"{ms / base_ms:.2f}",
                "—" if wider is None else f"{ms / wider:.2f}",
                f"{np.mean([r['seconds'] for r in runs]):.0f}",
            ]
        )
    header = [
        "d_a",
        "test AUC",
        "test GAUC (user)",
        "test logloss",
        f"ΔAUC vs d_a = {full}",
        "search per request (µs)",
        f"search vs d_a = {full}",
        "search vs 2·d_a",
        "s/run",
    ]
    counts = part["counts"]["samples"]
    return (
        f"**{dataset}** ({counts['train']:,} train / {counts['test']:,} test samples; mean ± std over seeds "
        f"{config['seeds']})\n\n" + harness.markdown_table(header, rows)
    )


def render(payload: dict[str, Any]) -> str:
    config = payload["config"]
    sections = [render_dataset(dataset, payload[dataset], config) for dataset in config["datasets"]]
    return (
        f"Command: `{payload['command']}`. {harness.machine_line(payload['machine'])} {harness.load_line(payload)} "
        f"DARE, d_r = {config['representation_dim']}, d_a = attention width per field (A = 3·d_a: item, category, "
        f"time), Protocol A: history 200, soft search K = 20, aux loss, Adam lr 0.01, L2 1e-6, batch "
        f"{config['batch_size']}, {config['epochs']} epochs. Taobao: the 927-user slice, user filter "
        f"{config['min_behaviours']}; synthetic: {config['synthetic_users']} users with only mechanism (f) planted, "
        "Protocol T. Search per request: `search_stage` (soft, K = 20: attention lookup, scores, top-K, gather), no "
        f"gradient, batches of {config['latency_batch']} requests with full histories of L = "
        f"{config['latency_length']:,}, the seed-0 model of each width, widths alternating call by call, median of "
        f"{config['repeats']} rounds; allocator: {payload['allocator']}.\n\n" + "\n\n".join(sections)
    )


def parser() -> argparse.ArgumentParser:
    parser = harness.options(__doc__, "dare_attention_width", seeds=[0, 1, 2], threads=2, scratch=True)
    parser.add_argument("--datasets", nargs="+", default=["taobao", "synthetic"], choices=["taobao", "synthetic"])
    parser.add_argument("--widths", nargs="+", type=int, default=list(WIDTHS), help="attention widths d_a")
    parser.add_argument("--representation-dim", type=int, default=64, help="d_r, fixed")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256, help="paper: 2048 (on ~100x more samples)")
    parser.add_argument("--min-behaviours", type=int, default=50, help="Protocol A user filter on the slice")
    parser.add_argument("--synthetic-users", type=int, default=3000)
    parser.add_argument("--latency-length", type=int, default=1000, help="history length L of the search timing")
    parser.add_argument("--latency-batch", type=int, default=32, help="requests per timed batch")
    parser.add_argument("--repeats", type=int, default=30, help="timed rounds (each times every width once)")
    return parser


if __name__ == "__main__":
    harness.main(parser().parse_args(), "dare-attention-width", measure, render)
