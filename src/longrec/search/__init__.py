"""The search stage: a long history [B, L] -> the K behaviours a sequence model attends to, [B, K].

Every searcher is a pure, vectorised function with one signature, registered in `SEARCHERS`:

    searcher(batch, k, query, keys, config) -> (positions [B, K] int64, kept [B, K] bool)

`query [B, D]` / `keys [B, L, D]` are the model's search embeddings (`model.search_embeddings(batch)`) for the
searchers in `NEEDS_EMBEDDINGS`, None for hard searchers. Fewer than K matches -> the rest is not kept (padding is
never selected). `search_stage` runs the configured searcher and returns an ordinary `Batch` holding the K kept
behaviours, **re-ordered chronologically and left-padded**, so a searched batch follows the same convention as a
collated one and a model cannot tell whether search ran (except `BLOCK_SEARCHERS`: hard+soft returns
[hard block | soft block] for two sequence modules, see `search_stage`). `exact_topk` is the oracle: with K = L
soft search keeps every behaviour and the model reproduces full attention exactly.

Shapes: B batch, L history length, K kept behaviours, D search embedding dim.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from longrec.config import SearchConfig
from longrec.data.batch import Batch, gather_history
from longrec.search.category import category
from longrec.search.combined import hard_and_soft
from longrec.search.exact import exact_topk, oldest_first, topk_positions
from longrec.search.hierarchical import hierarchical
from longrec.search.sdim import sdim
from longrec.search.simhash import simhash

__all__ = [
    "BLOCK_SEARCHERS",
    "NEEDS_EMBEDDINGS",
    "SEARCHERS",
    "Searcher",
    "exact_topk",
    "latest",
    "search_stage",
    "soft",
    "topk_positions",
]

Searcher = Callable[[Batch, int, Tensor | None, Tensor | None, SearchConfig], tuple[Tensor, Tensor]]


def latest(
    batch: Batch, k: int, query: Tensor | None, keys: Tensor | None, config: SearchConfig
) -> tuple[Tensor, Tensor]:
    """The K most recent behaviours (the baseline every long-sequence paper starts from)."""
    L = batch.history.shape[1]
    order = torch.arange(L, device=batch.history.device, dtype=torch.float32).expand(len(batch), L)  # [B, L]
    return topk_positions(order, batch.history_mask, k)


def soft(
    batch: Batch, k: int, query: Tensor | None, keys: Tensor | None, config: SearchConfig
) -> tuple[Tensor, Tensor]:
    """Top-K by <key_i, query> with the model's own search embeddings (TWIN: shared tables; DARE: attention tables)."""
    if query is None or keys is None:
        raise ValueError("soft search needs the model's search embeddings: the model has no search_embeddings().")
    return exact_topk(query, keys, batch.history_mask, k)


SEARCHERS: dict[str, Searcher] = {
    "latest": latest,
    "soft": soft,
    "category": category,
    "hierarchical": hierarchical,
    "hard+soft": hard_and_soft,
    "simhash": simhash,
    "sdim": sdim,
}
NEEDS_EMBEDDINGS = {"soft", "hard+soft", "simhash", "sdim"}
# Searchers whose K columns are fixed-width blocks ([hard | soft], each oldest first and left-padded within itself):
# search_stage keeps their column order and passes k = search.k even when L < k (see search/combined.py).
BLOCK_SEARCHERS = {"hard+soft"}


def search_stage(batch: Batch, model: nn.Module | None, config: SearchConfig) -> Batch:
    """Run the configured searcher and keep its K behaviours (every history field moves together).

    Args:
        batch: a collated batch with histories of length L.
        model: the sequence model; searchers in `NEEDS_EMBEDDINGS` call `model.search_embeddings(batch)`
            (no gradient: selection is not differentiable, the model re-scores the K kept behaviours itself).
        config: `method` ('none' keeps the whole history) and `k`.

    Returns:
        The batch with [B, min(K, L)] histories, oldest first and left-padded. Searchers in `BLOCK_SEARCHERS`
        (hard+soft) instead give [B, K] histories laid out as they return them: fixed-width blocks, each oldest
        first and left-padded, so a model can split the columns between its sequence modules.
    """
    if config.method == "none":
        return batch
    searcher = SEARCHERS[config.method]
    blocks = config.method in BLOCK_SEARCHERS
    k = config.k if blocks else min(config.k, batch.history.shape[1])
    query = keys = None
    if config.method in NEEDS_EMBEDDINGS:
        embed = getattr(model, "search_embeddings", None)
        if embed is None:
            raise ValueError(
                f"search.method = '{config.method}' needs a model with search_embeddings(batch); "
                f"{type(model).__name__} has none. Use a hard searcher (latest, category, ...) or 'none'."
            )
        with torch.no_grad():
            query, keys = embed(batch)  # [B, D], [B, L, D]
    positions, kept = searcher(batch, k, query, keys, config)
    if blocks:
        return gather_history(batch, positions, kept)
    return gather_history(batch, *oldest_first(positions, kept))
