"""`prepare` fails loudly and never writes outside the store: names that become paths, id dtypes sized to their
vocabulary, empty splits, single-class splits."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from longrec.data.dataset import collate
from longrec.data.prepare import prepare
from longrec.data.protocols import ProtocolConfig
from longrec.data.store import SPLITS, TrajectoryStore, id_dtype
from longrec.ingest.schema import DataError
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


def _log_with_many_values(n: int) -> pl.DataFrame:
    """n behaviours of 50 users, each with its own action, domain and scene value (n distinct values each)."""
    rng = np.random.default_rng(0)
    user = np.arange(n) % 50
    return pl.DataFrame(
        {
            "user_id": user,
            "item_id": rng.integers(1, 300, size=n),
            "timestamp": 1_600_000_000 + np.arange(n),  # distinct: file order = time order
            "action": [f"action-{i}" for i in range(n)],
            "domain": [f"domain-{i}" for i in range(n)],
            "scene": np.arange(n) * 3,
            "event_id": np.arange(n),
        }
    )


def test_id_columns_with_more_values_than_int16_holds_round_trip_and_collate(tmp_path: Path) -> None:
    n = 40_000  # > 32,767: int16 would wrap to negative ids
    log = _log_with_many_values(n)
    prepare(log, tmp_path / "store", ProtocolConfig.for_protocol("T"))
    store = TrajectoryStore.open(tmp_path / "store")
    rows = store.arrays["event_id"]  # [N] the log row of each trajectory row
    for column in ("action", "domain", "scene"):
        ids = np.asarray(store.arrays[column]).astype(np.int64)
        assert ids.min() >= 1 and ids.max() == n, f"{column}: every dense id is positive and fits"
        assert store.sizes[f"num_{column}s"] == n + 1
        raw = store.vocab(column).to_numpy()[ids - 1]  # dense id i <-> raw value vocab[i - 1]
        np.testing.assert_array_equal(raw, log[column].to_numpy()[rows])
    samples = store.samples("train")
    index = np.arange(0, len(samples), 97)
    batch = collate(store, samples, index, max_history=64)
    for field in ("history_action", "history_domain", "history_scene"):
        value = getattr(batch, field)
        assert value.dtype.is_floating_point is False and int(value.max()) <= n
        assert (value[batch.history_mask] >= 1).all(), f"{field}: a real behaviour has a real id"
        assert (value[~batch.history_mask] == 0).all()


def test_id_columns_are_stored_in_the_smallest_dtype_that_holds_their_vocabulary(tmp_path: Path) -> None:
    prepare(_log_with_many_values(40_000), tmp_path / "wide", ProtocolConfig.for_protocol("T"))
    prepare(_log_with_many_values(300), tmp_path / "narrow", ProtocolConfig.for_protocol("T"))
    wide, narrow = TrajectoryStore.open(tmp_path / "wide"), TrajectoryStore.open(tmp_path / "narrow")
    for column in ("action", "domain", "scene"):
        assert wide.arrays[column].dtype == np.int32 and narrow.arrays[column].dtype == np.int16
    assert wide.arrays["item"].dtype == narrow.arrays["item"].dtype == np.int32  # item ids: int32 at least


def test_id_dtype_is_the_narrowest_that_holds_every_id() -> None:
    assert id_dtype(0) == id_dtype(32_767) == np.int16 and id_dtype(32_768) == np.int32
    assert id_dtype(2**31 - 1) == np.int32 and id_dtype(2**31) == id_dtype(2**63 - 1) == np.int64
    assert id_dtype(5, np.int32) == np.int32, "never narrower than asked"
    with pytest.raises(ValueError, match="does not fit int64"):
        id_dtype(2**63)


@pytest.mark.parametrize(
    ("protocol", "filter_"),
    [
        (ProtocolConfig.for_protocol("A", min_behaviours=50), r"users below min_behaviours: 5 of 5 users"),
        (ProtocolConfig.for_protocol("B", min_behaviours=50), r"users below min_behaviours: 5 of 5 users"),
        (ProtocolConfig.for_protocol("T", min_history=50), r"targets with fewer than min_history .*: \d+"),
    ],
    ids=["A", "B", "T"],
)
def test_a_protocol_that_filters_out_every_sample_is_an_error_naming_split_and_filter(
    tmp_path: Path, protocol: ProtocolConfig, filter_: str
) -> None:
    log = make_log(num_users=5, events=10)  # fewer than 2 x 10 behaviours per user
    knob = "min_history" if protocol.name == "T" else "min_behaviours"
    message = rf"test-log: protocol {protocol.name} cut no samples for split\(s\) 'train', 'valid', 'test'.*{filter_}"
    with pytest.raises(DataError, match=rf"{message}.*lower {knob} \(now 50.*; --set {knob}=N\).*Nothing was written"):
        prepare(log, tmp_path / "work" / "store", protocol, source="test-log")
    assert _tree(tmp_path) == [], "nothing is written"


def _five_targets() -> pl.DataFrame:
    """User 1's behaviours 2..6 are the only targets; user 2's one behaviour makes item 7 a negative."""
    return pl.DataFrame(
        {"user_id": [1] * 6 + [2], "item_id": [1, 2, 3, 4, 5, 6, 7], "timestamp": [10, 20, 30, 40, 50, 60, 5]}
    )


def test_an_empty_time_split_names_the_split_and_the_split_fractions(tmp_path: Path) -> None:
    log = _five_targets()  # the 0.8 and 0.9 time quantiles of 5 targets are the same target: valid gets none
    with pytest.raises(
        DataError,
        match=r"split\(s\) 'valid' \(train 8, valid 0, test 2\).*give 'valid' a larger share of split_fractions",
    ):
        prepare(log, tmp_path / "store", ProtocolConfig.for_protocol("T"), source="test-log")
    assert _tree(tmp_path) == []


def test_allow_empty_splits_writes_a_store_whose_split_is_empty(tmp_path: Path) -> None:
    prepare(_five_targets(), tmp_path / "store", ProtocolConfig.for_protocol("T"), allow_empty_splits=True)
    assert TrajectoryStore.open(tmp_path / "store").manifest["counts"]["samples"] == {"train": 8, "valid": 0, "test": 2}


def test_a_split_with_no_share_of_the_time_split_may_be_empty(tmp_path: Path) -> None:
    protocol = ProtocolConfig.for_protocol("T", split_fractions=(0.9, 0.0, 0.1))
    prepare(make_log(num_users=5, events=10, tie_prob=0.0), tmp_path / "store", protocol)
    store = TrajectoryStore.open(tmp_path / "store")
    assert store.manifest["counts"]["samples"]["valid"] == 0 < store.manifest["counts"]["samples"]["test"]


def test_a_single_class_split_is_recorded_and_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    protocol = ProtocolConfig.for_protocol("T", negatives=0)  # every sample is a positive
    with caplog.at_level(logging.WARNING, logger="longrec"):
        prepare(make_log(num_users=5, events=10, tie_prob=0.0), tmp_path / "store", protocol, source="test-log")
    counts = TrajectoryStore.open(tmp_path / "store").manifest["counts"]
    assert all(counts["positives"][s] == counts["samples"][s] > 0 for s in SPLITS)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for split in SPLITS:
        assert any(f"test-log: split '{split}' holds a single class" in m and "AUC" in m for m in warned), warned


def test_splits_holding_both_classes_raise_no_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="longrec"):
        prepare(make_log(num_users=5, events=10), tmp_path / "store", ProtocolConfig.for_protocol("T"))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# ---------------------------------------------------------------------------------------------------- vocab_from
def _next_day(log: pl.DataFrame, cat_1: int = 0) -> pl.DataFrame:
    """The later half of `log` plus a new user's behaviours on two new items, a new leaf category among them."""
    later = log.filter(pl.col("timestamp") > log["timestamp"].median())
    t = int(log["timestamp"].max())
    new = pl.DataFrame(
        {
            "user_id": [999, 999, 999],
            "item_id": [9_001, 9_002, 9_001],
            "timestamp": [t + 10, t + 20, t + 30],
            "action": ["view", "view", "click"],
            "cat_1": [cat_1] * 3,
            "cat_2": [1_999, 1_000, 1_999],
        }
    ).cast(later.schema)  # type: ignore[arg-type]
    return pl.concat([later, new])


def test_vocab_from_keeps_every_old_id_and_appends_the_new_ones(tmp_path: Path) -> None:
    log = make_log(num_users=8, events=30)
    first = log.filter(pl.col("timestamp") <= log["timestamp"].median())
    protocol = ProtocolConfig.for_protocol("T")
    prepare(first, tmp_path / "day1", protocol)
    day2 = _next_day(log)
    prepare(day2, tmp_path / "day2", protocol, vocab_from=tmp_path / "day1")
    old, new = TrajectoryStore.open(tmp_path / "day1"), TrajectoryStore.open(tmp_path / "day2")
    added = new.manifest["vocab_growth"]["added"]
    for name in ("user_id", "item_id", "action", "cat_1", "cat_2"):
        before, after = old.vocab(name).to_list(), new.vocab(name).to_list()
        assert after[: len(before)] == before, f"{name}: an old value changed its id"
        appended = sorted(set(day2[name].to_list()) - set(before))
        assert after[len(before) :] == appended, f"{name}: new values are appended, sorted"
        assert added[name] == len(appended)
    assert {9_001, 9_002} <= set(new.vocab("item_id").tail(added["item_id"]).to_list())
    assert 999 in new.vocab("user_id").tail(added["user_id"]).to_list() and added["cat_2"] == 1
    gone = set(first["item_id"].to_list()) - set(day2["item_id"].to_list())
    assert gone, "the test needs an item of day 1 that day 2 does not hold"
    assert new.sizes["num_items"] == old.sizes["num_items"] + added["item_id"]
    assert new.sizes["num_categories"] == old.sizes["num_categories"] + 1
    # the stored ids decode to the log's raw values (checked per user as multisets: ties may reorder)
    items = new.vocab("item_id").to_numpy()
    users = new.vocab("user_id").to_list()
    for u, raw_user in enumerate(users, start=1):
        stored = sorted(items[np.asarray(new.trajectory(u)["item"]) - 1].tolist())
        assert stored == sorted(day2.filter(pl.col("user_id") == raw_user)["item_id"].to_list())
    growth = new.manifest["vocab_growth"]
    assert growth["from"]["vocab_sha"] == old.manifest["vocab_sha"]
    assert growth["ancestors"][0]["lengths"]["item_id"] == old.sizes["num_items"] - 1


def test_vocab_from_a_grown_store_lists_every_ancestor(tmp_path: Path) -> None:
    log = make_log(num_users=8, events=30)
    protocol = ProtocolConfig.for_protocol("T")
    prepare(log.filter(pl.col("timestamp") <= log["timestamp"].median()), tmp_path / "day1", protocol)
    prepare(_next_day(log), tmp_path / "day2", protocol, vocab_from=tmp_path / "day1")
    prepare(_next_day(log), tmp_path / "day3", protocol, vocab_from=tmp_path / "day2")
    shas = [TrajectoryStore.open(tmp_path / d).manifest["vocab_sha"] for d in ("day1", "day2", "day3")]
    growth = TrajectoryStore.open(tmp_path / "day3").manifest["vocab_growth"]
    assert [a["vocab_sha"] for a in growth["ancestors"]] == [shas[1], shas[0]]
    assert shas[2] == shas[1] and set(growth["added"].values()) == {0}, "nothing new: the same vocabulary"


def test_vocab_from_refuses_new_values_in_a_taxonomy_level_before_the_last(tmp_path: Path) -> None:
    log = make_log(num_users=8, events=30)
    protocol = ProtocolConfig.for_protocol("T")
    prepare(log.filter(pl.col("timestamp") <= log["timestamp"].median()), tmp_path / "day1", protocol)
    with pytest.raises(DataError, match=r"taxonomy level cat_1 gains 1 value\(s\).*\(e\.g\. 77\).*re-number"):
        prepare(_next_day(log, cat_1=77), tmp_path / "day2", protocol, vocab_from=tmp_path / "day1")
    assert not (tmp_path / "day2").exists()


def test_vocab_from_refuses_a_store_with_other_vocabularies(tmp_path: Path) -> None:
    log = make_log(num_users=8, events=30)
    protocol = ProtocolConfig.for_protocol("T")
    prepare(log.drop("action"), tmp_path / "day1", protocol)
    with pytest.raises(DataError, match=r"has vocabularies \['cat_1', 'cat_2', 'item_id', 'user_id'\], but this log"):
        prepare(_next_day(log), tmp_path / "day2", protocol, vocab_from=tmp_path / "day1")


def test_split_times_cut_one_day_for_training_and_the_next_for_validation(tmp_path: Path) -> None:
    log = make_log(num_users=8, events=30)
    t = np.quantile(log["timestamp"].to_numpy(), [0.3, 0.6]).astype(int).tolist()
    end = int(log["timestamp"].max()) + 1
    protocol = ProtocolConfig.for_protocol("T", split_times=(t[0], t[1], end))
    prepare(log, tmp_path / "store", protocol)
    store = TrajectoryStore.open(tmp_path / "store")
    train, valid = np.asarray(store.samples("train").target_time), np.asarray(store.samples("valid").target_time)
    assert len(train) and len(valid) and len(store.samples("test")) == 0, "the test window starts after the log"
    assert train.min() >= t[0] and train.max() < t[1] <= valid.min() and valid.max() < end
    with pytest.raises(ValueError, match=r"split_times must be empty or 3 non-decreasing"):
        ProtocolConfig.for_protocol("T", split_times=(t[1], t[0], end))


def test_top_categories_ranks_a_levels_categories_by_behaviours(tiny_log: pl.DataFrame, tmp_path: Path) -> None:
    prepare(tiny_log, tmp_path / "s", ProtocolConfig.for_protocol("T"))
    store = TrajectoryStore.open(tmp_path / "s")
    for level in (0, 1, -1):
        top = store.top_categories(100, level)
        ids = np.asarray(store.item_category)[:, level]
        counts = {c: int(store.item_count[ids == c].sum()) for c in set(ids.tolist()) - {0}}
        assert top == sorted((c for c in counts if counts[c]), key=lambda c: (-counts[c], c))
        assert store.top_categories(2, level) == top[:2]
    with pytest.raises(ValueError, match=r"level must be a taxonomy level in \[-2, 2\)"):
        store.top_categories(3, level=2)
