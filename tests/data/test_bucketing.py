"""Bucketing by length (`epoch_batches(..., lengths=...)`, `make_loader(bucket_by_length=True)`): every sample exactly
once, deterministic in (seed, epoch), less padding than the plain order, and resumable mid-epoch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from longrec.data.dataset import epoch_batches, make_loader
from longrec.data.prepare import prepare
from longrec.data.protocols import ProtocolConfig
from longrec.data.store import TrajectoryStore
from tests.conftest import make_log


def padded_cells(lengths: np.ndarray, batches: list[np.ndarray]) -> int:
    """Padding cells collate writes: each batch is padded to its longest history (at least 1)."""
    return sum(len(b) * max(1, int(lengths[b].max())) - int(lengths[b].sum()) for b in batches)


@settings(max_examples=40, deadline=None)
@given(
    num_samples=st.integers(0, 200),
    batch_size=st.integers(1, 17),
    bucket_batches=st.integers(0, 6),
    shuffle=st.booleans(),
    seed=st.integers(0, 3),
    data=st.data(),
)
def test_bucketed_epoch_holds_every_sample_once_deterministically(
    num_samples: int, batch_size: int, bucket_batches: int, shuffle: bool, seed: int, data: st.DataObject
) -> None:
    lengths = np.array(data.draw(st.lists(st.integers(0, 50), min_size=num_samples, max_size=num_samples)))
    batches = epoch_batches(num_samples, batch_size, shuffle, seed, 0, lengths, bucket_batches)
    rows = np.concatenate(batches) if batches else np.zeros(0, np.int64)
    assert sorted(rows.tolist()) == list(range(num_samples)), "every sample exactly once"
    plain = epoch_batches(num_samples, batch_size, shuffle, seed, 0)
    assert sorted(map(len, batches)) == sorted(map(len, plain)), "the same batch sizes (one short batch at most)"
    again = epoch_batches(num_samples, batch_size, shuffle, seed, 0, lengths, bucket_batches)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True)), "a pure function of (seed, epoch)"


@settings(max_examples=40, deadline=None)
@given(
    num_batches=st.integers(1, 12),
    batch_size=st.integers(1, 9),
    bucket_batches=st.integers(0, 5),
    seed=st.integers(0, 5),
    data=st.data(),
)
def test_bucketing_never_pads_more_than_the_plain_order_with_full_batches(
    num_batches: int, batch_size: int, bucket_batches: int, seed: int, data: st.DataObject
) -> None:
    # Each pool holds the same samples as the plain order's batches at the same place; cutting a pool sorted by
    # length into equal batches minimises the sum of the batches' longest histories.
    n = num_batches * batch_size
    lengths = np.array(data.draw(st.lists(st.integers(0, 40), min_size=n, max_size=n)))
    bucketed = epoch_batches(n, batch_size, True, seed, 0, lengths, bucket_batches)
    assert padded_cells(lengths, bucketed) <= padded_cells(lengths, epoch_batches(n, batch_size, True, seed, 0))


def test_batches_hold_similar_lengths_and_their_order_is_shuffled() -> None:
    lengths = np.random.default_rng(0).integers(1, 200, size=4000)
    bucketed = epoch_batches(len(lengths), 100, True, 0, 0, lengths, bucket_batches=0)  # one pool: a global sort
    spans = [int(np.ptp(lengths[b])) for b in bucketed]
    assert max(spans) <= 12, "a globally sorted epoch puts near-equal lengths together"
    first = [int(lengths[b].min()) for b in bucketed]
    assert first != sorted(first), "the batch order is shuffled, not short-to-long"
    other_epoch = epoch_batches(len(lengths), 100, True, 0, 1, lengths, bucket_batches=0)
    assert [b.tolist() for b in other_epoch] != [b.tolist() for b in bucketed]
    plain = padded_cells(lengths, epoch_batches(len(lengths), 100, True, 0, 0))
    assert padded_cells(lengths, bucketed) < 0.1 * plain


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> TrajectoryStore:
    out = tmp_path_factory.mktemp("store") / "s"
    prepare(make_log(num_users=20, events=30, seed=5), out, ProtocolConfig.for_protocol("T"))
    return TrajectoryStore.open(out)


def test_bucketed_loader_cuts_padding_covers_every_sample_and_resumes(store: TrajectoryStore) -> None:
    def load(bucket: bool, start_batch: int = 0) -> list:  # type: ignore[type-arg]
        return list(
            make_loader(
                store, "train", 8, 30, shuffle=True, seed=3, start_batch=start_batch, bucket_by_length=bucket,
                bucket_batches=4,
            )
        )  # fmt: skip

    plain, bucketed = load(False), load(True)
    pad = [sum(int((~b.history_mask).sum()) for b in batches) for batches in (plain, bucketed)]
    assert pad[1] < pad[0], f"padding cells: plain {pad[0]}, bucketed {pad[1]}"
    targets = sorted(torch.cat([b.target for b in bucketed]).tolist())
    assert targets == sorted(torch.cat([b.target for b in plain]).tolist()), "every sample once"
    tail = load(True, start_batch=3)
    assert len(tail) == len(bucketed) - 3
    for a, b in zip(bucketed[3:], tail, strict=True):
        assert torch.equal(a.history, b.history) and torch.equal(a.target, b.target)
