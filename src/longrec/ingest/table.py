"""Any CSV or Parquet log, with a column mapping to the canonical names; and `longrec synth` output directories."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import polars as pl

from longrec.ingest.reading import (
    LoadedLog,
    PathLike,
    _as_int,
    _columns_of,
    _existing,
    _Field,
    _finish,
    _label_01,
    _materialize,
    _Parse,
    _plain_suffix,
    _raise_empty,
    _read,
    _Source,
    _with_hints,
)
from longrec.ingest.schema import (
    CATEGORICAL_COLUMNS,
    REQUIRED_COLUMNS,
    RESERVED_COLUMNS,
    DataError,
    LogSchema,
    taxonomy_columns,
)

__all__ = ["load_synthetic", "load_table"]

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

    Which file columns are read: those the mapping and `extra` name; a required canonical name the mapping leaves out
    is looked up under its own name; and a file column named exactly like an optional canonical column (domain,
    scene, action, label, goal, event_id, and cat_1..cat_M from cat_1 on, while the mapping names no taxonomy) is read
    as that column, unless the mapping or `extra` already reads it or names another column for it. Every other file
    column is not read, and is listed by name in `report.unused_columns` (a line of `report.lines()`, which
    `longrec prepare` prints): nothing is dropped silently. To keep a column named like a canonical one as an extra
    field instead, name it in `extra` (e.g. extra={"raw_label": "label"}).

    CSV ids (and categories, extra fields) become Int64 when every value is an integer, else stay strings;
    Parquet columns keep their dtype. Timestamps become Int64 epoch seconds.

    Args:
        path: a .csv/.tsv/.txt file (optionally compressed) or a .parquet file.
        mapping: canonical name -> column in the file, e.g. {"user_id": "uid", "item_id": "iid", "timestamp": "ts",
            "cat_1": "category"}. Canonical names: user_id, item_id, timestamp, domain, scene, action, goal, label,
            cat_1..cat_M, or "taxonomy" for one column holding a whole path (see taxonomy_separator). Names it
            leaves out are looked up under their own name (see above).
        extra: extra id fields to keep (brand, seller, ...): column names, or {output name: column}.
        taxonomy_levels: M; with mapping["taxonomy"], the path is cut or null-padded to M levels (default 3);
            with the file's own cat_1..cat_k columns, the first M are read.
        taxonomy_separator: the separator inside mapping["taxonomy"] values, e.g. " > " or "|".
        separator: CSV field separator (one character).
        has_header: whether the CSV's first line names its columns.
        columns: names for a headerless CSV's columns (default: column_1, column_2, ...).
        timestamp_format: strptime format of a text timestamp (e.g. "%Y-%m-%d %H:%M:%S"; naive times are UTC).
        timestamp_unit: the unit of a numeric timestamp; it is converted to seconds (floor).
        file_format: "csv" or "parquet"; None guesses from the suffix.
        tmp_dir: where a large compressed file is decompressed.

    Returns:
        The canonical columns read, plus the extra fields; `report.unused_columns` lists the file columns not read.

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
    # A file column named like an optional canonical column is that column, unless something else reads it already.
    taken = {*mapping.values(), *extra_map.values()}
    optional = (*CATEGORICAL_COLUMNS, *RESERVED_COLUMNS)
    adopted = [c for c in optional if c not in mapping and c in names and c not in taken]
    if not cat_keys and "taxonomy" not in mapping:  # the file's own cat_1, cat_2, ... (at most taxonomy_levels)
        most = len(names) if taxonomy_levels is None else taxonomy_levels
        while len(cat_keys) < most and (level := f"cat_{len(cat_keys) + 1}") in names and level not in taken:
            cat_keys.append(level)
        adopted += cat_keys
    mapping.update((c, c) for c in adopted)

    def expected(name: str, what: str) -> str:
        if name not in adopted:
            return what
        return f"{what} (read as '{name}' because of its name; extra={{'{name}_raw': '{name}'}} keeps it as is)"

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
        fields.append(
            _Field("label", mapping["label"], _label_parse(dtypes[mapping["label"]]), expected("label", "0 or 1"))
        )
    if "goal" in mapping:
        fields.append(_Field("goal", mapping["goal"], lambda r: r.cast(pl.String)))
    if "event_id" in mapping:
        fields.append(_Field("event_id", mapping["event_id"], None, expected("event_id", "an event id"), True))
        if is_csv:
            auto_int.append("event_id")
    probes = {c: pl.col(c).is_not_null() & _as_int(pl.col(c)).is_null() for c in auto_int}
    frame, report, not_int = _read(source, fields, probes=probes, what="the mapping")
    report.unused_columns = [c for c in names if c not in {f.raw for f in fields}]
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
    """A log written by `longrec synth` (`longrec.ingest.synthetic`): its directory, or the `log.parquet` in it.

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
