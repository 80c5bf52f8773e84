"""Score every sample of a split and compute AUC, GAUC (by user and by target category), logloss, per goal.

Evaluation runs where and how training ran (`train.device`, `train.precision`, `data.bucket_by_length`): the metrics
do not depend on the order of the samples, so bucketing only changes which samples share a batch (and how much padding
each batch carries); bf16 changes the logits within its rounding (tests/train/test_optimizations.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import track

from longrec.data.batch import Batch
from longrec.data.dataset import epoch_batches, make_loader
from longrec.data.device import DevicePrefetcher, autocast
from longrec.data.store import TrajectoryStore
from longrec.data.summaries import SummaryStore
from longrec.eval.metrics import compute_metrics
from longrec.models.contract import logits_of
from longrec.search import search_stage
from longrec.search.config import SearchConfig

__all__ = ["evaluate", "metrics_lines", "predict"]


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    batches: Iterable[Batch],
    search: SearchConfig | None = None,
    progress: bool = False,
    total: int | None = None,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> dict[str, np.ndarray]:
    """Run search + `model` in eval mode over `batches`; return logits, labels, users, target categories, goals and
    scenes ([N] each, on the CPU).

    Batches are moved to `device` (`DevicePrefetcher`); the forward runs under `autocast(precision, device)` and the
    logits come back as fp32."""
    model.eval()
    device = torch.device(device)
    parts: dict[str, list[np.ndarray]] = {
        "logits": [],
        "labels": [],
        "users": [],
        "categories": [],
        "goals": [],
        "scenes": [],
    }
    batches = track(
        batches, "evaluating", total=total, console=Console(stderr=True), disable=not progress, transient=True
    )
    for batch in DevicePrefetcher(batches, device):
        with autocast(precision, device):
            searched = search_stage(batch, model, search) if search is not None else batch
            logits = logits_of(model, searched)  # [B]; score_with_state on stored user states
        parts["logits"].append(logits.float().cpu().numpy())
        n = len(batch)
        parts["labels"].append(batch.label.cpu().numpy() if batch.label is not None else np.zeros(n, np.float32))
        parts["users"].append(batch.user.cpu().numpy() if batch.user is not None else np.zeros(n, np.int64))
        cat = batch.target_category
        parts["categories"].append(
            cat[:, -1].cpu().numpy() if cat is not None and cat.shape[1] else np.zeros(n, np.int64)
        )
        parts["goals"].append(batch.goal.cpu().numpy() if batch.goal is not None else np.zeros(n, np.int64))
        parts["scenes"].append(batch.scene.cpu().numpy() if batch.scene is not None else np.zeros(n, np.int64))
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
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    bucket_by_length: bool = False,
    ranks: tuple[int, int] = (0, 1),
    summaries: SummaryStore | None = None,
) -> dict[str, Any]:
    """Metrics of `model` on every sample of `split` (no dropped partial batch).

    With `summaries` (stored per-sample user states) the model scores them with `score_with_state` and reads no
    history (stage 2 of VISTA's training).

    `device` and `precision` as in `predict`; `bucket_by_length` batches samples of similar history length together
    (sorted over the whole split: less padding, same metrics up to float rounding). `ranks` = (rank r, world W) in a
    data-parallel run (a joined `torch.distributed` process group): each rank scores every W-th batch, the scores and
    labels of all ranks are gathered, and every rank computes the metrics over the whole split (never an average of
    per-rank metrics); every rank must call it.

    Returns:
        {"auc", "gauc", "gauc_category", "logloss", "count", "positive_rate"}, plus "per_goal" keyed by goal name
        when the data has more than one goal and "per_scene" keyed by scene name when it has more than one scene.
    """
    samples = store.samples(split)
    pin = torch.device(device).type == "cuda"
    rank, world = ranks
    bucket = bucket_by_length and summaries is None  # stored states have no length to bucket by
    lengths = np.minimum(samples.end, max_history) if bucket else None  # [N] collated history lengths
    plan = epoch_batches(len(samples), batch_size, False, 0, 0, lengths, bucket_batches=0)[rank::world]
    batches = make_loader(
        store,
        split,
        batch_size,
        max_history,
        num_workers=num_workers,
        pin_memory=pin,
        batches=plan,
        summaries=summaries,
    )
    out = predict(model, batches, search=search, progress=progress, total=len(plan), device=device, precision=precision)
    if world > 1:
        parts: list[dict[str, np.ndarray]] = [{} for _ in range(world)]
        dist.all_gather_object(parts, out)
        out = {k: np.concatenate([part[k] for part in parts]) for k in out}
    has_goals = store.sizes.get("num_goals", 1) > 1
    has_scenes = store.sizes.get("num_scenes", 0) > 2  # id 0 (unknown) plus at least two scenes
    metrics = compute_metrics(
        out["labels"],
        out["logits"],
        out["users"],
        categories=out["categories"] if store.taxonomy_levels else None,
        goals=out["goals"] if has_goals else None,
        scenes=out["scenes"] if has_scenes else None,
    )
    if has_goals and "per_goal" in metrics:
        names = ["unknown", *map(str, store.vocab("goal").to_list())]
        metrics["per_goal"] = {names[int(g)]: v for g, v in metrics["per_goal"].items()}
    if has_scenes and "per_scene" in metrics:
        names = ["unknown", *map(str, store.vocab("scene").to_list())]
        metrics["per_scene"] = {names[int(z)]: v for z, v in metrics["per_scene"].items()}
    return metrics


METRIC_COLUMNS = (("auc", "AUC"), ("gauc", "GAUC (user)"), ("gauc_category", "GAUC (category)"), ("logloss", "logloss"))


def metrics_lines(rows: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """An aligned text table of metrics, one row per name (e.g. {"valid": {...}, "test": {...}}), for logs.

    Undefined values (NaN or missing) show as "-"; `count` is printed with thousands separators.
    """
    header = ["", *(title for _, title in METRIC_COLUMNS), "samples"]
    table = [header]
    for name, m in rows.items():
        cells = [name]
        for key, _ in METRIC_COLUMNS:
            value = m.get(key)
            cells.append(f"{value:.4f}" if isinstance(value, int | float) and math.isfinite(value) else "-")
        cells.append(f"{int(m['count']):,}" if "count" in m else "-")
        table.append(cells)
    widths = [max(len(row[j]) for row in table) for j in range(len(header))]
    return [
        "  ".join(
            cell.ljust(w) if j == 0 else cell.rjust(w) for j, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in table
    ]
