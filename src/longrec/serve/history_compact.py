"""Compaction: fold an embedded history's append log into a new prepared store (`longrec compact`).

    history = open_embedded("data/taobao", log="serving/history.sqlite")
    compact(history, "data/taobao-c1")  # data/taobao-c1/{compaction.json, store/, log.sqlite}
    history = open_embedded("data/taobao-c1")  # reads exactly what the old one read; appends go on there

The output folder (written atomically with `longrec.files.output_directory`) holds:

- `store/`: a prepared store whose trajectories are the base's plus every logged behaviour of a user the vocabulary
  knows, each at its time (equal timestamps: base first, then arrival order, as reads merge them). The vocabulary
  files are copied unchanged, so its vocabulary sha is the base's and a model trained on the base serves from it.
  Item tables: the taxonomy and extra tables are the base's (an item keeps the side information it was trained
  with); `items/count.npy` adds the folded behaviours. It is a serving store: it has no protocol samples (cutting
  them again is `longrec prepare`'s work), and its manifest records the compaction.
  A sharded base (a `longrec prepare --shards N` folder, opened whole) compacts into one such store.
- `log.sqlite`: the new log. It holds (a) the behaviours of users the vocabulary does not know, still read from the
  log (a store cannot hold a user without a dense id, and adding one would change the vocabulary sha); (b) the raw
  records of folded behaviours that had an out-of-vocabulary value (item, action, category level, ...), marked folded:
  the store holds them as id 0, exactly as they were read, and the raw ids wait here for a store prepared with a
  larger vocabulary; (c) the event ids still in the idempotency window, so a retry after compaction is still a
  duplicate; (d) what arrived while compaction ran.

So a history reads the same before and after compaction (the test compares them), and nothing is lost.

**Online.** Compaction reads a snapshot of the log without blocking appends, builds the new store, then in one write
transaction of the old log copies what arrived since the snapshot into the new log and *seals* the old log: appends
there then fail with `LogSealedError` naming the new folder, and the server reopens there. If compaction is killed
after sealing but before its folder is renamed into place, rerun it: a sealed log can be compacted again.

Memory: the new trajectory arrays are built in memory, about twice the store's trajectories at the peak.
Shapes: N base behaviours, A folded behaviours, U users + 1, W packed width.
"""

from __future__ import annotations

import copy
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from longrec.data.store import SPLITS, TrajectoryStore, vocab_sha, write_manifest
from longrec.files import output_directory, write_json
from longrec.serve.events import SMALL_FIELDS
from longrec.serve.history import HistoryStore
from longrec.serve.history_sqlite import COMPACTED, LOG_NAME, SqliteLog, StoredRow

__all__ = ["CompactResult", "compact"]


@dataclass(frozen=True)
class CompactResult:
    """What `compact` wrote, for the CLI to print."""

    out: Path
    behaviours: int  # in the new store
    folded: int  # logged behaviours folded into the store
    live: int  # behaviours the new log still serves (unknown users, plus those that arrived during compaction)
    raw_kept: int  # folded behaviours with an out-of-vocabulary value whose raw records the new log keeps
    ids: int  # idempotency ids carried over
    seconds: float

    def lines(self) -> list[str]:
        return [
            f"compacted into {self.out}: {self.folded:,} logged behaviours folded into the store "
            f"({self.behaviours:,} behaviours)",
            f"  the new log serves {self.live:,} behaviours (users the vocabulary does not know, and what arrived "
            f"meanwhile); it keeps the raw records of {self.raw_kept:,} with out-of-vocabulary values and "
            f"{self.ids:,} event ids for deduplication",
            f"  the old log is sealed: serve from {self.out} now (open_embedded('{self.out}'))",
        ]


def compact(history: HistoryStore, out: str | Path, *, force: bool = False) -> CompactResult:
    """Fold `history`'s SQLite log into a new store and log in `out`, then seal the old log (module docstring).

    Args:
        history: an embedded history (`open_embedded`).
        out: the output folder: new, empty, or a previous compaction (replaced only with `force`).
        force: replace `out` when it holds a previous compaction.

    Raises:
        TypeError: the history's log is not an SQLite log (a Redis log is not compacted into a store).
        longrec.files.OutputError: `out` holds something else, or a previous compaction without `force`.
    """
    log = history.log
    if not isinstance(log, SqliteLog):
        raise TypeError(
            f"compact folds an embedded (SQLite) log into a store; this history's log is {log.backend!r}. "
            "Prepare a new store from the event stream instead."
        )
    started = time.perf_counter()
    out = Path(out)
    store = history.store
    with output_directory(out, COMPACTED, force) as tmp:
        last, rows = log.snapshot()
        fold = [r for r in rows if not r.folded and r.dense_user != 0]
        behaviours = _write_store(store, fold, log.width, tmp / "store", {"log": str(log.path), "last_seq": last})
        kept = [r for r in rows if r.folded or r.dense_user == 0 or not r.known]  # arrival order
        new = SqliteLog(
            tmp / LOG_NAME,
            vocab_sha=store.manifest["vocab_sha"],
            width=log.width,
            synchronous=log.synchronous,
            dedup_window_s=log.dedup_window_s,
        )
        try:
            new.insert(kept, [bool(r.folded) or r.dense_user != 0 for r in kept], [])
            arrived = log.seal(str(out.absolute()), last, new, float(history.clock()))
            live, _, _ = new.stats()
            ids = new.id_count()
        finally:
            new.close()
        result = CompactResult(
            out=out,
            behaviours=behaviours,
            folded=len(fold),
            live=live,
            raw_kept=len(kept) - sum(r.dense_user == 0 and not r.folded for r in kept),
            ids=ids,
            seconds=round(time.perf_counter() - started, 2),
        )
        write_json(
            tmp / COMPACTED.marker,
            {"source_store": str(store.root.absolute()), "source_log": str(log.path.absolute()), "arrived": arrived}
            | {k: v for k, v in vars(result).items() if k != "out"},
        )
    return result


def _event_number(event_id: str | None) -> int:
    """A store's int64 event id for a logged one: its value when it is a decimal integer, else -1 (none)."""
    if event_id is None or not event_id.lstrip("-").isdigit():
        return -1
    value = int(event_id)
    return value if -(2**63) <= value < 2**63 else -1


def _write_store(store: TrajectoryStore, rows: list[StoredRow], W: int, dest: Path, source: dict[str, Any]) -> int:
    """The base's trajectories with `rows` (known users) merged in at their times, as a prepared store in `dest`."""
    A, M = len(rows), store.taxonomy_levels
    user = np.array([r.dense_user for r in rows], np.int64)  # [A]
    packed = np.frombuffer(b"".join(r.packed for r in rows), "<i8").reshape(A, W).astype(np.int64)  # [A, W]
    event_id = np.array([_event_number(r.event_id) for r in rows], np.int64)  # [A]
    order = np.lexsort((np.array([r.seq for r in rows], np.int64), packed[:, 0], user))  # by (user, time, arrival)
    user, packed, event_id = user[order], packed[order], event_id[order]

    offsets = store.offsets  # [U + 1]
    N, U = int(offsets[-1]), offsets.shape[0] - 1
    counts = np.bincount(user, minlength=U)  # [U] folded behaviours per user
    new_offsets = offsets.copy()
    new_offsets[1:] += np.cumsum(counts)
    # Each folded row lands after the user's base rows of the same second and its earlier folded rows.
    base_before = np.zeros(A, np.int64)  # [A] base rows of its user that precede it
    users, starts = np.unique(user, return_index=True)
    timestamps = store.arrays["timestamp"]
    for u, lo, hi in zip(users, starts, [*starts[1:], A], strict=True):
        trajectory = timestamps[offsets[u] : offsets[u + 1]]
        base_before[lo:hi] = np.searchsorted(trajectory, packed[lo:hi, 0], side="right")
    rank = np.arange(A) - np.repeat(starts, np.diff([*starts, A]))  # [A] its rank among its user's folded rows
    at = new_offsets[user] + base_before + rank  # [A] rows in the new arrays
    folded = np.zeros(N + A, bool)  # [N + A]
    folded[at] = True

    columns = {"timestamp": packed[:, 0], "item": packed[:, 1], "category": packed[:, 5 : 5 + M]}
    columns |= {name: packed[:, 2 + i] for i, name in enumerate(SMALL_FIELDS)}
    columns |= {"extra": packed[:, 5 + M :], "event_id": event_id}
    (dest / "trajectories").mkdir(parents=True)
    np.save(dest / "trajectories" / "offsets.npy", new_offsets)
    for name, base in store.arrays.items():
        merged = np.empty((N + A, *base.shape[1:]), base.dtype)  # [N + A] or [N + A, M] / [N + A, E]
        merged[~folded] = np.asarray(base)  # a sharded base's rows are read from each user's shard here
        merged[folded] = columns[name].astype(base.dtype)
        np.save(dest / "trajectories" / f"{name}.npy", merged)
    (dest / "items").mkdir()
    for name, table in (("category", store.item_category), ("extra", store.item_extra)):
        np.save(dest / "items" / f"{name}.npy", np.asarray(table))  # the base's (a sharded base: its merged tables)
    item = packed[:, 1]
    count = store.item_count + np.bincount(item[item > 0], minlength=store.item_count.shape[0])
    np.save(dest / "items" / "count.npy", count.astype(np.int64))
    shutil.copytree(store.vocab_root / "vocab", dest / "vocab")
    if vocab_sha(dest / "vocab") != store.manifest["vocab_sha"]:
        raise RuntimeError(f"{dest / 'vocab'}: the copied vocabulary does not hash like {store.vocab_root / 'vocab'}.")
    manifest = copy.deepcopy(store.manifest)
    manifest.pop("shards", None)  # a sharded base compacts into one store
    manifest["counts"] = {
        "users": int(np.count_nonzero(np.diff(new_offsets))),
        "behaviours": N + A,
        "impressions": 0,
        "samples": dict.fromkeys(SPLITS, 0),
        "positives": dict.fromkeys(SPLITS, 0),
    }
    manifest["compaction"] = {"base": str(store.root.absolute()), "folded": A, **source}
    write_manifest(dest, manifest)
    return N + A
