"""`python -m longrec.cf`: fit and evaluate one collaborative-filtering model on a MovieLens file or a prepared store.

    python -m longrec.cf --movielens ../shared/data/movielens_latest_small/ratings.csv.gz --model ease --out cf-ease
    python -m longrec.cf --store data/synth --model sdiff --set components=100 --set shaping=0 --out cf-iso

The user–item matrix is split per user 80/10/10 with `--seed`; the model is fitted on train and Recall@20 / NDCG@20
on valid and test are printed as JSON and written to OUT/cf.json (OUT: a new or empty folder, or a previous output of
this command, replaced only with --force). `--set KEY=VALUE` sets an `SDiffConfig` field for sdiff, `l2` for ease and
`neighbours` for itemknn. This is a module entry point rather than a `longrec` subcommand: CF models take a matrix,
not a store's samples and a run directory, so they share nothing with `longrec train` but the data readers.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from longrec.cf.baselines import ease, item_knn, popularity
from longrec.cf.data import evaluate_topn, movielens_matrix, split_interactions, store_matrix
from longrec.cf.sdiff import SDiffConfig, fit_sdiff, sdiff_scores
from longrec.files import OutputKind, dumps_json, output_directory, write_json

__all__ = ["CF_REPORT", "main", "run_cf"]

CF_REPORT = OutputKind("CF report", "python -m longrec.cf", "cf.json", ("cf.json",))
MODELS = ("sdiff", "ease", "itemknn", "popularity")


def _value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def run_cf(x: np.ndarray, model: str, settings: dict[str, Any], seed: int = 0, k: int = 20) -> dict[str, Any]:
    """Split `x` [U, I], fit `model` with `settings` on train, and return its valid/test Recall@k and NDCG@k."""
    if model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}. Got {model!r}.")
    split = split_interactions(x, seed)
    started = time.perf_counter()
    allowed = {"sdiff": {f.name for f in dataclasses.fields(SDiffConfig)}, "ease": {"l2"}, "itemknn": {"neighbours"}}
    unknown = sorted(set(settings) - allowed.get(model, set()))
    if unknown:
        raise ValueError(
            f"--set {unknown[0]}: not a setting of {model}; expected one of {sorted(allowed.get(model, ()))}."
        )
    if model == "sdiff":
        config = SDiffConfig(**({"seed": seed} | settings))
        scores = sdiff_scores(fit_sdiff(split.train, config), split.train)
        used: dict[str, Any] = dataclasses.asdict(config)
    elif model == "ease":
        used = {"l2": float(settings.get("l2", 200.0))}
        scores = ease(split.train, used["l2"])
    elif model == "itemknn":
        used = {"neighbours": int(settings.get("neighbours", 200))}
        scores = item_knn(split.train, used["neighbours"])
    else:
        used, scores = {}, popularity(split.train)
    return {
        "model": model,
        "settings": used,
        "seed": seed,
        "users": int(x.shape[0]),
        "items": int(x.shape[1]),
        "interactions": int(x.sum()),
        "seconds": round(time.perf_counter() - started, 2),
        "valid": evaluate_topn(scores, split, "valid", k),
        "test": evaluate_topn(scores, split, "test", k),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv`, run, print the report; errors the user can fix print one line and exit 2."""
    parser = argparse.ArgumentParser(prog="python -m longrec.cf", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--movielens", type=Path, help="a MovieLens ratings file (rating >= --min-rating counts)")
    source.add_argument("--store", type=Path, help="a prepared store (every stored behaviour counts)")
    parser.add_argument("--model", choices=MODELS, default="sdiff")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a model setting")
    parser.add_argument("--seed", type=int, default=0, help="the split's and the model's seed (default 0)")
    parser.add_argument("--min-rating", type=float, default=4.0, help="MovieLens: the implicit-feedback threshold")
    parser.add_argument("--min-item-count", type=int, default=5, help="drop items with fewer users (default 5)")
    parser.add_argument("--out", type=Path, default=None, help="folder for cf.json (new, empty, or a previous one)")
    parser.add_argument("--force", action="store_true", help="replace OUT if it holds a previous CF report")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        settings = {}
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--set {item!r}: expected KEY=VALUE.")
            settings[key.strip()] = _value(value.strip())
        if args.movielens is not None:
            x = movielens_matrix(args.movielens, args.min_rating, args.min_item_count)
        else:
            x = store_matrix(args.store, args.min_item_count)
        report = run_cf(x, args.model, settings, args.seed)
        if args.out is not None:
            with output_directory(args.out, CF_REPORT, args.force) as tmp:
                write_json(tmp / "cf.json", report)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(dumps_json(report))
    return 0
