"""`Batch`: the one type that crosses stage boundaries (collate -> search -> model -> loss/metrics).

Histories are padded to `[B, L]`, **left-padded** and in chronological order: the most recent behaviour sits at
index L - 1 and padding (id 0, mask False) at the front. Id 0 means padding or unknown in every id field.
Shapes: B batch, L history length, M taxonomy levels, E extra id fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["HISTORY_FIELDS", "TARGET_FIELDS", "Batch", "check_batch", "gather_history"]

# Fields with an L axis (dim 1): search and truncation must move all of them together.
HISTORY_FIELDS = (
    "history",
    "history_mask",
    "history_category",
    "history_action",
    "history_domain",
    "history_scene",
    "history_extra",
    "history_time_delta",
    "history_position",
)
# Per-example fields (leading B axis only).
TARGET_FIELDS = ("target", "label", "target_category", "target_extra", "target_time", "scene", "goal", "user")


@dataclass(frozen=True)
class Batch:
    """(user history, target item) examples. Id 0 is padding in every id field."""

    history: Tensor  # [B, L] int64 item ids, left-padded, oldest first
    history_mask: Tensor  # [B, L] bool, True = real behaviour
    target: Tensor  # [B] int64 item being scored
    label: Tensor | None = None  # [B] float32 in {0, 1}; None when serving
    # Optional side information: None when the data has none.
    history_category: Tensor | None = None  # [B, L, M] int64 taxonomy path, coarse to fine, 0 = level missing
    target_category: Tensor | None = None  # [B, M] int64
    history_action: Tensor | None = None  # [B, L] int64 action type (click, view, cart, buy, ...)
    history_domain: Tensor | None = None  # [B, L] int64 domain of each behaviour (ad, content, ...)
    history_scene: Tensor | None = None  # [B, L] int64 app surface where each behaviour happened
    history_extra: Tensor | None = None  # [B, L, E] int64 extra id fields (brand, seller, ...)
    target_extra: Tensor | None = None  # [B, E] int64
    history_time_delta: Tensor | None = None  # [B, L] float32 seconds from behaviour to target, >= 0 (0 on padding)
    history_position: Tensor | None = None  # [B, L] int64 relative position: most recent = 1, ..., padding = 0
    target_time: Tensor | None = None  # [B] int64 epoch seconds of the sample's cutoff
    scene: Tensor | None = None  # [B] int64 app surface of the request
    goal: Tensor | None = None  # [B] int64 advertising target (click, conversion, purchase, ...)
    user: Tensor | None = None  # [B] int64 dense user id (GAUC grouping, per-user caches)
    # [B, S, E] float, a user state stored per sample (VISTA's summaries of the history before the sample's cutoff,
    # `longrec.data.summaries`): a `CachedUserState` model scores it with `score_with_state` instead of reading the
    # history, which is then an empty placeholder column.
    user_state: Tensor | None = None

    def __len__(self) -> int:
        return int(self.target.shape[0])

    def fields(self) -> dict[str, Tensor]:
        """Every field that is not None, by name."""
        return {f.name: v for f in dataclasses.fields(self) if (v := getattr(self, f.name)) is not None}

    def replace(self, **changes: Tensor | None) -> Batch:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Move every field that is not None."""
        return dataclasses.replace(
            self, **{k: v.to(device, non_blocking=non_blocking) for k, v in self.fields().items()}
        )

    def pin_memory(self) -> Batch:
        """Page-locked copy, so a later `.to('cuda', non_blocking=True)` overlaps with compute (DataLoader hook)."""
        return dataclasses.replace(self, **{k: v.pin_memory() for k, v in self.fields().items()})


def gather_history(batch: Batch, positions: Tensor, kept: Tensor) -> Batch:
    """Keep K behaviours per example, moving every history field together so side information stays aligned.

    Args:
        batch: a batch with histories of length L.
        positions: [B, K] int64 indices into L.
        kept: [B, K] bool; False marks a slot with no behaviour (fewer than K available): it becomes padding.

    Returns:
        The same batch with every L-axis field replaced by its [B, K] (or [B, K, ...]) selection.
    """
    changes: dict[str, Tensor | None] = {}
    for name in HISTORY_FIELDS:
        value = getattr(batch, name)
        if value is None:
            continue
        index = positions
        if value.dim() == 3:
            index = positions.unsqueeze(-1).expand(-1, -1, value.shape[-1])  # [B, K, M]
        picked = value.gather(1, index)  # [B, K] or [B, K, M]
        mask = kept if picked.dim() == 2 else kept.unsqueeze(-1)
        changes[name] = picked.masked_fill(~mask, 0) if name != "history_mask" else picked & kept
    return batch.replace(**changes)


def _shape(t: Tensor) -> list[int]:
    return list(t.shape)


# Id fields whose vocabulary size a store reports (`TrajectoryStore.sizes`): field -> size name.
_VOCABULARIES = {
    "goal": "num_goals",
    "scene": "num_scenes",
    "history_scene": "num_scenes",
    "target_category": "num_categories",
    "history_category": "num_categories",
    "history_action": "num_actions",
    "history_domain": "num_domains",
}


def _check_ids(batch: Batch, sizes: Mapping[str, Any], where: str) -> None:
    """Every id field of `batch` that `sizes` gives a vocabulary for lies in [0, size) (size 0: the data has no such
    field and collate fills it with id 0); extra columns each in [0, num_extra[j]). Models index tables with these ids
    (a TDPE key picks rows τ·R + bucket), where a wrong id would fail deep in `forward` or read another row."""
    checks = [(name, getattr(batch, name), sizes[size]) for name, size in _VOCABULARIES.items() if size in sizes]
    for name in ("target_extra", "history_extra"):
        value = getattr(batch, name)
        if value is not None and "num_extra" in sizes:
            checks += [(f"{name}[..., {j}]", value[..., j], n) for j, n in enumerate(sizes["num_extra"])]
    for name, ids, size in checks:
        if ids is None:
            continue
        limit = max(int(size), 1)
        bad = (ids < 0) | (ids >= limit)
        if bool(bad.any()):
            idx = tuple(bad.nonzero()[0].tolist())
            raise ValueError(
                f"{where}.{name} holds {int(ids[idx])} at {list(idx)}, outside its vocabulary (ids must be in "
                f"[0, {limit})). Was the data prepared with a different vocabulary?"
            )


def check_batch(
    batch: Batch,
    reads: Iterable[str] = (),
    num_items: int | None = None,
    where: str = "batch",
    sizes: Mapping[str, Any] | None = None,
) -> None:
    """Check shapes, dtypes and id ranges at a stage boundary (loader under --debug, tests, the server).

    Args:
        batch: the batch to check.
        reads: optional fields the consumer (a model's `reads`) needs; a missing one is an error.
        num_items: item vocabulary size; item ids must lie in [0, num_items).
        where: how to name the batch in messages.
        sizes: vocabulary sizes (a store's `sizes`, or a model's: num_goals, num_scenes, num_categories, num_actions,
            num_domains, num_extra); the ids of each field they cover must lie in [0, size).

    Raises:
        ValueError: what, where, expected and got.
    """
    h, m, t = batch.history, batch.history_mask, batch.target
    if h.dim() != 2:
        raise ValueError(f"{where}.history must be [B, L]. Got shape {_shape(h)} instead.")
    B, L = h.shape
    if h.dtype != torch.int64:
        raise ValueError(f"{where}.history must be int64 item ids. Got {h.dtype} instead.")
    if _shape(m) != [B, L] or m.dtype != torch.bool:
        raise ValueError(
            f"{where}.history_mask must be bool with the shape of {where}.history [B, L] = [{B}, {L}]. "
            f"Got {m.dtype} {_shape(m)} instead."
        )
    if _shape(t) != [B]:
        raise ValueError(f"{where}.target must have shape [B] = [{B}]. Got {_shape(t)} instead.")
    if bool((h[~m] != 0).any()):
        b, i = (~m & (h != 0)).nonzero()[0].tolist()
        raise ValueError(f"{where}.history[{b}, {i}] = {int(h[b, i])} sits under a False mask; padding must be id 0.")
    if num_items is not None:
        for name, ids in (("history", h), ("target", t)):
            bad = (ids < 0) | (ids >= num_items)
            if bool(bad.any()):
                idx = tuple(bad.nonzero()[0].tolist())
                raise ValueError(
                    f"{where}.{name}{list(idx)} = {int(ids[idx])} is not a known item id (ids must be in "
                    f"[0, {num_items})). Was the data prepared with a different vocabulary?"
                )
    for name in HISTORY_FIELDS[2:]:
        value = getattr(batch, name)
        if value is not None and _shape(value)[:2] != [B, L]:
            raise ValueError(f"{where}.{name} must start with [B, L] = [{B}, {L}]. Got {_shape(value)} instead.")
    for name in TARGET_FIELDS[1:]:
        value = getattr(batch, name)
        if value is not None and (value.dim() == 0 or value.shape[0] != B):
            raise ValueError(f"{where}.{name} must start with [B] = [{B}]. Got {_shape(value)} instead.")
    if batch.history_category is not None and batch.target_category is not None:
        M = batch.history_category.shape[-1]
        if _shape(batch.target_category) != [B, M]:
            raise ValueError(
                f"{where}.target_category must be [B, M] = [{B}, {M}] like history_category. "
                f"Got {_shape(batch.target_category)} instead."
            )
    state = batch.user_state
    if state is not None and (state.dim() < 2 or state.shape[0] != B or not state.is_floating_point()):
        raise ValueError(
            f"{where}.user_state must be a float tensor [B, ...] with B = {B}. Got {state.dtype} {_shape(state)} "
            "instead."
        )
    if batch.history_time_delta is not None and bool((batch.history_time_delta < 0).any()):
        raise ValueError(
            f"{where}.history_time_delta must be >= 0 (behaviours precede the target); a negative gap leaks."
        )
    for name in reads:
        if getattr(batch, name, None) is None:
            raise ValueError(f"The model reads {where}.{name}, but it is None. Prepare the data with that field.")
    if sizes is not None:
        _check_ids(batch, sizes, where)
