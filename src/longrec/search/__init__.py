"""The search stage: a long history [B, L] -> the K behaviours a sequence model attends to, [B, K].

Every searcher is a pure, vectorised function with one signature, registered in `SEARCHERS` (search/registry.py)
together with its own settings class (`SimHashOptions`, `CategoryOptions`, ..., next to the function):

    searcher(batch, k, query, keys, options) -> (positions [B, K] int64, kept [B, K] bool)

`query [B, D]` / `keys [B, L, D]` are the model's search embeddings (a `SearchEmbedder`'s `search_embeddings(batch)`)
for the searchers that need embeddings, None for hard searchers. Fewer than K matches -> the rest is not kept
(padding is never selected). `search_stage` runs the configured searcher (`SearchConfig`: method, k, the method's
options, chunk) and returns an ordinary `Batch` holding the K kept behaviours, **re-ordered chronologically and
left-padded**, so a searched batch follows the same convention as a collated one and a model cannot tell whether
search ran (except searchers with `blocks`: hard+soft returns [hard block | soft block] for two sequence modules, see
`search_stage`). `exact_topk` is the oracle: with K = L soft search keeps every behaviour and the model reproduces
full attention exactly.

**Long histories** (docs/long_histories.md): the embedding searchers with a `chunked` variant can walk L in chunks
(`search.chunk`; by default automatically when the [B, L, D] keys would exceed `AUTO_CHUNK_BYTES`): `search_stage`
embeds one chunk of columns at a time (`model.search_embeddings` on the batch cut to those columns), scores it and
keeps a running top-K, so the peak is O(B·chunk·D + B·K) instead of O(B·L·D). The result is identical to the
unchunked path (same positions, same tie rule: ties -> the more recent behaviour, `search/exact.py`), provided the
model's keys are per-behaviour (a behaviour's key depends on its own fields only) - true of every model here.

**One user, many candidates** (serving): a request that scores C candidates for one user is a C-row batch whose
history fields are `expand`ed views of one history (`one_user_request` builds it; no C·L copy). `search_stage`
recognises it (stride 0 along B, `shares_one_history`) and, for soft search, embeds the history once and scores all C
queries against it as one [C, D] x [D, L] matrix product walked in column chunks with a running top-K, so the cost is
O(L·D) embedding + O(C·L·D) multiply-adds instead of C full embeddings of the history. Same positions as the
per-row path (up to the float rounding of the scores, which can only reorder exact near-ties).

Shapes: B batch, L history length, K kept behaviours, D search embedding dim, c columns of one chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from longrec.data.batch import HISTORY_FIELDS, TARGET_FIELDS, Batch, gather_history
from longrec.search.category import CategoryOptions
from longrec.search.combined import HardSoftOptions
from longrec.search.config import SearchConfig, SearchOptions, fill_search
from longrec.search.exact import SCORE_BLOCK, chunked_topk, exact_topk, oldest_first, topk_positions
from longrec.search.hierarchical import HierarchicalOptions
from longrec.search.registry import SEARCHERS, ChunkedSearcher, KeyChunks, Searcher, SearchMethod, latest, soft
from longrec.search.sdim import SDIMOptions
from longrec.search.simhash import SimHashOptions

__all__ = [
    "AUTO_CHUNK_BYTES",
    "SEARCHERS",
    "CategoryOptions",
    "ChunkedSearcher",
    "HardSoftOptions",
    "HierarchicalOptions",
    "KeyChunks",
    "SDIMOptions",
    "SearchConfig",
    "SearchEmbedder",
    "SearchMethod",
    "SearchOptions",
    "Searcher",
    "SimHashOptions",
    "chunk_size",
    "exact_topk",
    "fill_search",
    "history_chunks",
    "history_columns",
    "latest",
    "one_user_request",
    "search_stage",
    "shares_one_history",
    "soft",
    "topk_positions",
]

AUTO_CHUNK_BYTES = 16 * 2**20  # search.chunk = 0: chunk when the [B, L, D] keys would take more than this


@runtime_checkable
class SearchEmbedder(Protocol):
    """A model that steers search: its search embeddings score behaviours for the embedding searchers."""

    def search_embeddings(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Query [B, D] and keys [B, L, D]; <query, key_i> ranks behaviour i. Keys must be per-behaviour."""
        ...


def history_columns(batch: Batch, start: int, stop: int) -> Batch:
    """The batch cut to history columns [start, stop) (every L-axis field; target fields unchanged)."""
    fields = [name for name in HISTORY_FIELDS if getattr(batch, name) is not None]
    return batch.replace(**{name: getattr(batch, name)[:, start:stop] for name in fields})  # [B, c, ...]


def history_chunks(
    batch: Batch, embed: Callable[[Batch], tuple[Tensor, Tensor]], chunk: int
) -> Iterator[tuple[int, Tensor, Tensor]]:
    """Search embeddings of `chunk` columns at a time: (start, query [B, D], keys [B, c, D]), lazily.

    Args:
        batch: histories [B, L]; must carry `history_position` (the relative position is a field of each behaviour,
            so a chunk's keys equal the same columns of the whole history's keys).
        embed: `model.search_embeddings`.
        chunk: columns per chunk (the last chunk may be shorter).
    """
    L = batch.history.shape[1]
    for start in range(0, L, chunk):
        query, keys = embed(history_columns(batch, start, min(start + chunk, L)))  # [B, D], [B, c, D]
        yield start, query, keys


def chunk_size(batch: Batch, embed: Callable[[Batch], tuple[Tensor, Tensor]], config: SearchConfig) -> int:
    """Columns per chunk for this batch, or 0 for the whole history at once.

    `search.chunk` > 0 is used as given (0 when L fits in one chunk); -1 never chunks; 0 (auto) chunks when the keys
    [B, L, D] would take more than `AUTO_CHUNK_BYTES`, with chunks of about that size (a multiple of `SCORE_BLOCK`);
    D comes from embedding one column. A batch without `history_position` is never chunked: models would derive
    each chunk's relative positions from the chunk's own mask.
    """
    L = batch.history.shape[1]
    entry = SEARCHERS.get(config.method)
    if entry is None or entry.chunked is None or config.chunk == -1 or batch.history_position is None:
        return 0
    if config.chunk > 0:
        return config.chunk if config.chunk < L else 0
    if L <= SCORE_BLOCK:
        return 0
    _, probe = embed(history_columns(batch, L - 1, L))  # [B, 1, D]
    column_bytes = len(batch) * probe.shape[-1] * probe.element_size()  # keys bytes per history column
    if column_bytes * L <= AUTO_CHUNK_BYTES:
        return 0
    chunk = max(1, AUTO_CHUNK_BYTES // column_bytes // SCORE_BLOCK) * SCORE_BLOCK
    return chunk if chunk < L else 0


def shares_one_history(batch: Batch) -> bool:
    """Whether every row of `batch` views one and the same history (stride 0 along B, as `one_user_request` builds)."""
    fields = [getattr(batch, name) for name in HISTORY_FIELDS if getattr(batch, name) is not None]
    return len(batch) > 1 and all(value.stride(0) == 0 for value in fields)


def one_user_request(history: Batch, candidates: dict[str, Tensor]) -> Batch:
    """A serving request: one user's history (a 1-row batch) against C candidates, without copying the history.

    Args:
        history: a batch of one row (its target fields are ignored where `candidates` replaces them).
        candidates: target fields of the C candidates, each with a leading C axis: `target` [C] is required; others
            (`target_category` [C, M], `target_extra` [C, E], `goal` [C], ...) replace the row's; target fields of the
            history row that `candidates` does not name (user, target_time, scene) are repeated.

    Returns:
        A C-row batch whose history fields are `expand`ed views of the one history (`shares_one_history` is True).
    """
    if len(history) != 1:
        raise ValueError(f"one_user_request: the history batch must have 1 row. Got {len(history)} rows instead.")
    if "target" not in candidates:
        raise ValueError(f"one_user_request: candidates must include 'target'. Got {sorted(candidates)} instead.")
    C = int(candidates["target"].shape[0])
    unknown = sorted(set(candidates) - set(TARGET_FIELDS))
    if unknown:
        raise ValueError(f"one_user_request: {unknown} are not target fields; expected some of {TARGET_FIELDS}.")
    changes: dict[str, Tensor | None] = {}
    for name, value in history.fields().items():
        if name in candidates:
            continue
        changes[name] = value.expand(C, *value.shape[1:])  # [C, ...] views of row 0
    for name, value in candidates.items():
        if value.shape[0] != C:
            raise ValueError(f"one_user_request: candidates[{name!r}] has {value.shape[0]} rows, 'target' has {C}.")
        changes[name] = value
    changes["label"] = candidates.get("label")
    return history.replace(**changes)


def _shared_soft_search(
    batch: Batch, embed: Callable[[Batch], tuple[Tensor, Tensor]], k: int, chunk: int
) -> tuple[Tensor, Tensor]:
    """Soft search for a batch whose rows share one history: embed it once, one matrix product per chunk of columns.

    Returns positions [B, K] and kept [B, K] (the K that `soft` keeps row by row, in any order)."""
    L = batch.history.shape[1]
    query, _ = embed(history_columns(batch, L - 1, L))  # [B, D] (the query reads target fields only)
    one = batch.replace(**{name: value[:1] for name, value in batch.fields().items()})  # the history, once
    _, keys = embed(one)  # [1, L, D]
    step = chunk or max(SCORE_BLOCK, AUTO_CHUNK_BYTES // max(4 * len(batch), 1) // SCORE_BLOCK * SCORE_BLOCK)
    scores = ((start, query @ keys[0, start : start + step].T) for start in range(0, L, step))  # [B, c] each
    return chunked_topk(scores, batch.history_mask, k, best_first=False)  # search_stage orders them oldest first


def search_stage(batch: Batch, model: nn.Module | None, config: SearchConfig) -> Batch:
    """Run the configured searcher and keep its K behaviours (every history field moves together).

    Args:
        batch: a collated batch with histories of length L.
        model: the sequence model; searchers that need embeddings call its `search_embeddings(batch)` (a
            `SearchEmbedder`; no gradient: selection is not differentiable, the model re-scores the K kept behaviours
            itself).
        config: `method` ('none' keeps the whole history), `k`, the method's `options`, and `chunk` (searchers with
            a chunked variant: walk L in chunks, see `chunk_size`; the output does not depend on it).

    Returns:
        The batch with [B, min(K, L)] histories, oldest first and left-padded. Searchers with `blocks`
        (hard+soft) instead give [B, K] histories laid out as they return them: fixed-width blocks, each oldest
        first and left-padded, so a model can split the columns between its sequence modules.
    """
    if config.method == "none":
        return batch
    searcher = SEARCHERS[config.method]
    k = config.k if searcher.blocks else min(config.k, batch.history.shape[1])
    query = keys = None
    positions = kept = None
    if searcher.needs_embeddings:
        if not isinstance(model, SearchEmbedder):
            raise ValueError(
                f"search.method = '{config.method}' needs a model with search_embeddings(batch); "
                f"{type(model).__name__} has none. Use a hard searcher (latest, category, ...) or 'none'."
            )
        embed = model.search_embeddings
        with torch.no_grad():
            if config.method == "soft" and shares_one_history(batch):  # one user, C candidates
                positions, kept = _shared_soft_search(batch, embed, k, max(config.chunk, 0))
            elif searcher.chunked is not None and (chunk := chunk_size(batch, embed, config)):
                chunks = history_chunks(batch, embed, chunk)
                positions, kept = searcher.chunked(batch, k, chunks, config.options)  # [B, K] each
            else:
                query, keys = embed(batch)  # [B, D], [B, L, D]
    if positions is None or kept is None:
        positions, kept = searcher.search(batch, k, query, keys, config.options)
    if searcher.blocks:
        return gather_history(batch, positions, kept)
    return gather_history(batch, *oldest_first(positions, kept))
