"""The behaviour-log schema: one record per event, the same columns whatever the source format.

Every loader in `longrec.ingest` turns its format into a table with these canonical columns; `prepare`
only ever sees canonical columns. Required: `user_id`, `item_id`, `timestamp` (integer epoch seconds). Optional:

- `domain` (ad, content, ...), `scene` (app surface), `action` (click, view, cart, buy, ...): categorical strings;
- a taxonomy path `cat_1 ⊃ cat_2 ⊃ ... ⊃ cat_M`, coarse to fine (null = the level is missing for this event);
- extra id fields (brand, seller, ...), named by the schema;
- `label` (0/1) and `goal` (advertising target): a row with a label is a labelled impression. It becomes a sample
  and is *not* part of the user's behaviour trajectory (what was shown is not what the user did);
- `event_id` (int): a stable id of the row, carried into samples so ground truth can be joined back.

Raw ids keep their source dtype (int or string); `prepare` maps them to dense ids with 0 reserved for padding.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field

import polars as pl

__all__ = [
    "CATEGORICAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "RESERVED_COLUMNS",
    "DataError",
    "FilterReport",
    "LogSchema",
    "check_log",
    "taxonomy_columns",
]

REQUIRED_COLUMNS = ("user_id", "item_id", "timestamp")
CATEGORICAL_COLUMNS = ("domain", "scene", "action")
RESERVED_COLUMNS = ("label", "goal", "event_id")


class DataError(ValueError):
    """Bad input data. The message names the file, the row (or line), the column, what was expected and what we got."""


def taxonomy_columns(levels: int) -> tuple[str, ...]:
    """Canonical names of an M-level taxonomy path: ('cat_1', ..., 'cat_M'), coarse to fine."""
    return tuple(f"cat_{m}" for m in range(1, levels + 1))


@dataclass(frozen=True)
class LogSchema:
    """Which optional canonical columns a behaviour log carries."""

    taxonomy_levels: int = 0  # M; columns cat_1..cat_M
    categorical: tuple[str, ...] = ()  # subset of CATEGORICAL_COLUMNS present
    extra: tuple[str, ...] = ()  # extra id fields (brand, seller, ...), by their own names
    has_label: bool = False  # a 'label' column (0/1) marks labelled impressions
    has_goal: bool = False  # a 'goal' column names the advertising target of a labelled row
    has_event_id: bool = False  # an 'event_id' column identifies each row

    def __post_init__(self) -> None:
        if self.taxonomy_levels < 0:
            raise ValueError(f"LogSchema.taxonomy_levels must be >= 0. Got {self.taxonomy_levels} instead.")
        unknown = [c for c in self.categorical if c not in CATEGORICAL_COLUMNS]
        if unknown:
            raise ValueError(f"LogSchema.categorical must be a subset of {CATEGORICAL_COLUMNS}. Got {unknown} instead.")
        reserved = set(REQUIRED_COLUMNS) | set(CATEGORICAL_COLUMNS) | set(RESERVED_COLUMNS)
        clash = [c for c in self.extra if c in reserved or c.startswith("cat_")]
        if clash:
            raise ValueError(f"LogSchema.extra names {clash} clash with canonical columns; rename them.")

    @property
    def taxonomy(self) -> tuple[str, ...]:
        return taxonomy_columns(self.taxonomy_levels)

    @property
    def columns(self) -> tuple[str, ...]:
        """Every canonical column of a log with this schema, in canonical order."""
        cols = [*REQUIRED_COLUMNS, *self.categorical, *self.taxonomy, *self.extra]
        cols += ["label"] * self.has_label + ["goal"] * self.has_goal + ["event_id"] * self.has_event_id
        return tuple(cols)

    @classmethod
    def infer(cls, columns: Sequence[str]) -> LogSchema:
        """The schema of a table that already has canonical column names (unknown names become extra fields)."""
        cols = list(columns)
        levels = 0
        while f"cat_{levels + 1}" in cols:
            levels += 1
        known = set(REQUIRED_COLUMNS) | set(CATEGORICAL_COLUMNS) | set(RESERVED_COLUMNS) | set(taxonomy_columns(levels))
        return cls(
            taxonomy_levels=levels,
            categorical=tuple(c for c in CATEGORICAL_COLUMNS if c in cols),
            extra=tuple(c for c in cols if c not in known and not c.startswith("_")),
            has_label="label" in cols,
            has_goal="goal" in cols,
            has_event_id="event_id" in cols,
        )


@dataclass
class FilterReport:
    """Rows a loader or `prepare` removed, by reason, and file columns it did not read. Nothing is dropped without a
    line here."""

    rows_read: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    unused_columns: list[str] = field(default_factory=list)  # file columns not read into the log (load_table)

    def drop(self, reason: str, count: int) -> None:
        if count:
            self.dropped[reason] = self.dropped.get(reason, 0) + int(count)

    @property
    def rows_kept(self) -> int:
        return self.rows_read - sum(self.dropped.values())

    def lines(self) -> list[str]:
        """Human-readable summary, one line per reason."""
        out = [f"read {self.rows_read:,} rows, kept {self.rows_kept:,}"]
        out += [f"  dropped {n:,} rows: {reason}" for reason, n in self.dropped.items()]
        if self.unused_columns:
            out.append(f"  unused column(s), not read into the log: {', '.join(self.unused_columns)}")
        return out

    def to_dict(self) -> dict[str, object]:
        return {
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "dropped": dict(self.dropped),
            "unused_columns": list(self.unused_columns),
        }


def _first_bad_row(frame: pl.DataFrame, bad: pl.Expr) -> tuple[int, object] | None:
    hit = frame.with_row_index("_row").filter(bad).head(1)
    if hit.height == 0:
        return None
    return int(hit["_row"][0]), hit.row(0)


def check_log(frame: pl.DataFrame | pl.LazyFrame, source: str, schema: LogSchema | None = None) -> LogSchema:
    """Check a canonical behaviour log and return its schema.

    Args:
        frame: the log with canonical column names (a LazyFrame is collected in streaming mode, required columns only).
        source: file name (or description) quoted in every error.
        schema: the expected schema; inferred from the column names when None.

    Returns:
        The schema of the log.

    Raises:
        DataError: empty log, missing required column, a null id, or a non-integer timestamp; the message names the
            source, the 0-based data row, the column, what was expected and what was found.
    """
    names = list(frame.collect_schema().names())
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        hints = []
        for c in missing:
            close = difflib.get_close_matches(c, names, n=1, cutoff=0.5)
            hints.append(f"'{c}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        raise DataError(
            f"{source} is missing required column(s) {', '.join(hints)}. Found: {', '.join(names) or 'no columns'}. "
            "Map them with a column mapping (e.g. --timestamp-column ts)."
        )
    schema = schema or LogSchema.infer(names)
    absent = [c for c in schema.columns if c not in names]
    if absent:
        raise DataError(f"{source} is missing column(s) {absent} that its schema declares. Found: {', '.join(names)}.")
    lazy = frame.lazy() if isinstance(frame, pl.DataFrame) else frame
    head = lazy.select(REQUIRED_COLUMNS).collect(engine="streaming")
    if head.height == 0:
        raise DataError(f"{source} is empty: expected at least one behaviour row, got 0 rows.")
    for col in ("user_id", "item_id"):
        bad = _first_bad_row(head, pl.col(col).is_null())
        if bad is not None:
            raise DataError(f"{source} row {bad[0]}: column '{col}' is empty; every behaviour needs a {col}.")
    ts = head["timestamp"]
    if not ts.dtype.is_integer():
        as_int = pl.col("timestamp").cast(pl.Int64, strict=False)
        bad = _first_bad_row(head, as_int.is_null() | (pl.col("timestamp").cast(pl.Float64, strict=False) != as_int))
        if bad is not None:
            value = head["timestamp"][bad[0]]
            raise DataError(
                f"{source} row {bad[0]}: column 'timestamp' = {value!r} is not an integer epoch-seconds value."
            )
    elif ts.null_count():
        bad = _first_bad_row(head, pl.col("timestamp").is_null())
        assert bad is not None
        raise DataError(f"{source} row {bad[0]}: column 'timestamp' is empty; expected integer epoch seconds.")
    if schema.has_label:
        labels = lazy.select(pl.col("label").drop_nulls().unique()).collect()["label"].to_list()
        wrong = [v for v in labels if v not in (0, 1)]
        if wrong:
            raise DataError(f"{source}: column 'label' must hold 0 or 1 (or be empty). Got {wrong[:5]} instead.")
    return schema
