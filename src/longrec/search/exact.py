"""Exact top-K: the reference every approximate searcher is measured against, and the selection every searcher uses.

Shapes: B batch, L history length, K kept behaviours, D query/key dim.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["exact_topk", "oldest_first", "topk_positions"]


def topk_positions(scores: Tensor, mask: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-K positions of `scores` among real behaviours, best first; padding is never selected.

    Searchers that need a tie-break (hard search: recency inside a match level) build it into `scores`.

    Args:
        scores: [B, L] float, higher = keep first.
        mask: [B, L] bool, True = real behaviour.
        k: behaviours to keep (at most L); with fewer than K real ones the rest is marked not kept.

    Returns:
        positions [B, K] int64 into L and kept [B, K] bool (False = no behaviour in that slot).
    """
    L = scores.shape[1]
    if not 1 <= k <= L:
        raise ValueError(f"k must be in [1, L] = [1, {L}]. Got k={k} instead.")
    ranked = scores.masked_fill(~mask, float("-inf"))  # [B, L]
    positions = ranked.topk(k, dim=-1).indices  # [B, K]
    return positions, mask.gather(1, positions)  # [B, K] each


def exact_topk(query: Tensor, keys: Tensor, mask: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """query [B, D], keys [B, L, D], mask [B, L] -> positions [B, K] (best first) and kept [B, K]."""
    scores = torch.einsum("bd,bld->bl", query, keys)  # [B, L]
    return topk_positions(scores, mask, k)


def oldest_first(positions: Tensor, kept: Tensor) -> tuple[Tensor, Tensor]:
    """Re-order each row oldest first with the empty slots in front (left padding), like a collated batch.

    Args:
        positions: [B, K] int64 indices into L.
        kept: [B, K] bool, False = empty slot.

    Returns:
        positions [B, K] and kept [B, K], permuted within each row.
    """
    key = torch.where(kept, positions, torch.full_like(positions, -1))  # [B, K] empty slots sort first
    order = key.argsort(dim=1, stable=True)  # [B, K]
    return positions.gather(1, order), kept.gather(1, order)  # [B, K] each
