"""The embedding cache: big id tables served from a memory-mapped file, with an LRU cache of hot rows in front.

An item table of 10^8 rows × 64 floats is 25 GB: more than a server's RAM budget, and most of it cold (item
popularity is Zipf-like). With the cache on (`load_artifact(path, embedding_cache=EmbeddingCacheConfig(...))`) such
a table leaves the model: the rows stay in the artifact's `weights.safetensors`, memory-mapped (a safetensors file
is a JSON header followed by each tensor's raw little-endian bytes, so a table is an `np.memmap` at the offset the
header gives: no second copy on disk, and the file's sha256 was checked at load), and a `RowCache` keeps the most
recently used rows in memory. The model reads the table through `longrec.models.external.ExternalTable`, which stands
in for the `nn.Embedding` (the mechanism lives with the lookups; the policy, which tables and how many rows, here).

**Exact.** A row is the same float32 bytes whether it comes from the cache, the file or the in-memory table, and
`lookup` reads external tables on its plain path, so the logits are the in-memory model's exactly
(tests/serve/test_embedding_cache.py checks every model).

**Which tables**: every `nn.Embedding` with one row per item (`num_items` rows), and any other of at least
`min_rows` rows. **Policy**: least recently used rows go first, at `capacity` rows per table; rows used by one call
are equally recent. When the cache is full, evictions come in batches of C/16 of the least recently used rows (one
O(C) scan per batch rather than per request), so a row may leave a few requests before strict LRU would drop it.
**Why rows, not pages**: the OS page cache would keep the hot rows too, but by 4 KiB page; hot items are scattered
over the table, so it holds ~64 cold rows (D = 16) for each hot one (docs/serving.md has the numbers).
**Counters** (`hits`, `misses`, `evictions`) count distinct rows per call: a row that a request reads 50 times counts
once. **Threads**: one lock per table guards the cache; it is not held while missing rows are read from the file, so
concurrent misses read in parallel. **Memory**: C × D floats, plus a slot map of 4 bytes per table row (400 MB for
10^8 rows), plus what the OS keeps of the file in its page cache (reclaimable). **Limits**: inference only (an
external table has no gradient and refuses `train()`); the model is loaded whole before its big tables move out
(`load_artifact` builds it, then frees them), so loading still needs each table once in RAM; tables of dtypes numpy
cannot map (bf16) stay in memory; deltas apply to in-memory tables only (`longrec.serve.delta`).

Shapes: N ids looked up, U distinct ids among them, V table rows, D embedding width, C capacity (rows cached).
"""

from __future__ import annotations

import json
import logging
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from longrec.models.external import ExternalTable

__all__ = ["EmbeddingCacheConfig", "RowCache", "cache_counters", "cache_embeddings", "mapped_tensors"]

logger = logging.getLogger(__name__)

_NUMPY_DTYPES = {"F32": "<f4", "F64": "<f8", "F16": "<f2"}  # safetensors dtypes numpy can map


@dataclass(frozen=True)
class EmbeddingCacheConfig:
    """Which tables a server reads from disk, and how many of their rows it keeps in memory."""

    capacity: int = 100_000  # C: rows kept in memory per table (LRU)
    min_rows: int = 1_000_000  # tables other than the item tables are served from disk from this many rows on

    def __post_init__(self) -> None:
        for name in ("capacity", "min_rows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"EmbeddingCacheConfig.{name} must be a positive int. Got {value!r} instead.")


class RowCache:
    """An LRU cache of the rows of a table [V, D] (usually a memory map), thread-safe, with hit/miss counters.

    Args:
        table: [V, D] rows, read with sorted fancy indexing (`table[ids]`) for the rows not cached.
        capacity: C, the most rows kept in memory.
    """

    def __init__(self, table: np.ndarray, capacity: int) -> None:
        if table.ndim != 2:
            raise ValueError(f"RowCache needs a table [V, D]. Got shape {list(table.shape)} instead.")
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"RowCache.capacity must be a positive int. Got {capacity!r} instead.")
        V, D = table.shape
        self.table, self.capacity = table, capacity
        self.shape = (int(V), int(D))
        self._slot = np.full(V, -1, np.int32 if capacity < 2**31 else np.int64)  # [V] row -> slot, -1 = not cached
        self._owner = np.full(capacity, -1, np.int64)  # [C] slot -> row
        self._used = np.zeros(capacity, np.int64)  # [C] tick of the slot's last use
        self._rows = torch.empty(capacity, int(D), dtype=torch.from_numpy(np.zeros(0, table.dtype)).dtype)  # [C, D]
        self._free = np.arange(capacity, dtype=np.int64)  # slots holding no row, used first
        self._tick = 0
        self._lock = threading.Lock()  # guards everything above and the counters
        self.hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        with self._lock:
            return self.capacity - int(self._free.size)

    def __contains__(self, row: int) -> bool:
        with self._lock:
            return 0 <= row < self.shape[0] and bool(self._slot[row] >= 0)

    @property
    def hit_rate(self) -> float:
        """hits / (hits + misses) so far (0.0 before any lookup)."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def rows(self, ids: Tensor) -> Tensor:
        """ids [N] int64 in [0, V) -> rows [N, D]: cached ones from memory, the others read from the table and cached.

        Raises:
            IndexError: an id outside [0, V), as `nn.Embedding` would.
        """
        flat = ids.detach().cpu().numpy().astype(np.int64, copy=False).reshape(-1)  # [N]
        unique, inverse = np.unique(flat, return_inverse=True)  # [U] ascending, [N]
        if unique.size and (unique[0] < 0 or unique[-1] >= self.shape[0]):
            bad = unique[0] if unique[0] < 0 else unique[-1]
            raise IndexError(f"embedding row {int(bad)} is out of range: the table has rows [0, {self.shape[0]}).")
        out = self._rows.new_empty(unique.size, self.shape[1])  # [U, D]
        with self._lock:
            self._tick += 1
            tick = self._tick
            slots: np.ndarray = self._slot[unique]  # [U]
            hit = slots >= 0
            held = slots[hit].astype(np.int64)
            self._used[held] = tick
            out[torch.from_numpy(hit)] = self._rows[torch.from_numpy(held)]  # copied under the lock: no eviction races
            self.hits += int(hit.sum())
            self.misses += int(unique.size - hit.sum())
        if not hit.all():
            missing = unique[~hit]  # ascending: the file is read in order
            fetched = torch.from_numpy(np.ascontiguousarray(self.table[missing]))  # [U_miss, D]
            out[torch.from_numpy(~hit)] = fetched
            with self._lock:
                self._insert(missing, fetched, tick)
        return out[torch.from_numpy(inverse)]  # [N, D]

    def _insert(self, ids: np.ndarray, rows: Tensor, tick: int) -> None:
        """Cache rows read at `tick` in free slots, evicting least recently used rows when there are too few (lock
        held). Evictions come in batches of at least C/16 rows, the least recently used ones not used since `tick`:
        one O(C) scan per batch instead of one per call."""
        new = self._slot[ids] < 0  # another thread may have cached some meanwhile
        ids, rows = ids[new], rows[torch.from_numpy(new)]
        k = min(ids.size, self.capacity)
        if self._free.size < k:
            held = np.flatnonzero((self._owner >= 0) & (self._used < tick))  # not used by this call or a later one
            evict = min(max(k - self._free.size, self.capacity // 16), held.size)
            if evict < held.size:
                held = held[np.argpartition(self._used[held], evict - 1)[:evict]]
            self._slot[self._owner[held]] = -1
            self._owner[held] = -1
            self.evictions += int(held.size)
            self._free = np.concatenate([self._free, held])
        slots, self._free = self._free[:k], self._free[k:]
        ids, rows = ids[: slots.size], rows[: slots.size]  # more new rows than room: the rest are served uncached
        self._slot[ids] = slots
        self._owner[slots] = ids
        self._used[slots] = tick
        self._rows[torch.from_numpy(slots)] = rows

    def clear(self) -> None:
        """Drop every cached row (the counters stay)."""
        with self._lock:
            held = self._owner >= 0
            self._slot[self._owner[held]] = -1
            self._owner[:] = -1
            self._free = np.arange(self.capacity, dtype=np.int64)


def mapped_tensors(path: Path) -> dict[str, np.ndarray]:
    """Read-only memory maps of the tensors of a safetensors file that numpy can map (F32, F64, F16), by name.

    The format: 8 bytes little-endian header length n, n bytes of JSON {name: {dtype, shape, data_offsets}}, then the
    data; a tensor's bytes are data[start:end], C order, little-endian.

    Raises:
        ValueError: the file is not a safetensors file (named).
    """
    with open(path, "rb") as f:
        head = f.read(8)
        try:
            (n,) = struct.unpack("<Q", head)
            header = json.loads(f.read(n))
        except (struct.error, json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is not a safetensors file ({err}).") from err
    arrays: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__" or info["dtype"] not in _NUMPY_DTYPES:
            continue
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if end == start:  # an empty tensor: nothing to map
            continue
        arrays[name] = np.memmap(path, dtype=_NUMPY_DTYPES[info["dtype"]], mode="r", offset=8 + n + start, shape=shape)
    return arrays


def cache_embeddings(
    model: nn.Module, weights: Path, config: EmbeddingCacheConfig, num_items: int | None = None
) -> dict[str, RowCache]:
    """Serve the big tables of `model` from `weights` (its state dict as safetensors) through row caches.

    Each covered `nn.Embedding` (`num_items` rows, or at least `config.min_rows`) is replaced in `model` by an
    `ExternalTable` over a `RowCache` of the memory-mapped tensor, and its in-memory weight is freed. Call it on a
    model that no request uses yet (`load_artifact` does).

    Returns:
        The caches by state-dict name ("embedding.item_embedding.weight"), for their counters.

    Raises:
        ValueError: `weights` does not hold a covered table with the table's shape.
    """
    mapped = mapped_tensors(weights)
    caches: dict[str, RowCache] = {}
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Embedding):
            continue
        rows = module.num_embeddings
        if rows != num_items and rows < config.min_rows:
            continue
        key = f"{name}.weight"
        if key not in mapped:
            logger.warning("embedding cache: %s is not a float table numpy can map; it stays in memory", key)
            continue
        if tuple(mapped[key].shape) != tuple(module.weight.shape):
            raise ValueError(
                f"{weights}: tensor {key} has shape {list(mapped[key].shape)}, but the model's table is "
                f"{list(module.weight.shape)}. The weights file is not this model's."
            )
        caches[key] = RowCache(mapped[key], config.capacity)
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, ExternalTable(caches[key], module.padding_idx))
    return caches


def cache_counters(caches: Mapping[str, RowCache]) -> dict[str, dict[str, Any]]:
    """Per table: rows cached, capacity, hits, misses, evictions and hit rate (for a server's metrics)."""
    return {
        name: {
            "rows": len(cache),
            "capacity": cache.capacity,
            "hits": cache.hits,
            "misses": cache.misses,
            "evictions": cache.evictions,
            "hit_rate": cache.hit_rate,
        }
        for name, cache in caches.items()
    }
