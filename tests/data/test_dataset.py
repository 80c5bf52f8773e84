"""Collate and the batch loader: alignment, coverage, determinism, workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from longrec.data.batch import check_batch
from longrec.data.dataset import collate, epoch_batches, make_loader
from longrec.data.prepare import prepare
from longrec.data.protocols import ProtocolConfig
from longrec.data.store import TrajectoryStore
from tests.conftest import make_log


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> TrajectoryStore:
    out = tmp_path_factory.mktemp("store") / "s"
    prepare(make_log(num_users=20, events=30, seed=5), out, ProtocolConfig.for_protocol("T"))
    return TrajectoryStore.open(out)


def test_collate_aligns_every_history_field(store: TrajectoryStore) -> None:
    samples = store.samples("train")
    batch = collate(store, samples, np.arange(len(samples)), max_history=8)
    check_batch(batch, num_items=store.sizes["num_items"])
    for b in range(len(samples)):
        traj = store.trajectory(int(samples.user[b]))
        n = int(min(samples.end[b], 8))
        real = batch.history_mask[b]
        assert int(real.sum()) == n and bool(real[-n:].all()) if n else not real.any()  # left-padded
        lo = int(samples.end[b]) - n
        np.testing.assert_array_equal(batch.history[b][real].numpy(), traj["item"][lo : lo + n])
        np.testing.assert_array_equal(batch.history_category[b][real].numpy(), traj["category"][lo : lo + n])
        np.testing.assert_array_equal(batch.history_action[b][real].numpy(), traj["action"][lo : lo + n])
        gaps = samples.target_time[b] - traj["timestamp"][lo : lo + n]
        np.testing.assert_array_equal(batch.history_time_delta[b][real].numpy(), gaps.astype(np.float32))
        assert batch.history_position[b][real].tolist() == list(range(n, 0, -1))  # most recent = 1
        assert (batch.history[b][~real] == 0).all() and (batch.history_position[b][~real] == 0).all()


def test_loader_covers_every_sample_once_and_is_deterministic(store: TrajectoryStore) -> None:
    n = len(store.samples("train"))
    seen = torch.cat([b.target for b in make_loader(store, "train", 7, 8, shuffle=True, seed=1)])
    assert seen.numel() == n, "no dropped partial batch"
    again = torch.cat([b.target for b in make_loader(store, "train", 7, 8, shuffle=True, seed=1)])
    assert torch.equal(seen, again)
    other_epoch = torch.cat([b.target for b in make_loader(store, "train", 7, 8, shuffle=True, seed=1, epoch=1)])
    assert not torch.equal(seen, other_epoch)
    batches = epoch_batches(n, 7, True, 1, 0)
    assert sorted(np.concatenate(batches).tolist()) == list(range(n))


def test_start_batch_resumes_mid_epoch(store: TrajectoryStore) -> None:
    full = [b.target for b in make_loader(store, "train", 5, 8, shuffle=True, seed=2)]
    tail = [b.target for b in make_loader(store, "train", 5, 8, shuffle=True, seed=2, start_batch=3)]
    assert all(torch.equal(a, b) for a, b in zip(full[3:], tail, strict=True))


def test_worker_batches_equal_in_process_batches(store: TrajectoryStore) -> None:
    plain = list(make_loader(store, "valid", 4, 8))
    workers = list(make_loader(store, "valid", 4, 8, num_workers=2, prefetch_factor=2))
    assert len(plain) == len(workers)
    for a, b in zip(plain, workers, strict=True):
        for name, value in a.fields().items():
            torch.testing.assert_close(value, getattr(b, name))


def test_check_batch_reports_what_where_expected_got(store: TrajectoryStore) -> None:
    batch = collate(store, store.samples("train"), np.arange(3), 8)
    bad = batch.replace(history_mask=batch.history_mask[:, :-1])
    with pytest.raises(ValueError, match=r"history_mask must be bool with the shape of batch.history \[B, L\]"):
        check_batch(bad)
    with pytest.raises(ValueError, match=r"is not a known item id \(ids must be in \[0, 2\)\)"):
        check_batch(batch, num_items=2)
    with pytest.raises(ValueError, match=r"reads batch\.history_extra, but it is None"):
        check_batch(batch, reads=("history_extra",))


def test_open_missing_store_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="is not a prepared store"):
        TrajectoryStore.open(tmp_path / "nope")


def test_loader_check_reports_the_batch(store: TrajectoryStore) -> None:
    assert len(list(make_loader(store, "train", 8, 8, check=True))) > 0  # clean data passes
    broken = TrajectoryStore.open(store.root)
    broken.manifest["sizes"]["num_items"] = 2  # as if prepared with another vocabulary
    with pytest.raises(ValueError, match=r"batch 0\.(history|target)\[.*is not a known item id"):
        list(make_loader(broken, "train", 8, 8, check=True))
