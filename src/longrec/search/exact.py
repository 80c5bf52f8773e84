"""Exact top-K: the reference every approximate searcher is measured against, and the selection every searcher uses.

**One tie rule for every searcher: equal scores go to the more recent behaviour** (the larger column of L), and
padding comes after every real behaviour (more recent padding first). `topk_positions` implements it exactly, without
a sort, by ranking one int64 key per behaviour:

    key = (rank(score) << 32) | column        rank: float32 -> order-preserving int32; padding -> INT32_MIN

so every key is distinct, a top-K of keys is unique, and the keys of the K best behaviours seen so far merge with the
keys of the next chunk of the history into the top-K of both (`chunked_topk`): a searcher can walk a history of
10^5 behaviours in chunks, holding [B, chunk] scores and [B, K] keys, and return exactly what one top-K over the whole
[B, L] returns (docs/long_histories.md).

Ranking every key costs several passes over [B, c] int64 keys, so for float32 scores `chunked_topk` narrows each chunk
down first, in steps that are exact wherever they can prove it and fall back to ranking every key where not:
1. Block maxima (chunks at least 16K wide): deal the columns into 8K strided blocks and keep the K + 4 blocks with
   the largest maxima. If the K-th largest maximum t is real and the (K+4)-th is below it, every behaviour outside
   those blocks is below t while the K best blocks hold K behaviours >= t, so the top-K is among the behaviours >= t
   inside them (about K of them; the 4 spare blocks absorb ties at t: an item twice in a history scores the same
   twice), and only their keys are ranked.
2. A float top-2K of a narrower chunk: wherever at most 2K values reach the K-th one (ties included), those 2K hold
   every behaviour that can make the top-K, and only their keys are ranked.
Rows with padding among their top-K or a wider tie group rank all their keys. Same result as ranking every key; the
top-K's share of a one-user request is in benchmarks/bench_scaling.py part B (DARE's time split).

Soft-search scores are inner products computed in blocks of `SCORE_BLOCK` behaviours aligned at columns 0, 1024,
2048, ... (`soft_scores`): the float rounding of a batched dot product depends on how many columns one call sees, so a
chunk that starts on a block boundary gets the bit-identical scores the whole history gets.

Shapes: B batch, L history length, K kept behaviours, D query/key dim, c columns of one chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

__all__ = [
    "SCORE_BLOCK",
    "blockwise",
    "chunked_topk",
    "exact_topk",
    "oldest_first",
    "rank_keys",
    "soft_scores",
    "topk_positions",
]

SCORE_BLOCK = 1024  # columns per scoring call: chunked search walks L in multiples of it (see module docstring)
BLOCKS_PER_K = 8  # a wide chunk is cut into this many blocks per kept behaviour for the block-maximum prefilter
BLOCK_TIES = 4  # spare blocks beyond K, so that ties at the K-th block maximum still prove the prefilter exact
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_LOW32 = 0xFFFFFFFF  # the column bits of a key


def blockwise(fn: Callable[[Tensor], Tensor], keys: Tensor) -> Tensor:
    """Apply a per-behaviour function to `keys` [B, L, ...] in blocks of `SCORE_BLOCK` columns and concatenate.

    Every call sees a block that starts at a multiple of SCORE_BLOCK, so a chunk of the history that starts there
    gets bit-identical outputs (batched matmuls pick their kernel, hence their float rounding, by size).

    Args:
        fn: maps keys [B, c, ...] to [B, c, ...], each column from its own behaviour only.
        keys: [B, L, ...].

    Returns:
        fn(keys), concatenated along L.
    """
    L = keys.shape[1]
    if L <= SCORE_BLOCK:
        return fn(keys)
    return torch.cat([fn(keys[:, s : s + SCORE_BLOCK]) for s in range(0, L, SCORE_BLOCK)], dim=1)  # [B, L, ...]


def soft_scores(query: Tensor, keys: Tensor) -> Tensor:
    """Inner products <query, key_i>, [B, D] x [B, L, D] -> [B, L], computed in `SCORE_BLOCK` column blocks."""
    return blockwise(lambda h: torch.einsum("bd,bld->bl", query, h), keys)  # [B, L]


def _packable(scores: Tensor) -> bool:
    """Whether `rank_keys` can rank `scores` exactly: float32 or narrower, bool, or integers inside int32."""
    if scores.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.bool):
        return True
    if scores.is_floating_point() or scores.is_complex():
        return False
    return scores.numel() == 0 or (int(scores.min()) > _INT32_MIN and int(scores.max()) <= _INT32_MAX)


def rank_keys(scores: Tensor, mask: Tensor, start: int = 0) -> Tensor:
    """One distinct int64 key per behaviour, ordered like (score, column) with padding below every real behaviour.

    Args:
        scores: [B, c] float32 (float16/bfloat16 are widened exactly), bool, or integers in (-2^31, 2^31); higher =
            keep first. -0.0 ranks like 0.0.
        mask: [B, c] bool, True = real behaviour.
        start: the column of scores[:, 0] in the whole history (the chunk's offset).

    Returns:
        [B, c] int64: `(rank << 32) | column`, rank = an order-preserving int32 image of the score (INT32_MIN on
        padding), column = start + index.

    Raises:
        TypeError: float64 scores, or integers outside int32 (they have no exact int32 rank).
    """
    if not _packable(scores):
        raise TypeError(
            f"rank_keys ranks float32, bool or int32-range scores exactly. Got {scores.dtype} scores instead "
            "(pass float32, or integers in (-2^31, 2^31))."
        )
    column = torch.arange(start, start + scores.shape[1], device=scores.device)  # [c]
    return _pack(scores, mask, column)  # [B, c]


def _pack(scores: Tensor, mask: Tensor, column: Tensor) -> Tensor:
    """`rank_keys` with explicit columns: scores and mask [B, c], column [c] or [B, c] -> keys [B, c] int64."""
    if scores.is_floating_point():
        bits = (scores.float() + 0.0).view(torch.int32)  # [B, c]; + 0.0 turns -0.0 into 0.0
        rank = torch.where(bits < 0, bits ^ _INT32_MAX, bits)  # [B, c] negative floats: flip the magnitude bits
    else:
        rank = scores.to(torch.int32)  # [B, c]
    key = rank.masked_fill(~mask, _INT32_MIN).long()  # [B, c]
    return key.bitwise_left_shift_(32).bitwise_or_(column)  # [B, c]


def _chunk_best_keys(scores: Tensor, mask: Tensor, start: int, k: int) -> Tensor:
    """The keys of the min(k, c) best behaviours of one chunk (as a set, in any order), [B, min(k, c)] int64.

    float32 scores narrow the chunk down before ranking keys, in exact steps (module docstring): a wide chunk keeps
    the behaviours of its best blocks that reach the K-th block maximum (`_best_blocks`, `_compact_keys`); a narrow
    one its float top-2K (`_prefiltered_keys`). A row where a step cannot prove it kept every possible top-K behaviour
    (padding among the K best, or a tie at the K-th value) ranks the keys of everything that step started from."""
    c = scores.shape[1]
    k = min(k, c)
    if scores.dtype != torch.float32 or 2 * k >= c:
        return rank_keys(scores, mask, start).topk(k, dim=1, sorted=False).values  # [B, K]
    scores = scores.detach()  # keys carry no gradient
    real = mask[:1] if mask.stride(0) == 0 else mask  # one user's rows share one mask (`one_user_request`)
    masked = scores if bool(real.all()) else scores.masked_fill(~mask, float("-inf"))  # [B, c]
    if c >= 2 * BLOCKS_PER_K * k:  # blocks of at least 2 columns: rank the keys of the best blocks' behaviours
        parts, kth, exact = _best_blocks(masked, k)  # [(values, columns)], [B], [B]
        threshold = kth.masked_fill(~exact, float("inf"))[:, None]  # [B, 1]: rows that fall back keep nothing
        keys = _compact_keys([(v, col + start if start else col, v >= threshold) for v, col in parts], k)  # [B, K]
    else:  # rank the keys of the float top-2K
        column = torch.arange(start, start + c, device=scores.device).expand(masked.shape)  # [B, c]
        keys, exact = _prefiltered_keys(masked, column, k)  # [B, K], [B]
    if not bool(exact.all()):  # a step could not show it kept every possible top-K behaviour: rank the whole chunk
        rows = (~exact).nonzero()[:, 0]  # [b]
        keys[rows] = rank_keys(scores[rows], mask[rows], start).topk(k, dim=1, sorted=False).values  # [b, K]
    return keys


def _best_blocks(masked: Tensor, k: int) -> tuple[list[tuple[Tensor, Tensor]], Tensor, Tensor]:
    """The behaviours of the S = K + `BLOCK_TIES` blocks with the largest maxima, and whether they hold the top-K.

    The chunk's columns are dealt into n >= `BLOCKS_PER_K`·K blocks of r columns, column j to block j mod n (strided
    blocks: the maxima are one elementwise max over r rows of n columns); the c - r·n < r columns left over are
    always kept. If the K-th largest block maximum t is real and the S-th is below it, every behaviour outside the S
    best blocks and the leftover is < t while the K best blocks hold K behaviours >= t, so the top-K lies inside
    what is kept, and so does every behaviour >= t there (ties included). The T spare blocks absorb ties at the K-th
    maximum (the same item twice in a history scores the same twice). Cost: one max over [B, c] and two small
    selections instead of a top-K over [B, c].

    Args:
        masked: [B, c] float32 scores with -inf on padding.
        k: behaviours to keep, with c >= 2·BLOCKS_PER_K·k.

    Returns:
        parts: (values, columns) pairs: the S blocks' behaviours [B, r·S] each, and the leftover [B, c - r·n]
        (-inf on padding; columns int64 into the chunk); the K-th largest block maximum t [B]; exact [B] bool.
    """
    B, c = masked.shape
    rows = c // (BLOCKS_PER_K * k)  # columns per block, >= 2
    n = c // rows  # blocks
    body = masked[:, : rows * n].view(B, rows, n)  # [B, r, n]: block j is column j of every row
    top, block = body.amax(dim=1).topk(k + BLOCK_TIES, dim=1, sorted=False)  # [B, S] each, in any order
    low = top.topk(BLOCK_TIES + 1, dim=1, largest=False).values  # [B, T + 1]: the S-th ... K-th largest maxima
    exact = (low[:, -1] > float("-inf")) & (low[:, 0] < low[:, -1])  # [B] the S-th maximum is below the K-th
    values = body.gather(2, block[:, None, :].expand(B, rows, block.shape[1])).view(B, -1)  # [B, r·S]
    column = (block[:, None, :] + n * torch.arange(rows, device=masked.device)[:, None]).view(B, -1)  # [B, r·S]
    parts = [(values, column)]
    if rows * n < c:  # the leftover columns
        leftover = torch.arange(rows * n, c, device=masked.device).expand(B, c - rows * n)  # [B, c - r·n]
        parts.append((masked[:, rows * n :], leftover))
    return parts, low[:, -1], exact


def _prefiltered_keys(values: Tensor, column: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Keys of the K best of `values` [B, n] (-inf = padding) at `column` [B, n], through a float top-2K.

    Where the K-th value is real and at most 2K values reach it, the float top-2K holds every behaviour that can make
    the top-K (ties included), so only those 2K are ranked; `exact` [B] is False on the other rows."""
    best, index = values.topk(2 * k, dim=1)  # [B, 2K] best first
    threshold = best[:, k - 1 : k]  # [B, 1] the K-th value
    exact = (threshold[:, 0] > float("-inf")) & ((values >= threshold).sum(dim=1) <= 2 * k)  # [B]
    return _all_keys(best, column.gather(1, index), k), exact  # [B, K], [B]


def _compact_keys(parts: list[tuple[Tensor, Tensor, Tensor]], k: int) -> Tensor:
    """Keys of the K best kept behaviours, [B, K] in any order, from (values, columns, keep) parts, each [B, n_i].

    Each row keeps at least K behaviours or none. The kept behaviours of a row are packed to the left of a [B, W]
    block (W = the most any row keeps: about K when the threshold was tight), so only W keys per row are ranked; a
    row that keeps none gets padding keys."""
    B = len(parts[0][0])
    counts = [keep.count_nonzero(dim=1) for _, _, keep in parts]  # [B] each
    width = max(k, int(torch.stack(counts).sum(dim=0).max()))  # W
    kept = parts[0][0].new_full((B, width), float("-inf"))  # [B, W]
    where = parts[0][1].new_zeros((B, width))  # [B, W]
    before = torch.zeros_like(counts[0])  # [B] slots of each row filled by the earlier parts
    for (values, column, keep), count in zip(parts, counts, strict=True):
        row, index = keep.nonzero(as_tuple=True)  # [N] each, row-major
        first = count.cumsum(0) - count - before  # [B]: entry first[b] + j of this part goes to slot j of row b
        slot = torch.arange(len(row), device=values.device) - first[row]  # [N]
        kept[row, slot] = values[row, index]
        where[row, slot] = column[row, index]
        before = before + count
    return _all_keys(kept, where, k)  # [B, K]


def _all_keys(values: Tensor, column: Tensor, k: int) -> Tensor:
    """Keys of the K best of `values` [B, n] (-inf = padding) at `column` [B, n], ranking every one (any order)."""
    return _pack(values, values > float("-inf"), column).topk(k, dim=1, sorted=False).values  # [B, K]


def chunked_topk(
    chunks: Iterable[tuple[int, Tensor]], mask: Tensor, k: int, best_first: bool = True
) -> tuple[Tensor, Tensor]:
    """Top-K over scores that arrive in chunks, keeping only the K best keys between chunks.

    Identical to `topk_positions` on the concatenated scores (same positions, same order), because every key is
    distinct: the top-K of (top-K so far ∪ next chunk) is the top-K of everything seen.

    Args:
        chunks: (start, scores [B, c]) pairs covering the columns of `mask` (any order, any sizes); scores as in
            `rank_keys`.
        mask: [B, L] bool, True = real behaviour.
        k: behaviours to keep, 1 <= k <= L.
        best_first: order the K best first; False returns the same K in any order (for a caller that re-orders
            them anyway, e.g. `oldest_first`: it saves a sort of [B, K]).

    Returns:
        positions [B, K] int64 into L, best first (ties -> more recent), and kept [B, K] bool.
    """
    L = mask.shape[1]
    if not 1 <= k <= L:
        raise ValueError(f"k must be in [1, L] = [1, {L}]. Got k={k} instead.")
    best: Tensor | None = None  # [B, K'] keys of the best behaviours so far, K' <= K
    for start, scores in chunks:
        keys = _chunk_best_keys(scores, mask[:, start : start + scores.shape[1]], start, k)  # [B, min(K, c)]
        if best is not None:
            keys = torch.cat([best, keys], dim=1)  # [B, K' + c]
        best = keys if keys.shape[1] <= k else keys.topk(k, dim=1, sorted=False).values  # [B, K'] any order
    if best is not None and best_first:
        best = best.sort(dim=1, descending=True).values  # [B, K] best first
    if best is None or best.shape[1] != k:
        raise ValueError(f"chunked_topk: the chunks covered fewer than k = {k} of the L = {L} columns.")
    positions = best & _LOW32  # [B, K]
    return positions, mask.gather(1, positions)  # [B, K] each


def topk_positions(scores: Tensor, mask: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-K positions of `scores` among real behaviours, best first; ties go to the more recent behaviour.

    Padding is never kept: with fewer than K real behaviours the remaining slots hold padding positions (the most
    recent padding first) marked not kept. Searchers express their ranking in `scores` (hard search: the match
    level, recency breaks ties by this rule).

    Args:
        scores: [B, L] float or integer, higher = keep first; float32/bool/int32-range scores are ranked through
            `rank_keys` (no sort), float64 or wider integers through a stable sort with the same tie rule.
        mask: [B, L] bool, True = real behaviour.
        k: behaviours to keep (at most L); with fewer than K real ones the rest is marked not kept.

    Returns:
        positions [B, K] int64 into L and kept [B, K] bool (False = no behaviour in that slot).
    """
    L = scores.shape[1]
    if not 1 <= k <= L:
        raise ValueError(f"k must be in [1, L] = [1, {L}]. Got k={k} instead.")
    if _packable(scores):
        return chunked_topk([(0, scores)], mask, k)
    # Exact for any dtype, same rule: real before padding, then score, then recency (stable sorts, most recent first).
    low = float("-inf") if scores.is_floating_point() else torch.iinfo(scores.dtype).min
    ranked = scores.masked_fill(~mask, low).flip(1)  # [B, L] column L - 1 first, padding level with each other
    order = torch.sort(ranked, dim=1, descending=True, stable=True).indices  # [B, L] by score, then recency
    padding = (~mask).flip(1).gather(1, order).to(torch.uint8)  # [B, L] in that order
    order = order.gather(1, torch.sort(padding, dim=1, stable=True).indices)[:, :k]  # [B, K] real ones first
    positions = L - 1 - order  # [B, K]
    return positions, mask.gather(1, positions)  # [B, K] each


def exact_topk(query: Tensor, keys: Tensor, mask: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """query [B, D], keys [B, L, D], mask [B, L] -> positions [B, K] (best first; ties -> more recent) and kept."""
    return topk_positions(soft_scores(query, keys), mask, k)  # [B, K] each


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
