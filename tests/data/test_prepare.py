"""`prepare` fails loudly and never writes outside the store: names that become paths, id dtypes sized to their
vocabulary, empty splits, single-class splits."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pytest

from longrec.data.prepare import prepare
from longrec.data.protocols import ProtocolConfig
from longrec.data.schema import DataError
from longrec.data.store import TrajectoryStore
from tests.conftest import make_log


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("name", ["../../x", "/abs/x", "ABSOLUTE", "a/b", ".hidden", "..", "-x", "a\\b", "é"])
def test_a_column_name_that_is_not_a_safe_file_name_is_refused_and_nothing_is_written(
    tmp_path: Path, name: str
) -> None:
    name = str(tmp_path / "abs" / "x") if name == "ABSOLUTE" else name  # an absolute path inside tmp_path
    work = tmp_path / "work"
    out = work / "deep" / "store"
    log = make_log(num_users=4, events=10).with_columns(pl.lit(3).alias(name))  # an extra id column
    with pytest.raises(DataError, match=rf"test-log: column\(s\) {re.escape(str([name]))} .*allowed"):
        prepare(log, out, ProtocolConfig.for_protocol("T"), source="test-log")
    assert _tree(tmp_path) == [], "nothing is written anywhere: not the store, its parents or a vocabulary file"


def test_a_refused_name_is_named_with_every_other_refused_name_and_extra_fields_can_leave_them_out(
    tmp_path: Path,
) -> None:
    log = make_log(num_users=4, events=10).with_columns(pl.lit(1).alias("../a"), pl.lit(2).alias("b/c"))
    with pytest.raises(DataError, match=r"column\(s\) \['\.\./a', 'b/c'\].*--extra-fields"):
        prepare(log, tmp_path / "store", ProtocolConfig.for_protocol("T"), source="test-log")
    prepare(log, tmp_path / "store", ProtocolConfig.for_protocol("T"), source="test-log", extra_fields=())
    assert sorted(p.name for p in (tmp_path / "store" / "vocab").iterdir()) == [
        "action.parquet",
        "cat_1.parquet",
        "cat_2.parquet",
        "item_id.parquet",
        "user_id.parquet",
    ]


def test_the_store_reads_no_vocabulary_or_split_outside_itself(tmp_path: Path, tiny_log: pl.DataFrame) -> None:
    prepare(tiny_log, tmp_path / "store", ProtocolConfig.for_protocol("T"))
    pl.DataFrame({"raw": [1]}).write_parquet(tmp_path / "secret.parquet")
    store = TrajectoryStore.open(tmp_path / "store")
    with pytest.raises(ValueError, match=r"vocabulary name '\.\./\.\./secret'"):
        store.vocab("../../secret")
    with pytest.raises(ValueError, match=r"split name '\.\./vocab'"):
        store.samples("../vocab")
