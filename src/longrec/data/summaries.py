"""The summary store: per-sample user states (VISTA's S summary vectors) computed once and read memory-mapped.

VISTA's two-stage training (the paper caches the summaries as features of the downstream model): stage 1 trains a
model end to end (on a short window, or for a few steps); its frozen summariser then computes every sample's
summaries of the user's history **strictly before the sample's cutoff** (collate's history, so no future behaviour
enters) once, into this store (`longrec summarise`, `longrec.run.summaries`); stage 2 trains the candidate side from
the stored summaries alone (`data.summaries`), so its step cost does not depend on L.

Layout of a summary store (written into a temporary sibling folder and renamed into place, `longrec.files`):

    summaries.json       format version, the model (name, params) that computed them, shape [S, E], dtype, the
                         history window (max_history), the trajectory store's vocabulary sha, samples per split,
                         the sha256 of model.safetensors, seconds per split
    model.safetensors    the weights that computed them: stage 2 starts from them with the user side frozen
    <split>.npy          [N_split, S, E] float16 or float32: row i = the state of sample i of that split

Nothing here executes code when loaded: JSON, `np.load(allow_pickle=False)` and safetensors.
Shapes: N samples of a split, B batch, S summary tokens, E summary width.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from longrec.data.store import TrajectoryStore

__all__ = ["SUMMARY_DTYPES", "SUMMARY_FORMAT", "SummaryStore", "file_sha256", "open_split_for_writing"]

SUMMARY_FORMAT = 1
SUMMARY_DTYPES = ("float16", "float32")
MAKE_IT = "Write one with 'longrec summarise RUN --out FOLDER'."


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def open_split_for_writing(folder: Path, split: str, rows: int, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """A new `<split>.npy` of [rows, *shape] in `folder` (a writer's temporary folder), memory-mapped for filling."""
    if dtype not in SUMMARY_DTYPES:
        raise ValueError(f"summary dtype must be one of {', '.join(SUMMARY_DTYPES)}. Got {dtype!r} instead.")
    return np.lib.format.open_memmap(folder / f"{split}.npy", mode="w+", dtype=np.dtype(dtype), shape=(rows, *shape))


@dataclass
class SummaryStore:
    """A summary store, opened read-only: its metadata and one memory-mapped [N, S, E] array per split."""

    root: Path
    meta: dict[str, Any]
    _arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, root: str | Path, store: TrajectoryStore | None = None) -> SummaryStore:
        """Open and check a folder written by `longrec summarise`; with `store`, check that it belongs to it
        (vocabulary sha and sample counts per split).

        Raises:
            FileNotFoundError: no summaries.json, or a split's array is missing.
            ValueError: damaged metadata or array (wrong shape, dtype, pickled), or another store's summaries.
        """
        root = Path(root)
        path = root / "summaries.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: '{root}' is not a summary store. {MAKE_IT}")
        try:
            meta = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is damaged (not valid JSON: {err}). {MAKE_IT}") from err
        if not isinstance(meta, dict) or meta.get("format_version") != SUMMARY_FORMAT:
            found = meta.get("format_version") if isinstance(meta, dict) else type(meta).__name__
            raise ValueError(f"{path} has format_version {found!r}; this longrec reads {SUMMARY_FORMAT}. {MAKE_IT}")
        missing = [k for k in ("model", "shape", "dtype", "splits", "vocab_sha", "max_history") if k not in meta]
        if missing:
            raise ValueError(f"{path} is damaged: it lacks {', '.join(missing)}. {MAKE_IT}")
        summaries = cls(root, meta)
        for split in meta["splits"]:
            summaries.split(split)  # every array checked at open, not at the first batch
        if store is not None:
            summaries.check_store(store)
        return summaries

    @property
    def shape(self) -> tuple[int, ...]:
        """The state's shape per sample, e.g. (S, E)."""
        return tuple(int(x) for x in self.meta["shape"])

    def split(self, name: str) -> np.ndarray:
        """The [N, S, E] array of split `name`, memory-mapped (checked: shape and dtype as summaries.json says)."""
        if name not in self._arrays:
            if name not in self.meta["splits"]:
                known = ", ".join(self.meta["splits"]) or "none"
                raise KeyError(f"{self.root} holds no summaries of split '{name}'. Its splits: {known}.")
            path = self.root / f"{name}.npy"
            try:
                array = np.load(path, mmap_mode="r", allow_pickle=False)
            except FileNotFoundError:
                raise FileNotFoundError(f"{path} is missing: the summary store is incomplete. {MAKE_IT}") from None
            except (ValueError, EOFError, OSError) as err:
                raise ValueError(f"{path} is damaged ({err}). {MAKE_IT}") from err
            expected = [int(self.meta["splits"][name]), *self.shape]
            if list(array.shape) != expected or str(array.dtype) != self.meta["dtype"]:
                raise ValueError(
                    f"{path} must hold {self.meta['dtype']} {expected} (samples x state, as summaries.json says). "
                    f"Got {array.dtype} {list(array.shape)} instead. {MAKE_IT}"
                )
            self._arrays[name] = array
        return self._arrays[name]

    def check_store(self, store: TrajectoryStore) -> None:
        """Refuse summaries computed on another store (other vocabulary, or other samples per split)."""
        sha = store.manifest["vocab_sha"]
        if self.meta["vocab_sha"] != sha:
            raise ValueError(
                f"{self.root} was computed on a store with vocabulary sha {self.meta['vocab_sha']}, but {store.root} "
                f"has {sha}: summaries index that store's samples. Summarise again on this store."
            )
        for split, got in self.meta["splits"].items():
            n = len(store.samples(split))
            if got != n:
                raise ValueError(
                    f"{self.root} holds {got} summaries of split '{split}', but {store.root} has {n:,} samples there: "
                    "the store changed since they were computed. Summarise again on this store."
                )

    def state(self, split: str, index: np.ndarray) -> torch.Tensor:
        """The states of sample rows `index` of `split` as float32, [B, S, E] (reads only those rows)."""
        return torch.from_numpy(np.asarray(self.split(split)[np.asarray(index)], dtype=np.float32))

    def weights(self) -> dict[str, torch.Tensor]:
        """The model weights that computed the summaries (model.safetensors, its sha256 checked)."""
        from safetensors.torch import load_file

        path = self.root / "model.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the summary store is incomplete. {MAKE_IT}")
        if file_sha256(path) != self.meta.get("weights_sha256"):
            raise ValueError(f"{path} does not match the sha256 recorded in summaries.json: it was changed. {MAKE_IT}")
        return load_file(path)
