"""Collate: samples + trajectory store -> `Batch`, built in background workers with prefetching.

A sample's history is the last `max_history` of the user's behaviours `[0, end)`, i.e. strictly before the
sample's cutoff time (see `longrec.data.protocols`). Histories are left-padded to the longest history in the
batch (at most `max_history`, at least 1), so short-history batches do not pay for `max_history` columns.
Shapes: B batch, L history length, M taxonomy levels, E extra id fields.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from longrec.data.batch import Batch, check_batch
from longrec.data.store import SampleSet, TrajectoryStore
from longrec.data.summaries import SummaryStore

__all__ = ["BatchPlan", "collate", "epoch_batches", "make_loader"]


def _tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x).astype(np.int64, copy=False))


def collate(store: TrajectoryStore, samples: SampleSet, index: np.ndarray, max_history: int) -> Batch:
    """Build the `Batch` of samples `index` (vectorised over the batch and the history; no Python loop).

    Args:
        store: the trajectory store the samples index into.
        samples: one split's samples.
        index: [B] int64 sample rows.
        max_history: L_max; longer histories keep their most recent L_max behaviours (0: no history, one padding
            column; for batches whose user side is stored, `BatchPlan.summaries`).

    Returns:
        A batch with every history field the store has, left-padded to L = max(1, longest history in the batch).
    """
    user = np.asarray(samples.user[index], dtype=np.int64)  # [B]
    end = np.asarray(samples.end[index], dtype=np.int64)  # [B]
    n = np.minimum(end, max_history)  # [B] behaviours kept
    L = max(1, int(n.max(initial=0)))
    pad = L - n  # [B] left padding
    cols = np.arange(L)  # [L]
    mask = cols[None, :] >= pad[:, None]  # [B, L]
    rows = (store.offsets[user] + end - n)[:, None] + cols[None, :] - pad[:, None]  # [B, L] global behaviour rows
    rows = np.where(mask, rows, 0)  # [B, L] padding reads row 0, then is zeroed
    arrays = store.arrays
    target_time = np.asarray(samples.target_time[index], dtype=np.int64)  # [B]

    # Memory: the Batch holds L x (45 + 8M + 8E) bytes per sample (docs/long_histories.md); each field below is one
    # gathered copy in the stored dtype, zeroed in place, then widened once, so the transient stays one field.
    def hist(name: str) -> torch.Tensor | None:
        if name not in arrays:
            return None
        value = arrays[name][rows]  # [B, L] or [B, L, W], a fresh copy
        value[~mask] = 0  # padding
        return _tensor(value)

    delta = arrays["timestamp"][rows]  # [B, L] int64, a fresh copy
    np.subtract(target_time[:, None], delta, out=delta)  # [B, L] seconds before the cutoff
    delta[~mask] = 0
    delta = delta.astype(np.float32)  # [B, L]
    position = np.where(mask, L - cols[None, :], 0)  # [B, L] most recent = 1
    M = store.taxonomy_levels
    E = samples.target_extra.shape[1]
    return Batch(
        history=hist("item"),  # type: ignore[arg-type]
        history_mask=torch.from_numpy(mask),
        target=_tensor(samples.target_item[index]),
        label=torch.from_numpy(np.asarray(samples.label[index], dtype=np.float32)),
        history_category=hist("category") if M else None,
        target_category=_tensor(samples.target_category[index]) if M else None,
        history_action=hist("action"),
        history_domain=hist("domain"),
        history_scene=hist("scene"),
        history_extra=hist("extra") if E else None,
        target_extra=_tensor(samples.target_extra[index]) if E else None,
        history_time_delta=torch.from_numpy(delta),
        history_position=_tensor(position),
        target_time=_tensor(target_time),
        scene=_tensor(samples.scene[index]),
        goal=_tensor(samples.goal[index]),
        user=_tensor(store.owner[user] if store.owner is not None else user),  # [B] the real user (GAUC groups)
    )


def epoch_batches(
    num_samples: int,
    batch_size: int,
    shuffle: bool,
    seed: int,
    epoch: int,
    lengths: np.ndarray | None = None,
    bucket_batches: int = 50,
) -> list[np.ndarray]:
    """The sample rows of every batch of one epoch: a pure function of (seed, epoch); every sample exactly once.

    Args:
        num_samples: N, the split's sample count.
        batch_size: samples per batch; the last batch may be short.
        shuffle: shuffle with a permutation derived from (seed, epoch); else rows in order.
        seed: shuffle seed.
        epoch: epoch number (changes the permutation).
        lengths: [N] history length of each sample as collated (`min(end, max_history)`), or None. Given, the
            samples are **bucketed by length** (the "memory pool" of the Tencent paper's
            system optimisations): the epoch's order is cut into pools of
            `bucket_batches` batches, each pool is sorted by length (stable: equal lengths keep the shuffled order)
            and cut into batches, and the batches are shuffled (derived from (seed, epoch) too). Collate pads each
            batch to its longest history, so similar lengths in a batch cut the padding; within a pool the sorted
            cut never pads more than the unsorted one (with full batches).
        bucket_batches: batches per sorting pool (larger: less padding, less random batch composition); 0 sorts the
            whole epoch as one pool.

    Returns:
        One int64 array of sample rows per batch.
    """
    order = np.random.default_rng([seed, epoch]).permutation(num_samples) if shuffle else np.arange(num_samples)
    if lengths is None:
        return [order[i : i + batch_size] for i in range(0, num_samples, batch_size)]
    pool = bucket_batches * batch_size if bucket_batches > 0 else max(num_samples, 1)
    batches = []
    for start in range(0, num_samples, pool):
        rows = order[start : start + pool]  # [P] one pool, in the shuffled order
        rows = rows[np.argsort(lengths[rows], kind="stable")]  # [P] by length
        batches += [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    if shuffle:
        batch_order = np.random.default_rng([seed, epoch, 1]).permutation(len(batches))
        batches = [batches[i] for i in batch_order]
    return batches


@dataclass
class BatchPlan(Dataset[Batch]):
    """A map-style dataset whose i-th item is the i-th planned batch (so workers build whole batches)."""

    store: TrajectoryStore
    samples: SampleSet
    batches: list[np.ndarray]
    max_history: int
    check: bool = False  # run check_batch on every batch (the --debug edge check)
    # Stored per-sample user states (stage 2 of VISTA's training): each batch carries them as `user_state`, and its
    # history is an empty placeholder column, so building a batch costs nothing in L.
    summaries: SummaryStore | None = None
    split: str = ""

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> Batch:
        rows = self.batches[i]
        if self.summaries is not None:
            empty = collate(self.store, self.samples, rows, 0)  # target fields, a [B, 1] history of padding
            batch = empty.replace(user_state=self.summaries.state(self.split, rows))  # [B, S, E]
        else:
            batch = collate(self.store, self.samples, rows, self.max_history)
        if self.check:
            sizes = self.store.sizes
            check_batch(batch, num_items=sizes["num_items"], where=f"batch {i}", sizes=sizes)
        return batch


def _identity(batch: Any) -> Any:
    return batch


def make_loader(
    store: TrajectoryStore,
    split: str,
    batch_size: int,
    max_history: int,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    start_batch: int = 0,
    num_workers: int = 0,
    prefetch_factor: int = 4,
    pin_memory: bool = False,
    check: bool = False,
    bucket_by_length: bool = False,
    bucket_batches: int = 50,
    batches: list[np.ndarray] | None = None,
    summaries: SummaryStore | None = None,
) -> Iterator[Batch] | DataLoader[Batch]:
    """Batches of one split for one epoch, in a deterministic order, every sample included (no dropped tail).

    Args:
        store: the prepared store.
        split: 'train', 'valid' or 'test'.
        batch_size: samples per batch (the last batch may be smaller).
        max_history: L_max.
        shuffle: shuffle with a permutation derived from (seed, epoch).
        seed: shuffle seed.
        epoch: epoch number (changes the permutation).
        start_batch: skip the first batches of the epoch (resuming mid-epoch).
        num_workers: background processes building batches; 0 builds them in this process.
        prefetch_factor: batches each worker builds ahead.
        pin_memory: page-lock batches for fast host-to-GPU copies.
        check: validate every batch with `check_batch` (shapes, dtypes, id ranges, no negative time gaps).
        bucket_by_length: batch samples of similar history length together (`epoch_batches`), to cut padding.
        bucket_batches: batches per sorting pool when bucketing (0 = the whole epoch).
        batches: the sample rows of each batch, planned by the caller (a rank's parts of the global batches of
            `epoch_batches`); given, `batch_size`, `shuffle`, `seed`, `epoch` and the bucketing are not read.
        summaries: stored per-sample user states: batches carry them (`Batch.user_state`) and no history.

    Returns:
        An iterable of `Batch`.
    """
    samples = store.samples(split)
    if batches is None:
        bucket = bucket_by_length and summaries is None  # stored states have no length to bucket by
        lengths = np.minimum(samples.end, max_history) if bucket else None  # [N] collated history lengths
        batches = epoch_batches(len(samples), batch_size, shuffle, seed, epoch, lengths, bucket_batches)
    plan = BatchPlan(store, samples, batches[start_batch:], max_history, check, summaries, split)
    if num_workers == 0:
        return (plan[i].pin_memory() if pin_memory else plan[i] for i in range(len(plan)))
    return DataLoader(
        plan,
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        prefetch_factor=prefetch_factor,
        collate_fn=_identity,
        pin_memory=pin_memory,
        persistent_workers=False,
    )
