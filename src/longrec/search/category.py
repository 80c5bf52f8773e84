"""Category search: SIM hard search (Pi et al., CIKM 2020, https://arxiv.org/abs/2006.05639).

Keep the behaviours whose category equals the target's, most recent first. SIM matches on one category; we match
on one configurable column of the taxonomy path (`CategoryOptions.level`, `search.level` in a config: Python
indexing into M, 0 = coarsest, -1 = finest, the default). A missing level (id 0) never matches: a target with no
category at that level matches nothing, and a behaviour with none there never matches. Fewer than K matches -> by
default (`fill = "none"`) the remaining slots are not kept; with `fill = "latest"` they take the most recent
non-matching behaviours (the DARE reference code, and the Tencent paper's "rolling back to latest behaviors"), so an
empty match set no longer means an empty history. Padding is never kept.

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

__all__ = ["FILL_MODES", "CategoryOptions", "category", "category_match", "check_fill", "require_categories"]

FILL_MODES = ("none", "latest")


def check_fill(fill: object, owner: str) -> None:
    """Raise a ConfigError unless `fill` is one of `FILL_MODES`."""
    if fill not in FILL_MODES:
        raise ConfigError(
            [
                f"search.fill must be one of {', '.join(FILL_MODES)} (latest: free slots take the most recent "
                f"non-matching behaviours). Got {fill!r} instead."
            ],
            owner,
        )


@dataclass(frozen=True)
class CategoryOptions:
    """The settings of `category` (flat in the `[search]` table: `search = { method = "category", level = 0 }`)."""

    # taxonomy column matched (Python indexing into M: 0 coarsest, -1 finest); checked against M per batch
    level: int = -1
    fill: str = "none"  # none: fewer than K matches leave slots empty | latest: the most recent non-matches fill them

    def __post_init__(self) -> None:
        if isinstance(self.level, bool) or not isinstance(self.level, int):
            raise ConfigError(
                [f"search.level must be an int (0 = coarsest, -1 = finest). Got {self.level!r} instead."],
                "CategoryOptions",
            )
        check_fill(self.fill, "CategoryOptions")


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
        options: `level`, the taxonomy column to match on (default -1, the finest); `fill`.

    Returns:
        positions [B, K] int64 into L, most recent match first (then, with fill = "latest", the most recent
        non-matching behaviours), and kept [B, K] bool (False = nothing left to keep).
    """
    history_category, target_category = require_categories(batch, "category")
    match = category_match(history_category, target_category, options.level) & batch.history_mask  # [B, L]
    if options.fill == "latest":  # matches score 1, other real behaviours 0: both most recent first
        return topk_positions(match.float(), batch.history_mask, k)
    return topk_positions(match, match, k)  # equal scores: the most recent matches first
