"""The trajectory store: every user's behaviours stored once, time-sorted, columnar and memory-mappable.

Layout of a prepared directory (the LongCTR / FuxiCTR layout: samples index into trajectories, never copy them):

    manifest.json                 format version, schema, vocabulary sizes and sha, counts, protocol, filter report
    trajectories/offsets.npy      int64 [U + 1]: user u's behaviours are rows offsets[u]:offsets[u + 1] (u = 0 is empty)
    trajectories/<field>.npy      one array per field, rows sorted by (user, timestamp): item [N] int32,
                                  timestamp [N] int64, category [N, M] int32, action/domain/scene [N] int16,
                                  extra [N, E] int32, event_id [N] int64 (when the log has event ids: joins
                                  retrieved behaviours to ground truth). Id arrays are widened when their
                                  vocabulary needs it (`id_dtype`: int16 -> int32 -> int64); readers take
                                  whatever integer dtype is stored
    trajectories/owner.npy        optional int64 [U]: the real dense user of each trajectory, when trajectories
                                  are per-sample histories (`longrec.data.interop`); Batch.user holds it
    items/category.npy            int32 [V_item, M]: each item's (most frequent) taxonomy path, for negatives
    items/extra.npy               int32 [V_item, E]: each item's (most frequent) extra ids (both: the dtype of
                                  the trajectory's category / extra array)
    items/count.npy               int64 [V_item]: behaviours per item, for frequency-proportional negatives
    vocab/<name>.parquet          raw values in dense-id order: dense id = row + 1 (0 = padding / unknown); <name>
                                  is a column name, so it must be a safe file name (`is_safe_name`)
    content/<modality>/           optional item content vectors + content.json (`longrec.data.content`)
    samples/<split>/<field>.npy   user, end, target_item, target_category, target_extra, target_time, label, goal,
                                  scene, event_id; a sample's history is trajectory[:end] (behaviours strictly
                                  before target_time)

Everything is written into a temporary sibling directory and renamed into place (`longrec.files.output_directory`),
so a crash never leaves a half-written store, and an existing folder is replaced only when it is a previous store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from longrec.files import write_json

__all__ = [
    "FORMAT_VERSION",
    "HISTORY_ARRAYS",
    "SAFE_NAME_RULE",
    "SAMPLE_ARRAYS",
    "SPLITS",
    "SampleSet",
    "TrajectoryStore",
    "id_dtype",
    "is_safe_name",
    "read_vocab",
    "split_counts",
    "vocab_sha",
    "vocab_sha_of",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
HISTORY_ARRAYS = ("item", "timestamp", "category", "action", "domain", "scene", "extra", "event_id")
SAMPLE_ARRAYS = (
    "user",
    "end",
    "target_item",
    "target_category",
    "target_extra",
    "target_time",
    "label",
    "goal",
    "scene",
    "event_id",
)
SPLITS = ("train", "valid", "test")
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
SAFE_NAME_RULE = "ASCII letters, digits, '_', '.' and '-', not starting with '.' or '-', at most 128 characters"


def is_safe_name(name: str) -> bool:
    """Whether `name` (a column, field or split name) may name a file or folder inside the store.

    A safe name holds no path separator, is not '.' or '..', does not start with '.' (hidden files, traversal) or
    '-' (read as an option by shell tools), and stays short enough for any file system: see `SAFE_NAME_RULE`.
    """
    return _SAFE_NAME.fullmatch(name) is not None


def id_dtype(max_id: int, narrowest: type[np.signedinteger[Any]] = np.int16) -> np.dtype[Any]:
    """The narrowest of int16, int32 and int64, no narrower than `narrowest`, that holds dense ids 0..max_id.

    The store keeps id arrays narrow (item, category and extra ids at least int32, action/domain/scene at least
    int16) and widens one only when its vocabulary does not fit, so an id never wraps to a negative number.
    """
    for dtype in (np.int16, np.int32, np.int64):
        if np.dtype(dtype).itemsize >= np.dtype(narrowest).itemsize and max_id <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"a vocabulary of {max_id:,} ids does not fit int64; expected at most {np.iinfo(np.int64).max:,}.")


def _load(path: Path, mmap_mode: Any) -> np.ndarray:
    """`np.load` of one array of a store, with an error naming the file when it is missing or damaged."""
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing: the store is incomplete. Re-run 'longrec prepare'.") from None
    except (ValueError, EOFError, OSError) as err:
        raise ValueError(f"{path} is damaged ({err}). Re-run 'longrec prepare'.") from err


@dataclass
class SampleSet:
    """Columnar samples of one split. Each row indexes a user's trajectory; nothing is copied from it."""

    user: np.ndarray  # [N] int64 dense user id
    end: np.ndarray  # [N] int64 number of the user's behaviours strictly before target_time
    target_item: np.ndarray  # [N] int64
    target_category: np.ndarray  # [N, M] int32 or wider (`id_dtype`; M may be 0)
    target_extra: np.ndarray  # [N, E] int32 or wider (`id_dtype`; E may be 0)
    target_time: np.ndarray  # [N] int64 epoch seconds of the cutoff
    label: np.ndarray  # [N] float32 in {0, 1}
    goal: np.ndarray  # [N] int64 goal id (0 when the data has one goal)
    scene: np.ndarray  # [N] int64 request scene (0 = unknown)
    event_id: np.ndarray  # [N] int64 source event id (labelled impression or target behaviour), -1 if none

    def __len__(self) -> int:
        return int(self.user.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in SAMPLE_ARRAYS}

    @classmethod
    def concat(cls, parts: list[SampleSet]) -> SampleSet:
        return cls(**{name: np.concatenate([getattr(p, name) for p in parts]) for name in SAMPLE_ARRAYS})

    def take(self, index: np.ndarray) -> SampleSet:
        return SampleSet(**{name: getattr(self, name)[index] for name in SAMPLE_ARRAYS})

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for name, value in self.arrays().items():
            np.save(directory / f"{name}.npy", np.ascontiguousarray(value))

    @classmethod
    def load(cls, directory: Path, mmap: bool = True) -> SampleSet:
        mode: Any = "r" if mmap else None
        return cls(**{name: _load(directory / f"{name}.npy", mode) for name in SAMPLE_ARRAYS})


@dataclass
class TrajectoryStore:
    """A prepared directory, opened read-only with memory-mapped arrays."""

    root: Path
    manifest: dict[str, Any]
    offsets: np.ndarray  # [U + 1] int64
    arrays: dict[str, np.ndarray]  # HISTORY_ARRAYS present in this store, rows sorted by (user, timestamp)
    item_category: np.ndarray  # [V_item, M] int32 or wider
    item_count: np.ndarray  # [V_item] int64
    item_extra: np.ndarray  # [V_item, E] int32 or wider
    owner: np.ndarray | None = None  # [U] int64 real dense user of each trajectory; None: trajectory = user
    _samples: dict[str, SampleSet] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, root: str | Path, mmap: bool = True) -> TrajectoryStore:
        """Open a directory written by `longrec prepare` (a sharded folder: `longrec.data.sharded.open_store`).

        Raises:
            FileNotFoundError: no manifest.json under `root`.
            ValueError: the store was written by an incompatible format version.
        """
        root = Path(root)
        path = root / "manifest.json"
        if not path.is_file():
            if (root / "shards.json").is_file():
                raise FileNotFoundError(
                    f"{path} not found: '{root}' is a sharded folder (shards.json), not one store. Open it with "
                    "longrec.data.sharded.open_store (what a run's data.path does), or name one shard's folder."
                )
            raise FileNotFoundError(f"{path} not found: '{root}' is not a prepared store. Run 'longrec prepare' first.")
        try:
            manifest = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is damaged (not valid JSON: {err}). Re-run 'longrec prepare'.") from err
        if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
            found = manifest.get("format_version") if isinstance(manifest, dict) else type(manifest).__name__
            raise ValueError(
                f"{path} has format_version {found!r}; this longrec reads {FORMAT_VERSION}. Re-run 'longrec prepare'."
            )
        mode: Any = "r" if mmap else None
        traj = root / "trajectories"
        arrays = {
            name: _load(traj / f"{name}.npy", mode) for name in HISTORY_ARRAYS if (traj / f"{name}.npy").is_file()
        }
        return cls(
            root=root,
            manifest=manifest,
            offsets=_load(traj / "offsets.npy", None),
            arrays=arrays,
            item_category=_load(root / "items" / "category.npy", None),
            item_count=_load(root / "items" / "count.npy", None),
            item_extra=_load(root / "items" / "extra.npy", None),
            owner=_load(traj / "owner.npy", mode) if (traj / "owner.npy").is_file() else None,
        )

    @property
    def sizes(self) -> dict[str, Any]:
        """Vocabulary sizes (each including id 0) that model configs take: num_items, num_categories, ..."""
        return dict(self.manifest["sizes"])

    @property
    def vocab_root(self) -> Path:
        """The folder holding this store's `vocab/` (a sharded store's first shard)."""
        return self.root

    @property
    def num_users(self) -> int:
        """User vocabulary size including id 0: real users are 1 .. num_users - 1 (the owners' ids, if any)."""
        if self.owner is not None:
            return int(self.manifest["sizes"]["num_users"])
        return int(self.offsets.shape[0] - 1)

    @property
    def taxonomy_levels(self) -> int:
        return int(self.manifest["sizes"]["taxonomy_levels"])

    def batch_bytes_per_behaviour(self) -> int:
        """Bytes of a collated `Batch` per sample and history column (docs/long_histories.md).

        A batch of B samples padded to L columns holds B x L x this: int64 ids, a bool mask, float32 time gaps:
        8 (item) + 1 (mask) + 8·M (taxonomy path) + 8 per stored action/domain/scene column + 8·E (extra ids)
        + 4 (time gap) + 8 (relative position). Collate (`longrec.data.dataset.collate`) reads only the rows it
        needs from the memory-mapped arrays, so this, not the store size, bounds a batch.
        """
        size = 8 + 1 + 8 * self.taxonomy_levels + 4 + 8  # item, mask, category [M], time gap, position
        size += 8 * sum(name in self.arrays for name in ("action", "domain", "scene"))
        if "extra" in self.arrays:
            size += 8 * int(self.arrays["extra"].shape[1])
        return size

    def samples(self, split: str) -> SampleSet:
        """The samples of one split ('train', 'valid' or 'test'), memory-mapped."""
        if not is_safe_name(split):
            raise ValueError(f"split name {split!r} cannot name a folder in {self.root}: expected {SAFE_NAME_RULE}.")
        if split not in self._samples:
            directory = self.root / "samples" / split
            if not directory.is_dir():
                known = (
                    sorted(p.name for p in (self.root / "samples").iterdir())
                    if (self.root / "samples").is_dir()
                    else []
                )
                raise KeyError(f"Unknown split '{split}' in {self.root}. Known splits: {', '.join(known) or 'none'}.")
            self._samples[split] = SampleSet.load(directory)
        return self._samples[split]

    def trajectory(self, user: int) -> dict[str, np.ndarray]:
        """One user's whole trajectory (every stored field), oldest first."""
        lo, hi = int(self.offsets[user]), int(self.offsets[user + 1])
        return {name: value[lo:hi] for name, value in self.arrays.items()}

    def vocab(self, name: str) -> pl.Series:
        """Raw values of a vocabulary in dense-id order (dense id = position + 1)."""
        return read_vocab(self.vocab_root, name)

    def top_categories(self, n: int, level: int = -1) -> list[int]:
        """The dense ids of the `n` categories of taxonomy `level` (0 = coarsest, -1 = finest) with the most
        behaviours in the log (each item's behaviours counted under its path), most first, ties by id; fewer when
        the level has fewer. What TD-SASRec's `head_categories` takes."""
        M = self.taxonomy_levels
        if not -M <= level < M:
            raise ValueError(f"level must be a taxonomy level in [-{M}, {M}) of {self.root}. Got {level} instead.")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int. Got {n!r} instead.")
        category = np.asarray(self.item_category)[:, level].astype(np.int64)  # [V]
        counts = np.bincount(category, weights=np.asarray(self.item_count, dtype=np.float64))  # [V_cat]
        counts[0] = 0  # id 0: the level is missing
        order = np.lexsort((np.arange(counts.size), -counts))  # most behaviours first, then by id
        return [int(c) for c in order[:n] if counts[c] > 0]


def read_vocab(root: Path, name: str) -> pl.Series:
    """Raw values of vocabulary `name` of a folder holding `vocab/<name>.parquet` (a store, a serving artifact)."""
    if not is_safe_name(name):
        raise ValueError(f"vocabulary name {name!r} cannot name a file in {root}: expected {SAFE_NAME_RULE}.")
    return pl.read_parquet(root / "vocab" / f"{name}.parquet")["raw"]


def vocab_sha(vocab_dir: Path) -> str:
    """A digest of every vocabulary file: checkpoints record it so a model is never run on remapped ids."""
    return vocab_sha_of({path.stem: pl.read_parquet(path)["raw"] for path in sorted(vocab_dir.glob("*.parquet"))})


def vocab_sha_of(raws: Mapping[str, pl.Series]) -> str:
    """`vocab_sha` of vocabularies held in memory ({name: raw values in dense-id order}), e.g. grown by a delta."""
    digest = hashlib.sha256()
    for name in sorted(raws, key=lambda n: f"{n}.parquet"):
        digest.update(f"{name}.parquet".encode())
        digest.update(raws[name].cast(pl.String).str.join("\x1f").item().encode())
    return digest.hexdigest()[:16]


def split_counts(samples: Mapping[str, SampleSet], sources: Mapping[str, str]) -> dict[str, dict[str, int]]:
    """Samples and positives per split, for the manifest's "counts"; warns about each split of a single class.

    `sources` names where each split's samples come from (the log, or a split's file), for the warning.

    A split whose labels are all 0 or all 1 has no AUC (nor GAUC), so it cannot select or evaluate a CTR model. That
    is not an error: a store cut with no negatives (protocol negatives = 0) is all positives on purpose, e.g. for a
    next-item model. The counts let the training loop say so when it selects on such a split.
    """
    counts = {s: len(samples[s]) for s in SPLITS}
    positives = {s: int(samples[s].label.sum()) for s in SPLITS}
    for split in SPLITS:
        n, pos = counts[split], positives[split]
        if n and pos in (0, n):
            logger.warning(
                "%s: split '%s' holds a single class (%s samples, all %s): AUC is undefined on it, so it cannot "
                "select or evaluate a CTR model. Check the labels, or the protocol's negatives.",
                sources[split],
                split,
                f"{n:,}",
                "positive" if pos else "negative",
            )
    return {"samples": counts, "positives": positives}


def write_manifest(root: Path, manifest: Mapping[str, Any]) -> None:
    write_json(root / "manifest.json", manifest)
