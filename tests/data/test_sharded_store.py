"""Training on a sharded folder (`data.path = OUT` of `prepare --shards N`): `ShardedStore` (longrec.data.sharded)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from longrec.config import Config
from longrec.data.dataset import collate
from longrec.data.prepare import prepare
from longrec.data.protocols import ProtocolConfig
from longrec.data.sharded import ShardedStore, open_store
from longrec.data.shards import prepare_shards, shard_name
from longrec.data.store import SPLITS, TrajectoryStore
from longrec.ingest.schema import DataError
from longrec.run import load_run, train
from longrec.serve.artifact import export_run, load_artifact
from longrec.settings import ConfigError
from tests.conftest import make_log

N = 3


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same log prepared whole and as N shards; labelled impressions make every sample a logged one, so the
    shards' samples equal the whole store's (no sampled negatives)."""
    root = tmp_path_factory.mktemp("sharded")
    log = make_log(num_users=60, events=20, seed=3, impressions=10)
    protocol = ProtocolConfig.for_protocol("T")
    prepare(log, root / "whole", protocol)
    prepare_shards(log, root / "sharded", protocol, N)
    return root / "whole", root / "sharded"


def _key(store: TrajectoryStore, split: str, i: int) -> tuple[Any, ...]:
    s = store.samples(split)
    return (int(s.user[i]), int(s.target_time[i]), int(s.target_item[i]), float(s.label[i]), int(s.event_id[i]))


def _config(path: Path, **data: Any) -> Config:
    return Config.from_dict(
        {
            "model": {"name": "din", "dim": 4, "attention_hidden": [8], "head_hidden": [8]},
            "data": {"path": str(path), "max_history": 10, **data},
            "train": {"batch_size": 16, "epochs": 1, "lr": 0.01, "progress": False},
        }
    )


def test_a_sharded_folder_opens_as_the_unsharded_store(stores: tuple[Path, Path]) -> None:
    whole, sharded = TrajectoryStore.open(stores[0]), open_store(stores[1])
    assert isinstance(sharded, ShardedStore) and sharded.selected == list(range(N))
    assert sharded.manifest["vocab_sha"] == whole.manifest["vocab_sha"] and sharded.sizes == whole.sizes
    assert sharded.manifest["counts"] == whole.manifest["counts"]
    assert sharded.num_users == whole.num_users and sharded.taxonomy_levels == whole.taxonomy_levels
    np.testing.assert_array_equal(sharded.offsets, whole.offsets)  # the unsharded row order
    for name, value in whole.arrays.items():
        np.testing.assert_array_equal(np.asarray(sharded.arrays[name]), value)
        np.testing.assert_array_equal(sharded.arrays[name][5:17], value[5:17])
    np.testing.assert_array_equal(sharded.item_count, whole.item_count)
    assert sharded.vocab("item_id").to_list() == whole.vocab("item_id").to_list()
    for u in (1, 7, sharded.num_users - 1):
        for name, value in whole.trajectory(u).items():
            np.testing.assert_array_equal(sharded.trajectory(u)[name], value)


def test_every_sample_collates_as_in_the_unsharded_store(stores: tuple[Path, Path]) -> None:
    whole, sharded = TrajectoryStore.open(stores[0]), open_store(stores[1])
    for split in SPLITS:
        n = len(whole.samples(split))
        assert n and len(sharded.samples(split)) == n
        where = {_key(whole, split, i): i for i in range(n)}
        assert len(where) == n
        order = np.array([where[_key(sharded, split, j)] for j in range(n)])  # the same multiset of samples
        assert sorted(order.tolist()) == list(range(n))
        a = collate(sharded, sharded.samples(split), np.arange(n), 10)
        b = collate(whole, whole.samples(split), order, 10)
        for name, value in vars(b).items():
            if value is not None:
                assert np.array_equal(getattr(a, name).numpy(), value.numpy()), (split, name)


def test_a_run_on_the_shards_trains_evaluates_and_predicts_as_on_the_unsharded_store(
    stores: tuple[Path, Path], tmp_path: Path
) -> None:
    whole, sharded = stores
    result = train(_config(sharded), tmp_path / "sharded_run")
    train(_config(whole), tmp_path / "whole_run")
    saved = json.loads((tmp_path / "sharded_run" / "config.json").read_text())
    assert saved["run"]["store"]["vocab_sha"] == TrajectoryStore.open(whole).manifest["vocab_sha"]
    assert result["steps"] == -(-len(TrajectoryStore.open(whole).samples("train")) // 16)  # same samples per epoch
    for run_dir in ("sharded_run", "whole_run"):
        on_shards = load_run(tmp_path / run_dir, data=sharded)  # the same weights on either store
        on_whole = load_run(tmp_path / run_dir, data=whole)
        assert isinstance(on_shards.store, ShardedStore) and not isinstance(on_whole.store, ShardedStore)
        for split in ("valid", "test"):
            a, b = on_shards.evaluate(split), on_whole.evaluate(split)
            assert a["count"] == b["count"] == len(on_whole.store.samples(split)) and a.keys() == b.keys()
            for key in ("auc", "gauc", "gauc_category", "logloss", "positive_rate"):  # order-free metrics
                assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), (run_dir, split, key)
    run = load_run(tmp_path / "sharded_run")  # found where it was recorded: the sharded folder
    users = run.store.vocab("user_id").to_list()[:5]
    items = run.store.vocab("item_id").to_list()[:5]
    frame = pl.DataFrame({"user": users, "target_item": items})
    np.testing.assert_allclose(run.predict(frame), load_run(tmp_path / "sharded_run", data=whole).predict(frame))
    export_run(run, tmp_path / "artifact")  # the merged item tables, the shards' vocabularies
    artifact = load_artifact(tmp_path / "artifact")
    np.testing.assert_array_equal(artifact.item_category, TrajectoryStore.open(whole).item_category)
    assert artifact.meta["vocab_sha"] == saved["run"]["store"]["vocab_sha"]


def test_a_subset_of_shards_trains(stores: tuple[Path, Path], tmp_path: Path) -> None:
    sharded = stores[1]
    subset = open_store(sharded, [2, 0])
    assert isinstance(subset, ShardedStore) and subset.selected == [0, 2]
    parts = [TrajectoryStore.open(sharded / shard_name(i, N)) for i in (0, 2)]
    for split in SPLITS:
        assert len(subset.samples(split)) == sum(len(p.samples(split)) for p in parts)
    assert subset.manifest["counts"]["behaviours"] == sum(p.manifest["counts"]["behaviours"] for p in parts)
    np.testing.assert_array_equal(subset.item_count, parts[0].item_count + parts[1].item_count)
    result = train(_config(sharded, shards=[0, 2]), tmp_path / "run")
    assert result["steps"] == -(-len(subset.samples("train")) // 16)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["shards"] == [0, 2]
    assert load_run(tmp_path / "run").store.selected == [0, 2]  # type: ignore[attr-defined]


def test_bad_selections_and_folders_are_refused(stores: tuple[Path, Path], tmp_path: Path) -> None:
    whole, sharded = stores
    with pytest.raises(ValueError, match=r"data.shards = \[3\]: expected distinct shard indices from 0 to 2"):
        open_store(sharded, [3])
    with pytest.raises(ValueError, match=r"is not a sharded folder"):
        open_store(whole, [0])
    with pytest.raises(FileNotFoundError, match=r"is a sharded folder \(shards.json\), not one store. Open it with"):
        TrajectoryStore.open(sharded)
    with pytest.raises(ConfigError, match=r"data.shards must list distinct"):
        _config(sharded, shards=[1, 1])

    partial = tmp_path / "partial"  # shards without shards.json: not all prepared
    partial.mkdir()
    shutil.copytree(sharded / shard_name(0, N), partial / shard_name(0, N))
    with pytest.raises(FileNotFoundError, match=r"shards.json not found: .* holds shard folders .* no shards.json"):
        open_store(partial)

    mixed = tmp_path / "mixed"  # a shard of another log under the same shards.json
    shutil.copytree(sharded, mixed)
    other = tmp_path / "other"
    prepare_shards(make_log(num_users=25, events=15, seed=8, impressions=6), other, ProtocolConfig.for_protocol("T"), N)
    shutil.rmtree(mixed / shard_name(1, N))
    shutil.copytree(other / shard_name(1, N), mixed / shard_name(1, N))
    with pytest.raises(DataError, match=r"shard-00001-of-00003: its vocab_sha is .* but .*shards.json says"):
        open_store(mixed)
    open_store(mixed, [0, 2])  # the shards that agree still open

    moved = tmp_path / "moved"  # shard folders swapped: the manifest's index disagrees
    shutil.copytree(sharded, moved)
    (moved / shard_name(0, N)).rename(moved / "tmp")
    (moved / shard_name(1, N)).rename(moved / shard_name(0, N))
    (moved / "tmp").rename(moved / shard_name(1, N))
    with pytest.raises(DataError, match=r"its manifest says shard 1 of 3, expected shard 0 of 3"):
        open_store(moved)
