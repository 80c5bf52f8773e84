"""Target attention as TWIN, DARE and the DARE reference's DIN compute it: relative-position time ids, the two-term
scaled query, softmax over the real behaviours, and the one-lookup pooling over all L and the K that search keeps.

Shapes: B batch, L history length, K kept behaviours, E query/key width, V value width.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from longrec.data.batch import Batch
from longrec.models.layers import dot_scores, weighted_sum
from longrec.search.exact import exact_topk

__all__ = ["masked_softmax", "pool_full_and_kept", "scaled_query", "time_ids"]


def time_ids(batch: Batch, max_position: int) -> Tensor:
    """Relative-position time ids [B, L] int64 in [0, max_position]: most recent = 1, older ones clamped, padding 0.

    Uses `batch.history_position` when present; otherwise counts real behaviours from the right of the mask, which is
    what collate writes for a left-padded, unsearched batch.
    """
    position = batch.history_position
    if position is None:
        mask = batch.history_mask.long()  # [B, L]
        position = mask.flip(1).cumsum(1).flip(1) * mask  # [B, L] most recent = 1, padding 0
    return position.clamp(0, max_position)  # [B, L]


def scaled_query(query: Tensor, time_dim: int) -> Tensor:
    """[q_sem / sqrt(d_sem), q_time / sqrt(d_time)] for a query [B, d_sem + d_time] whose last `time_dim` are time.

    Scaling the query, not the scores, lets one dot product give the two-term score, so search can use it.
    """
    d_sem = query.shape[-1] - time_dim
    return torch.cat([query[:, :d_sem] / math.sqrt(d_sem), query[:, d_sem:] / math.sqrt(time_dim)], dim=-1)  # [B, E]


def pool_full_and_kept(batch: Batch, query: Tensor, keys: Tensor, values: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Softmax-attention pooling of `values` over all L behaviours, and over the K that soft search keeps.

    The fast path of a training step's `aux_logits(batch)` + `forward(search_stage(batch))` (`forward_with_aux`): soft
    search ranks behaviours by the attention score itself, so one set of full-history embeddings serves the auxiliary
    attention, the search (`exact_topk`, the `soft` searcher, on the same query and keys) and, gathered at the K kept
    positions, the main attention, instead of three lookups. Softmax and the weighted sum ignore the order of the
    behaviours, so skipping search_stage's chronological re-ordering changes nothing.

    Args:
        batch: the full-history batch (its mask).
        query: [B, E] scaled query; `keys` [B, L, E]: <query, key_i> is the attention score.
        values: [B, L, V] what is pooled.
        k: behaviours soft search keeps (at most L).

    Returns:
        Pooled values over all behaviours [B, V] and over the kept ones [B, V].
    """
    mask = batch.history_mask
    scores = dot_scores(query, keys)  # [B, L]
    full = weighted_sum(masked_softmax(scores, mask), values)  # [B, V]
    with torch.no_grad():
        positions, kept = exact_topk(query, keys, mask, min(k, mask.shape[1]))  # [B, K] each
    kept_values = values.gather(1, positions.unsqueeze(-1).expand(-1, -1, values.shape[-1]))  # [B, K, V]
    kept_weights = masked_softmax(scores.gather(1, positions), kept)  # [B, K]
    return full, weighted_sum(kept_weights, kept_values)  # [B, V], [B, V]


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax of `scores` [B, L] over the real behaviours; padding gets exactly 0 and an empty history all zeros.

    An empty row is softmaxed over zeros instead of -inf (no NaN, not even in the gradient), then masked out.
    """
    scores = scores.masked_fill(~mask, float("-inf"))  # [B, L]
    scores = scores.masked_fill(~mask.any(1, keepdim=True), 0.0)  # [B, L], empty histories: finite
    return torch.softmax(scores, dim=-1) * mask  # [B, L]
