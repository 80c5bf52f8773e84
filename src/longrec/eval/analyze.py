"""What a person wants to look at after training: where the model attends, per goal, and what search kept.

`analyze_run(run_dir)` loads a run's best checkpoint, scores a slice of a split and writes PNGs (via
`longrec.eval.plots`) plus `analysis.json` with the numbers behind every plot:

- attention weight by relative position and by time gap to the target, one curve per goal (for TDPE models these
  are the learned per-goal decay curves);
- attention by field group for models that expose `group_attention(batch) -> [B, G, L]` (DSI-TIN);
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

from longrec.config import Config, SearchConfig, load_config
from longrec.data.batch import Batch
from longrec.data.dataset import make_loader
from longrec.data.store import TrajectoryStore, atomic_write_text
from longrec.models.tin import time_gap_bucket
from longrec.search import NEEDS_EMBEDDINGS, SEARCHERS
from longrec.search.hierarchical import match_depth
from longrec.train.checkpoint import load_checkpoint

__all__ = ["analyze_run", "attention_profile", "load_run", "retrieval_example"]

logger = logging.getLogger(__name__)

NUM_GAP_BUCKETS = 24
MAX_POSITION = 200


def load_run(run: Path, data: str | None = None) -> tuple[Config, TrajectoryStore, torch.nn.Module]:
    """The resolved config, the store and the best model of a run directory."""
    from longrec.train.loop import build_model_for_store

    path = run / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: '{run}' is not a run directory of 'longrec train'.")
    saved = json.loads(path.read_text())
    model_section = saved.pop("model")
    overrides = [f"model.{k}={v!r}" for k, v in model_section.items()]
    overrides += [f"{s}.{k}={v!r}" for s, section in saved.items() for k, v in section.items()]
    if data:
        overrides.append(f"data.path={data!r}")
    config = load_config(None, overrides)
    store = TrajectoryStore.open(config.data.path)
    checkpoint = load_checkpoint(run / "checkpoint.pt")
    if checkpoint["vocab_sha"] != store.manifest["vocab_sha"]:
        raise ValueError(
            f"{run / 'checkpoint.pt'} was trained with vocabulary sha {checkpoint['vocab_sha']} but "
            f"{config.data.path} has {store.manifest['vocab_sha']}; analyze it on the data it was trained on."
        )
    model = build_model_for_store(config.model.name, config.model.params, store)
    model.load_state_dict(checkpoint["model"])
    model.eval()
    return config, store, model


def _weights(model: torch.nn.Module, batch: Batch) -> torch.Tensor | None:
    fn = getattr(model, "attention_weights", None)
    if fn is None:
        return None
    w = fn(batch)  # [B, L] or [B, H, L]
    return w.mean(1) if w.dim() == 3 else w  # [B, L]


@torch.no_grad()
def attention_profile(model: torch.nn.Module, batches: list[Batch], num_goals: int) -> dict[str, Any] | None:
    """Mean attention weight per (goal, relative position) and per (goal, time-gap bucket) over real behaviours, and
    per goal the attention-weighted mean time gap in days, Σ_i α_i Δt_i / Σ_i α_i averaged over samples with a
    history ("mean_gap_days": one number per goal that moves the way the learned decay does — smaller for a goal
    whose attention decays faster).

    Returns None when the model exposes no `attention_weights`.
    """
    pos_sum = np.zeros((num_goals, MAX_POSITION + 1))
    pos_n = np.zeros_like(pos_sum)
    gap_sum = np.zeros((num_goals, NUM_GAP_BUCKETS))
    gap_n = np.zeros_like(gap_sum)
    weighted_gap = np.zeros(num_goals)  # Σ over samples of the sample's attention-weighted mean gap (days)
    rows_with_history = np.zeros(num_goals)
    groups: list[np.ndarray] = []
    for batch in batches:
        w = _weights(model, batch)
        if w is None:
            return None
        mask = batch.history_mask.numpy()  # [B, L]
        goal = (batch.goal if batch.goal is not None else torch.zeros(len(batch), dtype=torch.long)).numpy()
        goal_l = np.broadcast_to(goal[:, None], mask.shape)[mask]  # [R]
        weights = w.numpy()[mask]  # [R]
        assert batch.history_position is not None and batch.history_time_delta is not None
        pos = np.minimum(batch.history_position.numpy()[mask], MAX_POSITION)  # [R]
        gap = time_gap_bucket(batch.history_time_delta, NUM_GAP_BUCKETS).numpy()[mask]  # [R]
        np.add.at(pos_sum, (goal_l, pos), weights)
        np.add.at(pos_n, (goal_l, pos), 1)
        np.add.at(gap_sum, (goal_l, gap), weights)
        np.add.at(gap_n, (goal_l, gap), 1)
        w_real = w.numpy() * mask  # [B, L]
        total = w_real.sum(1)  # [B]
        has = total > 0
        row_gap = (w_real * batch.history_time_delta.numpy()).sum(1)[has] / total[has] / 86_400  # [B'] days
        np.add.at(weighted_gap, goal[has], row_gap)
        np.add.at(rows_with_history, goal[has], 1)
        group_fn = getattr(model, "group_attention", None)
        if group_fn is not None:
            g = group_fn(batch).numpy()  # [B, G, L]
            groups.append(np.stack([np.bincount(pos, g[:, j][mask], MAX_POSITION + 1) for j in range(g.shape[1])]))
    with np.errstate(invalid="ignore", divide="ignore"):
        out: dict[str, Any] = {
            "position_mean": (pos_sum / pos_n).tolist(),
            "position_count": pos_n.tolist(),
            "gap_mean": (gap_sum / gap_n).tolist(),
            "gap_count": gap_n.tolist(),
            "mean_gap_days": (weighted_gap / rows_with_history).tolist(),
        }
        if groups:
            total = np.sum(groups, axis=0)  # [G, P]
            out["group_position_mean"] = (total / pos_n.sum(0)[None, :]).tolist()
            out["group_names"] = list(getattr(model, "group_names", [f"group {j}" for j in range(total.shape[0])]))
    return out


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
        if method in NEEDS_EMBEDDINGS and not hasattr(model, "search_embeddings"):
            continue
        cfg = SearchConfig(**{**config.__dict__, "method": method})
        query = keys = None
        if method in NEEDS_EMBEDDINGS:
            query, keys = model.search_embeddings(one)  # type: ignore[operator]
        k = min(config.k, one.history.shape[1])
        positions, ok = SEARCHERS[method](one, k, query, keys, cfg)
        chosen = torch.zeros_like(mask)
        chosen[positions[0][ok[0]]] = True
        kept[method] = chosen[mask].tolist()
    info["kept"] = kept
    return info


def analyze_run(
    run: str | Path, out: str | Path | None = None, split: str = "valid", samples: int = 4096, data: str | None = None
) -> dict[str, Any]:
    """Write the analysis PNGs and `analysis.json` for a run directory; return the numbers and the PNG paths."""
    from longrec.eval import plots

    run = Path(run)
    out = Path(out) if out else run / "plots"
    out.mkdir(parents=True, exist_ok=True)
    config, store, model = load_run(run, data)
    batches: list[Batch] = []
    taken = 0
    for batch in make_loader(store, split, 512, config.data.max_history):
        batches.append(batch)
        taken += len(batch)
        if taken >= samples:
            break
    goal_names = ["all"]
    num_goals = max(1, int(store.sizes.get("num_goals", 1)))
    if num_goals > 1:
        goal_names = ["unknown", *map(str, store.vocab("goal").to_list())]
    result: dict[str, Any] = {"run": str(run), "model": config.model.name, "split": split, "samples": taken}
    files: list[str] = []
    profile = attention_profile(model, batches, num_goals)
    if profile is not None:
        result["attention"] = profile
        files += plots.attention_curves(profile, goal_names, out, title=f"{run.name} ({config.model.name})")
        if "group_position_mean" in profile:
            files.append(plots.group_attention(profile, out, title=f"{run.name} ({config.model.name})"))
    else:
        logger.info("%s has no attention_weights(): skipping attention plots", config.model.name)
    first = batches[0] if batches else None
    if first is not None and first.label is not None:
        candidates = ((first.label == 1) & first.history_mask.any(1)).nonzero()
        row = int(candidates[0]) if len(candidates) else 0
        example = retrieval_example(model, first, row, config.search)
        result["retrieval_example"] = example
        files.append(plots.retrieval(example, out, title=f"{run.name}: sample {row} of {split}", k=config.search.k))
    history_path = run / "metrics.jsonl"
    if history_path.is_file():
        lines = [json.loads(x) for x in history_path.read_text().splitlines() if x.strip()]
        files.append(plots.validation_curve(lines, out, title=f"{run.name} ({config.model.name})"))
    result["files"] = files
    atomic_write_text(out / "analysis.json", json.dumps(result, indent=2, default=float) + "\n")
    return result
