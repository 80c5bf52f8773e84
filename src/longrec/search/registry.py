"""`SEARCHERS`: every searcher by the name `search.method` gives it, with its settings class and what it needs.

One record per searcher says everything `search_stage` and the config loader need to know about it:

    "simhash": _entry(SimHashOptions, simhash, _scored(simhash_scores), needs_embeddings=True)  # a SearchMethod

- `options`: its frozen settings dataclass, defined next to the function (None: it has no settings); the flat
  `[search]` table fills it (`longrec.search.config`).
- `search`: `searcher(batch, k, query, keys, options) -> (positions [B, K] int64, kept [B, K] bool)`.
- `chunked`: the same selection walking the history in chunks of search embeddings (docs/long_histories.md).
- `needs_embeddings`: `search_stage` passes the model's `search_embeddings(batch)` as query/keys (else None).
- `blocks`: the K columns are fixed-width blocks ([hard | soft], each oldest first and left-padded within itself):
  `search_stage` keeps their column order and passes k = search.k even when L < k (see search/combined.py).
- `check_k`: the checks of its settings that need `search.k` (problems, one line each).

Shapes: B batch, L history length, K kept behaviours, D search embedding dim, c columns of one chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch
from torch import Tensor

from longrec.data.batch import Batch
from longrec.search.category import CategoryOptions, category
from longrec.search.combined import HardSoftOptions, hard_and_soft, hard_and_soft_chunked, hard_k_within_k
from longrec.search.exact import chunked_topk, exact_topk, soft_scores, topk_positions
from longrec.search.hierarchical import HierarchicalOptions, hierarchical
from longrec.search.sdim import SDIMOptions, sdim, sdim_scores
from longrec.search.simhash import SimHashOptions, simhash, simhash_scores

__all__ = ["SEARCHERS", "ChunkedSearcher", "KeyChunks", "SearchMethod", "Searcher", "latest", "soft"]

OptionsT = TypeVar("OptionsT")  # a searcher's settings class (None for a searcher without settings)

# (start column, query [B, D], keys [B, c, D]) for consecutive chunks of the history, as `history_chunks` yields.
KeyChunks = Iterable[tuple[int, Tensor, Tensor]]
Searcher = Callable[[Batch, int, Tensor | None, Tensor | None, OptionsT], tuple[Tensor, Tensor]]
ChunkedSearcher = Callable[[Batch, int, KeyChunks, OptionsT], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class SearchMethod(Generic[OptionsT]):
    """One entry of `SEARCHERS` (fields in the module docstring)."""

    options: type[OptionsT] | None
    search: Searcher[OptionsT]
    chunked: ChunkedSearcher[OptionsT] | None = None
    needs_embeddings: bool = False
    blocks: bool = False
    check_k: Callable[[int, Mapping[str, Any]], list[str]] | None = None


def latest(batch: Batch, k: int, query: Tensor | None, keys: Tensor | None, options: None) -> tuple[Tensor, Tensor]:
    """The K most recent behaviours (the baseline every long-sequence paper starts from)."""
    L = batch.history.shape[1]
    order = torch.arange(L, device=batch.history.device, dtype=torch.float32).expand(len(batch), L)  # [B, L]
    return topk_positions(order, batch.history_mask, k)


def soft(batch: Batch, k: int, query: Tensor | None, keys: Tensor | None, options: None) -> tuple[Tensor, Tensor]:
    """Top-K by <key_i, query> with the model's own search embeddings (TWIN: shared tables; DARE: attention tables)."""
    if query is None or keys is None:
        raise ValueError("soft search needs the model's search embeddings: the model has no search_embeddings().")
    return exact_topk(query, keys, batch.history_mask, k)


def _scored(scores: Callable[[Tensor, Tensor, OptionsT], Tensor]) -> ChunkedSearcher[OptionsT]:
    """The chunked form of a searcher that is a top-K of per-behaviour scores: a running top-K over the chunks."""

    def searcher(batch: Batch, k: int, chunks: KeyChunks, options: OptionsT) -> tuple[Tensor, Tensor]:
        return chunked_topk(((start, scores(q, h, options)) for start, q, h in chunks), batch.history_mask, k)

    return searcher


def _soft_scores(query: Tensor, keys: Tensor, options: None) -> Tensor:
    return soft_scores(query, keys)  # [B, c]


def _entry(
    options: type[OptionsT] | None,
    search: Searcher[OptionsT],
    chunked: ChunkedSearcher[OptionsT] | None = None,
    *,
    needs_embeddings: bool = False,
    blocks: bool = False,
    check_k: Callable[[int, Mapping[str, Any]], list[str]] | None = None,
) -> SearchMethod[Any]:
    """A `SearchMethod` whose options class and functions mypy checks against each other (a `SearchMethod(...)`
    written inside the `SearchMethod[Any]` dict would take its type from the dict and check nothing)."""
    return SearchMethod(options, search, chunked, needs_embeddings, blocks, check_k)


SEARCHERS: dict[str, SearchMethod[Any]] = {
    "latest": _entry(None, latest),
    "soft": _entry(None, soft, _scored(_soft_scores), needs_embeddings=True),
    "category": _entry(CategoryOptions, category),
    "hierarchical": _entry(HierarchicalOptions, hierarchical),
    "hard+soft": _entry(
        HardSoftOptions,
        hard_and_soft,
        hard_and_soft_chunked,
        needs_embeddings=True,
        blocks=True,
        check_k=hard_k_within_k,
    ),
    "simhash": _entry(SimHashOptions, simhash, _scored(simhash_scores), needs_embeddings=True),
    "sdim": _entry(SDIMOptions, sdim, _scored(sdim_scores), needs_embeddings=True),
}
