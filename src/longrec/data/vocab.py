"""Raw ids to dense ids with a store's vocabularies, for data that arrives after `prepare` (scoring, serving).

A prepared store keeps each vocabulary as `vocab/<name>.parquet`, the raw values in dense-id order (dense id = row + 1;
0 is padding), and a serving artifact (`longrec.serve.artifact`) carries copies of them in the same layout.
`Vocabulary` reads either (a store, or any folder holding `vocab/`) and looks raw values up in them, with one rule
for values it does not hold: they map to id 0, **the out-of-vocabulary row**. Every model embeds id 0 as a zero
vector that never gets a gradient (the padding row), so an unknown item contributes nothing through its id and only
through its other fields (its category, action, time).
Unknown values are counted per name (`Vocabulary.unknown`), or refused with `unknown="error"`.

Lookups are vectorised (a polars join), and each vocabulary is read once and kept.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from longrec.data.store import TrajectoryStore, read_vocab, vocab_sha

__all__ = ["UNKNOWN_MODES", "Vocabulary"]

UNKNOWN_MODES = ("zero", "error")


class Vocabulary:
    """The vocabularies of a prepared store (or of a folder holding its `vocab/`), as raw -> dense lookups (unknown
    -> 0, counted).

    Args:
        source: the prepared store, or a folder holding `vocab/<name>.parquet` files (a serving artifact).
        sha: the vocabulary sha the folder's files must have (`longrec.data.store.vocab_sha`); checked when given,
            computed when not. Unused for a store (its manifest holds it).

    Raises:
        FileNotFoundError: a folder without `vocab/`.
        ValueError: a folder whose vocabularies do not have `sha` (damaged or replaced files).

    Example:
        >>> vocab = Vocabulary(store)  # doctest: +SKIP
        >>> vocab.dense("item_id", [7, 14, 999_999])  # doctest: +SKIP
        array([1, 2, 0])
    """

    def __init__(self, source: TrajectoryStore | str | Path, sha: str | None = None) -> None:
        if isinstance(source, TrajectoryStore):
            self.root, self.sha = source.root, str(source.manifest["vocab_sha"])
        else:
            self.root = Path(source)
            if not (self.root / "vocab").is_dir():
                raise FileNotFoundError(f"{self.root / 'vocab'} not found: no vocabularies to read in {self.root}.")
            found = vocab_sha(self.root / "vocab")
            if sha is not None and found != sha:
                raise ValueError(
                    f"{self.root / 'vocab'} has vocabulary sha {found}, expected {sha}: its files were changed or "
                    "replaced, so raw ids would map to the wrong rows. Copy the folder again from its source."
                )
            self.sha = found
        self.unknown: dict[str, int] = {}
        self._tables: dict[str, pl.DataFrame] = {}
        self._lock = threading.Lock()  # the tables and the counts are shared by a server's threads

    def names(self) -> list[str]:
        """The vocabularies this store has (item_id, user_id, cat_1, ..., action, ...)."""
        return sorted(p.stem for p in (self.root / "vocab").glob("*.parquet"))

    def size(self, name: str) -> int:
        """Number of dense ids including 0: real values are 1 .. size - 1."""
        return self._table(name).height + 1

    def raw(self, name: str) -> pl.Series:
        """Raw values in dense-id order (dense id = position + 1)."""
        return self._table(name)["raw"]

    def _table(self, name: str) -> pl.DataFrame:
        with self._lock:
            if name not in self._tables:
                known = read_vocab(self.root, name)
                self._tables[name] = pl.DataFrame({"raw": known, "dense": np.arange(1, len(known) + 1, dtype=np.int64)})
            return self._tables[name]

    def dense(self, name: str, values: pl.Series | Sequence[Any], unknown: str = "zero", what: str = "") -> np.ndarray:
        """Dense ids [N] int64 of raw `values` in vocabulary `name`; nulls and unknown values give 0.

        Args:
            name: a vocabulary (`names()`), e.g. "item_id".
            values: raw values; cast to the vocabulary's type (a value that does not cast is unknown).
            unknown: "zero" (count them in `self.unknown[what or name]`) or "error".
            what: how the values are called in messages and counts (a column or field name); default `name`.

        Raises:
            ValueError: an unknown value with `unknown="error"`, naming `what` and the first few values.
        """
        if unknown not in UNKNOWN_MODES:
            raise ValueError(f"unknown must be one of {', '.join(UNKNOWN_MODES)}. Got {unknown!r} instead.")
        table = self._table(name)
        series = values if isinstance(values, pl.Series) else _series(list(values))
        if series.len() == 0:
            return np.zeros(0, np.int64)
        try:
            cast = series.cast(table["raw"].dtype)
        except pl.exceptions.InvalidOperationError:
            cast = series.cast(table["raw"].dtype, strict=False)
        joined = pl.DataFrame({"raw": cast}).join(table, on="raw", how="left", maintain_order="left")
        dense = joined["dense"].fill_null(0).to_numpy().astype(np.int64)
        missing = dense == 0
        if missing.any():
            label = what or name
            if unknown == "error":
                shown = ", ".join(
                    repr(v) for v in series.filter(pl.Series(missing)).unique(maintain_order=True).head(5)
                )
                raise ValueError(
                    f"{label} holds {int(missing.sum()):,} value(s) the store's {name} vocabulary does not know "
                    f"(e.g. {shown}). Pass unknown='zero' to score them as out-of-vocabulary (id 0)."
                )
            with self._lock:
                self.unknown[label] = self.unknown.get(label, 0) + int(missing.sum())
        return dense


def _series(values: list[Any]) -> pl.Series:
    """A polars Series of Python values; mixed types (an int id next to a string) become strings."""
    try:
        return pl.Series(values)
    except (TypeError, pl.exceptions.PolarsError):
        return pl.Series([None if v is None else str(v) for v in values], dtype=pl.String)
