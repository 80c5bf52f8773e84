"""The taxonomy mapping table: each domain's own categories -> one unified path, checked to be a tree.

**The mapping table** (CSV or Parquet; docs/unify.md) has columns `domain, source_category, cat_1, ..., cat_M`: the
domain's own category -> its unified path, coarse to fine. An empty level is one the domain cannot reach (content
never reaches the SPU level). A path has no gaps (`cat_2` set needs `cat_1` set), a key has one path, and the unified
taxonomy is a tree (each node has one parent), because `prepare` gives every level its own id block and hierarchical
search matches on it; any violation is a `DataError` naming the file, line, column, expected and got. Other columns
(names, comments) are ignored. `longrec synth` writes such a table as `taxonomy_map.csv`; `longrec.ingest.unify`
looks categories up in it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from longrec.ingest.reading import PathLike, _with_hints
from longrec.ingest.schema import DataError

__all__ = ["MAP_KEYS", "TaxonomyMap", "read_taxonomy_map"]

MAP_KEYS = ("domain", "source_category")
_CAT = re.compile(r"^cat_(\d+)$")


def _cat_levels(names: Sequence[str]) -> list[int]:
    """Sorted level numbers m of the `cat_m` columns among `names`."""
    return sorted(int(match.group(1)) for n in names if (match := _CAT.match(n)))


@dataclass(frozen=True)
class TaxonomyMap:
    """A checked taxonomy mapping table: (domain, source_category) -> unified path cat_1..cat_M."""

    table: pl.DataFrame  # domain (str), source_category (str), cat_1..cat_M; one row per key
    source: str  # the file name (or "DataFrame"), quoted in the report
    duplicates: int = 0  # rows that repeated another row's key with the same path (dropped)

    @property
    def levels(self) -> int:
        return len(_cat_levels(self.table.columns))

    def entries(self) -> dict[str, int]:
        """Keys per domain."""
        counts = self.table.group_by("domain").len().sort("domain")
        return dict(zip(counts["domain"].to_list(), counts["len"].to_list(), strict=True))


def _as_int_if_all_int(column: pl.Series) -> pl.Series:
    """A text column whose non-null values are all integers becomes Int64 (like `load_table` on CSV)."""
    as_int = column.cast(pl.Int64, strict=False)
    return as_int if as_int.null_count() == column.null_count() else column


def _resize(table: pl.DataFrame, levels: int) -> pl.DataFrame:
    """Keep the coarsest `levels` levels of a map; levels it lacks are null (no domain reaches them)."""
    if levels < 1:
        raise ValueError(f"taxonomy levels must be a positive int. Got {levels} instead.")
    have = len(_cat_levels(table.columns))
    cats = [pl.col(f"cat_{m}") if m <= have else pl.lit(None, pl.Int64).alias(f"cat_{m}") for m in range(1, levels + 1)]
    return table.select(*MAP_KEYS, *cats)


def read_taxonomy_map(mapping: PathLike | pl.DataFrame, levels: int | None = None) -> TaxonomyMap:
    """Read and check a taxonomy mapping table.

    Args:
        mapping: a CSV file (optionally compressed; every value read as text, a level whose values are all integers
            becomes Int64), a Parquet file (.parquet/.pq; dtypes kept), or a DataFrame with the same columns.
        levels: M, the unified depth to keep: finer levels of the file are cut, missing ones are null. None: all of
            the file's levels.

    Returns:
        The checked table, one row per (domain, source_category).

    Raises:
        FileNotFoundError: no such file.
        DataError: a missing column, an empty key, a path with a gap or without cat_1, a key mapped to two different
            paths, or a node with two parents; the message names the file, the line (CSV, 1-based with the header)
            or row (0-based), the column, what was expected and what was found.
    """
    if isinstance(mapping, pl.DataFrame):
        name, frame, is_csv = "taxonomy map (DataFrame)", mapping, False
    else:
        path = Path(mapping)
        if not path.is_file():
            raise FileNotFoundError(f"Taxonomy map {str(mapping)!r} does not exist (or is not a file).")
        name = str(mapping)
        suffixes = [s.lower() for s in path.suffixes]
        is_csv = not (suffixes and suffixes[-1] in (".parquet", ".pq"))
        try:
            frame = pl.read_csv(path, infer_schema=False) if is_csv else pl.read_parquet(path)
        except (pl.exceptions.PolarsError, OSError) as exc:
            kind = "CSV" if is_csv else "Parquet"
            raise DataError(f"{name}: expected a {kind} taxonomy map, got a read error: {exc}.") from exc

    def where(row: int) -> str:
        return f"{name} line {row + 2}" if is_csv else f"{name} row {row} (0-based)"

    found = frame.columns
    numbers = _cat_levels(found)
    missing = [c for c in (*MAP_KEYS, "cat_1") if c not in found]
    if missing:
        raise DataError(
            f"{name} is missing column(s) {_with_hints(missing, found)}. Found: "
            f"{', '.join(found) or 'no columns'}. "
            "A taxonomy map has columns domain, source_category, cat_1, ..., cat_M."
        )
    if numbers != list(range(1, len(numbers) + 1)):
        gap = next(m for m in range(1, numbers[-1] + 1) if m not in numbers)
        raise DataError(
            f"{name} has level columns {', '.join(f'cat_{m}' for m in numbers)}: expected cat_1..cat_M without gaps, "
            f"got no cat_{gap}."
        )
    if frame.height == 0:
        raise DataError(f"{name}: expected at least one mapping row, got 0 rows.")
    cats = [f"cat_{m}" for m in numbers]

    def text(col: str) -> pl.Expr:
        value = pl.col(col).cast(pl.String)
        return pl.when(value != "").then(value)  # an empty text value is a missing one

    frame = frame.select(
        *(text(c).alias(c) for c in (*MAP_KEYS, *cats) if c in MAP_KEYS or frame.schema[c] == pl.String),
        *(c for c in cats if frame.schema[c] != pl.String),
    ).select(*MAP_KEYS, *cats)
    if is_csv:
        frame = frame.with_columns(_as_int_if_all_int(frame[c]) for c in cats)
    frame = frame.with_row_index("_row")

    def first(bad: pl.Expr) -> dict[str, Any] | None:
        hit = frame.filter(bad).head(1)
        return hit.row(0, named=True) if hit.height else None

    for col, what in (("domain", "a domain name"), ("source_category", "a source category")):
        if (row := first(pl.col(col).is_null())) is not None:
            raise DataError(f"{where(row['_row'])}, column '{col}': expected {what}, got an empty value.")
    if (row := first(pl.col("cat_1").is_null())) is not None:
        raise DataError(
            f"{where(row['_row'])}, column 'cat_1': expected the coarsest unified category (every mapped path "
            "starts at cat_1), got an empty value."
        )
    for m in range(2, len(cats) + 1):
        if (row := first(pl.col(f"cat_{m - 1}").is_null() & pl.col(f"cat_{m}").is_not_null())) is not None:
            raise DataError(
                f"{where(row['_row'])}, column 'cat_{m}': expected an empty value because cat_{m - 1} is empty (a "
                f"path runs coarse to fine without gaps), got {row[f'cat_{m}']!r}."
            )

    def path_of(row: dict[str, Any]) -> str:
        return " > ".join(str(row[c]) for c in cats if row[c] is not None)

    # One path per key: exact repeats are harmless (dropped, counted); different paths are an error.
    unique = frame.unique([*MAP_KEYS, *cats], keep="first", maintain_order=True)
    conflict = unique.filter(pl.len().over(MAP_KEYS) > 1)
    if conflict.height:
        d, k = conflict.row(0)[1:3]
        a, b = conflict.filter((pl.col("domain") == d) & (pl.col("source_category") == k)).head(2).rows(named=True)
        raise DataError(
            f"{where(b['_row'])}: domain {b['domain']!r}, source_category {b['source_category']!r} is mapped twice: "
            f"expected one path, got {path_of(a)!r} at {where(a['_row'])} and {path_of(b)!r} here."
        )
    # A tree: every node of level m >= 2 has one parent (prepare gives each level its own id block, so a node with two
    # parents would be one category under two coarser ones).
    for m in range(2, len(cats) + 1):
        child, parent = f"cat_{m}", f"cat_{m - 1}"
        nodes = unique.filter(pl.col(child).is_not_null()).unique([child, parent], keep="first", maintain_order=True)
        clash = nodes.filter(pl.len().over(child) > 1)
        if clash.height:
            a, b = clash.filter(pl.col(child) == clash[child][0]).head(2).rows(named=True)
            raise DataError(
                f"{where(b['_row'])}, column '{parent}': {child} = {b[child]!r} already has the parent "
                f"{a[parent]!r} at {where(a['_row'])}, got {b[parent]!r}; every unified category needs one parent."
            )
    table = unique.drop("_row")
    if levels is not None:
        table = _resize(table, levels)
    return TaxonomyMap(table=table, source=name, duplicates=frame.height - unique.height)
