"""Kuaishou logs: KuaiRec interaction matrices with their category tree, and KuaiRand logs -> canonical columns."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from longrec.ingest.reading import (
    LoadedLog,
    PathLike,
    _as_float,
    _as_int,
    _dedupe,
    _existing,
    _Field,
    _finish,
    _floor_int,
    _id,
    _join_side,
    _label_01,
    _materialize,
    _read,
    _sibling,
    _Source,
    _text_source,
    _ts,
)
from longrec.ingest.schema import FilterReport, LogSchema

__all__ = ["KUAIREC_CATEGORY_FILES", "KUAIREC_UNKNOWN", "load_kuairand", "load_kuairec"]

KUAIREC_UNKNOWN = "-124"  # category id of an unknown level in kuairec_caption_category.csv
KUAIREC_CATEGORY_FILES = ("kuairec_caption_category.csv", "kuairec_caption_category.csv.gz")


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
