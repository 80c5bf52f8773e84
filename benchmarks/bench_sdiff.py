"""S-Diff against its isotropic ablation, item-domain diffusion and the simple baselines on MovieLens (top-N).

Question: does S-Diff's frequency-shaped spectral diffusion (`longrec.cf.sdiff`) rank held-out items better than
the same model with isotropic noise, than diffusion in the item domain (DiffRec-style), and than EASE / ItemKNN /
popularity fitted in the same run?

Data: the MovieLens slice beside the repository (`movielens_latest_small/ratings.csv.gz`), a rating >= 4 is an
interaction, items with fewer than 5 such users dropped (`longrec.cf.movielens_matrix`). Protocol: per seed, a
per-user random 80/10/10 split (`split_interactions`); every model is fitted on train; its hyper-parameters are the
grid point with the best validation Recall@20; test Recall@20 / NDCG@20 rank every item not in train or valid.
Grids: S-Diff (shaping γ = 1) and isotropic (γ = 0): components k ∈ {100, 400} × inference step s ∈ {0, 5};
item-domain diffusion: s ∈ {0, 5}; every diffusion model: T = 20, β = linspace(0.001, 0.1), hidden 512, condition
dropout 0.5, Adam lr 1e-3, 50 epochs, batch 128. EASE: λ ∈ {50, 200, 500, 1000}; ItemKNN: neighbours ∈ {50, 200}.
One torch thread; seeds 0, 1, 2 (split and initialisation); mean ± std over seeds.

Run:    python benchmarks/bench_sdiff.py --update-readme
Quick:  python benchmarks/bench_sdiff.py --seeds 0 --json /tmp/sdiff.json
Re-render the README section from the JSON alone:
        python benchmarks/bench_sdiff.py --from-json benchmarks/results/sdiff.json --update-readme
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

import _harness as harness
import numpy as np

from longrec.cf import (
    SDiffConfig,
    ease,
    evaluate_topn,
    fit_sdiff,
    item_knn,
    movielens_matrix,
    popularity,
    sdiff_scores,
    split_interactions,
)

MODELS = ("popularity", "ItemKNN", "EASE", "item-domain diffusion", "isotropic spectral diffusion", "S-Diff")
BASE = SDiffConfig()  # the defaults: T = 20, β = linspace(0.001, 0.1), hidden 512, 50 epochs


def grid(name: str, seed: int) -> list[tuple[dict[str, Any], Callable[[np.ndarray], np.ndarray]]]:
    """(settings, scores-of-train) for every grid point of a model."""
    if name == "popularity":
        return [({}, popularity)]
    if name == "ItemKNN":
        return [({"neighbours": n}, lambda x, n=n: item_knn(x, n)) for n in (50, 200)]
    if name == "EASE":
        return [({"l2": lam}, lambda x, lam=lam: ease(x, lam)) for lam in (50.0, 200.0, 500.0, 1000.0)]
    points = []
    if name == "item-domain diffusion":
        configs = [dataclasses.replace(BASE, domain="items", shaping=0.0, inference_step=s, seed=seed) for s in (0, 5)]
    else:
        shaping = 1.0 if name == "S-Diff" else 0.0
        configs = [
            dataclasses.replace(BASE, shaping=shaping, components=k, inference_step=s, seed=seed)
            for k in (100, 400)
            for s in (0, 5)
        ]
    for config in configs:
        settings = {"components": config.components, "inference_step": config.inference_step}
        if config.domain == "items":
            settings = {"inference_step": config.inference_step}
        points.append((settings, lambda x, c=config: sdiff_scores(fit_sdiff(x, c), x)))
    return points


def measure(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    x = movielens_matrix(harness.MOVIELENS)
    runs = []
    for seed in args.seeds:
        split = split_interactions(x, seed)
        for name in args.models:
            best: dict[str, Any] | None = None
            for settings, fit in grid(name, seed):
                tick = time.perf_counter()
                scores = fit(split.train)
                seconds = time.perf_counter() - tick
                valid = evaluate_topn(scores, split, "valid")
                if best is None or valid["recall@20"] > best["valid_recall"]:
                    test = evaluate_topn(scores, split, "test")
                    best = {"model": name, "seed": seed, "settings": settings, "seconds": round(seconds, 2),
                            "valid_recall": valid["recall@20"], "recall": test["recall@20"],
                            "ndcg": test["ndcg@20"]}  # fmt: skip
            assert best is not None
            runs.append(best)
            print(f"seed {seed} {name}: {best}", flush=True)
    return {
        "machine": {"torch_threads": 1},
        "seconds": round(time.perf_counter() - started, 1),
        "shape": list(x.shape),
        "interactions": int(x.sum()),
        "runs": runs,
    }


def render(payload: dict[str, Any]) -> str:
    runs = payload["runs"]
    header = ["model", "test Recall@20", "test NDCG@20", "valid Recall@20", "chosen (per seed)", "fit s"]
    rows = []
    for name in MODELS:
        group = sorted((r for r in runs if r["model"] == name), key=lambda r: r["seed"])
        if not group:
            continue
        chosen = "; ".join(", ".join(f"{k} {v:g}" for k, v in sorted(r["settings"].items())) or "—" for r in group)
        rows.append([
            name,
            harness.mean_std([r["recall"] for r in group]),
            harness.mean_std([r["ndcg"] for r in group]),
            harness.mean_std([r["valid_recall"] for r in group]),
            chosen,
            f"{np.mean([r['seconds'] for r in group]):.1f}",
        ])  # fmt: skip
    users, items = payload["shape"]
    seeds = sorted({r["seed"] for r in runs})
    return (
        f"Command: `{payload['command']}`. {harness.machine_line(payload['machine'])} {harness.load_line(payload)} "
        f"One thread; {payload['seconds'] / 60:.1f} min in all. MovieLens slice, ratings >= 4, 5-core items: "
        f"{users:,} users x {items:,} items, {payload['interactions']:,} interactions; per-user 80/10/10 split, "
        f"grid point chosen on validation Recall@20 (the script's docstring lists the grids), 'fit s' = the chosen "
        f"point's fit + scoring time. Mean ± std over seeds {seeds}.\n\n" + harness.markdown_table(header, rows)
    )


def parser() -> argparse.ArgumentParser:
    parser = harness.options(__doc__, "sdiff", seeds=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    return parser


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    harness.torch.set_num_threads(1)
    harness.main(parser().parse_args(), "sdiff", measure, render)
