"""Ingest: raw behaviour logs -> the canonical log (`longrec.ingest.schema`), knowing nothing of stores or tensors.

One module per source family reads its formats: `alibaba` (Taobao UserBehavior, Tmall), `movielens`, `amazon`,
`kuaishou` (KuaiRec, KuaiRand) and `table` (any CSV or Parquet with a column mapping; `longrec synth` output). They
share the machinery of `reading`. `unify` merges several loaded sources into one log with one taxonomy (the
mapping table in `taxonomy`, sources on disk in `sources`), and `synthetic` generates logs with planted mechanisms
and their ground truth. Nothing here imports `longrec.data` or anything above it: `prepare` (in `longrec.data`)
turns the canonical log into a store.

Every loader returns a `LoadedLog`: a polars LazyFrame with canonical columns (`user_id`, `item_id`, `timestamp`, then
the optional ones), its `LogSchema`, and a `FilterReport` that counts every row a filter removed. The frame stays
lazy, so `prepare` can stream a 100M-row file; before returning, the loader makes one streaming pass over the raw
columns it needs. That pass counts rows, counts each filter, and checks that every value parses. The first bad value
raises a `DataError` that names the file, the line (1-based, header counted), the column, what was expected and what
was found. Nothing is dropped silently: rows a filter removes are counted in `LoadedLog.report`, and rows removed from
side tables (category trees, item meta) in `LoadedLog.side`. Formats, options and column mappings are documented in
docs/data.md.

`LOADERS` is a plain dict, format name -> loader; adding a format is one function (in its family's module) and one
line here.

Example:
    >>> log = load_log("../shared/data/taobao_userbehavior/UserBehavior_927users.csv.gz", "taobao", actions=("pv",))
    >>> log.report.lines()  # doctest: +SKIP
    ['read 94,225 rows, kept 84,642', '  dropped 9,544 rows: action not in [pv]', '  dropped 39 rows: timestamp ...']
    >>> events = log.frame.collect(engine="streaming")  # user_id, item_id, timestamp, action, cat_1
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from functools import partial
from typing import Any

from longrec.ingest.alibaba import load_taobao, load_tmall
from longrec.ingest.amazon import load_amazon
from longrec.ingest.kuaishou import load_kuairand, load_kuairec
from longrec.ingest.movielens import load_movielens
from longrec.ingest.reading import LoadedLog, PathLike, _with_hints
from longrec.ingest.table import load_synthetic, load_table

__all__ = ["LOADERS", "load_log"]

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
