"""Hierarchical hard search over the taxonomy path (Tencent Advertising, arXiv 2510.21714; the
fallback rule is ours).

A behaviour's match depth is the length of the path prefix it shares with the target, coarse to fine:

    ℓ_i = max m such that path_i[1..m] == path_t[1..m]      (a level missing (0) on either side stops the match)

Search takes the deepest matches first, the most recent first inside a depth, and falls back to coarser depths until
K are kept, but never below `HierarchicalOptions.min_depth` (default 1: a behaviour with ℓ_i = 0, not even the coarsest
level matching, is never kept), unless `fill = "latest"`: then slots still free take the most recent behaviours below
`min_depth` (the paper's "rolling back to latest behaviors"). The fallback lets content-domain behaviours that only
reach a coarse level of the unified taxonomy still feed the model when few ad behaviours share the target's fine
category (the cross-domain setting of docs/unify.md, planted mechanism (b)). `min_depth` bounds how far it goes:
softmax target attention averages over what it is given, so filling K with coarse matches dilutes the fine ones
(benchmarks/README.md, the search study); min_depth = M is category search on the finest level.

Vectorised: ℓ = sum over M of the cumulative product of the level-wise equality; one top-K of ℓ orders by depth,
and `topk_positions`' tie rule (ties -> the more recent behaviour) orders by recency within a depth.

Shapes: B batch, L history length, K kept behaviours, M taxonomy levels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from longrec.data.batch import Batch
from longrec.search.category import check_fill, require_categories
from longrec.search.exact import topk_positions
from longrec.settings import ConfigError

__all__ = ["HierarchicalOptions", "hierarchical", "match_depth"]


@dataclass(frozen=True)
class HierarchicalOptions:
    """The settings of `hierarchical` (flat in the `[search]` table: `search = { method = "hierarchical",
    min_depth = 2 }`)."""

    min_depth: int = 1  # shallowest match depth kept (1 = down to the coarsest level, M = finest); checked per batch
    fill: str = "none"  # none: slots below min_depth stay empty | latest: the most recent other behaviours fill them

    def __post_init__(self) -> None:
        check_fill(self.fill, "HierarchicalOptions")
        if self.min_depth < 1:
            depth = self.min_depth
            raise ConfigError(
                [f"search.min_depth must be >= 1 (1 = fall back to the coarsest taxonomy level). Got {depth}."],
                "HierarchicalOptions",
            )


def match_depth(history_category: Tensor, target_category: Tensor) -> Tensor:
    """Match depth ℓ_i of every behaviour: how many leading taxonomy levels it shares with the target.

    Args:
        history_category: [B, L, M] int64 taxonomy paths, coarse to fine, 0 = level missing.
        target_category: [B, M] int64.

    Returns:
        [B, L] int64 in [0, M]; 0 = not even the coarsest level matches (padding, whose path is all 0, gets 0).

    Example:
        >>> match_depth(torch.tensor([[[1, 2, 3], [1, 5, 3], [0, 2, 3]]]), torch.tensor([[1, 2, 3]]))
        tensor([[3, 1, 0]])
    """
    t = target_category.unsqueeze(1)  # [B, 1, M]
    equal = (history_category == t) & (t != 0)  # [B, L, M] level-wise match; a missing level never matches
    return equal.cumprod(dim=-1, dtype=torch.uint8).sum(dim=-1)  # [B, L] int64 length of the matching prefix


def hierarchical(
    batch: Batch, k: int, query: Tensor | None, keys: Tensor | None, options: HierarchicalOptions
) -> tuple[Tensor, Tensor]:
    """The K behaviours with the deepest taxonomy match, the most recent first within a depth.

    Args:
        batch: histories [B, L] with `history_category` [B, L, M] and `target_category` [B, M].
        k: behaviours to keep, 1 <= k <= L.
        query: unused (hard search needs no embeddings).
        keys: unused.
        options: `min_depth`, the shallowest match depth kept (1..M); `fill`.

    Returns:
        positions [B, K] int64 into L (deepest, then most recent first; with fill = "latest" the most recent
        shallower behaviours after them) and kept [B, K] bool (False = nothing left to keep).
    """
    history_category, target_category = require_categories(batch, "hierarchical")
    levels = history_category.shape[-1]
    if options.min_depth > levels:
        raise ValueError(
            f"search.min_depth = {options.min_depth} is deeper than the taxonomy: this batch's category paths have "
            f"M = {levels} levels (history_category {tuple(history_category.shape)}). "
            f"Expected 1 <= min_depth <= {levels}."
        )
    depth = match_depth(history_category, target_category)  # [B, L]
    if options.fill == "latest":  # below min_depth: one score under every kept depth, so recency orders them
        score = torch.where(depth >= options.min_depth, depth, torch.zeros_like(depth))  # [B, L]
        return topk_positions(score, batch.history_mask, k)
    keep = batch.history_mask & (depth >= options.min_depth)  # [B, L]
    return topk_positions(depth, keep, k)  # deepest first, ties -> more recent
