"""Protocols A, B, T: positions, negatives, seeding, and the no-future-behaviour property."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from longrec.data.dataset import collate
from longrec.data.prepare import prepare
from longrec.data.protocols import ProtocolConfig
from longrec.data.store import SPLITS, TrajectoryStore
from tests.conftest import make_log


def _prepared(
    tmp_path: Path, log: pl.DataFrame, protocol: ProtocolConfig, name: str = "store", allow_empty: bool = False
) -> TrajectoryStore:
    prepare(log, tmp_path / name, protocol, source="test-log", force=True, allow_empty_splits=allow_empty)
    return TrajectoryStore.open(tmp_path / name)


def _assert_no_future(store: TrajectoryStore, max_history: int) -> None:
    """Every history behaviour is strictly before its sample's cutoff and belongs to the sample's user."""
    for split in SPLITS:
        samples = store.samples(split)
        if len(samples) == 0:
            continue
        batch = collate(store, samples, np.arange(len(samples)), max_history)
        ts = batch.target_time[:, None] - batch.history_time_delta.long()  # [B, L] behaviour timestamps
        real = batch.history_mask
        assert (batch.history_time_delta[real] > 0).all(), "a history behaviour at or after the cutoff"
        assert (ts[real] < batch.target_time[:, None].expand_as(ts)[real]).all()
        # the kept behaviours are exactly the most recent ones before the cutoff
        for b in range(0, len(samples), max(1, len(samples) // 7)):
            user, cutoff = int(samples.user[b]), int(samples.target_time[b])
            traj = store.trajectory(user)
            before = traj["item"][traj["timestamp"] < cutoff][-max_history:]
            got = batch.history[b][real[b]].numpy()
            np.testing.assert_array_equal(got, before)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 10_000),
    protocol=st.sampled_from(["A", "B", "T"]),
    tie_prob=st.floats(0.0, 0.9),
    max_history=st.integers(1, 30),
    impressions=st.sampled_from([0, 3]),
)
def test_no_history_holds_a_behaviour_at_or_after_the_cutoff(
    tmp_path_factory: pytest.TempPathFactory,
    seed: int,
    protocol: str,
    tie_prob: float,
    max_history: int,
    impressions: int,
) -> None:
    log = make_log(num_users=6, events=15, seed=seed, tie_prob=tie_prob, impressions=impressions)
    cfg = ProtocolConfig.for_protocol(protocol, seed=seed, min_behaviours=3 if protocol != "T" else 1)
    store = _prepared(tmp_path_factory.mktemp("p"), log, cfg, allow_empty=True)  # tiny logs: a split may be empty
    _assert_no_future(store, max_history)


def test_same_seed_gives_byte_identical_samples(tmp_path: Path) -> None:
    log = make_log(seed=3)
    for protocol in ("A", "B", "T"):
        cfg = ProtocolConfig.for_protocol(protocol, seed=7, min_behaviours=5)
        a = _prepared(tmp_path, log, cfg, "a")
        _prepared(tmp_path, log, cfg, "b")
        for split in SPLITS:
            for name in ("user", "end", "target_item", "label", "target_category"):
                path_a = tmp_path / "a" / "samples" / split / f"{name}.npy"
                assert path_a.read_bytes() == (tmp_path / "b" / "samples" / split / f"{name}.npy").read_bytes()
        other = _prepared(tmp_path, log, ProtocolConfig.for_protocol(protocol, seed=8, min_behaviours=5), "c")
        assert not np.array_equal(other.samples("train").target_item, a.samples("train").target_item)


def test_protocol_a_positions_and_negatives(tmp_path: Path) -> None:
    log = make_log(num_users=8, events=80, num_items=2000, seed=1, tie_prob=0.0)
    cfg = ProtocolConfig.for_protocol("A", min_behaviours=100, num_train_targets=19)
    store = _prepared(tmp_path, log, cfg)
    counts = np.diff(store.offsets)
    eligible = np.flatnonzero(counts >= 100)
    assert store.manifest["protocol_report"]["users below min_behaviours"] == int(np.sum(counts[1:] < 100))
    test, valid, train = store.samples("test"), store.samples("valid"), store.samples("train")
    assert len(test) == 3 * eligible.size  # one positive + 2 negatives per user
    pos = test.label == 1
    # test target = the user's last behaviour; valid = second to last; train = T-2, T-7, ...
    for u in eligible:
        traj = store.trajectory(int(u))
        assert test.target_item[pos & (test.user == u)][0] == traj["item"][-1]
        assert valid.target_item[(valid.label == 1) & (valid.user == u)][0] == traj["item"][-2]
        got = sorted(train.target_item[(train.label == 1) & (train.user == u)].tolist())
        assert got == sorted(traj["item"][[-3 - 5 * k for k in range(19)]].tolist())
        negatives = np.concatenate([s.target_item[(s.label == 0) & (s.user == u)] for s in (train, valid, test)])
        assert not np.isin(negatives, traj["item"]).any(), "a negative the user has interacted with"
        assert (negatives > 0).all()


def test_protocol_b_leave_last_out(tmp_path: Path) -> None:
    log = make_log(num_users=5, events=10, seed=2, tie_prob=0.0)
    store = _prepared(tmp_path, log, ProtocolConfig.for_protocol("B", min_behaviours=4))
    train = store.samples("train")
    counts = np.diff(store.offsets)
    expected = int(sum(n - 3 for n in counts[1:] if n >= 4))
    assert int(train.label.sum()) == expected
    assert len(train) == 2 * expected  # one negative per positive
    assert int(store.samples("test").label.sum()) == int(np.sum(counts[1:] >= 4))


def test_protocol_t_splits_by_time_and_uses_impressions(tmp_path: Path) -> None:
    log = make_log(num_users=10, events=30, seed=4, impressions=5, goals=("click", "buy"))
    store = _prepared(tmp_path, log, ProtocolConfig.for_protocol("T", min_history=0))
    times = {s: store.samples(s).target_time for s in SPLITS}
    assert times["train"].max() <= times["valid"].min() and times["valid"].max() <= times["test"].min()
    total = sum(len(store.samples(s)) for s in SPLITS)
    assert total == log["label"].is_not_null().sum()  # labelled impressions are the samples
    assert store.manifest["counts"]["behaviours"] == log["label"].is_null().sum()  # and never history
    assert set(np.unique(np.concatenate([store.samples(s).goal for s in SPLITS]))) <= {1, 2}
    assert store.sizes["num_goals"] == 3


def test_manifest_counts_and_vocab(tmp_path: Path, tiny_log: pl.DataFrame) -> None:
    store = _prepared(tmp_path, tiny_log, ProtocolConfig.for_protocol("T"))
    assert store.manifest["counts"]["behaviours"] == tiny_log.height
    items = store.vocab("item_id")
    assert items.len() == tiny_log["item_id"].n_unique() and store.sizes["num_items"] == items.len() + 1
    # dense id i <-> raw value items[i - 1]; trajectories are time-sorted per user
    for u in range(1, store.num_users):
        traj = store.trajectory(u)
        assert (np.diff(traj["timestamp"]) >= 0).all()
    cat = store.arrays["category"]
    M1 = store.vocab("cat_1").len()
    assert cat[:, 0].max() <= M1 < cat[:, 1].min(), "taxonomy levels share one id space, one block per level"


def test_prepare_is_atomic(tmp_path: Path, tiny_log: pl.DataFrame, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "store"
    prepare(tiny_log, out, ProtocolConfig.for_protocol("T"))
    before = (out / "manifest.json").read_text()

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr("longrec.data.prepare.write_manifest", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare(tiny_log.head(50), out, ProtocolConfig.for_protocol("T"), force=True)
    assert (out / "manifest.json").read_text() == before, "a failed prepare must leave the old store intact"
    assert [p.name for p in tmp_path.iterdir()] == ["store"], "no temporary directory left behind"
