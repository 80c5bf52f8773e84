"""Category search: SIM hard search (Pi et al., CIKM 2020, https://arxiv.org/abs/2006.05639).

Keep the behaviours whose category equals the target's, most recent first. SIM matches on one category; we match
on one configurable column of the taxonomy path (`CategoryOptions.level`, `search.level` in a config: Python
indexing into M, 0 = coarsest, -1 = finest, the default). A missing level (id 0) never matches: a target with no
category at that level keeps nothing, and a behaviour with none there is never kept. Fewer than K matches -> the
remaining slots are not kept (never filled with non-matching behaviours or padding).

Selection is one vectorised top-K over the real, matching behaviours only; every one of them scores the same, so
`topk_positions`' tie rule (ties -> the more recent behaviour) orders them most recent first.

Shapes: B batch, L history length, K kept behaviours, M taxonomy levels.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from longrec.data.batch import Batch
from longrec.search.exact import topk_positions
from longrec.settings import ConfigError

__all__ = ["CategoryOptions", "category", "category_match", "require_categories"]


@dataclass(frozen=True)
class CategoryOptions:
    """The settings of `category` (flat in the `[search]` table: `search = { method = "category", level = 0 }`)."""

    level: int = (
        -1
    )  # taxonomy column matched (Python indexing into M: 0 coarsest, -1 finest); checked against M per batch

    def __post_init__(self) -> None:
        if isinstance(self.level, bool) or not isinstance(self.level, int):
            raise ConfigError(
                [f"search.level must be an int (0 = coarsest, -1 = finest). Got {self.level!r} instead."],
                "CategoryOptions",
            )


def require_categories(batch: Batch, searcher: str) -> tuple[Tensor, Tensor]:
    """Return (history_category [B, L, M], target_category [B, M]); raise a ValueError that says what to do if
    the batch has none (hard search reads the taxonomy path)."""
    if batch.history_category is None or batch.target_category is None:
        raise ValueError(
            f"{searcher} search reads batch.history_category and batch.target_category, but they are None. "
            "Prepare the data with category columns, or use search.method = 'latest' or a soft searcher."
        )
    return batch.history_category, batch.target_category


def category_match(history_category: Tensor, target_category: Tensor, level: int) -> Tensor:
    """Which behaviours share the target's category at one taxonomy column.

    Args:
        history_category: [B, L, M] int64 taxonomy paths, coarse to fine, 0 = level missing.
        target_category: [B, M] int64.
        level: column of M (Python indexing: 0 = coarsest, -1 = finest).

    Returns:
        [B, L] bool, True where path_i[level] == path_t[level] != 0.

    Raises:
        ValueError: `level` is not a column of M.
    """
    M = history_category.shape[-1]
    if not -M <= level < M:
        raise ValueError(
            f"search.level = {level} is not a taxonomy column: the data has M = {M} level(s), so level must be in "
            f"[-{M}, {M}) (0 = coarsest, -1 = finest)."
        )
    t = target_category[:, level].unsqueeze(1)  # [B, 1]
    return (history_category[:, :, level] == t) & (t != 0)  # [B, L]


def category(
    batch: Batch, k: int, query: Tensor | None, keys: Tensor | None, options: CategoryOptions
) -> tuple[Tensor, Tensor]:
    """The K most recent behaviours whose category at `options.level` equals the target's.

    Args:
        batch: histories [B, L] with `history_category` [B, L, M] and `target_category` [B, M].
        k: behaviours to keep, 1 <= k <= L.
        query: unused (hard search needs no embeddings).
        keys: unused.
        options: `level`, the taxonomy column to match on (default -1, the finest).

    Returns:
        positions [B, K] int64 into L, most recent match first, and kept [B, K] bool (False = no match left).
    """
    history_category, target_category = require_categories(batch, "category")
    match = category_match(history_category, target_category, options.level) & batch.history_mask  # [B, L]
    return topk_positions(match, match, k)  # equal scores: the most recent matches first
