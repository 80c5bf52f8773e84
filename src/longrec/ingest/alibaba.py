"""Alibaba logs: Taobao UserBehavior (Tianchi 649) and Tmall repeat buyers (IJCAI-15) -> canonical columns."""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from longrec.ingest.reading import (
    LoadedLog,
    PathLike,
    _action_filter,
    _as_int,
    _check_choice,
    _Field,
    _Filter,
    _finish,
    _id,
    _one_of,
    _read,
    _text_source,
    _ts,
)
from longrec.ingest.schema import LogSchema

__all__ = ["TAOBAO_ACTIONS", "TAOBAO_WINDOW", "TMALL_ACTIONS", "load_taobao", "load_tmall"]

TAOBAO_ACTIONS = ("pv", "cart", "fav", "buy")
# Official UserBehavior window 2017-11-25 .. 2017-12-03 as [start, end) epoch seconds; the day boundaries are midnight
# China Standard Time (UTC+8), i.e. 2017-11-24 16:00 .. 2017-12-03 16:00 UTC.
TAOBAO_WINDOW = (1511539200, 1512316800)
TMALL_ACTIONS = {"0": "click", "1": "cart", "2": "buy", "3": "fav"}  # action_type code -> name


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
