"""Scoring rows of a DataFrame with a trained run: raw ids in, one probability per row out.

A frame (polars, or pandas if it is installed) holds one row per (user, history, candidate) to score, with the raw ids
of the log the store was prepared from:

| column | required | what |
| --- | --- | --- |
| `target_item` | yes | the candidate's raw item id |
| `hist_items` | no | list of raw item ids, oldest first: the history to score against (taken as given) |
| `hist_ts` | no | list of epoch seconds, one per `hist_items` entry (without it the time gaps are 0) |
| `user` | no | raw user id; without `hist_items` the history is the user's stored trajectory before `target_ts` |
| `target_ts` | no | epoch seconds of the request (default: after the user's last behaviour) |
| `goal`, `scene` | no | raw goal / scene of the request, when the data has them |

Columns of the `import-samples` format that scoring does not need (`label`, `target_cat`, `hist_cats`) are ignored,
so such a file can be scored as it is: categories and other item side information always come from the store's item
table (`items/category.npy`), so an item scores the same wherever it appears.

**Unknown ids.** A raw item, user, goal or scene id the store's vocabulary does not hold maps to id 0, the
out-of-vocabulary row (`longrec.data.vocab`: an unknown history item is dropped from its history; an unknown target
item scores through its other fields only; an unknown user has an empty stored history). With `unknown="error"` any
unknown id is an error naming the column and the first values; either way `Run.unknown` counts them per column.

Histories given in `hist_items` become one in-memory trajectory per row (the same layout `import-samples` writes,
`TrajectoryStore.owner` mapping each to its user), so batches are built by the ordinary `collate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from longrec.data.batch import Batch
from longrec.data.dataset import collate
from longrec.data.store import SampleSet, TrajectoryStore
from longrec.data.vocab import Vocabulary

__all__ = ["FRAME_COLUMNS", "FrameBatches", "frame_batches"]

FRAME_COLUMNS = ("target_item", "hist_items", "hist_ts", "user", "target_ts", "goal", "scene")
IGNORED_COLUMNS = ("label", "target_cat", "hist_cats")


@dataclass
class FrameBatches:
    """The batches of a frame, in row order, and the unknown ids met per column."""

    batches: list[Batch]
    unknown: dict[str, int] = field(default_factory=dict)


def _as_polars(frame: Any) -> pl.DataFrame:
    if isinstance(frame, pl.DataFrame):
        return frame
    if type(frame).__module__.startswith("pandas"):
        return pl.from_pandas(frame)
    raise TypeError(f"predict takes a polars or pandas DataFrame (or a Batch). Got {type(frame).__name__} instead.")


def _target_side(store: TrajectoryStore, frame: pl.DataFrame, vocab: Vocabulary, unknown: str) -> dict[str, np.ndarray]:
    N = frame.height
    item = vocab.dense("item_id", frame["target_item"], unknown, "target_item")
    sides: dict[str, np.ndarray] = {
        "target_item": item,
        "target_category": np.asarray(store.item_category[item], dtype=np.int32),
        "target_extra": np.asarray(store.item_extra[item], dtype=np.int32),
        "label": np.zeros(N, np.float32),
        "event_id": np.full(N, -1, np.int64),
    }
    for column, name, size in (("goal", "goal", "num_goals"), ("scene", "scene", "num_scenes")):
        present = column in frame.columns and int(store.sizes.get(size, 0)) > 1
        sides[column] = vocab.dense(name, frame[column], unknown, column) if present else np.zeros(N, np.int64)
    return sides


def _from_store(
    store: TrajectoryStore, frame: pl.DataFrame, vocab: Vocabulary, unknown: str
) -> tuple[TrajectoryStore, SampleSet]:
    """Samples whose histories are the users' stored trajectories before `target_ts`."""
    if store.owner is not None:
        raise ValueError(
            "predict: this store holds one history per sample (import-samples), not per user: give each row's "
            "history in a 'hist_items' column."
        )
    user = vocab.dense("user_id", frame["user"], unknown, "user")  # [N]
    lo, hi = store.offsets[user], store.offsets[user + 1]  # [N] each
    timestamps = store.arrays["timestamp"]
    if "target_ts" in frame.columns:
        cutoff = frame["target_ts"].cast(pl.Int64).to_numpy()  # [N]
        end = np.array(
            [np.searchsorted(timestamps[a:b], t, side="left") for a, b, t in zip(lo, hi, cutoff, strict=True)]
        )
    else:
        end = hi - lo  # every stored behaviour
        last = np.where(end > 0, timestamps[np.maximum(hi - 1, 0)], 0)
        cutoff = last + 1
    sides = _target_side(store, frame, vocab, unknown)
    samples = SampleSet(user=user, end=end.astype(np.int64), target_time=cutoff.astype(np.int64), **sides)
    return store, samples


def _from_lists(
    store: TrajectoryStore, frame: pl.DataFrame, vocab: Vocabulary, unknown: str
) -> tuple[TrajectoryStore, SampleSet]:
    """Samples whose histories are the frame's `hist_items` lists, as one in-memory trajectory per row."""
    N = frame.height
    lists = frame["hist_items"].list.drop_nulls()
    lengths = lists.list.len().fill_null(0).to_numpy().astype(np.int64)  # [N]
    flat = lists.explode().drop_nulls() if lengths.sum() else pl.Series([], dtype=pl.Int64)  # [R]
    item = vocab.dense("item_id", flat, unknown, "hist_items")  # [R]
    if "hist_ts" in frame.columns:
        ts_lists = frame["hist_ts"].list.drop_nulls()
        ts_lengths = ts_lists.list.len().fill_null(0).to_numpy()
        if not np.array_equal(ts_lengths, lengths):
            bad = int(np.flatnonzero(ts_lengths != lengths)[0])
            raise ValueError(
                f"predict: row {bad} has {lengths[bad]} hist_items but {ts_lengths[bad]} hist_ts; expected one "
                "timestamp per history item."
            )
        ts = ts_lists.explode().drop_nulls().cast(pl.Int64).to_numpy() if lengths.sum() else np.zeros(0, np.int64)
    else:
        ts = np.zeros(item.size, np.int64)
    keep = item > 0  # unknown history items are dropped (id 0 is padding)
    row = np.repeat(np.arange(N), lengths)[keep]
    item, ts = item[keep], ts[keep]
    kept = np.bincount(row, minlength=N).astype(np.int64)  # [N]
    # Row 0 of the arrays is a padding behaviour no trajectory owns (collate reads it under the mask, so it must
    # exist even when no row has a history); trajectory 0 is empty and row r's trajectory is r + 1.
    item = np.concatenate([[0], item])
    ts = np.concatenate([[0], ts])
    offsets = np.concatenate([[1, 1], 1 + np.cumsum(kept)]).astype(np.int64)
    arrays: dict[str, np.ndarray] = {"item": item.astype(np.int32), "timestamp": ts}
    if store.taxonomy_levels:
        arrays["category"] = np.asarray(store.item_category[item])
    if "extra" in store.arrays:
        arrays["extra"] = np.asarray(store.item_extra[item])
    users = vocab.dense("user_id", frame["user"], unknown, "user") if "user" in frame.columns else None
    owner = np.concatenate([[0], users if users is not None else np.zeros(N, np.int64)]).astype(np.int64)
    memory = TrajectoryStore(
        root=store.root,
        manifest=store.manifest,
        offsets=offsets,
        arrays=arrays,
        item_category=store.item_category,
        item_count=store.item_count,
        item_extra=store.item_extra,
        owner=owner,
    )
    if "target_ts" in frame.columns:
        cutoff = frame["target_ts"].cast(pl.Int64).to_numpy()
    else:
        last = np.zeros(N, np.int64)
        np.maximum.at(last, row, ts[1:])  # ts[0] is the padding row
        cutoff = last + 1
    sides = _target_side(store, frame, vocab, unknown)
    user_rows = np.arange(1, N + 1, dtype=np.int64)
    samples = SampleSet(user=user_rows, end=kept, target_time=cutoff.astype(np.int64), **sides)
    return memory, samples


def frame_batches(
    store: TrajectoryStore, frame: Any, max_history: int, batch_size: int, unknown: str = "zero"
) -> FrameBatches:
    """Batches of `batch_size` rows of `frame`, in order (see the module docstring for the columns).

    Raises:
        ValueError: a missing `target_item`, neither `hist_items` nor `user`, an unknown column (listed with the
            known ones), mismatched list lengths, or (with `unknown="error"`) an id the store does not know.
        TypeError: `frame` is not a DataFrame.
    """
    df = _as_polars(frame)
    extra = [c for c in df.columns if c not in FRAME_COLUMNS and c not in IGNORED_COLUMNS]
    if extra:
        raise ValueError(
            f"predict: unknown column(s) {extra}. Columns it reads: {', '.join(FRAME_COLUMNS)} "
            f"(and it ignores {', '.join(IGNORED_COLUMNS)})."
        )
    if "target_item" not in df.columns:
        raise ValueError(f"predict: the frame needs a 'target_item' column. Got columns {df.columns} instead.")
    if "hist_items" not in df.columns and "user" not in df.columns:
        raise ValueError("predict: give each row a history: a 'hist_items' list column, or a 'user' column.")
    vocab = Vocabulary(store)
    source, samples = (_from_lists if "hist_items" in df.columns else _from_store)(store, df, vocab, unknown)
    batches = [
        collate(source, samples, np.arange(lo, min(lo + batch_size, df.height)), max_history)
        for lo in range(0, df.height, batch_size)
    ]
    return FrameBatches(batches, dict(vocab.unknown))
