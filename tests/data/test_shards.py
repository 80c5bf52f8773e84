"""`prepare --shards N`: user-hash shards that together equal the unsharded store (longrec.data.shards)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from longrec.data.prepare import prepare
from longrec.data.protocols import ProtocolConfig
from longrec.data.shards import check_shard_args, prepare_shards, shard_name, shard_of
from longrec.data.store import SPLITS, SampleSet, TrajectoryStore
from longrec.files import OutputError
from tests.conftest import make_log

N = 3


def _samples(store: TrajectoryStore, positives_only: bool = False) -> dict[str, list[tuple[Any, ...]]]:
    """Per split: every sample as (raw user, end, target item, category, time, label, goal), sorted."""
    users = store.vocab("user_id").to_list()
    out = {}
    for split in SPLITS:
        s: SampleSet = store.samples(split)
        keep = np.flatnonzero(s.label == 1) if positives_only else np.arange(len(s))
        out[split] = sorted(
            (
                users[int(s.user[i]) - 1],
                int(s.end[i]),
                int(s.target_item[i]),
                tuple(int(c) for c in s.target_category[i]),
                int(s.target_time[i]),
                float(s.label[i]),
                int(s.goal[i]),
            )
            for i in keep
        )
    return out


def _trajectories(store: TrajectoryStore) -> dict[Any, dict[str, list[int]]]:
    users = store.vocab("user_id").to_list()
    counts = np.diff(store.offsets)
    return {users[u - 1]: {k: v.tolist() for k, v in store.trajectory(u).items()} for u in np.flatnonzero(counts)}


def _both(tmp_path: Path, log: pl.DataFrame, protocol: ProtocolConfig) -> tuple[TrajectoryStore, list[TrajectoryStore]]:
    prepare(log, tmp_path / "whole", protocol)
    result = prepare_shards(log, tmp_path / "sharded", protocol, N)
    assert result.manifest is not None and (tmp_path / "sharded" / "shards.json").is_file()
    parts = [TrajectoryStore.open(tmp_path / "sharded" / shard_name(i, N)) for i in range(N)]
    return TrajectoryStore.open(tmp_path / "whole"), parts


def _union(parts: list[TrajectoryStore], positives_only: bool = False) -> dict[str, list[tuple[Any, ...]]]:
    return {s: sorted(r for p in parts for r in _samples(p, positives_only)[s]) for s in SPLITS}


@pytest.mark.parametrize(
    ("impressions", "options"),
    [(0, {}), (6, {}), (0, {"min_history": 3, "max_targets_per_user": 5}), (6, {"min_history": 4})],
)
def test_protocol_t_shards_together_equal_the_unsharded_store(
    tmp_path: Path, impressions: int, options: dict[str, int]
) -> None:
    log = make_log(num_users=20, impressions=impressions, seed=3)
    whole, parts = _both(tmp_path, log, ProtocolConfig.for_protocol("T", **options))
    for part in parts:  # the same vocabularies (ids) in every shard, and as unsharded
        assert part.manifest["vocab_sha"] == whole.manifest["vocab_sha"]
        assert part.manifest["sizes"] == whole.manifest["sizes"]
    # each user in exactly one shard, with the same trajectory
    trajectories: dict[Any, Any] = {}
    for part in parts:
        mine = _trajectories(part)
        assert not set(mine) & set(trajectories)
        trajectories.update(mine)
    assert trajectories == _trajectories(whole)
    # the same positives in the same splits; with labelled impressions (no sampling) every sample is the same
    assert _union(parts, positives_only=True) == _samples(whole, positives_only=True)
    if impressions:
        assert _union(parts) == _samples(whole)
    else:  # negatives are drawn per shard: as many, never an item the user touched
        for s in SPLITS:
            assert len(_union(parts)[s]) == len(_samples(whole)[s])
    # item counts sum to the unsharded ones; the shards' counts to the top-level manifest's
    counts = [np.load(p.root / "items" / "count.npy") for p in parts]
    assert np.sum(counts, axis=0).tolist() == np.load(whole.root / "items" / "count.npy").tolist()
    top = json.loads((tmp_path / "sharded" / "shards.json").read_text())
    assert top["counts"]["samples"] == whole.manifest["counts"]["samples"]
    assert top["counts"]["users"] == whole.manifest["counts"]["users"]
    assert [s["path"] for s in top["shards"]] == [shard_name(i, N) for i in range(N)]


@pytest.mark.parametrize("name", ["A", "B"])
def test_protocol_a_and_b_shards_cut_the_same_positives(tmp_path: Path, name: str) -> None:
    log = make_log(num_users=20, events=60, seed=4)
    protocol = ProtocolConfig.for_protocol(name, min_behaviours=4, num_train_targets=3)
    whole, parts = _both(tmp_path, log, protocol)
    assert _union(parts, positives_only=True) == _samples(whole, positives_only=True)
    for s in SPLITS:
        assert len(_union(parts)[s]) == len(_samples(whole)[s])
    seeds = {p.manifest["protocol"]["seed"] for p in parts}
    assert len(seeds) == N  # each shard draws its own negatives


def test_shard_assignment_is_a_fixed_hash_of_the_raw_id() -> None:
    ids = [100, 101, "u7", 123456789]
    expected = [int.from_bytes(hashlib.sha1(str(v).encode()).digest()[:8], "big") % 4 for v in ids]
    assert shard_of(ids, 4).tolist() == expected
    assert shard_of(pl.Series([100, 101]), 4).tolist() == expected[:2]
    assert shard_of([100], 1).tolist() == [0]


def test_a_job_array_of_single_shards_writes_the_manifest_with_the_last(tmp_path: Path) -> None:
    log = make_log(num_users=20, seed=5)
    protocol = ProtocolConfig.for_protocol("T")
    out = tmp_path / "sharded"
    for i in (2, 0):
        assert prepare_shards(log, out, protocol, N, shard=i).manifest is None
        assert not (out / "shards.json").exists()
    last = prepare_shards(log, out, protocol, N, shard=1)
    assert last.manifest is not None
    whole = prepare_shards(log, tmp_path / "at-once", protocol, N).manifest
    assert whole is not None
    assert last.manifest == whole
    for i in range(N):  # byte-identical samples, whichever call made them
        for split in SPLITS:
            a = np.load(out / shard_name(i, N) / "samples" / split / "target_item.npy")
            b = np.load(tmp_path / "at-once" / shard_name(i, N) / "samples" / split / "target_item.npy")
            assert a.tolist() == b.tolist()


@pytest.mark.parametrize(
    ("shards", "shard", "match"),
    [
        (0, None, "--shards must be"),
        (100_000, None, "--shards must be"),
        (4, 4, r"from 0 to 3.*Got 4"),
        (4, -1, "Got -1"),
    ],
)
def test_bad_shard_values_are_refused(shards: int, shard: int | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_shard_args(shards, shard)


def test_out_rules_never_overwrite(tmp_path: Path) -> None:
    log = make_log(num_users=12, seed=6)
    protocol = ProtocolConfig.for_protocol("T")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"notes\.txt"):
        prepare_shards(log, foreign, protocol, 2)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    out = tmp_path / "sharded"
    prepare_shards(log, out, protocol, 2, shard=0)
    with pytest.raises(OutputError, match="--force"):  # a shard that exists is replaced only with force
        prepare_shards(log, out, protocol, 2, shard=0)
    with pytest.raises(OutputError, match="split into 2"):  # shards of another count
        prepare_shards(log, out, protocol, 3)
    prepare_shards(log, out, protocol, 2, shard=0, force=True)
    assert prepare_shards(log, out, protocol, 2, shard=1).manifest is not None


def test_shards_continue_a_previous_stores_ids_alike(tmp_path: Path) -> None:
    day1, day2 = make_log(num_users=10, num_items=30, seed=7), make_log(num_users=20, num_items=60, seed=8)
    protocol = ProtocolConfig.for_protocol("T")
    prepare(day1, tmp_path / "day1", protocol)
    prepare(day2, tmp_path / "day2", protocol, vocab_from=tmp_path / "day1")
    prepare_shards(day2, tmp_path / "day2-sharded", protocol, N, vocab_from=tmp_path / "day1")
    whole = TrajectoryStore.open(tmp_path / "day2")
    for i in range(N):
        part = TrajectoryStore.open(tmp_path / "day2-sharded" / shard_name(i, N))
        assert part.manifest["vocab_sha"] == whole.manifest["vocab_sha"]
        assert part.manifest["vocab_growth"] == whole.manifest["vocab_growth"]


def test_the_cli_prepares_shards_and_refuses_bad_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from longrec.cli import main

    log = tmp_path / "log.csv"
    make_log(num_users=12, seed=9).write_csv(log)
    base = ["prepare", str(log), "--format", "csv"]
    assert main([*base, "--out", str(tmp_path / "s"), "--shards", "2", "--shard", "1"]) == 0
    assert "1 of 2 shards present" in capsys.readouterr().out
    assert main([*base, "--out", str(tmp_path / "s"), "--shards", "2", "--shard", "0"]) == 0
    assert "wrote" in capsys.readouterr().out and (tmp_path / "s" / "shards.json").is_file()
    for bad, said in (
        (["--shards", "0"], "--shards must be"),
        (["--shards", "2", "--shard", "2"], "from 0 to 1"),
        (["--shard", "1"], "needs --shards N"),
        (["--shards", "2", "--shard", "0"], "--force"),  # never over a shard without --force
    ):
        assert main([*base, "--out", str(tmp_path / "s"), *bad]) == 2
        assert said in capsys.readouterr().err
