"""Hard and soft search together, feeding separate sequence modules (our design: the Tencent paper, arXiv
2510.21714, runs both but does not say how they combine).

The searcher keeps `hard_k` behaviours with a hard searcher (`HardSoftOptions.hard_method`: category or
hierarchical, with that searcher's own setting, `level` or `min_depth`) and
K - hard_k with soft search (exact top-K of <key_i, query> with the model's `search_embeddings`) over the behaviours
the hard searcher did **not** keep, so no behaviour is counted twice. Its output is two blocks of fixed width:

    positions [B, K] = [ hard block: columns 0 .. hard_k - 1 | soft block: columns hard_k .. K - 1 ]

each block oldest first and left-padded within itself (a block with fewer behaviours than its width starts with
padding; the soft block never borrows unused hard slots). `search_stage` keeps this column order (it does not re-order
the K behaviours chronologically as it does for other searchers) and always returns K = `search.k` columns, even
when the batch's L is shorter, so a model splits every searched batch at the same column:

    hard, soft = split_blocks(batch, hard_k)  # histories [B, K_hard] and [B, K - K_hard]

(`split_blocks` slices every history field the same way). See docs/search.md.

Shapes: B batch, L history length, K kept behaviours, D search embedding dim.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from longrec.data.batch import HISTORY_FIELDS, Batch
from longrec.search.category import CategoryOptions, category
from longrec.search.exact import chunked_topk, exact_topk, oldest_first, soft_scores
from longrec.search.hierarchical import HierarchicalOptions, hierarchical
from longrec.settings import ConfigError

__all__ = [
    "HARD_SEARCHERS",
    "HardSoftOptions",
    "hard_and_soft",
    "hard_and_soft_chunked",
    "hard_k_within_k",
    "oldest_first",
    "split_blocks",
]


@dataclass(frozen=True)
class HardSoftOptions:
    """The settings of `hard+soft` (flat in the `[search]` table: `search = { method = "hard+soft", hard_k = 4 }`).

    `level` is read when `hard_method` is category, `min_depth` when it is hierarchical (their own settings).
    """

    hard_method: str = "hierarchical"  # the hard searcher: category | hierarchical
    hard_k: int = 10  # width of the hard block (the first hard_k columns); the soft block gets k - hard_k
    level: int = -1  # category: taxonomy column matched (CategoryOptions.level)
    min_depth: int = 1  # hierarchical: shallowest match depth kept (HierarchicalOptions.min_depth)

    def __post_init__(self) -> None:
        problems = []
        if self.hard_method not in HARD_SEARCHERS:
            known = ", ".join(sorted(HARD_SEARCHERS))
            problems.append(f"search.hard_method must be one of {known}. Got {self.hard_method!r} instead.")
        if self.hard_k < 0:
            problems.append(f"search.hard_k must be >= 0. Got {self.hard_k} instead.")
        for hard_options, value in ((CategoryOptions, self.level), (HierarchicalOptions, self.min_depth)):
            try:
                hard_options(value)  # the hard searcher's own check of its setting
            except ConfigError as err:
                problems += err.problems
        if problems:
            raise ConfigError(problems, "HardSoftOptions")


def hard_k_within_k(k: int, settings: Mapping[str, Any]) -> list[str]:
    """The one check of hard+soft that needs `search.k`: the hard block is part of the K kept.

    Args:
        k: `search.k`.
        settings: the `HardSoftOptions` fields by name (as given, when they did not all pass their own checks).
    """
    hard_k = settings.get("hard_k")
    if isinstance(hard_k, int) and hard_k > k:
        return [f"search.hard_k ({hard_k}) must be <= search.k ({k}): the hard block is part of the K kept."]
    return []


# The hard searchers `HardSoftOptions.hard_method` can name, each run with its own setting taken from the options.
HARD_SEARCHERS: dict[str, Callable[[Batch, int, HardSoftOptions], tuple[Tensor, Tensor]]] = {
    "category": lambda batch, k, options: category(batch, k, None, None, CategoryOptions(options.level)),
    "hierarchical": lambda batch, k, options: hierarchical(
        batch, k, None, None, HierarchicalOptions(options.min_depth)
    ),
}


def _block(positions: Tensor, kept: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """Pad a selection [B, K'] (K' <= width) with empty slots to [B, width], then order it oldest first."""
    pad = width - positions.shape[1]
    positions = torch.nn.functional.pad(positions, (0, pad))  # [B, width], empty slots point at column 0
    kept = torch.nn.functional.pad(kept, (0, pad), value=False)  # [B, width]
    return oldest_first(positions, kept)


def hard_and_soft(
    batch: Batch, k: int, query: Tensor | None, keys: Tensor | None, options: HardSoftOptions
) -> tuple[Tensor, Tensor]:
    """`options.hard_k` behaviours by hard search, then K - hard_k by soft search over the rest, as two blocks.

    Args:
        batch: histories [B, L] with `history_category` [B, L, M] and `target_category` [B, M].
        k: total width K (may exceed L: slots beyond the history stay empty, so block widths never change).
        query: [B, D] the model's search query.
        keys: [B, L, D] the model's search keys.
        options: `hard_method` (category | hierarchical), `hard_k` (0 <= hard_k <= k), and the hard searcher's own
            setting (`level` for category, `min_depth` for hierarchical).

    Returns:
        positions [B, K] int64 into L and kept [B, K] bool: columns [0, hard_k) the hard block, [hard_k, K) the soft
        block, each oldest first and left-padded.

    Raises:
        ValueError: no search embeddings, or hard_k outside [0, k].
    """
    if query is None or keys is None:
        raise ValueError("hard+soft search needs the model's search embeddings: the model has no search_embeddings().")
    return _hard_then_soft(batch, k, options, lambda free, n: exact_topk(query, keys, free, n))


def hard_and_soft_chunked(
    batch: Batch, k: int, chunks: Iterable[tuple[int, Tensor, Tensor]], options: HardSoftOptions
) -> tuple[Tensor, Tensor]:
    """`hard_and_soft` with the soft part walking the history in chunks (same output; docs/long_histories.md).

    Args:
        batch: as in `hard_and_soft`.
        k: as in `hard_and_soft`.
        chunks: (start column, query [B, D], keys [B, c, D]) covering L once, as `search_stage` yields them.
        options: as in `hard_and_soft`.

    Returns:
        positions [B, K] and kept [B, K], equal to `hard_and_soft` on the concatenated keys.
    """

    def soft(free: Tensor, n: int) -> tuple[Tensor, Tensor]:
        return chunked_topk(((start, soft_scores(q, h)) for start, q, h in chunks), free, n)

    return _hard_then_soft(batch, k, options, soft)


def _hard_then_soft(
    batch: Batch, k: int, options: HardSoftOptions, soft: Callable[[Tensor, int], tuple[Tensor, Tensor]]
) -> tuple[Tensor, Tensor]:
    """The two blocks; `soft(free [B, L], n)` is the soft top-n over the behaviours hard search left free."""
    hard_k = options.hard_k
    if not 0 <= hard_k <= k:
        raise ValueError(f"search.hard_k must be in [0, search.k] = [0, {k}]. Got {hard_k} instead.")
    mask = batch.history_mask  # [B, L]
    L = mask.shape[1]
    positions, kept = [], []
    free = mask  # [B, L] behaviours the soft search may still take
    if hard_k > 0:
        p, m = HARD_SEARCHERS[options.hard_method](batch, min(hard_k, L), options)  # [B, min(hard_k, L)]
        free = mask & ~torch.zeros_like(mask).scatter(1, p, m)  # [B, L]; top-K positions are distinct per row
        p, m = _block(p, m, hard_k)  # [B, K_hard]
        positions.append(p)
        kept.append(m)
    if k > hard_k:
        p, m = soft(free, min(k - hard_k, L))  # [B, min(K - K_hard, L)]
        p, m = _block(p, m, k - hard_k)  # [B, K - K_hard]
        positions.append(p)
        kept.append(m)
    return torch.cat(positions, dim=1), torch.cat(kept, dim=1)  # [B, K] each


def split_blocks(batch: Batch, hard_k: int) -> tuple[Batch, Batch]:
    """Split a hard+soft searched batch into the hard block and the soft block, one per sequence module.

    Args:
        batch: the output of `search_stage` with `search.method = "hard+soft"`: histories [B, K].
        hard_k: `search.hard_k` (`HardSoftOptions.hard_k`) the batch was searched with (a model takes it as a config
            field).

    Returns:
        (hard, soft): the same batch with every history field cut to columns [0, hard_k) and [hard_k, K); target
        fields are shared. Each block is oldest first and left-padded, like a collated batch.

    Example:
        >>> hard, soft = split_blocks(search_stage(batch, model, search), search.options.hard_k)  # doctest: +SKIP
    """
    K = batch.history.shape[1]
    if not 0 <= hard_k <= K:
        raise ValueError(f"hard_k must be in [0, K] = [0, {K}] (the searched width). Got {hard_k} instead.")
    fields = [name for name in HISTORY_FIELDS if getattr(batch, name) is not None]
    hard = batch.replace(**{name: getattr(batch, name)[:, :hard_k] for name in fields})  # [B, K_hard, ...]
    soft = batch.replace(**{name: getattr(batch, name)[:, hard_k:] for name in fields})  # [B, K - K_hard, ...]
    return hard, soft
