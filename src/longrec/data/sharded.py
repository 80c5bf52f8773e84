"""A sharded folder (`longrec prepare --shards N`) opened as one store: what training, evaluation and prediction read.

`ShardedStore` composes the shard stores of OUT (all of them, or a selection: `data.shards = [i, ...]`) into a view
that every reader of a `TrajectoryStore` takes unchanged (docs/data.md, "Training on a set of shards"):

- **samples** of a split: the selected shards' samples, concatenated in shard order (shard 0's first). Each sample's
  user id is global (the shards share the whole log's vocabularies), and its `end` counts its user's behaviours.
- **trajectories** in the unsharded store's row order: `offsets` are built from the shards' per-user counts (a user
  lives in exactly one shard), so user u's behaviours are rows offsets[u]:offsets[u + 1] as unsharded, and each
  history array is a `ShardRows` view that reads those rows from the user's own shard (memory-mapped, nothing
  copied up front). `collate` and every other reader index them as they index a store's arrays.
- **item tables**: counts summed over the selected shards; each item's taxonomy path and extra ids from the shard
  holding most of its behaviours (the unsharded store takes the most frequent path over the whole log: they can
  differ only for an item whose path varies between its behaviours).
- **manifest**: the first selected shard's, with the counts summed over the selection, shards.json's protocol and
  source, and `shards` (count, selection, hash) in place of the shard's own `shard` entry. `vocab_sha` and `sizes`
  are the shards' (equal in all of them, checked), so checkpoints, runs and artifacts see the unsharded values.

Opening checks shards.json and every selected shard against it (vocabulary sha, sizes, schema, format, index,
count, hash) and that no user has behaviours in two shards: shards of different logs or settings are refused.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from longrec.data.store import FORMAT_VERSION, SPLITS, SampleSet, TrajectoryStore
from longrec.files import read_json_object
from longrec.ingest.schema import DataError

__all__ = ["SHARDS_MANIFEST", "ShardRows", "ShardedStore", "is_sharded", "open_store", "shard_selection"]

SHARDS_MANIFEST = "shards.json"
_SHARD_DIR = re.compile(r"shard-(\d{5})-of-(\d{5})")


def is_sharded(root: str | Path) -> bool:
    """Whether `root` is a folder of `prepare --shards` (shards.json, or shard folders whose shards.json is missing)."""
    root = Path(root)
    if (root / SHARDS_MANIFEST).is_file():
        return True
    if (root / "manifest.json").is_file() or not root.is_dir():
        return False
    return any(_SHARD_DIR.fullmatch(p.name) and p.is_dir() for p in root.iterdir())


def open_store(root: str | Path, shards: Sequence[int] | None = None, mmap: bool = True) -> TrajectoryStore:
    """The store a run's `data.path` names: a prepared store, or a sharded folder (all its shards, or those listed in
    `shards`, `data.shards`) as one `ShardedStore`.

    Raises:
        FileNotFoundError / ValueError: as `TrajectoryStore.open` and `ShardedStore.open_sharded`; `shards` given
            for a folder that is not sharded. DataError: shards that disagree.
    """
    if is_sharded(root):
        return ShardedStore.open_sharded(root, shards, mmap)
    if shards:
        raise ValueError(
            f"data.shards = {list(shards)!r} selects shards, but {root} is not a sharded folder (no shards.json): "
            "expected the folder of 'longrec prepare --shards N'. Leave data.shards empty for a single store."
        )
    return TrajectoryStore.open(root, mmap)


def shard_selection(shards: Sequence[int] | None, count: int, where: Path) -> list[int]:
    """The shard indices to read: all of `count` for None or [], else `shards` (distinct, each in 0..count-1)."""
    if not shards:
        return list(range(count))
    bad = [s for s in shards if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < count]
    if bad or len(set(shards)) != len(shards):
        raise ValueError(
            f"data.shards = {list(shards)!r}: expected distinct shard indices from 0 to {count - 1} ({where} holds "
            f"{count} shards), got {'index ' + repr(bad[0]) if bad else 'a repeated index'}."
        )
    return sorted(shards)


class ShardRows:
    """One history array of a sharded store, in the unsharded row order; rows are read from each user's shard.

    Supports what readers of a store's arrays do: `view[rows]` for an int array of any shape (or an int, or a
    slice), `shape`, `dtype`, `ndim`, `len`, and `np.asarray(view)` (which reads every row: avoid on large data).
    """

    def __init__(self, name: str, parts: dict[int, np.ndarray], store: ShardedStore) -> None:
        first = next(iter(parts.values()))
        self.name, self.parts, self.store = name, parts, store
        self.dtype = np.result_type(*parts.values())
        self.shape: tuple[int, ...] = (int(store.offsets[-1]), *first.shape[1:])
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            rows = np.arange(*key.indices(self.shape[0]), dtype=np.int64)
        elif isinstance(key, (int, np.integer)):
            return self[np.asarray([key], dtype=np.int64)][0]
        else:
            rows = np.asarray(key)
            if rows.dtype == bool or not np.issubdtype(rows.dtype, np.integer):
                raise TypeError(f"{self.name} rows of a sharded store take int indices or slices, got {rows.dtype}.")
        flat = rows.reshape(-1)
        out = np.empty((flat.size, *self.shape[1:]), dtype=self.dtype)
        try:
            plan = self.store.locate(flat)
        except IndexError as err:
            raise IndexError(f"{self.name}: {err}") from None
        for s, pick, local in plan:
            out[pick] = self.parts[s][local]  # one gather from the shard, one scatter into the batch's order
        return out.reshape(*rows.shape, *self.shape[1:])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        value = self[np.arange(self.shape[0], dtype=np.int64)]
        return value if dtype is None else value.astype(dtype)


class ShardedStore(TrajectoryStore):
    """The selected shards of a `prepare --shards` folder as one `TrajectoryStore` (see the module docstring)."""

    shards: list[TrajectoryStore]
    selected: list[int]
    user_shard: np.ndarray  # [U] the selected shard holding each user's behaviours (0 for users with none)
    local_start: np.ndarray  # [U] the user's first row in its shard
    _located: tuple[np.ndarray, list[tuple[int, np.ndarray, np.ndarray]]] | None = None

    @classmethod
    def open_sharded(cls, root: str | Path, shards: Sequence[int] | None = None, mmap: bool = True) -> ShardedStore:
        """Open folder `root` of `longrec prepare --shards N`: all shards, or those listed in `shards`.

        Raises:
            FileNotFoundError: no shards.json (the shards are not all prepared), or a listed shard is missing.
            ValueError: a damaged shards.json, a bad selection. DataError: shards that disagree with shards.json or
                with each other (prepared from different logs or settings).
        """
        root = Path(root)
        path = root / SHARDS_MANIFEST
        if not path.is_file():
            found = sorted(p.name for p in root.iterdir() if _SHARD_DIR.fullmatch(p.name)) if root.is_dir() else []
            names = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
            raise FileNotFoundError(
                f"{path} not found: '{root}' holds shard folders ({names}) but no shards.json, which 'longrec "
                "prepare --shards N' writes once every shard is prepared. Prepare the missing shards (--shard I), or "
                "point data.path at one shard's folder."
            )
        top = read_json_object(path, "sharded store")
        if top.get("format") != "longrec shards" or not isinstance(top.get("count"), int) or top["count"] < 1:
            raise ValueError(
                f"{path} is not a shards manifest: expected format 'longrec shards' and a shard count, got format "
                f"{top.get('format')!r}, count {top.get('count')!r}. Re-run 'longrec prepare --shards N'."
            )
        count = int(top["count"])
        listed = top.get("shards")
        if not isinstance(listed, list) or len(listed) != count:
            raise ValueError(f"{path} is damaged: expected a list of {count} shards, got {listed!r:.80}.")
        selected = shard_selection(shards, count, root)
        parts = []
        for index in selected:
            name = f"shard-{index:05d}-of-{count:05d}"
            entry = listed[index]
            if not isinstance(entry, dict) or entry.get("path") != name or entry.get("index") != index:
                raise DataError(f"{path}: shard {index} is listed as {entry!r:.120}, expected path {name!r}.")
            part = TrajectoryStore.open(root / name, mmap=mmap)
            _check_shard(part, top, index, count)
            parts.append(part)
        return cls._compose(root, top, selected, parts)

    @classmethod
    def _compose(
        cls, root: Path, top: dict[str, Any], selected: list[int], parts: list[TrajectoryStore]
    ) -> ShardedStore:
        U = int(parts[0].offsets.shape[0] - 1)
        counts = np.zeros(U, dtype=np.int64)  # [U] behaviours per user, over the selection
        user_shard = np.zeros(U, dtype=np.int32)  # [U] position in `parts`
        local_start = np.zeros(U, dtype=np.int64)
        for i, part in enumerate(parts):
            if part.offsets.shape[0] != U + 1:
                raise DataError(
                    f"{part.root}: its trajectories index {part.offsets.shape[0] - 1:,} users, "
                    f"{parts[0].root}'s {U:,}: the shards were prepared from different logs."
                )
            if part.owner is not None:
                raise DataError(f"{part.root}: holds one history per sample (import-samples), not a shard.")
            n = np.diff(part.offsets)  # [U]
            has = n > 0
            twice = np.flatnonzero(has & (counts > 0))
            if twice.size:
                raise DataError(
                    f"{part.root}: user {int(twice[0])} has behaviours in this shard and in "
                    f"{parts[int(user_shard[twice[0]])].root}: expected each user in exactly one shard (shards of "
                    "different splits or logs). Prepare them again with the same command."
                )
            counts += n
            user_shard[has] = i
            local_start[has] = part.offsets[:-1][has]
        offsets = np.zeros(U + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])

        first = parts[0]
        item_count = np.sum([np.asarray(p.item_count, dtype=np.int64) for p in parts], axis=0)  # [V]
        item_category, item_extra = np.array(first.item_category), np.array(first.item_extra)
        most = np.asarray(first.item_count, dtype=np.int64).copy()
        for part in parts[1:]:
            more = np.asarray(part.item_count) > most  # [V] this shard holds more of the item's behaviours
            item_category[more], item_extra[more] = part.item_category[more], part.item_extra[more]
            most = np.maximum(most, part.item_count)

        manifest = copy.deepcopy(first.manifest)
        manifest.pop("shard", None)
        manifest.pop("seconds", None)
        summed: dict[str, Any] = dict.fromkeys(("users", "behaviours", "impressions"), 0)
        summed["samples"], summed["positives"] = dict.fromkeys(SPLITS, 0), dict.fromkeys(SPLITS, 0)
        for part in parts:
            c = part.manifest["counts"]
            for key in ("users", "behaviours", "impressions"):
                summed[key] += int(c[key])
            for s in SPLITS:
                summed["samples"][s] += int(c["samples"][s])
                summed["positives"][s] += int(c["positives"][s])
        manifest["counts"] = summed
        for key in ("source", "protocol", "load_report"):
            if key in top:
                manifest[key] = top[key]
        manifest["shards"] = {"count": int(top["count"]), "selected": selected, "hash": top.get("hash")}

        store = cls(
            root=root,
            manifest=manifest,
            offsets=offsets,
            arrays={},
            item_category=item_category,
            item_count=item_count,
            item_extra=item_extra,
        )
        store.shards, store.selected = parts, selected
        store.user_shard, store.local_start = user_shard, local_start
        store.arrays = {
            name: cast(np.ndarray, ShardRows(name, {i: p.arrays[name] for i, p in enumerate(parts)}, store))
            for name in first.arrays
        }
        return store

    def locate(self, rows: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """Where global behaviour rows [n] are: for each shard holding some, (shard, `pick` [n_s] positions in `rows`,
        `local` [n_s] those rows in the shard). Negative rows count from the end, as numpy's.

        The last answer is kept (with the rows it was computed for): collate reads every history field with the
        same rows, so they are located (and checked) once per batch.

        Raises:
            IndexError: a row outside the store's behaviours.
        """
        last = self._located
        if last is not None and last[0].shape == rows.shape and np.array_equal(last[0], rows):
            return last[1]
        flat = rows.astype(np.int64, copy=False)
        N = int(self.offsets[-1])
        flat = np.where(flat < 0, flat + N, flat)
        if flat.size and (flat.min() < 0 or flat.max() >= N):
            raise IndexError(f"row out of range for {N:,} behaviours.")
        user = np.searchsorted(self.offsets, flat, side="right") - 1  # [n] the user of each row
        shard = self.user_shard[user]  # [n]
        local = self.local_start[user] + flat - self.offsets[user]  # [n]
        answer = []
        for s in range(len(self.shards)):  # a mask per shard: S passes over n, no O(n log n) sort
            pick = np.flatnonzero(shard == s)  # [n_s]
            if pick.size:
                answer.append((s, pick, local[pick]))
        self._located = (rows.copy(), answer)
        return answer

    @property
    def vocab_root(self) -> Path:
        return self.shards[0].root  # every shard holds the same vocabularies (checked: same vocab_sha)

    def samples(self, split: str) -> SampleSet:
        """The samples of one split: each selected shard's, concatenated in shard order (read into memory)."""
        if split not in self._samples:
            self._samples[split] = SampleSet.concat([p.samples(split) for p in self.shards])
        return self._samples[split]


def _check_shard(part: TrajectoryStore, top: dict[str, Any], index: int, count: int) -> None:
    """Refuse a shard whose manifest disagrees with shards.json (another log, settings or split)."""
    m = part.manifest
    for key in ("vocab_sha", "sizes", "schema"):
        if m.get(key) != top.get(key):
            raise DataError(
                f"{part.root}: its {key} is {m.get(key)!r:.200}, but {part.root.parent / SHARDS_MANIFEST} says "
                f"{top.get(key)!r:.200}: the shard was prepared from another log or with other settings. Prepare the "
                "shards again with one command (longrec prepare --shards N)."
            )
    info = m.get("shard", {})
    if not isinstance(info, dict) or info.get("index") != index or info.get("count") != count:
        got = f"shard {info.get('index')} of {info.get('count')}" if isinstance(info, dict) and info else "no shard"
        raise DataError(f"{part.root}: its manifest says {got}, expected shard {index} of {count}.")
    if info.get("hash") != top.get("hash"):
        raise DataError(f"{part.root}: users were assigned by {info.get('hash')!r}, expected {top.get('hash')!r}.")
    if m.get("format_version") != FORMAT_VERSION:  # TrajectoryStore.open checked it; kept for clarity
        raise DataError(f"{part.root}: format_version {m.get('format_version')!r}, expected {FORMAT_VERSION}.")
