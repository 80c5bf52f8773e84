"""Amazon reviews (McAuley et al.: JSON lines or the 2018 ratings CSV) and the meta file's category paths."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any, Literal

import polars as pl

from longrec.ingest.reading import (
    _DECOMPRESSORS,
    LoadedLog,
    PathLike,
    _dedupe,
    _existing,
    _finish,
    _id,
    _join_side,
    _plain_suffix,
    _preview,
    _rating_fields,
    _read,
    _text_source,
    _ts,
)
from longrec.ingest.schema import DataError, FilterReport, LogSchema, taxonomy_columns

__all__ = ["load_amazon"]


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
