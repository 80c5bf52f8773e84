"""Raw ids to dense ids with a store's vocabularies, for data that arrives after `prepare` (scoring, serving).

A prepared store keeps each vocabulary as `vocab/<name>.parquet`, the raw values in dense-id order (dense id = row + 1;
0 is padding), and a serving artifact (`longrec.serve.artifact`) carries copies of them in the same layout.
`Vocabulary` reads either (a store, or any folder holding `vocab/`) and looks raw values up in them, with one rule
for values it does not hold: they map to id 0, **the out-of-vocabulary row**. Every model embeds id 0 as a zero
vector that never gets a gradient (the padding row), so an unknown item contributes nothing through its id and only
through its other fields (its category, action, time).
Unknown values are counted per name (`Vocabulary.unknown`), or refused with `unknown="error"`.

Taxonomy levels share one id space (`prepare`): level m's dense ids follow those of levels 1 .. m-1, and `dense`
adds that offset. A few values at a time (a request) are looked up with `IdLookup` (numpy search or a dict, in
microseconds); a long series (a DataFrame column) with one polars join. Each vocabulary is read once and kept.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from longrec.data.store import TrajectoryStore, read_vocab, vocab_sha, vocab_sha_of

__all__ = ["UNKNOWN_MODES", "IdLookup", "Vocabulary"]

UNKNOWN_MODES = ("zero", "error")
JOIN_FROM = 2048  # values per call from which a polars join beats per-value lookups


class IdLookup:
    """Raw -> dense ids of one vocabulary, in microseconds per call (`Vocabulary.lookup`).

    A polars join costs about 0.3 ms a call whatever the size, too much for the handful of ids of one request. A
    sorted integer vocabulary (what `prepare` writes for integer ids) is searched with numpy; any other is a dict.
    Casts follow the vocabulary's type: "105" is 105 in an integer vocabulary, 105 is "105" in a string one; a value
    that does not cast is unknown.
    """

    def __init__(self, raw: pl.Series, offset: int = 0) -> None:
        self.integer = raw.dtype.is_integer()
        self.offset = offset  # taxonomy levels share one id space: level m starts after levels 1 .. m-1
        self.sorted: np.ndarray | None = None
        self.table: dict[Any, int] = {}
        if self.integer and raw.len() and raw.is_sorted() and raw.n_unique() == raw.len():
            self.sorted = raw.to_numpy().astype(np.int64)  # [V - 1]
        else:
            self.table = {self.cast(v): i + 1 for i, v in enumerate(raw.to_list())}

    def cast(self, value: Any) -> Any:
        """`value` as the vocabulary's type, or None when it is not one (1.5 or True is no integer id)."""
        if not self.integer:
            return str(value)
        if isinstance(value, bool):
            return None
        if isinstance(value, int):
            return value
        if isinstance(value, float):
            return int(value) if value.is_integer() else None
        try:
            return int(value)
        except (TypeError, ValueError):
            return None

    def dense(self, values: Sequence[Any]) -> np.ndarray:
        """Dense ids [n] int64 (offset included); None and unknown values give 0."""
        cast = [None if v is None else self.cast(v) for v in values]
        if self.sorted is None:
            found = [None if v is None else self.table.get(v) for v in cast]
            return np.array([0 if d is None else d + self.offset for d in found], np.int64)
        ok = np.array([v is not None and -(2**63) <= v < 2**63 for v in cast], bool)  # [n]
        query = np.array([v if good else 0 for v, good in zip(cast, ok, strict=True)], np.int64)  # [n]
        at = np.minimum(np.searchsorted(self.sorted, query), self.sorted.size - 1)  # [n]
        return np.where(ok & (self.sorted[at] == query), at + 1 + self.offset, 0).astype(np.int64)


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
            self.root, self.sha = source.vocab_root, str(source.manifest["vocab_sha"])
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
        self._lookups: dict[str, IdLookup] = {}
        self._lock = threading.RLock()  # the tables and the counts are shared by a server's threads
        self._held: list[str] | None = None  # the names, when the vocabularies are held in memory (`in_memory`)

    @classmethod
    def in_memory(cls, root: Path, raws: Mapping[str, pl.Series]) -> Vocabulary:
        """Vocabularies held in memory ({name: raw values in dense-id order}, every name), e.g. a folder's grown by
        a model delta (`longrec.serve.delta`); `root` is only where they came from. Its sha is `vocab_sha_of`."""
        vocab = cls.__new__(cls)
        vocab.root, vocab.sha = Path(root), vocab_sha_of(raws)
        vocab.unknown, vocab._tables, vocab._lookups = {}, {}, {}
        vocab._lock = threading.RLock()
        vocab._held = sorted(raws)
        for name in sorted(raws, key=lambda n: (not n.startswith("cat_"), len(n), n)):  # cat_1, cat_2, ... first
            start = 1 + vocab.offset(name)  # taxonomy levels: the sizes of the levels before it, held already
            vocab._tables[name] = pl.DataFrame(
                {"raw": raws[name], "dense": np.arange(start, start + raws[name].len(), dtype=np.int64)}
            )
        return vocab

    def names(self) -> list[str]:
        """The vocabularies this store has (item_id, user_id, cat_1, ..., action, ...)."""
        if self._held is not None:
            return list(self._held)
        return sorted(p.stem for p in (self.root / "vocab").glob("*.parquet"))

    def size(self, name: str) -> int:
        """Number of dense ids including 0: real values are 1 .. size - 1."""
        return self._table(name).height + 1

    def raw(self, name: str) -> pl.Series:
        """Raw values in dense-id order (dense id = position + 1)."""
        return self._table(name)["raw"]

    def offset(self, name: str) -> int:
        """Where the dense ids of `name` start minus one: 0, but for taxonomy level m the sizes of levels 1 .. m-1."""
        if not name.startswith("cat_") or not name[4:].isdigit():
            return 0
        return sum(self._table(f"cat_{m}").height for m in range(1, int(name[4:])))

    def _table(self, name: str) -> pl.DataFrame:
        with self._lock:
            if name not in self._tables:
                known = read_vocab(self.root, name)
                start = 1 + self.offset(name)
                dense = np.arange(start, start + len(known), dtype=np.int64)
                self._tables[name] = pl.DataFrame({"raw": known, "dense": dense})
            return self._tables[name]

    def lookup(self, name: str) -> IdLookup:
        """The per-value lookup of vocabulary `name` (offset included), built on first use."""
        with self._lock:
            if name not in self._lookups:
                self._lookups[name] = IdLookup(self._table(name)["raw"], self.offset(name))
            return self._lookups[name]

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
        given = values.to_list() if isinstance(values, pl.Series) and values.len() < JOIN_FROM else values
        if len(given) == 0:
            return np.zeros(0, np.int64)
        series = values if isinstance(values, pl.Series) else _series(list(values))
        if len(given) < JOIN_FROM:
            dense = self.lookup(name).dense(list(given))  # the Python values as given: 14.0 is the id 14
        else:
            table = self._table(name)
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
