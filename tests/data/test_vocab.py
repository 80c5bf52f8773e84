"""Vocabulary: raw ids -> dense ids of a prepared store; unknown values are the out-of-vocabulary id 0, counted."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from longrec.data.prepare import prepare
from longrec.data.protocols import ProtocolConfig
from longrec.data.store import TrajectoryStore
from longrec.data.vocab import Vocabulary
from tests.conftest import make_log


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> TrajectoryStore:
    out = tmp_path_factory.mktemp("vocab") / "s"
    prepare(make_log(num_users=10, events=10, seed=2), out, ProtocolConfig.for_protocol("T", min_history=0))
    return TrajectoryStore.open(out)


def test_raw_values_map_to_their_dense_ids_and_unknown_ones_to_zero(store: TrajectoryStore) -> None:
    vocab = Vocabulary(store)
    raw = vocab.raw("item_id").to_list()
    dense = vocab.dense("item_id", [raw[2], "not an id", raw[0], None, -1], what="target_item")
    np.testing.assert_array_equal(dense, [3, 0, 1, 0, 0])
    assert vocab.unknown == {"target_item": 3} and vocab.size("item_id") == len(raw) + 1
    assert "item_id" in vocab.names() and "user_id" in vocab.names()


def test_unknown_values_can_be_refused(store: TrajectoryStore, tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"target_item holds 1 value\(s\) the store's item_id vocabulary does not know"
    ):
        Vocabulary(store).dense("item_id", [123456789], unknown="error", what="target_item")


def test_a_folder_holding_a_copy_of_the_vocabularies_maps_like_the_store(
    store: TrajectoryStore, tmp_path: Path
) -> None:
    shutil.copytree(store.root / "vocab", tmp_path / "vocab")
    copy, original = Vocabulary(tmp_path, sha=store.manifest["vocab_sha"]), Vocabulary(store)
    raw = original.raw("item_id").to_list()
    values = [raw[3], "unknown", raw[-1]]
    np.testing.assert_array_equal(copy.dense("item_id", values), original.dense("item_id", values))
    assert copy.sha == original.sha and copy.names() == original.names()
    with pytest.raises(ValueError, match=r"vocab has vocabulary sha \w+, expected 0000: its files were changed"):
        Vocabulary(tmp_path, sha="0000")
    with pytest.raises(FileNotFoundError, match=r"no vocabularies to read"):
        Vocabulary(tmp_path / "vocab")


def test_taxonomy_levels_are_offset_like_prepare_and_both_lookup_paths_agree(store: TrajectoryStore) -> None:
    vocab = Vocabulary(store)
    levels = store.taxonomy_levels
    assert levels == 2
    stored = np.asarray(store.arrays["category"])  # [N, M] dense ids as prepare wrote them
    for m in range(levels):
        raw = vocab.raw(f"cat_{m + 1}")
        dense = vocab.dense(f"cat_{m + 1}", raw.to_list())  # few values: per-value lookup
        assert set(dense.tolist()) == set(np.unique(stored[:, m][stored[:, m] > 0]).tolist())
        many = pl.concat([raw] * (2048 // len(raw) + 1))  # a long series: the polars join
        np.testing.assert_array_equal(vocab.dense(f"cat_{m + 1}", many), np.tile(dense, 2048 // len(raw) + 1))
    items = vocab.raw("item_id").to_list()
    odd = [items[0], float(items[1]), str(items[2]), 1.5, True, None, "x"]
    np.testing.assert_array_equal(vocab.dense("item_id", odd)[3:], [0, 0, 0, 0])
    assert vocab.dense("item_id", odd)[:3].tolist() == [1, 2, 3]
