"""Stacked self-attention before Stacked TIN's target attention: does depth (N = 1..4 blocks) help on real data and on
the planted pair (d), and where does it overfit (the train/valid AUC gap)?

The paper speaks of stacking self-attention modules for ranking and reports that 4 layers overfit on Amazon; longrec's
earlier depth study (bench_tencent_ablation.py, study stacked) stacked target attention only. Here every row is the
same Stacked TIN (L_s = 2 target-attention layers, the default) with N bidirectional pre-LN Transformer blocks over
the searched behaviours before its target attention (`self_attention_blocks = N`, 2 attention heads; N = 0 is the
model without them), behind soft search (K = 20 of max_history 100: the model's first-layer attention picks the 20
behaviours the blocks read, the two-stage setting; it also keeps the blocks' L² cost at K²).

Measurement, per run: test AUC; the best checkpoint's (validation AUC picks it) AUC on a fixed sample of the train
split (4,096 samples drawn once per dataset, seed 0) and on the validation split, and their gap; the same at the end
of training (the last step's weights, `harness.newest_run`), where overfitting has had every epoch to show. A gap that
grows with N is depth memorising the training users; a test AUC that falls with N is depth that does not pay.

Data: the Taobao slice (Protocol A, users >= 50 behaviours), MovieLens latest-small (ratings >= 3.5, Protocol B) and
synthetic with mechanisms (a) + (d) (2000 users, Protocol T on the labelled impressions, 3 goals). Every run: dims 16,
temporal both, head [64, 32], Adam lr 0.003, batch 512, 3 epochs (MovieLens: 1 epoch validated 3 times, about the
others' number of steps), one thread per run, --jobs in parallel, seeds 0, 1, 2.

Run:    python benchmarks/bench_stacked_depth.py --update-readme
Quick:  python benchmarks/bench_stacked_depth.py --data taobao --depths 0 2 --seeds 0 --json /tmp/depth.json
Re-render the README section from the JSON alone:
        python benchmarks/bench_stacked_depth.py --from-json benchmarks/results/stacked_depth.json --update-readme
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import _harness as harness
import numpy as np

from longrec.data.dataset import collate
from longrec.eval.evaluate import predict
from longrec.eval.metrics import auc
from longrec.run import Run, load_run

GOALS = ("click", "cart", "buy")
DATA = ("taobao", "movielens", "synthetic")
MODEL = {"name": "stacked_tin", "dim": 16, "temporal": "both", "head_hidden": [64, 32], "num_layers": 2}
TRAIN_SAMPLE = 4096


def store_of(data: str, cache: harness.Stores, users: int) -> harness.Store:
    if data == "taobao":
        return cache.taobao(50)
    if data == "movielens":
        return cache.movielens()
    return cache.synthetic(num_users=users, mechanisms=("a", "d"), goals=GOALS)


def sample_auc(run: Run, split: str, index: np.ndarray) -> float:
    """AUC of the run's model (search included) on samples `index` of `split`."""
    samples = run.store.samples(split)
    batches = [
        collate(run.store, samples, index[i : i + 1024], run.config.data.max_history)
        for i in range(0, len(index), 1024)
    ]
    out = predict(run.model, batches, search=run.config.search)
    return auc(out["labels"], out["logits"])


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train one (data, depth, seed); its test AUC, and train vs valid AUC at the best checkpoint and at the end."""
    logging.getLogger("longrec").setLevel(logging.WARNING)
    values = {f"model.{k}": v for k, v in MODEL.items()} | {
        "model.self_attention_blocks": job["depth"],
        "model.self_attention_heads": 2,
        "search.method": "soft",
        "search.k": 20,
    }
    values |= harness.run_values(job["store"], job["seed"], job["batch_size"], job["epochs"], 100, job["eval_every"])
    result = harness.train_run(values, job["out"])
    index = np.asarray(job["train_index"])
    valid = np.arange(len(load_run(job["out"]).store.samples("valid")))
    best, last = load_run(job["out"]), harness.newest_run(Path(job["out"]))
    return {
        "data": job["data"],
        "depth": job["depth"],
        "seed": job["seed"],
        "seconds": result["seconds"],
        "test_auc": result["test"]["auc"],
        "best": {"train_auc": sample_auc(best, "train", index), "valid_auc": result["valid"]["auc"]},
        "last": {"train_auc": sample_auc(last, "train", index), "valid_auc": sample_auc(last, "valid", valid)},
        "best_step": result["best_step"],
        "steps": last.step,
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("longrec").setLevel(logging.WARNING)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-depth-"))
    cache = harness.Stores(args.cache)
    jobs = []
    for data in args.data:
        store = store_of(data, cache, args.users)
        n = len(store.open().samples("train"))
        index = np.sort(np.random.default_rng(0).choice(n, size=min(TRAIN_SAMPLE, n), replace=False))
        for depth in args.depths:
            for seed in args.seeds:
                name = re.sub(r"[^\w.-]+", "", f"{data}-N{depth}-{seed}")
                job = {
                    "data": data,
                    "depth": depth,
                    "seed": seed,
                    "store": str(store.path),
                    "batch_size": args.batch_size,
                }
                job |= {"out": str(work / "runs" / name), "train_index": index.tolist()}
                jobs.append(
                    job | harness.schedule(store, args.epochs, args.batch_size, 3 if data == "movielens" else 1)
                )
    started = time.perf_counter()
    runs = harness.parallel(
        run_one,
        jobs,
        args.jobs,
        lambda r: (
            f"{r['data']} N = {r['depth']} seed {r['seed']}: test AUC {r['test_auc']:.4f}, gap "
            f"{r['best']['train_auc'] - r['best']['valid_auc']:+.4f} ({r['seconds']:.0f} s)"
        ),
    )
    return {"machine": {"torch_threads": 1, "jobs": args.jobs}, "seconds": round(time.perf_counter() - started, 1),
            "runs": runs}  # fmt: skip


def render(payload: dict[str, Any]) -> str:
    config, runs = payload["config"], payload["runs"]
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["data"], run["depth"]), []).append(run)
    header = ["data", "N blocks", "test AUC", "Δ test vs N = 0", "train AUC (best)", "valid AUC (best)", "gap (best)"]
    header += ["train AUC (end)", "valid AUC (end)", "gap (end)", "best step / steps", "s/run"]
    rows = []
    for (data, depth), group in sorted(groups.items(), key=lambda kv: (DATA.index(kv[0][0]), kv[0][1])):
        base = groups.get((data, 0))
        test = [r["test_auc"] for r in group]
        delta = "—" if base is None or depth == 0 else f"{np.mean(test) - np.mean([r['test_auc'] for r in base]):+.4f}"
        cells = [data, str(depth), harness.mean_std(test), delta]
        for at in ("best", "last"):
            train = [r[at]["train_auc"] for r in group]
            valid = [r[at]["valid_auc"] for r in group]
            gap = [t - v for t, v in zip(train, valid, strict=True)]
            cells += [harness.mean_std(train), harness.mean_std(valid), harness.mean_std(gap)]
        best_step = np.mean([r["best_step"] for r in group])
        cells += [f"{best_step:.0f} / {np.mean([r['steps'] for r in group]):.0f}"]
        cells += [f"{np.mean([r['seconds'] for r in group]):.0f}"]
        rows.append(cells)
    return (
        f"Command: `{payload['command']}`. {harness.machine_line(payload['machine'])} One thread per run, "
        f"{config['jobs']} in parallel; {len(runs)} runs in {payload['seconds'] / 60:.0f} min. Stacked TIN, L_s = 2, "
        f"dims 16, temporal both, head [64, 32], N bidirectional self-attention blocks (2 heads) over the K = 20 "
        f"behaviours soft search keeps of max_history 100; Adam lr 0.003, batch {config['batch_size']}, "
        f"{config['epochs']} epochs (MovieLens: {max(1, config['epochs'] // 3)}, validated 3 times), validation AUC "
        "picks the checkpoint. Taobao: the 927-user slice, Protocol A (users >= 50 behaviours); MovieLens "
        f"latest-small, ratings >= 3.5, Protocol B; synthetic: {config['users']} users, mechanisms (a) + (d), Protocol "
        f"T. Train AUC on {TRAIN_SAMPLE:,} train samples drawn once per dataset (seed 0); 'best' = the selected "
        "checkpoint, 'end' = the last step's weights; gap = train AUC - valid AUC. Mean ± std over seeds "
        f"{config['seeds']}.\n\n" + harness.markdown_table(header, rows)
    )


def parser() -> argparse.ArgumentParser:
    parser = harness.options(__doc__, "stacked_depth", seeds=[0, 1, 2], scratch=True)
    parser.add_argument("--data", nargs="+", default=list(DATA), choices=list(DATA))
    parser.add_argument("--depths", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="self-attention blocks N")
    parser.add_argument("--users", type=int, default=2000, help="synthetic users (20 labelled impressions each)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one torch thread each)")
    return parser


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    harness.main(parser().parse_args(), "stacked-depth", measure, render)
