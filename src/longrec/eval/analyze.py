"""What a person wants to look at after training: where the model attends, per goal, and what search kept.

`analyze(model, store, out, ...)` scores a slice of a split and writes PNGs (via `longrec.eval.plots`) plus
`analysis.json` with the numbers behind every plot (`longrec.run.analyze_run` does it for a run directory):

- attention weight by relative position and by time gap to the target, one curve per goal (for TDPE models keyed
  by the goal these are the learned per-goal decay curves), and, for a model whose TDPE tables are keyed by another
  target-side field (`KeyedTemporal`: the target's category, the scene, an extra column), one curve per value of that
  key for its most frequent values (the learned per-category decay curves);
- attention by field group, for models that name their attention modules (`group_names`, one per row of
  `attention_weights(batch) -> [B, G, L]`: DSI-TIN), and what drives each module's attention field by field, for
  models with `field_scores(batch)` (DSI-TIN; see `field_shares`);
- which behaviours each searcher retrieved for one sample, against the hierarchical match depth to its target;
- the validation curve from `metrics.jsonl`.

Attention is read on the *unsearched* history (softmax over all L behaviours), so models trained behind top-K
search (TWIN, DARE) show the full attention their search ranks by. Shapes: B batch, L history, G field groups.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from longrec.data.batch import Batch
from longrec.data.dataset import make_loader
from longrec.data.store import TrajectoryStore
from longrec.files import write_json
from longrec.ingest.schema import taxonomy_columns
from longrec.models.contract import AttentionWeights, FieldAttribution, KeyedTemporal
from longrec.models.tdpe import TDPEKey
from longrec.models.temporal import time_gap_bucket
from longrec.search import SEARCHERS, SearchEmbedder
from longrec.search.config import SearchConfig
from longrec.search.hierarchical import match_depth

__all__ = ["TOP_KEYS", "analyze", "attention_profile", "field_shares", "key_names", "retrieval_example"]

logger = logging.getLogger(__name__)

NUM_GAP_BUCKETS = 24
MAX_POSITION = 200
TOP_KEYS = 8  # per-key curves for this many of the key's most frequent values (a readable plot)


class _Curves:
    """Mean attention weight per (group, relative position) and per (group, time-gap bucket) over real behaviours, and
    per group the attention-weighted mean time gap in days; a row of the batch belongs to one group (its goal, its
    category, ...), or to none (group -1: left out)."""

    def __init__(self, num_groups: int) -> None:
        self.pos_sum = np.zeros((num_groups, MAX_POSITION + 1))
        self.pos_n = np.zeros_like(self.pos_sum)
        self.gap_sum = np.zeros((num_groups, NUM_GAP_BUCKETS))
        self.gap_n = np.zeros_like(self.gap_sum)
        self.weighted_gap = np.zeros(num_groups)  # Σ over rows of the row's attention-weighted mean gap (days)
        self.rows_with_history = np.zeros(num_groups)

    def add(self, group: np.ndarray, w: np.ndarray, batch: Batch) -> None:
        """group [B] (-1: skip the row), w [B, L] attention weights of `batch`."""
        assert batch.history_position is not None and batch.history_time_delta is not None
        mask = batch.history_mask.numpy() & (group[:, None] >= 0)  # [B, L]
        group_l = np.broadcast_to(group[:, None], mask.shape)[mask]  # [R]
        weights = w[mask]  # [R]
        pos = np.minimum(batch.history_position.numpy()[mask], MAX_POSITION)  # [R]
        gap = time_gap_bucket(batch.history_time_delta, NUM_GAP_BUCKETS).numpy()[mask]  # [R]
        np.add.at(self.pos_sum, (group_l, pos), weights)
        np.add.at(self.pos_n, (group_l, pos), 1)
        np.add.at(self.gap_sum, (group_l, gap), weights)
        np.add.at(self.gap_n, (group_l, gap), 1)
        w_real = w * mask  # [B, L]
        total = w_real.sum(1)  # [B]
        has = total > 0
        row_gap = (w_real * batch.history_time_delta.numpy()).sum(1)[has] / total[has] / 86_400  # [B'] days
        np.add.at(self.weighted_gap, group[has], row_gap)
        np.add.at(self.rows_with_history, group[has], 1)

    def result(self) -> dict[str, Any]:
        with np.errstate(invalid="ignore", divide="ignore"):
            return {
                "position_mean": (self.pos_sum / self.pos_n).tolist(),
                "position_count": self.pos_n.tolist(),
                "gap_mean": (self.gap_sum / self.gap_n).tolist(),
                "gap_count": self.gap_n.tolist(),
                "mean_gap_days": (self.weighted_gap / self.rows_with_history).tolist(),
            }


def _top_values(key: TDPEKey, batches: list[Batch], top: int) -> list[int]:
    """The key's `top` most frequent values over the batches' rows (ties: the smaller id first)."""
    values = [ids.numpy() for batch in batches if (ids := key.ids(batch)) is not None]
    found, counts = np.unique(np.concatenate(values) if values else np.zeros(0, np.int64), return_counts=True)
    order = np.lexsort((found, -counts))[:top]  # most frequent first
    return [int(v) for v in found[order]]


@torch.no_grad()
def attention_profile(
    model: torch.nn.Module, batches: list[Batch], num_goals: int, top_keys: int = TOP_KEYS
) -> dict[str, Any] | None:
    """Mean attention weight per (goal, relative position) and per (goal, time-gap bucket) over real behaviours, and
    per goal the attention-weighted mean time gap in days, Σ_i α_i Δt_i / Σ_i α_i averaged over samples with a
    history ("mean_gap_days": one number per goal that moves the way the learned decay does — smaller for a goal
    whose attention decays faster).

    For a model whose TDPE tables are keyed by a target-side field other than the goal (`KeyedTemporal`, e.g. the
    target's category), "by_key" holds the same numbers per value of that key, for its `top_keys` most frequent
    values ("key": the key, "ids": the values, most frequent first, "samples": their row counts).

    Returns None when the model has no `AttentionWeights` capability.
    """
    if not isinstance(model, AttentionWeights):
        return None
    key = model.temporal_key if isinstance(model, KeyedTemporal) else None
    key = key if key is not None and key.field != "goal" else None
    values = _top_values(key, batches, top_keys) if key is not None else []
    lookup = {v: i for i, v in enumerate(values)}
    by_goal, by_key = _Curves(num_goals), _Curves(len(values))
    samples = np.zeros(len(values))
    groups: list[np.ndarray] = []
    for batch in batches:
        w_all = model.attention_weights(batch)  # [B, L] or [B, G, L] (G modules, heads or layers)
        w = (w_all.mean(1) if w_all.dim() == 3 else w_all).numpy()  # [B, L]
        goal = (batch.goal if batch.goal is not None else torch.zeros(len(batch), dtype=torch.long)).numpy()
        by_goal.add(goal, w, batch)
        if key is not None:
            ids = key.ids(batch)
            assert ids is not None  # a key other than the goal is never None (the model reads it)
            index = np.array([lookup.get(int(v), -1) for v in ids.tolist()], dtype=np.int64)  # [B], -1: not on top
            by_key.add(index, w, batch)
            np.add.at(samples, index[index >= 0], 1)
        if isinstance(model, FieldAttribution):  # one row of the weights per named module
            mask = batch.history_mask.numpy()  # [B, L]
            assert batch.history_position is not None
            pos = np.minimum(batch.history_position.numpy()[mask], MAX_POSITION)  # [R]
            g = w_all.numpy()  # [B, G, L], one row per named module
            groups.append(np.stack([np.bincount(pos, g[:, j][mask], MAX_POSITION + 1) for j in range(g.shape[1])]))
    out = by_goal.result()
    if key is not None:
        out["by_key"] = {"key": str(key), "ids": values, "samples": samples.tolist(), **by_key.result()}
    if groups:
        total = np.sum(groups, axis=0)  # [G, P]
        with np.errstate(invalid="ignore", divide="ignore"):
            out["group_position_mean"] = (total / np.asarray(out["position_count"]).sum(0)[None, :]).tolist()
        out["group_names"] = list(model.group_names) if isinstance(model, FieldAttribution) else []
    return out


def key_names(store: TrajectoryStore, key: TDPEKey, ids: list[int]) -> list[str]:
    """Readable names of key values: the raw category of a taxonomy level ("cat_2=hiking"), goal, scene or extra
    value; id 0 is "unknown"."""
    if key.field == "category":
        levels = taxonomy_columns(store.taxonomy_levels)
        offset = sum(len(store.vocab(name)) for name in levels[: key.column])  # ids of the levels before
        raw, name = store.vocab(levels[key.column]).to_list(), levels[key.column]
        return [f"{name}={raw[i - offset - 1]}" if 0 < i - offset <= len(raw) else f"category {i}" for i in ids]
    raw = store.vocab(key.field).to_list()
    return [str(raw[i - 1]) if 0 < i <= len(raw) else "unknown" for i in ids]


@torch.no_grad()
def field_shares(model: torch.nn.Module, batches: list[Batch]) -> list[dict[str, float]] | None:
    """What moves each attention module's weights, field by field: per module, each field's (and the temporal
    encoding's) share of the logit's spread over a history, from `model.field_scores(batch)` (field -> [B, G, L]).
    A term's spread is its mean absolute deviation over a history's real behaviours (a term equal on every
    behaviour moves no weight: softmax ignores it); shares are that spread summed over histories, over the sum of all
    terms'. Returns one {field: share} per module (fields outside a module's group left out), or None when the model
    has no `field_scores`."""
    if not isinstance(model, FieldAttribution):
        return None
    spread: dict[str, torch.Tensor] = {}
    for batch in batches:
        mask = batch.history_mask.unsqueeze(1)  # [B, 1, L]
        count = mask.sum(-1).clamp(min=1)  # [B, 1] real behaviours (1 for an empty history: its terms are all 0)
        for field, term in model.field_scores(batch).items():  # [B, G, L]
            centred = (term - term.sum(-1, keepdim=True) / count.unsqueeze(-1)) * mask  # [B, G, L]
            deviation = (centred.abs().sum(-1) / count).sum(0)  # [G]
            spread[field] = spread[field] + deviation if field in spread else deviation
    if not spread:
        return None
    total = torch.stack(list(spread.values())).sum(0)  # [G]
    return [
        {field: float(d[g] / total[g]) for field, d in spread.items() if d[g] > 0 and total[g] > 0}
        for g in range(len(total))
    ]


@torch.no_grad()
def retrieval_example(model: torch.nn.Module, batch: Batch, row: int, config: SearchConfig) -> dict[str, Any]:
    """For one sample: each real behaviour's relative position, time gap, match depth to the target, and which
    searchers keep it (the run's own search plus the hard baselines)."""
    one = Batch(**{k: v[row : row + 1] for k, v in batch.fields().items()})
    mask = one.history_mask[0]
    info: dict[str, Any] = {
        "position": one.history_position[0][mask].tolist() if one.history_position is not None else [],
        "gap_days": (one.history_time_delta[0][mask] / 86400).tolist() if one.history_time_delta is not None else [],
        "label": float(one.label[0]) if one.label is not None else None,
    }
    if one.history_category is not None and one.target_category is not None:
        info["depth"] = match_depth(one.history_category, one.target_category)[0][mask].tolist()
    methods = ["latest"]
    if one.history_category is not None:
        methods += ["category", "hierarchical"]
    if config.method not in ("none", *methods):
        methods.append(config.method)
    kept: dict[str, list[bool]] = {}
    for method in methods:
        searcher = SEARCHERS[method]
        query = keys = None
        if searcher.needs_embeddings:
            if not isinstance(model, SearchEmbedder):
                continue
            query, keys = model.search_embeddings(one)
        # the run's own searcher with its settings; the hard baselines with their defaults
        defaults = searcher.options() if searcher.options is not None else None
        options = config.options if method == config.method else defaults
        k = min(config.k, one.history.shape[1])
        positions, ok = searcher.search(one, k, query, keys, options)
        chosen = torch.zeros_like(mask)
        chosen[positions[0][ok[0]]] = True
        kept[method] = chosen[mask].tolist()
    info["kept"] = kept
    return info


def analyze(
    model: torch.nn.Module,
    store: TrajectoryStore,
    out: str | Path,
    search: SearchConfig,
    max_history: int,
    split: str = "valid",
    samples: int = 4096,
    title: str = "",
    history: Path | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the analysis PNGs and `analysis.json` of `model` on `samples` samples of `split` into `out`.

    Args:
        model: a trained model (eval mode).
        store: its store.
        out: an existing folder for the PNGs and analysis.json.
        search: the search stage the model was trained behind (for the retrieval example).
        max_history: L_max of the run.
        split: the split to read samples from.
        samples: how many samples (whole batches of 512, so up to 511 more).
        title: plot title prefix, e.g. "din-32 (din)".
        history: the run's metrics.jsonl, for the validation curve (skipped when None or missing).
        meta: extra JSON-ready fields for analysis.json (e.g. the run path and model name).

    Returns:
        The numbers behind every plot, and "files": the PNG paths.
    """
    from longrec.eval import plots

    out = Path(out)
    batches: list[Batch] = []
    taken = 0
    for batch in make_loader(store, split, 512, max_history):
        batches.append(batch)
        taken += len(batch)
        if taken >= samples:
            break
    goal_names = ["all"]
    num_goals = max(1, int(store.sizes.get("num_goals", 1)))
    if num_goals > 1:
        goal_names = ["unknown", *map(str, store.vocab("goal").to_list())]
    result: dict[str, Any] = {**(meta or {}), "split": split, "samples": taken}
    files: list[str] = []
    profile = attention_profile(model, batches, num_goals)
    if profile is not None:
        result["attention"] = profile
        files += plots.attention_curves(profile, goal_names, out, title=title)
        if profile.get("by_key", {}).get("ids") and isinstance(model, KeyedTemporal) and model.temporal_key is not None:
            by_key = profile["by_key"]
            by_key["names"] = key_names(store, model.temporal_key, by_key["ids"])
            files += plots.attention_curves(by_key, by_key["names"], out, title=title, group=model.temporal_key.field)
        if "group_position_mean" in profile:
            files.append(plots.group_attention(profile, out, title=title))
        shares = field_shares(model, batches)
        if shares is not None:
            names = list(model.group_names) if isinstance(model, FieldAttribution) else []
            result["field_shares"] = {"modules": names, "shares": shares}
            files.append(plots.field_shares(names, shares, out, title=title))
    else:
        logger.info("%s has no attention_weights(): skipping attention plots", type(model).__name__)
    first = batches[0] if batches else None
    if first is not None and first.label is not None:
        candidates = ((first.label == 1) & first.history_mask.any(1)).nonzero()
        row = int(candidates[0]) if len(candidates) else 0
        example = retrieval_example(model, first, row, search)
        result["retrieval_example"] = example
        files.append(plots.retrieval(example, out, title=f"{title}: sample {row} of {split}", k=search.k))
    if history is not None and history.is_file():
        lines = [json.loads(x) for x in history.read_text().splitlines() if x.strip()]
        files.append(plots.validation_curve(lines, out, title=title))
    result["files"] = files
    write_json(out / "analysis.json", result)
    return result
