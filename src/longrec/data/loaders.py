"""Loaders: public behaviour-log formats -> a lazy table with the canonical columns of `longrec.data.schema`.

Every loader returns a `LoadedLog`: a polars LazyFrame with canonical columns (`user_id`, `item_id`, `timestamp`, then
the optional ones), its `LogSchema`, and a `FilterReport` that counts every row a filter removed. The frame stays
lazy, so `prepare` can stream a 100M-row file; before returning, the loader makes one streaming pass over the raw
columns it needs. That pass counts rows, counts each filter, and checks that every value parses. The first bad value
raises a `DataError` that names the file, the line (1-based, header counted), the column, what was expected and what
was found. Nothing is dropped silently: rows a filter removes are counted in `LoadedLog.report`, and rows removed from
side tables (category trees, item meta) in `LoadedLog.side`.

How a file is read: CSV with `pl.scan_csv`, every column as text (then cast, so a bad value can be found and quoted),
JSON lines with `pl.scan_ndjson`, Parquet with `pl.scan_parquet`. polars cannot stream a compressed file, so a
`.gz`/`.bz2`/`.xz` file is decompressed first: into memory when it holds at most 64 MiB of text, otherwise, chunk by
chunk, into a temporary file (in `tmp_dir`, default the system temp dir) that lives until the process exits or
`LoadedLog.close()`. Formats, options and column mappings are documented in docs/data.md.

Example:
    >>> log = load_log("../shared/data/taobao_userbehavior/UserBehavior_927users.csv.gz", "taobao", actions=("pv",))
    >>> log.report.lines()  # doctest: +SKIP
    ['read 94,225 rows, kept 84,642', '  dropped 9,544 rows: action not in [pv]', '  dropped 39 rows: timestamp ...']
    >>> events = log.frame.collect(engine="streaming")  # user_id, item_id, timestamp, action, cat_1
"""

from __future__ import annotations

import ast
import atexit
import bz2
import contextlib
import csv
import difflib
import gzip
import inspect
import io
import json
import logging
import lzma
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any, Literal, NoReturn

import polars as pl

from longrec.data.schema import (
    CATEGORICAL_COLUMNS,
    REQUIRED_COLUMNS,
    DataError,
    FilterReport,
    LogSchema,
    taxonomy_columns,
)

__all__ = [
    "LOADERS",
    "TAOBAO_ACTIONS",
    "TAOBAO_WINDOW",
    "TMALL_ACTIONS",
    "LoadedLog",
    "load_amazon",
    "load_kuairand",
    "load_kuairec",
    "load_log",
    "load_movielens",
    "load_synthetic",
    "load_table",
    "load_taobao",
    "load_tmall",
]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

TAOBAO_ACTIONS = ("pv", "cart", "fav", "buy")
# Official UserBehavior window 2017-11-25 .. 2017-12-03 as [start, end) epoch seconds; the day boundaries are midnight
# China Standard Time (UTC+8), i.e. 2017-11-24 16:00 .. 2017-12-03 16:00 UTC.
TAOBAO_WINDOW = (1511539200, 1512316800)
TMALL_ACTIONS = {"0": "click", "1": "cart", "2": "buy", "3": "fav"}  # action_type code -> name
MOVIELENS_NO_GENRE = "(no genres listed)"
KUAIREC_UNKNOWN = "-124"  # category id of an unknown level in kuairec_caption_category.csv
KUAIREC_CATEGORY_FILES = ("kuairec_caption_category.csv", "kuairec_caption_category.csv.gz")

_IN_MEMORY_BYTES = 64 * 2**20  # decompressed text up to this size is kept in memory, larger goes to a temp file
_DECOMPRESSORS: dict[str, Callable[..., Any]] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_TEMP_FILES: dict[tuple[str, int, int], Path] = {}  # (path, size, mtime) -> decompressed copy, shared by loads


@dataclass
class LoadedLog:
    """A behaviour log read from one source: a lazy canonical frame, its schema and what was filtered out."""

    frame: pl.LazyFrame  # canonical columns, in `schema.columns` order; read when collected
    schema: LogSchema
    report: FilterReport  # rows of the main file: read, and dropped by reason (counted at load time)
    source: str  # the path as given
    side: dict[str, FilterReport] = field(default_factory=dict)  # side tables (categories, meta) by role
    temp_files: tuple[Path, ...] = ()  # decompressed copies the frame reads; removed by close() or at exit

    def collect(self) -> pl.DataFrame:
        """Read the whole log with the streaming engine."""
        return self.frame.collect(engine="streaming")

    def close(self) -> None:
        """Remove the decompressed temporary copies now (the frame cannot be collected afterwards)."""
        for path in self.temp_files:
            _remove_temp(path)


# ----------------------------------------------------------------------------------------------------------------
# Sources: where the text comes from, and how to point at a line of it in an error.


@dataclass(frozen=True)
class _Source:
    """One input file as polars reads it, plus what errors need to point at a line of it."""

    name: str  # the path as the user gave it; every error quotes it
    data: Path | bytes  # what polars reads: the file, its decompressed temp copy, or decompressed bytes
    kind: Literal["csv", "ndjson", "parquet"]
    has_header: bool = True
    separator: str = ","
    quote: str | None = '"'
    columns: tuple[str, ...] = ()  # a headerless CSV's column names in order; the keys read from JSON lines
    layout: str = ""  # how one row looks, for errors about headerless files, e.g. "user_id,item_id,..."

    def scan(self) -> pl.LazyFrame:
        """Every column as text (CSV, JSON) or with its stored dtype (Parquet)."""
        if self.kind == "parquet":
            return pl.scan_parquet(self.data)
        schema = dict.fromkeys(self.columns, pl.String)
        if self.kind == "ndjson":
            return pl.scan_ndjson(self.data, schema=schema)
        if self.has_header:
            return pl.scan_csv(
                self.data, separator=self.separator, quote_char=self.quote, infer_schema=False, raise_if_empty=True
            )
        return pl.scan_csv(
            self.data,
            has_header=False,
            separator=self.separator,
            quote_char=self.quote,
            schema=schema,
            raise_if_empty=True,
        )

    def records(self) -> Iterator[tuple[int, str]]:
        """(1-based line, text) of each record: a CSV row or a non-blank JSON line.

        A CSV record ends at a line break outside quotes (RFC 4180: a quoted field may span lines, '""' is a quote).
        Only error paths call this, so it may be slow: it reads the file from the start in Python.
        """
        stream: IO[bytes] = open(self.data, "rb") if isinstance(self.data, Path) else io.BytesIO(self.data)  # noqa: SIM115
        quote = self.quote.encode() if self.quote and self.kind == "csv" else None
        with stream:
            parts: list[bytes] = []
            start, in_quotes = 0, False
            for line_no, line in enumerate(stream, start=1):
                if self.kind == "ndjson":
                    if line.strip():
                        yield line_no, line.decode("utf-8", "replace").strip()
                    continue
                if not parts:
                    start = line_no
                parts.append(line)
                if quote is not None and line.count(quote) % 2:
                    in_quotes = not in_quotes
                if not in_quotes:
                    yield start, b"".join(parts).rstrip(b"\r\n").decode("utf-8", "replace")
                    parts = []
            if parts:
                yield start, b"".join(parts).rstrip(b"\r\n").decode("utf-8", "replace")

    def locate(self, row: int) -> tuple[str, str | None]:
        """'file line N' (or 'file row N' for Parquet) of 0-based data row `row`, and the record's text."""
        if self.kind == "parquet":
            return f"{self.name} row {row} (0-based)", None
        target = row + int(self.kind == "csv" and self.has_header)
        for index, (line_no, text) in enumerate(self.records()):
            if index == target:
                return f"{self.name} line {line_no}", text
        return f"{self.name} data row {row} (0-based)", None

    def count_fields(self, text: str) -> int:
        if self.quote is None or self.quote not in text:
            return text.count(self.separator) + 1
        return len(next(csv.reader(io.StringIO(text, newline=""), delimiter=self.separator, quotechar=self.quote)))


def _preview(text: str, limit: int = 120) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _with_hints(names: Sequence[str], choices: Sequence[str]) -> str:
    """Each name quoted, with the closest choice when one is close: `'a' (did you mean 'b'?), 'c'`."""
    out = []
    for name in names:
        close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
        out.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    return ", ".join(out)


def _plain_suffix(path: Path) -> str:
    """'.csv' for both data.csv and data.csv.gz."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _DECOMPRESSORS:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _remove_temp(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
    for key in [k for k, v in _TEMP_FILES.items() if v == path]:
        del _TEMP_FILES[key]


@atexit.register
def _remove_all_temps() -> None:
    for path in list(_TEMP_FILES.values()):
        _remove_temp(path)


def _existing(path: PathLike, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist (or is not a file).")
    return p


def _materialize(path: Path, tmp_dir: PathLike | None) -> Path | bytes:
    """What polars should read for `path`: the file itself, or its decompressed text (bytes or a temp file)."""
    opener = _DECOMPRESSORS.get(path.suffix.lower())
    if opener is None:
        return path
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    cached = _TEMP_FILES.get(key)
    if cached is not None and cached.exists():
        return cached
    try:
        with opener(path, "rb") as stream:
            head = stream.read(_IN_MEMORY_BYTES + 1)
            if len(head) <= _IN_MEMORY_BYTES:
                return head
            fd, name = tempfile.mkstemp(prefix="longrec-", suffix="-" + path.stem, dir=tmp_dir)
            temp = Path(name)
            _TEMP_FILES[key] = temp
            with os.fdopen(fd, "wb") as out:
                out.write(head)
                shutil.copyfileobj(stream, out, 16 * 2**20)
    except (OSError, EOFError, lzma.LZMAError) as exc:
        if key in _TEMP_FILES:
            _remove_temp(_TEMP_FILES[key])
        raise DataError(f"{path}: expected a valid {path.suffix} compressed file, got a read error: {exc}.") from exc
    logger.info("decompressed %s to %s (%.1f MB)", path, temp, temp.stat().st_size / 1e6)
    return temp


def _text_source(path: PathLike, kind: Literal["csv", "ndjson"], tmp_dir: PathLike | None, **layout: Any) -> _Source:
    p = _existing(path, "Log file")
    return _Source(name=str(path), data=_materialize(p, tmp_dir), kind=kind, **layout)


# ----------------------------------------------------------------------------------------------------------------
# Fields: one canonical column parsed from one raw column, and the streaming check-and-count pass.

_Parse = Callable[[pl.Expr], pl.Expr]


@dataclass(frozen=True)
class _Field:
    """One canonical (or internal, '_'-prefixed) column parsed from one raw column."""

    name: str  # output name
    raw: str  # column (CSV, Parquet) or key (JSON) in the file
    parse: _Parse | None = None  # raw -> typed value, null where the raw value does not parse; None keeps it as is
    expected: str = "a value"  # what a good value looks like, for errors
    required: bool = False  # an empty value is an error
    drop_reason: str | None = None  # a row where this does not parse is dropped and counted instead of an error
    null_values: tuple[str, ...] = ()  # raw values that mean "missing" (e.g. -124): read as null, not an error

    def raw_expr(self) -> pl.Expr:
        col = pl.col(self.raw)
        return pl.when(~col.is_in(self.null_values)).then(col) if self.null_values else col

    def expr(self) -> pl.Expr:
        col = self.raw_expr()
        return (col if self.parse is None else self.parse(col)).alias(self.name)


def _as_int(raw: pl.Expr) -> pl.Expr:
    return raw.cast(pl.Int64, strict=False)


def _as_float(raw: pl.Expr) -> pl.Expr:
    return raw.cast(pl.Float64, strict=False)


def _floor_int(raw: pl.Expr) -> pl.Expr:
    return raw.cast(pl.Float64, strict=False).floor().cast(pl.Int64, strict=False)


def _one_of(values: Sequence[str]) -> _Parse:
    return lambda raw: pl.when(raw.is_in(list(values))).then(raw)


def _label_01(raw: pl.Expr) -> pl.Expr:
    value = raw.cast(pl.Float64, strict=False)
    return pl.when(value.is_in([0.0, 1.0])).then(value).cast(pl.Int8)


def _id(name: str, raw: str, dtype: Literal["int", "str"] = "int", required: bool = True) -> _Field:
    if dtype == "str":
        return _Field(name, raw, None, f"a {name}", required)
    return _Field(name, raw, _as_int, f"an integer {name}", required)


def _ts(raw: str, parse: _Parse = _as_int, expected: str = "an integer epoch-seconds value") -> _Field:
    return _Field("timestamp", raw, parse, expected, required=True)


@dataclass(frozen=True)
class _Filter:
    reason: str  # goes into FilterReport.dropped
    keep: pl.Expr  # over parsed (canonical / internal) columns; null counts as drop


def _raise_empty(source: _Source, header_seen: bool) -> NoReturn:
    if source.kind == "parquet":
        raise DataError(f"{source.name}: expected at least one row, got 0 rows.")
    if source.kind == "csv" and source.has_header:
        if header_seen:
            raise DataError(f"{source.name} line 2: expected at least one data row after the header, got none.")
        raise DataError(f"{source.name} line 1: expected a header line and at least one data row, got an empty file.")
    what = f"row ({source.layout})" if source.layout else "record"
    raise DataError(f"{source.name} line 1: expected at least one {what}, got an empty file.")


def _shape_problem(source: _Source, text: str | None, num_fields: int) -> str | None:
    """'expected N fields ..., got M: ...' when a CSV record has the wrong number of fields, else None."""
    if source.kind != "csv" or text is None:
        return None
    got = source.count_fields(text)
    if got == num_fields:
        return None
    layout = f" ({source.layout})" if source.layout else ""
    return f"expected {num_fields} fields separated by {source.separator!r}{layout}, got {got}: {_preview(text)}."


def _raise_unreadable(source: _Source, exc: Exception, num_fields: int | None) -> NoReturn:
    """Find the record polars choked on and raise a DataError naming its line; polars' message says neither."""
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if source.kind == "ndjson":
        for line_no, text in source.records():
            try:
                record = json.loads(text)
            except ValueError as err:
                raise DataError(
                    f"{source.name} line {line_no}: expected one JSON object per line, got {_preview(text)} ({err})."
                ) from exc
            if not isinstance(record, dict):
                raise DataError(
                    f"{source.name} line {line_no}: expected a JSON object, got {type(record).__name__} "
                    f"{_preview(text)}."
                ) from exc
    if source.kind == "csv":
        expected = num_fields
        for index, (line_no, text) in enumerate(source.records()):
            if index == 0 and source.has_header:
                expected = source.count_fields(text)
                continue
            if expected is None:
                expected = source.count_fields(text)
            if text.strip() and (problem := _shape_problem(source, text, expected)):
                raise DataError(f"{source.name} line {line_no}: {problem}") from exc
    raise DataError(f"{source.name}: could not be read as {source.kind.upper()} ({first_line}).") from exc


_POLARS_READ_ERRORS = (pl.exceptions.ComputeError, pl.exceptions.SchemaError, pl.exceptions.ShapeError, OSError)


def _columns_of(source: _Source, raw: pl.LazyFrame) -> list[str]:
    try:
        return list(raw.collect_schema().names())
    except pl.exceptions.NoDataError:
        _raise_empty(source, header_seen=False)
    except _POLARS_READ_ERRORS as exc:
        _raise_unreadable(source, exc, len(source.columns) or None)


def _check_columns(source: _Source, found: Sequence[str], needed: Sequence[str], what: str) -> None:
    missing = [c for c in dict.fromkeys(needed) if c not in found]
    if missing:
        where = f"{source.name} line 1 (header)" if source.kind == "csv" else source.name
        raise DataError(
            f"{where}: {what} expected column(s) {_with_hints(missing, found)}, got columns: {', '.join(found)}."
        )


def _read(
    source: _Source,
    fields: Sequence[_Field],
    filters: Sequence[_Filter] = (),
    probes: Mapping[str, pl.Expr] | None = None,
    what: str = "this format",
) -> tuple[pl.LazyFrame, FilterReport, dict[str, Any]]:
    """Check and count `source` in one streaming pass; return the parsed, filtered lazy frame.

    Args:
        source: the input file.
        fields: the columns to parse. Output columns are named `field.name`.
        filters: row filters over the parsed columns, applied in order; each reason's count excludes rows an earlier
            reason already removed, so the counts add up to the rows dropped.
        probes: boolean expressions over the parsed columns; the result says whether any kept row is True.
        what: how errors name the format ("format 'tmall'", "mapping").

    Returns:
        (frame, report, probe results). The frame has one column per field, in order, and re-reads the file each
        time it is collected.

    Raises:
        DataError: missing column, empty file, a record polars cannot read, an empty required value or a value that
            does not parse, naming the file, line, column, expected and got.
    """
    raw = source.scan()
    found = _columns_of(source, raw)
    _check_columns(source, found, [f.raw for f in fields], what)
    num_fields = len(found)

    raw_cols = [f.raw_expr().alias(f"_raw{i}") for i, f in enumerate(fields)]
    parsed = raw.select(*raw_cols, *[f.expr() for f in fields])
    # A blank line reads as a row of nulls: drop and count it rather than fail on it.
    keeps: list[tuple[str, pl.Expr]] = [
        ("empty row (blank line)", ~pl.all_horizontal([pl.col(f"_raw{i}").is_null() for i in range(len(fields))]))
    ]
    keeps += [(f.drop_reason, pl.col(f.name).is_not_null()) for f in fields if f.drop_reason]
    valid = pl.all_horizontal([k for _, k in keeps])
    aggs = [pl.len().alias("_rows")]
    for i, f in enumerate(fields):
        if f.drop_reason:
            continue
        bad = pl.lit(False)
        if f.parse is not None:
            bad = pl.col(f"_raw{i}").is_not_null() & pl.col(f.name).is_null()
        if f.required:
            bad = bad | pl.col(f"_raw{i}").is_null()
        if f.parse is not None or f.required:
            aggs.append(pl.col("_row").filter(valid & bad).min().alias(f"_bad{i}"))
    keeps += [(flt.reason, flt.keep.fill_null(False)) for flt in filters]
    for k, (_, keep) in enumerate(keeps):
        aggs.append((pl.all_horizontal([kk for _, kk in keeps[:k]] + [~keep])).sum().alias(f"_drop{k}"))
    for name, probe in (probes or {}).items():
        aggs.append((valid & probe.fill_null(False)).any().alias(f"_probe_{name}"))
    try:
        stats = parsed.with_row_index("_row").select(aggs).collect(engine="streaming").row(0, named=True)
    except pl.exceptions.NoDataError:
        _raise_empty(source, header_seen=False)
    except _POLARS_READ_ERRORS as exc:
        _raise_unreadable(source, exc, num_fields)

    if stats["_rows"] == 0 or stats["_rows"] == stats["_drop0"]:
        _raise_empty(source, header_seen=True)
    firsts = {i: stats[f"_bad{i}"] for i in range(len(fields)) if stats.get(f"_bad{i}") is not None}
    if firsts:
        i = min(firsts, key=lambda j: (firsts[j], j))
        _raise_bad_value(source, raw, fields[i], int(firsts[i]), num_fields)

    report = FilterReport(rows_read=int(stats["_rows"]))
    for k, (reason, _) in enumerate(keeps):
        report.drop(reason, int(stats[f"_drop{k}"]))
    frame = parsed.filter(pl.all_horizontal([k for _, k in keeps])).select([f.name for f in fields])
    probe_results = {name: bool(stats[f"_probe_{name}"]) for name in probes or {}}
    return frame, report, probe_results


def _raise_bad_value(source: _Source, raw: pl.LazyFrame, f: _Field, row: int, num_fields: int) -> NoReturn:
    value = raw.slice(row, 1).select(pl.col(f.raw)).collect().item()
    where, text = source.locate(row)
    if value is None:
        problem = _shape_problem(source, text, num_fields)
        if problem:
            raise DataError(f"{where}: {problem}")
        got = "a missing or null value" if source.kind != "csv" else "an empty field"
        raise DataError(f"{where}, column '{f.raw}': expected {f.expected}, got {got}.")
    raise DataError(f"{where}, column '{f.raw}': expected {f.expected}, got {value!r}.")


def _finish(
    frame: pl.LazyFrame,
    schema: LogSchema,
    report: FilterReport,
    source: _Source,
    side: dict[str, FilterReport] | None = None,
) -> LoadedLog:
    temps = (source.data,) if isinstance(source.data, Path) and source.data in _TEMP_FILES.values() else ()
    for line in report.lines():
        logger.info("%s: %s", source.name, line.strip())
    return LoadedLog(frame.select(schema.columns), schema, report, source.name, side or {}, temps)


def _check_choice(option: str, values: Sequence[str] | None, known: Sequence[str]) -> list[str] | None:
    if values is None:
        return None
    if isinstance(values, str):
        values = (values,)
    unknown = [v for v in values if v not in known]
    if unknown or not values:
        raise ValueError(f"{option} must be a non-empty subset of {list(known)}. Got {list(values)} instead.")
    return list(values)


def _action_filter(actions: list[str] | None) -> list[_Filter]:
    if actions is None:
        return []
    return [_Filter(f"action not in [{', '.join(actions)}]", pl.col("action").is_in(actions))]


def _sibling(path: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        candidate = path.parent / name
        if candidate.is_file():
            return candidate
    return None


def _join_side(frame: pl.LazyFrame, side: pl.DataFrame, key: str) -> pl.LazyFrame:
    return frame.join(side.lazy(), on=key, how="left", maintain_order="left")


def _dedupe(table: pl.DataFrame, key: str, report: FilterReport, what: str) -> pl.DataFrame:
    unique = table.unique(subset=key, keep="first", maintain_order=True)
    report.drop(f"duplicate {what} (kept the first)", table.height - unique.height)
    return unique


# ----------------------------------------------------------------------------------------------------------------
# Formats.


def load_taobao(
    path: PathLike,
    *,
    actions: Sequence[str] | None = None,
    window: tuple[int, int] | None = TAOBAO_WINDOW,
    tmp_dir: PathLike | None = None,
) -> LoadedLog:
    """Taobao UserBehavior.csv (Tianchi 649): `user_id,item_id,category_id,behavior_type,timestamp`, no header.

    Args:
        path: UserBehavior.csv, optionally compressed (.gz, .bz2, .xz).
        actions: keep only these behaviour types (of pv, cart, fav, buy); None keeps all. Protocol A uses ("pv",).
        window: keep timestamps in [start, end) epoch seconds; default the official 2017-11-25..2017-12-03 (UTC+8)
            window; None keeps all. Dropped rows are counted either way.
        tmp_dir: where a large compressed file is decompressed (default: the system temp dir).

    Returns:
        user_id, item_id, timestamp (Int64), action (pv/cart/fav/buy), cat_1 (Int64 category id).
    """
    chosen = _check_choice("actions", actions, TAOBAO_ACTIONS)
    columns = ("user_id", "item_id", "category_id", "behavior_type", "timestamp")
    source = _text_source(path, "csv", tmp_dir, has_header=False, columns=columns, layout=",".join(columns))
    fields = [
        _id("user_id", "user_id"),
        _id("item_id", "item_id"),
        _ts("timestamp"),
        _Field("action", "behavior_type", _one_of(TAOBAO_ACTIONS), f"one of {', '.join(TAOBAO_ACTIONS)}", True),
        _Field("cat_1", "category_id", _as_int, "an integer category id"),
    ]
    filters = _action_filter(chosen)
    if window is not None:
        start, end = window
        reason = f"timestamp outside [{start}, {end})"
        filters.append(_Filter(reason, pl.col("timestamp").is_between(start, end, closed="left")))
    frame, report, _ = _read(source, fields, filters, what="format 'taobao'")
    schema = LogSchema(taxonomy_levels=1, categorical=("action",))
    return _finish(frame, schema, report, source)


def load_tmall(
    path: PathLike,
    *,
    actions: Sequence[str] | None = None,
    year: int = 2015,
    tmp_dir: PathLike | None = None,
) -> LoadedLog:
    """Tmall repeat buyers (IJCAI-15) `user_log_format1.csv`.

    Header `user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type`. `time_stamp` is a month and day
    (`mmdd`, e.g. 1111) with no year or time of day: it becomes the epoch seconds of 00:00 UTC that day in `year`,
    so events of one day tie (a stable sort keeps their file order).

    Args:
        path: user_log_format1.csv, optionally compressed.
        actions: keep only these actions (of click, cart, buy, fav; action_type 0, 1, 2, 3); None keeps all.
        year: the year the `mmdd` dates fall in (the file does not say).
        tmp_dir: where a large compressed file is decompressed.

    Returns:
        user_id, item_id, timestamp, action, cat_1 (cat_id), seller, brand (Int64; brand may be null).
    """
    chosen = _check_choice("actions", actions, tuple(TMALL_ACTIONS.values()))

    def month_day(raw: pl.Expr) -> pl.Expr:
        text = pl.when(raw.str.contains(r"^\d{3,4}$")).then(pl.lit(f"{year:04d}") + raw.str.zfill(4))
        return text.str.to_date("%Y%m%d", strict=False).cast(pl.Datetime("ms")).dt.epoch("s")

    source = _text_source(path, "csv", tmp_dir)
    fields = [
        _id("user_id", "user_id"),
        _id("item_id", "item_id"),
        _ts("time_stamp", month_day, "a month-day date 'mmdd' such as 1111"),
        _Field("action", "action_type", lambda r: r.replace_strict(TMALL_ACTIONS, default=None), "0, 1, 2 or 3", True),
        _Field("cat_1", "cat_id", _as_int, "an integer category id"),
        _Field("seller", "seller_id", _as_int, "an integer seller id"),
        _Field("brand", "brand_id", _as_int, "an integer brand id"),
    ]
    frame, report, _ = _read(source, fields, _action_filter(chosen), what="format 'tmall'")
    schema = LogSchema(taxonomy_levels=1, categorical=("action",), extra=("seller", "brand"))
    return _finish(frame, schema, report, source)


def _rating_fields(
    raw: str, min_rating: float | None, label_threshold: float | None
) -> tuple[list[_Field], list[_Filter]]:
    """The rating-derived pieces shared by MovieLens and Amazon: `_rating`, an optional label, a min_rating filter."""
    fields = [_Field("_rating", raw, _as_float, "a numeric rating", True)]
    filters = []
    if label_threshold is not None:
        thr = label_threshold
        fields.append(_Field("label", raw, lambda r: (_as_float(r) >= thr).cast(pl.Int8), "a numeric rating"))
    if min_rating is not None:
        filters.append(_Filter(f"rating < {min_rating}", pl.col("_rating") >= min_rating))
    return fields, filters


def _read_movielens_movies(path: Path, tmp_dir: PathLike | None) -> tuple[pl.DataFrame, FilterReport]:
    """movieId -> cat_1 (first listed genre) from movies.csv or movies.dat."""

    def first_genre(raw: pl.Expr) -> pl.Expr:
        return raw.str.split("|").list.first()

    if _plain_suffix(path) == ".dat":
        # MovieID::Title::Genres; titles may hold ':' and ML-1M is latin-1, so split in Python (a few 10k lines).
        source = _Source(str(path), _materialize(path, tmp_dir), "csv", has_header=False, quote=None)
        ids, genres = [], []
        for line_no, text in source.records():
            if not text.strip():
                continue
            parts = text.split("::")
            if len(parts) < 3 or not parts[0].strip().isdigit():
                raise DataError(
                    f"{path} line {line_no}: expected 'MovieID::Title::Genres' with an integer MovieID, "
                    f"got {_preview(text)}."
                )
            ids.append(int(parts[0]))
            genres.append(parts[-1].strip())
        table = pl.DataFrame({"item_id": ids, "_genres": genres}, schema={"item_id": pl.Int64, "_genres": pl.String})
        genre = first_genre(pl.col("_genres"))
        table = table.select("item_id", pl.when(genre != MOVIELENS_NO_GENRE).then(genre).alias("cat_1"))
        report = FilterReport(rows_read=table.height)
    else:
        source = _Source(str(path), _materialize(path, tmp_dir), "csv")
        fields = [_id("item_id", "movieId"), _Field("cat_1", "genres", first_genre, null_values=(MOVIELENS_NO_GENRE,))]
        frame, report, _ = _read(source, fields, what="MovieLens movies file")
        table = frame.collect()
    return _dedupe(table, "item_id", report, "movieId"), report


def load_movielens(
    path: PathLike,
    *,
    movies: PathLike | None = None,
    min_rating: float | None = None,
    label_threshold: float | None = None,
    tmp_dir: PathLike | None = None,
) -> LoadedLog:
    """MovieLens ratings: `ratings.csv` (userId,movieId,rating,timestamp) or `ratings.dat` (UserID::MovieID::...).

    Every rating is a behaviour with action "rate"; the rating value itself is dropped unless `label_threshold` asks
    for a label. The genre list of `movies.csv`/`movies.dat` gives `cat_1` = the FIRST listed genre (MovieLens lists
    them alphabetically, so this is a coarse, arbitrary-but-stable bucket, not a "main" genre); "(no genres listed)"
    and movies missing from the movies file give null.

    Args:
        path: ratings.csv or ratings.dat (ML-1M/10M/20M), optionally compressed.
        movies: the movies file; None looks for movies.csv / movies.dat next to `path` (no taxonomy if absent).
        min_rating: drop ratings below this value (counted).
        label_threshold: add `label` = rating >= threshold. A labelled row is an impression, not a behaviour (see
            `longrec.data.schema`), so only set this to treat every rating as a labelled sample.
        tmp_dir: where a large compressed file is decompressed.

    Returns:
        user_id, item_id, timestamp (Int64), action ("rate"), [cat_1 (genre)], [label].
    """
    p = _existing(path, "Ratings file")
    is_dat = _plain_suffix(p) == ".dat"
    if is_dat:
        # '::' is two characters and polars separators are one byte: split on ':' and skip the empty fields between.
        columns = ("UserID", "_1", "MovieID", "_2", "Rating", "_3", "Timestamp")
        layout = "UserID::MovieID::Rating::Timestamp"
        source = _text_source(
            p, "csv", tmp_dir, has_header=False, separator=":", quote=None, columns=columns, layout=layout
        )
        names = {"user": "UserID", "item": "MovieID", "rating": "Rating", "ts": "Timestamp"}
    else:
        source = _text_source(p, "csv", tmp_dir)
        names = {"user": "userId", "item": "movieId", "rating": "rating", "ts": "timestamp"}
    rating_fields, filters = _rating_fields(names["rating"], min_rating, label_threshold)
    fields = [_id("user_id", names["user"]), _id("item_id", names["item"]), _ts(names["ts"]), *rating_fields]
    frame, report, _ = _read(source, fields, filters, what="format 'movielens'")
    frame = frame.with_columns(action=pl.lit("rate"))
    side: dict[str, FilterReport] = {}
    movie_files = [f"movies{'.dat' if is_dat else '.csv'}{z}" for z in ("", *_DECOMPRESSORS)]
    movies_path = Path(movies) if movies is not None else _sibling(p, movie_files)
    levels = 0
    if movies_path is not None:
        table, side["movies"] = _read_movielens_movies(_existing(movies_path, "Movies file"), tmp_dir)
        frame = _join_side(frame, table, "item_id")
        levels = 1
    schema = LogSchema(taxonomy_levels=levels, categorical=("action",), has_label=label_threshold is not None)
    return _finish(frame, schema, report, source, side)


def _meta_record(line: str, name: str, line_no: int) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except ValueError:
        try:  # 2014 meta files hold Python dict literals (single quotes)
            record = ast.literal_eval(line)
        except (ValueError, SyntaxError, MemoryError, RecursionError) as err:
            raise DataError(
                f"{name} line {line_no}: expected a JSON object or a Python dict literal, got {_preview(line)} "
                f"({type(err).__name__}: {err})."
            ) from err
    if not isinstance(record, dict):
        raise DataError(f"{name} line {line_no}: expected a JSON object, got {type(record).__name__}.")
    return record


def _meta_path(record: dict[str, Any], name: str, line_no: int) -> list[str]:
    """Coarse-to-fine category path: first list of `categories` (2014), or `category` (2018)."""
    if "categories" in record:
        key, value = "categories", record["categories"]
        if isinstance(value, list) and value and isinstance(value[0], list):
            value = value[0]
    else:
        key, value = "category", record.get("category") or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(
            f"{name} line {line_no}, column '{key}': expected a list of category names (or a list of such lists), "
            f"got {_preview(repr(record[key]))}."
        )
    path = []
    for v in value:
        if not v.strip():
            break
        path.append(v.strip())
    return path


def _read_amazon_meta(path: Path, levels: int) -> tuple[pl.DataFrame, FilterReport]:
    """asin -> cat_1..cat_M from an Amazon meta file (JSON lines, or the 2014 Python-literal lines)."""
    name = str(path)
    opener = _DECOMPRESSORS.get(path.suffix.lower())
    stream = opener(path, "rb") if opener else open(path, "rb")  # noqa: SIM115
    asins: list[str] = []
    paths: list[list[str | None]] = [[] for _ in range(levels)]
    report = FilterReport()
    with stream:
        for line_no, line_bytes in enumerate(stream, start=1):
            line = line_bytes.decode("utf-8", "replace").strip()
            if not line:
                continue
            report.rows_read += 1
            record = _meta_record(line, name, line_no)
            asin = record.get("asin")
            if not isinstance(asin, str) or not asin:
                raise DataError(f"{name} line {line_no}, column 'asin': expected a non-empty string, got {asin!r}.")
            cats = _meta_path(record, name, line_no)
            asins.append(asin)
            for m in range(levels):
                paths[m].append(cats[m] if m < len(cats) else None)
    if not asins:
        raise DataError(f"{name} line 1: expected at least one item record, got an empty file.")
    columns = dict(zip(taxonomy_columns(levels), paths, strict=True))
    table = pl.DataFrame({"item_id": asins, **columns}, schema=dict.fromkeys(["item_id", *columns], pl.String))
    return _dedupe(table, "item_id", report, "asin"), report


def load_amazon(
    path: PathLike,
    *,
    meta: PathLike | None = None,
    levels: int = 3,
    reviews_format: Literal["json", "csv"] | None = None,
    min_rating: float | None = None,
    label_threshold: float | None = None,
    tmp_dir: PathLike | None = None,
) -> LoadedLog:
    """Amazon reviews (McAuley et al.): JSON lines (`reviewerID, asin, unixReviewTime, overall`, the 2014 5-core
    and the 2018 files) or the 2018 ratings-only CSV (`item,user,rating,timestamp`, no header); plus an optional meta
    file giving each asin's category path.

    Args:
        path: the reviews file, optionally compressed.
        meta: the meta file (JSON lines, or the 2014 Python-literal lines), with `asin` and `categories` (2014: a
            list of paths, the first one is used) or `category` (2018: one path). None: no taxonomy.
        levels: M, the taxonomy depth kept: cat_1..cat_M, coarse to fine; shorter paths are padded with null.
        reviews_format: "json" or "csv"; None guesses from the suffix (.csv -> csv, else json).
        min_rating: drop ratings below this value (counted).
        label_threshold: add `label` = rating >= threshold (every row then is a labelled impression).
        tmp_dir: where a large compressed file is decompressed.

    Returns:
        user_id, item_id (strings), timestamp, action ("review"), [cat_1..cat_M], [label].
    """
    if levels < 1:
        raise ValueError(f"levels must be >= 1. Got {levels} instead.")
    p = _existing(path, "Reviews file")
    kind = reviews_format or ("csv" if _plain_suffix(p) == ".csv" else "json")
    if kind not in ("json", "csv"):
        raise ValueError(f"reviews_format must be 'json', 'csv' or None. Got {reviews_format!r} instead.")
    if kind == "csv":
        columns = ("item", "user", "rating", "timestamp")
        source = _text_source(p, "csv", tmp_dir, has_header=False, columns=columns, layout=",".join(columns))
        names = {"user": "user", "item": "item", "rating": "rating", "ts": "timestamp"}
    else:
        names = {"user": "reviewerID", "item": "asin", "rating": "overall", "ts": "unixReviewTime"}
        source = _text_source(p, "ndjson", tmp_dir, columns=tuple(names.values()))
    rating_fields, filters = _rating_fields(names["rating"], min_rating, label_threshold)
    fields = [
        _id("user_id", names["user"], "str"),
        _id("item_id", names["item"], "str"),
        _ts(names["ts"]),
        *rating_fields,
    ]
    frame, report, _ = _read(source, fields, filters, what="format 'amazon'")
    frame = frame.with_columns(action=pl.lit("review"))
    side: dict[str, FilterReport] = {}
    taxonomy = 0
    if meta is not None:
        table, side["meta"] = _read_amazon_meta(_existing(meta, "Meta file"), levels)
        frame = _join_side(frame, table, "item_id")
        taxonomy = levels
    schema = LogSchema(taxonomy_levels=taxonomy, categorical=("action",), has_label=label_threshold is not None)
    return _finish(frame, schema, report, source, side)


def _read_kuairec_categories(path: Path, tmp_dir: PathLike | None) -> tuple[pl.DataFrame, FilterReport]:
    """video_id -> cat_1..cat_3 from kuairec_caption_category.csv (-124 = unknown -> null)."""

    def digits(raw: pl.Expr) -> pl.Expr:
        return pl.when(raw.str.contains(r"^\d+$")).then(_as_int(raw))

    source = _Source(str(path), _materialize(path, tmp_dir), "csv")
    levels, unknown = ("first", "second", "third"), (KUAIREC_UNKNOWN,)
    fields = [
        # Captions with raw line breaks can split a record; the fragments have no numeric video_id.
        _Field(
            "item_id", "video_id", digits, "digits", True, drop_reason="video_id not all digits (a caption fragment)"
        ),
        *[
            _Field(f"cat_{m}", f"{level}_level_category_id", _as_int, "an integer category id", null_values=unknown)
            for m, level in enumerate(levels, start=1)
        ],
    ]
    frame, report, _ = _read(source, fields, what="KuaiRec category file")
    return _dedupe(frame.collect(), "item_id", report, "video_id"), report


def load_kuairec(
    path: PathLike,
    *,
    categories: PathLike | None = None,
    label_threshold: float | None = None,
    drop_missing_timestamp: bool = False,
    tmp_dir: PathLike | None = None,
) -> LoadedLog:
    """KuaiRec interactions `small_matrix.csv` / `big_matrix.csv` (Gao et al., CIKM 2022).

    Header `user_id,video_id,play_duration,video_duration,time,date,timestamp,watch_ratio`; `timestamp` is float
    seconds and is floored to int. Categories come from `kuairec_caption_category.csv` (3 levels, -124 = unknown).

    Args:
        path: the interaction matrix CSV, optionally compressed.
        categories: kuairec_caption_category.csv(.gz); None looks for it next to `path` (no taxonomy if absent).
        label_threshold: add `label` = watch_ratio >= threshold (e.g. 2.0); every row then is a labelled impression.
        drop_missing_timestamp: drop (and count) rows with an empty timestamp instead of raising.
        tmp_dir: where a large compressed file is decompressed.

    Returns:
        user_id, item_id (video_id), timestamp (Int64), [cat_1..cat_3 (Int64)], [label].
    """
    p = _existing(path, "Interaction file")
    source = _text_source(p, "csv", tmp_dir)
    fields = [_id("user_id", "user_id"), _id("item_id", "video_id")]
    if drop_missing_timestamp:
        fields.append(_Field("timestamp", "timestamp", _floor_int, drop_reason="empty or non-numeric timestamp"))
    else:
        fields.append(_ts("timestamp", _floor_int, "epoch seconds (a number)"))
    if label_threshold is not None:
        thr = label_threshold
        fields.append(_Field("label", "watch_ratio", lambda r: (_as_float(r) >= thr).cast(pl.Int8), "a number", True))
    frame, report, _ = _read(source, fields, what="format 'kuairec'")
    side: dict[str, FilterReport] = {}
    levels = 0
    cat_path = Path(categories) if categories is not None else _sibling(p, KUAIREC_CATEGORY_FILES)
    if cat_path is not None:
        table, side["categories"] = _read_kuairec_categories(_existing(cat_path, "Category file"), tmp_dir)
        frame = _join_side(frame, table, "item_id")
        levels = 3
    schema = LogSchema(taxonomy_levels=levels, has_label=label_threshold is not None)
    return _finish(frame, schema, report, source, side)


def load_kuairand(
    path: PathLike,
    *,
    label_column: str | None = None,
    tmp_dir: PathLike | None = None,
) -> LoadedLog:
    """KuaiRand `log_standard_*.csv` / `log_random_*.csv` (Gao et al., CIKM 2022).

    Header `user_id,video_id,date,hourmin,time_ms,is_click,is_like,...,tab`: timestamp = time_ms // 1000 and
    `scene` = tab (the app surface).

    Args:
        path: the log CSV, optionally compressed.
        label_column: a 0/1 column (e.g. "is_click") to expose as `label`; every row then is a labelled impression.
            None: no label, every row is a behaviour.
        tmp_dir: where a large compressed file is decompressed.

    Returns:
        user_id, item_id (video_id), timestamp (Int64), scene (tab, string), [label (Int8)].
    """
    source = _text_source(path, "csv", tmp_dir)
    fields = [
        _id("user_id", "user_id"),
        _id("item_id", "video_id"),
        _ts("time_ms", lambda r: _as_int(r) // 1000, "an integer epoch-milliseconds value"),
        _Field("scene", "tab"),
    ]
    if label_column is not None:
        fields.append(_Field("label", label_column, _label_01, "0 or 1", True))
    frame, report, _ = _read(source, fields, what="format 'kuairand'")
    schema = LogSchema(categorical=("scene",), has_label=label_column is not None)
    return _finish(frame, schema, report, source)


_TIME_UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def _timestamp_parse(dtype: pl.DataType, timestamp_format: str | None, unit: str) -> tuple[_Parse, str] | None:
    """(raw -> epoch seconds, what a good value looks like) for a timestamp column of this dtype; None: unsupported."""
    div = _TIME_UNITS[unit]
    if timestamp_format is not None and dtype == pl.String:
        fmt = timestamp_format
        return (
            lambda raw: raw.str.to_datetime(fmt, strict=False, time_unit="us").dt.epoch("s")
        ), f"a date/time {fmt!r}"
    if isinstance(dtype, pl.Datetime):
        return (lambda raw: raw.dt.epoch("s")), "a date/time"
    if isinstance(dtype, pl.Date):
        return (lambda raw: raw.cast(pl.Datetime("us")).dt.epoch("s")), "a date"
    expected = "an integer epoch-seconds value" if unit == "s" else f"an integer epoch value in {unit}"
    if dtype.is_float():
        return (lambda raw: pl.when(raw == raw.floor()).then(raw.cast(pl.Int64, strict=False)) // div), expected
    if dtype.is_integer() or dtype == pl.String:
        return (lambda raw: _as_int(raw) // div), expected
    return None


def _label_parse(dtype: pl.DataType) -> _Parse:
    """raw -> 0/1 Int8, null for anything else."""
    if dtype == pl.Boolean:
        return lambda raw: raw.cast(pl.Int8)
    if dtype == pl.String:
        table = {"0": 0, "1": 1, "0.0": 0, "1.0": 1, "false": 0, "true": 1, "False": 0, "True": 1}
        return lambda raw: raw.replace_strict(table, default=None, return_dtype=pl.Int8)
    return _label_01


def load_table(
    path: PathLike,
    *,
    mapping: Mapping[str, str] | None = None,
    extra: Sequence[str] | Mapping[str, str] = (),
    taxonomy_levels: int | None = None,
    taxonomy_separator: str | None = None,
    separator: str = ",",
    has_header: bool = True,
    columns: Sequence[str] | None = None,
    timestamp_format: str | None = None,
    timestamp_unit: Literal["s", "ms", "us", "ns"] = "s",
    file_format: Literal["csv", "parquet"] | None = None,
    tmp_dir: PathLike | None = None,
) -> LoadedLog:
    """Any CSV or Parquet log, with a column mapping to the canonical names.

    CSV ids (and categories, extra fields) become Int64 when every value is an integer, else stay strings;
    Parquet columns keep their dtype. Timestamps become Int64 epoch seconds.

    Args:
        path: a .csv/.tsv/.txt file (optionally compressed) or a .parquet file.
        mapping: canonical name -> column in the file, e.g. {"user_id": "uid", "item_id": "iid", "timestamp": "ts",
            "cat_1": "category"}. Canonical names: user_id, item_id, timestamp, domain, scene, action, goal, label,
            cat_1..cat_M, or "taxonomy" for one column holding a whole path (see taxonomy_separator). A required
            name missing from the mapping is looked up under its own name.
        extra: extra id fields to keep (brand, seller, ...): column names, or {output name: column}.
        taxonomy_levels: M; with mapping["taxonomy"], the path is cut or null-padded to M levels (default 3).
        taxonomy_separator: the separator inside mapping["taxonomy"] values, e.g. " > " or "|".
        separator: CSV field separator (one character).
        has_header: whether the CSV's first line names its columns.
        columns: names for a headerless CSV's columns (default: column_1, column_2, ...).
        timestamp_format: strptime format of a text timestamp (e.g. "%Y-%m-%d %H:%M:%S"; naive times are UTC).
        timestamp_unit: the unit of a numeric timestamp; it is converted to seconds (floor).
        file_format: "csv" or "parquet"; None guesses from the suffix.
        tmp_dir: where a large compressed file is decompressed.

    Returns:
        The canonical columns named by the mapping, plus the extra fields.

    Example:
        >>> mapping = {"user_id": "uid", "item_id": "iid", "timestamp": "ts"}
        >>> log = load_table("log.csv", mapping=mapping)  # doctest: +SKIP
    """
    p = _existing(path, "Log file")
    fmt = file_format or ("parquet" if _plain_suffix(p) in (".parquet", ".pq") else "csv")
    mapping = dict(mapping or {})
    known = [*REQUIRED_COLUMNS, *CATEGORICAL_COLUMNS, "label", "goal", "event_id", "taxonomy"]
    unknown = [k for k in mapping if k not in known and not (k.startswith("cat_") and k[4:].isdigit())]
    if unknown:
        raise ValueError(
            f"mapping keys must be canonical names ({', '.join(known)}, cat_1..cat_M). "
            f"Got {_with_hints(unknown, known)} instead."
        )
    cat_keys = sorted((k for k in mapping if k.startswith("cat_")), key=lambda k: int(k[4:]))
    if cat_keys and cat_keys != list(taxonomy_columns(len(cat_keys))):
        raise ValueError(f"mapping taxonomy keys must be cat_1..cat_M without gaps. Got {cat_keys} instead.")
    if cat_keys and "taxonomy" in mapping:
        raise ValueError("mapping can hold cat_1..cat_M or 'taxonomy', not both.")
    if "taxonomy" in mapping and taxonomy_separator is None:
        raise ValueError("mapping['taxonomy'] needs taxonomy_separator (e.g. ' > ') to split the path.")
    if timestamp_unit not in _TIME_UNITS:
        raise ValueError(f"timestamp_unit must be one of {list(_TIME_UNITS)}. Got {timestamp_unit!r} instead.")
    extra_map = dict(extra) if isinstance(extra, Mapping) else {e: e for e in extra}
    for col in REQUIRED_COLUMNS:
        mapping.setdefault(col, col)

    if fmt == "parquet":
        source = _Source(str(path), p, "parquet")
        names = _columns_of(source, source.scan())
        dtypes = dict(source.scan().collect_schema())
    else:
        if len(separator) != 1:
            raise ValueError(f"separator must be one character. Got {separator!r} instead.")
        data = _materialize(p, tmp_dir)
        probe = _Source(str(path), data, "csv", has_header, separator)
        if not has_header and columns is None:
            first = next(probe.records(), None)
            if first is None:
                _raise_empty(probe, header_seen=False)
            columns = [f"column_{i}" for i in range(1, probe.count_fields(first[1]) + 1)]
        source = _Source(
            str(path), data, "csv", has_header, separator, '"', tuple(columns or ()), ",".join(columns or ())
        )
        names = _columns_of(source, source.scan())
        dtypes = dict.fromkeys(names, pl.String())
    wanted = [*mapping.values(), *extra_map.values()]
    missing = [c for c in wanted if c not in names]
    if missing:
        named = {col: key for key, col in [*mapping.items(), *extra_map.items()]}
        absent = ", ".join(f"{named[c]} -> {_with_hints([c], names)}" for c in missing)
        where = f"{path} line 1 (header)" if fmt == "csv" and has_header else str(path)
        raise DataError(f"{where}: the mapping expected column(s) {absent}, got columns: {', '.join(names)}.")

    is_csv = fmt == "csv"
    # CSV ids, categories and extra fields become Int64 when every value is an integer (probed in the one pass).
    auto_int = ["user_id", "item_id", *cat_keys, *extra_map] if is_csv else []
    ts_dtype = dtypes[mapping["timestamp"]]
    parsed_ts = _timestamp_parse(ts_dtype, timestamp_format, timestamp_unit)
    if parsed_ts is None:
        raise DataError(
            f"{path}, column '{mapping['timestamp']}': expected integer epoch seconds, a date/time or text, "
            f"got dtype {ts_dtype}."
        )
    ts_parse, ts_expected = parsed_ts
    fields = [
        _Field("user_id", mapping["user_id"], None, "a user id", True),
        _Field("item_id", mapping["item_id"], None, "an item id", True),
        _Field("timestamp", mapping["timestamp"], ts_parse, ts_expected, True),
    ]
    categorical = tuple(c for c in CATEGORICAL_COLUMNS if c in mapping)
    fields += [_Field(c, mapping[c], None if is_csv else (lambda r: r.cast(pl.String))) for c in categorical]
    fields += [_Field(c, mapping[c]) for c in cat_keys]
    levels = len(cat_keys)
    if "taxonomy" in mapping:
        levels = taxonomy_levels or 3
        fields.append(_Field("_taxonomy", mapping["taxonomy"], lambda r: r.cast(pl.String)))
    elif taxonomy_levels is not None and taxonomy_levels != levels:
        raise ValueError(f"taxonomy_levels={taxonomy_levels} but the mapping names {levels} level(s) {cat_keys}.")
    fields += [_Field(name, col) for name, col in extra_map.items()]
    if "label" in mapping:
        fields.append(_Field("label", mapping["label"], _label_parse(dtypes[mapping["label"]]), "0 or 1"))
    if "goal" in mapping:
        fields.append(_Field("goal", mapping["goal"], lambda r: r.cast(pl.String)))
    if "event_id" in mapping:
        fields.append(_Field("event_id", mapping["event_id"], None, "an event id", True))
        if is_csv:
            auto_int.append("event_id")
    probes = {c: pl.col(c).is_not_null() & _as_int(pl.col(c)).is_null() for c in auto_int}
    frame, report, not_int = _read(source, fields, probes=probes, what="the mapping")
    casts = [_as_int(pl.col(c)).alias(c) for c in auto_int if not not_int[c]]
    if casts:
        frame = frame.with_columns(casts)
    if "taxonomy" in mapping:
        assert taxonomy_separator is not None
        parts = pl.col("_taxonomy").str.split(taxonomy_separator)
        path_levels = [parts.list.get(m, null_on_oob=True).str.strip_chars() for m in range(levels)]
        frame = frame.with_columns(
            pl.when(v != "").then(v).alias(c) for v, c in zip(path_levels, taxonomy_columns(levels), strict=True)
        )
    schema = LogSchema(
        taxonomy_levels=levels,
        categorical=categorical,
        extra=tuple(extra_map),
        has_label="label" in mapping,
        has_goal="goal" in mapping,
        has_event_id="event_id" in mapping,
    )
    return _finish(frame, schema, report, source)


def load_synthetic(path: PathLike, *, tmp_dir: PathLike | None = None) -> LoadedLog:
    """A log written by `longrec synth` (`longrec.data.synthetic`): its directory, or the `log.parquet` in it.

    The columns are canonical already (behaviours plus labelled impression rows, `event_id`, extra fields such as
    brand); they are checked and read as stored, like `load_table` on a Parquet file.

    Args:
        path: the `longrec synth` output directory, or its log.parquet.
        tmp_dir: unused (Parquet is scanned in place); accepted so every loader takes it.

    Returns:
        Every canonical column the file has, then its other columns as extra fields.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "log.parquet"
    p = _existing(p, "Synthetic log")
    names = _columns_of(_Source(str(p), p, "parquet"), pl.scan_parquet(p))
    canonical = {*REQUIRED_COLUMNS, *CATEGORICAL_COLUMNS, "label", "goal", "event_id"}
    mapping = {c: c for c in names if c in canonical or (c.startswith("cat_") and c[4:].isdigit())}
    extra = [c for c in names if c not in mapping and not c.startswith("_")]
    return load_table(p, mapping=mapping, extra=extra, file_format="parquet", tmp_dir=tmp_dir)


# ----------------------------------------------------------------------------------------------------------------
# Registry.

LOADERS: dict[str, Callable[..., LoadedLog]] = {
    "amazon": load_amazon,
    "csv": partial(load_table, file_format="csv"),
    "kuairand": load_kuairand,
    "kuairec": load_kuairec,
    "movielens": load_movielens,
    "parquet": partial(load_table, file_format="parquet"),
    "synthetic": load_synthetic,
    "taobao": load_taobao,
    "tmall": load_tmall,
}


def load_log(path: PathLike, format: str, **options: Any) -> LoadedLog:
    """Load a behaviour log in one of the `LOADERS` formats.

    Args:
        path: the log file.
        format: a key of `LOADERS` (amazon, csv, kuairand, kuairec, movielens, parquet, synthetic, taobao, tmall).
        **options: the loader's keyword options (see its docstring and docs/data.md).

    Returns:
        The lazy canonical frame, its schema and the filter report.

    Raises:
        KeyError: unknown format. TypeError: an option the loader does not take (with the known options).

    Example:
        >>> log = load_log("ratings.csv", "movielens", min_rating=3.5)  # doctest: +SKIP
        >>> log.schema.columns  # doctest: +SKIP
        ('user_id', 'item_id', 'timestamp', 'action', 'cat_1')
    """
    loader = LOADERS.get(format)
    if loader is None:
        close = difflib.get_close_matches(format, list(LOADERS), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise KeyError(f"Unknown log format '{format}'. Known formats: {', '.join(sorted(LOADERS))}.{hint}")
    params = [n for n, prm in inspect.signature(loader).parameters.items() if prm.kind is prm.KEYWORD_ONLY]
    unknown = [o for o in options if o not in params or o == "file_format"]
    if unknown:
        known = [p for p in params if p != "file_format"]
        raise TypeError(
            f"Format '{format}' does not take option(s) {_with_hints(unknown, known)}. "
            f"Known options: {', '.join(known)}."
        )
    return loader(path, **options)
