"""`python -m longrec.cf`: a store or a MovieLens file in, a recognised cf.json out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from longrec.cf import store_matrix
from longrec.cf.command import main
from longrec.data.prepare import prepare
from longrec.data.protocols import ProtocolConfig
from longrec.data.shards import prepare_shards
from tests.conftest import make_log


def test_store_matrix_holds_each_users_items_whole_or_sharded(tmp_path: Path) -> None:
    log = make_log(num_users=15, events=20, seed=3)
    prepare(log, tmp_path / "store", ProtocolConfig.for_protocol("T"))
    x = store_matrix(tmp_path / "store", min_item_count=1)
    pairs = log.select("user_id", "item_id").unique()
    assert x.sum() == pairs.height  # one cell per distinct (user, item)
    assert sorted(x.sum(1).astype(int).tolist()) == sorted(pairs.group_by("user_id").len()["len"].to_list())
    # A sharded folder of the same log gives the same matrix.
    prepare_shards(log, tmp_path / "sharded", ProtocolConfig.for_protocol("T"), 3)
    assert np.array_equal(store_matrix(tmp_path / "sharded", min_item_count=1), x)


def test_command_writes_a_report_and_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prepare(make_log(num_users=30, events=30, seed=9), tmp_path / "store", ProtocolConfig.for_protocol("T"))
    out = tmp_path / "report"
    argv = ["--store", str(tmp_path / "store"), "--model", "ease", "--set", "l2=10", "--min-item-count", "1"]
    assert main([*argv, "--out", str(out)]) == 0
    report = json.loads((out / "cf.json").read_text())
    assert report["settings"] == {"l2": 10.0}
    assert 0 <= report["test"]["recall@20"] <= 1 and np.isfinite(report["test"]["ndcg@20"])
    capsys.readouterr()
    assert main([*argv, "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main([*argv, "--out", str(out), "--force"]) == 0
    assert main([*argv, "--set", "lambda=3"]) == 2
    assert "not a setting of ease" in capsys.readouterr().err
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    assert main([*argv, "--out", str(foreign), "--force"]) == 2
    assert (foreign / "notes.txt").read_text() == "keep"
