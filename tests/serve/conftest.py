"""Serving fixtures: a prepared store with every side field."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from longrec.data.prepare import prepare
from longrec.data.protocols import ProtocolConfig
from tests.conftest import make_log


def history_log(seed: int = 0) -> pl.DataFrame:
    """`make_log` plus a domain, a scene, an extra id field (brand) and event ids: every field a history carries."""
    log = make_log(num_users=12, events=40, num_items=60, seed=seed)
    return log.with_columns(
        domain=pl.when(pl.col("item_id") % 3 == 0).then(pl.lit("ad")).otherwise(pl.lit("content")),
        scene=pl.when(pl.col("timestamp") % 2 == 0).then(pl.lit("feed")).otherwise(pl.lit("search")),
        brand=(pl.col("item_id") % 5).cast(pl.String),
        event_id=pl.int_range(pl.len(), dtype=pl.Int64) + 1000,
    )


@pytest.fixture(scope="session")
def history_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared store (protocol T, every user with samples) of `history_log()`."""
    out = tmp_path_factory.mktemp("history") / "store"
    prepare(history_log(), out, ProtocolConfig.for_protocol("T", min_history=0))
    return out
