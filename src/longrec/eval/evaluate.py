"""Score every sample of a split and compute AUC, GAUC (by user and by target category), logloss, per goal."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import track

from longrec.config import SearchConfig
from longrec.data.batch import Batch
from longrec.data.dataset import make_loader
from longrec.data.store import TrajectoryStore
from longrec.eval.metrics import compute_metrics
from longrec.search import search_stage

__all__ = ["evaluate", "predict"]


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    batches: Iterable[Batch],
    search: SearchConfig | None = None,
    progress: bool = False,
    total: int | None = None,
) -> dict[str, np.ndarray]:
    """Run search + `model` in eval mode over `batches`; return logits, labels, users, target categories and goals
    ([N] each)."""
    model.eval()
    parts: dict[str, list[np.ndarray]] = {"logits": [], "labels": [], "users": [], "categories": [], "goals": []}
    batches = track(
        batches, "evaluating", total=total, console=Console(stderr=True), disable=not progress, transient=True
    )
    for batch in batches:
        searched = search_stage(batch, model, search) if search is not None else batch
        parts["logits"].append(model(searched).float().numpy())
        parts["labels"].append(batch.label.numpy() if batch.label is not None else np.zeros(len(batch), np.float32))
        parts["users"].append(batch.user.numpy() if batch.user is not None else np.zeros(len(batch), np.int64))
        cat = batch.target_category
        parts["categories"].append(
            cat[:, -1].numpy() if cat is not None and cat.shape[1] else np.zeros(len(batch), np.int64)
        )
        parts["goals"].append(batch.goal.numpy() if batch.goal is not None else np.zeros(len(batch), np.int64))
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}


def evaluate(
    model: torch.nn.Module,
    store: TrajectoryStore,
    split: str,
    batch_size: int = 4096,
    max_history: int = 200,
    num_workers: int = 0,
    progress: bool = False,
    search: SearchConfig | None = None,
) -> dict[str, Any]:
    """Metrics of `model` on every sample of `split` (no dropped partial batch).

    Returns:
        {"auc", "gauc", "gauc_category", "logloss", "count", "positive_rate"}, plus "per_goal" keyed by goal name
        when the data has more than one goal.
    """
    samples = store.samples(split)
    batches = make_loader(store, split, batch_size, max_history, num_workers=num_workers)
    total = -(-len(samples) // batch_size)
    out = predict(model, batches, search=search, progress=progress, total=total)
    has_goals = store.sizes.get("num_goals", 1) > 1
    metrics = compute_metrics(
        out["labels"],
        out["logits"],
        out["users"],
        categories=out["categories"] if store.taxonomy_levels else None,
        goals=out["goals"] if has_goals else None,
    )
    if has_goals and "per_goal" in metrics:
        names = ["unknown", *map(str, store.vocab("goal").to_list())]
        metrics["per_goal"] = {names[int(g)]: v for g, v in metrics["per_goal"].items()}
    return metrics
