"""Reading machinery shared by every loader: a raw file -> checked, counted, lazy canonical columns.

A loader describes its format and leaves the work to this module. `_Source` is one input file as polars reads it,
plus what an error needs to point at one of its lines; `_Field` is one canonical column parsed from one raw column;
`_Filter` is a row filter with the reason it is counted under. `_read` makes one streaming pass over the raw columns
it needs: it counts rows, counts each filter and checks that every value parses. The first bad value raises a
`DataError` that names the file, the line (1-based, header counted), the column, what was expected and what was
found. `_finish` wraps the lazy frame, its `LogSchema` and its `FilterReport` in the `LoadedLog` every loader returns.

How a file is read: CSV with `pl.scan_csv`, every column as text (then cast, so a bad value can be found and quoted),
JSON lines with `pl.scan_ndjson`, Parquet with `pl.scan_parquet`. polars cannot stream a compressed file, so a
`.gz`/`.bz2`/`.xz` file is decompressed first: into memory when it holds at most 64 MiB of text, otherwise, chunk by
chunk, into a temporary file (in `tmp_dir`, default the system temp dir) that lives until the process exits or
`LoadedLog.close()`.

Also here: the helpers two or more loaders share (side tables joined by item, the rating-derived fields of MovieLens
and Amazon, action filters, option checks).

Why one file: sources, fields and the streaming pass call each other, and their error paths share the line-finding
code; split, each part would import the others' private helpers.
"""

from __future__ import annotations

import atexit
import bz2
import contextlib
import csv
import difflib
import gzip
import io
import json
import logging
import lzma
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, NoReturn

import polars as pl

from longrec.ingest.schema import DataError, FilterReport, LogSchema

__all__ = ["LoadedLog", "PathLike"]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

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
    for line in report.lines():  # debug only: `longrec prepare` prints the report once, in its result
        logger.debug("%s: %s", source.name, line.strip())
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
