"""The online history store: where new behaviours arrive and where a request reads a user's history.

A `HistoryStore` is a prepared store (`longrec.data.store`, memory-mapped, read-only: the **base**) plus an
**append log** of the behaviours that arrived since it was prepared. A read merges the two and returns dense arrays
ready for collate (`History`); `HistoryStore.to_batch` turns one into the one-row `Batch` that `collate` builds for
the same behaviours and cutoff (it *is* `collate`, run on an in-memory one-user store, as `longrec.run.frames` does).

    history = open_embedded("data/taobao", log="serving/history.sqlite")  # longrec.serve.history_sqlite
    history.append([Event(user=105, item=7, timestamp=1_700_000_000, event_id="e-1", action="pv")])
    h = history.history(105, limit=10_000, before=now)  # the newest 10^4 behaviours before `now`, oldest first
    batch = history.to_batch(h, cutoff=now)  # [1, L]; `longrec.search.one_user_request(batch, candidates)`

`HistoryStore` is one concrete class over a pluggable log (the `AppendLog` protocol: append, read, stats, close); it
does everything else (checks, raw -> dense ids with `longrec.serve.events`, the merge, `to_batch`). Two logs: SQLite
in WAL mode beside the process (`history_sqlite.open_embedded`, the default, with compaction into a new store in
`history_compact`) and Redis, shared by a fleet of replicas (`history_redis.open_redis`). The rules below hold for
both; `tests/serve/test_history.py` runs one contract against each.

**Rules.**

- **Idempotent on `event_id`.** An event whose id was already accepted for the same user is a duplicate: it is
  counted in `AppendResult.duplicates` and not stored again (ids are per user, so keys of one user stay together in a
  Redis cluster). Ids are remembered for `dedup_window_s` of server time after their first acceptance (default one
  day; Redis also keeps at most `max_ids` per user): a retry older than that is a new behaviour. Events without an id
  are always appended.
- **Out-of-order timestamps are accepted** and placed at their time: a history is always sorted by timestamp; equal
  timestamps keep arrival order, and base behaviours come before appended ones.
- **The future is refused.** A timestamp more than `max_future_s` (default 300 s) ahead of the server clock (the
  injectable `clock`) fails the whole `append` call with a `ValueError` naming the event, and nothing of the call is
  stored: validation comes before any write. So does an extra field the store does not have, or a category path
  deeper than its taxonomy.
- **`limit` keeps the newest** behaviours strictly before `before` (all of them when `before` is None).
- **Unknown values are kept as out-of-vocabulary.** A user the store's vocabulary does not know has an empty base
  history (its appended behaviours are read as usual). An item, action, domain, scene, category level or extra id
  the vocabulary does not know becomes id 0 (the out-of-vocabulary row, a zero embedding), and the behaviour is kept:
  its time, its other fields and its category path (for category search) still inform the model. Each append reports
  the unknown values per field (`AppendResult.unknown`). The embedded log keeps every raw event: compaction folds such
  behaviours into the new store as they read (id 0) and keeps their raw records, for a store prepared later with a
  larger vocabulary (`history_compact`).
- **Absent side information comes from the item.** An event without a category path takes its item's path from the
  store's item table (`items/category.npy`), as `prepare` and scoring do; likewise each extra field it does not give
  (`items/extra.npy`). An unknown item has no row there: its path is all 0 unless the event gives one. Fields the store
  was prepared without (say `domain`) are ignored.
- **Raw ids** are `int` or `str` and are matched after a cast to the vocabulary's type (so `105` and `"105"` are one
  user of an integer vocabulary); a user's log key is that cast value as text.

**Durability** is the log's (an acknowledged event is stored when `append` returns): the embedded log commits each
call with SQLite `synchronous=FULL`; Redis as its server is configured (`history_redis`).

Packed rows: the logs store each behaviour as W = 5 + M + E int64 values, [timestamp, item, action, domain, scene,
category (M), extra (E)], dense ids of the base store's vocabulary. Shapes: n behaviours of one history, M taxonomy
levels, E extra id fields, W packed width.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, NamedTuple, Protocol

import numpy as np

from longrec.data.store import SampleSet, TrajectoryStore
from longrec.serve.events import SMALL_FIELDS, AppendResult, Event, EventEncoder, LogRow, RawId, packed_width

if TYPE_CHECKING:
    from longrec.data.batch import Batch

__all__ = [
    "AppendLog",
    "AppendResult",
    "Event",
    "History",
    "HistoryStats",
    "HistoryStore",
    "LogRow",
    "LogStats",
    "RawId",
    "packed_width",
]

NO_CUTOFF = np.iinfo(np.int64).max  # `before=None`: every behaviour (the future beyond max_future_s never gets in)


@dataclass(frozen=True)
class History:
    """One user's newest behaviours before a cutoff, oldest first, as dense int64 ids of the base store.

    Fields the store was prepared without are None (action, domain, scene) or have width 0 (category, extra).
    """

    user: int  # dense user id; 0 = not in the store's vocabulary
    timestamp: np.ndarray  # [n] int64 epoch seconds, non-decreasing
    item: np.ndarray  # [n] int64, 0 = out of vocabulary
    category: np.ndarray  # [n, M] int64 taxonomy path, coarse to fine
    extra: np.ndarray  # [n, E] int64
    action: np.ndarray | None  # [n] int64
    domain: np.ndarray | None  # [n] int64
    scene: np.ndarray | None  # [n] int64
    appended: int  # how many of the n came from the append log
    before: int | None  # the cutoff it was read at

    def __len__(self) -> int:
        return int(self.timestamp.shape[0])


@dataclass(frozen=True)
class HistoryStats:
    """Sizes of a history store, for logs and a health endpoint."""

    backend: str
    users: int  # users with at least one base behaviour
    base_behaviours: int
    appended_events: int  # behaviours in the log that reads merge (not yet folded into a store)
    appended_users: int
    log_bytes: int
    unknown: Mapping[str, int] = field(default_factory=dict, hash=False)  # out-of-vocabulary values since opened


class LogStats(NamedTuple):
    events: int
    users: int
    bytes: int


class AppendLog(Protocol):
    """Where appended behaviours live: the only part a backend implements."""

    backend: str

    def append(self, rows: Sequence[LogRow], now: float) -> list[bool]:
        """Store rows atomically and durably; per row True = stored, False = a duplicate event id (in the window)."""
        ...

    def read(self, user: str, before: int, limit: int) -> np.ndarray:
        """Packed rows [k, W] int64 of `user`, timestamp < before, the newest `limit`, oldest first (ties: arrival)."""
        ...

    def stats(self) -> LogStats: ...

    def close(self) -> None: ...


class HistoryStore:
    """A prepared store (the base, read-only) plus an append log: `append` behaviours, read merged `history`.

    Every method may be called from many threads at once (the base is read-only; each log guards itself).

    Args:
        store: the prepared store: one trajectory per user (not an import-samples store); its vocabulary gives the
            dense ids, so a model trained on it (the same vocabulary sha) reads these histories unchanged.
        log: where appended behaviours live (`history_sqlite.SqliteLog`, `history_redis.RedisLog`), made for this
            store's vocabulary and packed width (`packed_width`).
        max_future_s: how far ahead of `clock()` a timestamp may be (clock skew between producers and server).
        clock: the server clock, epoch seconds (tests pass a fake one).
    """

    def __init__(
        self,
        store: TrajectoryStore,
        log: AppendLog,
        *,
        max_future_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if store.owner is not None:
            raise ValueError(
                f"{store.root} holds one history per sample (import-samples), not one trajectory per user: a history "
                "store needs a store written by 'longrec prepare'."
            )
        if max_future_s < 0:
            raise ValueError(f"max_future_s must be >= 0 seconds. Got {max_future_s} instead.")
        self.store = store
        self.log = log
        self.max_future_s = float(max_future_s)
        self.clock = clock
        self.encoder = EventEncoder(store)
        self.taxonomy_levels = store.taxonomy_levels  # M
        self.extra_fields = self.encoder.extra_fields  # E names

    def __enter__(self) -> HistoryStore:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the log (the base store is memory-mapped and needs nothing)."""
        self.log.close()

    def append(self, events: Iterable[Event]) -> AppendResult:
        """Store new behaviours; each accepted one is durable when this returns.

        Raises:
            ValueError: an event is too far in the future, names an extra field the store does not have, or has a
                category path deeper than the taxonomy: nothing of the call is stored.
            TypeError: an element is not an `Event`.
        """
        events = list(events)
        for i, event in enumerate(events):
            if not isinstance(event, Event):
                raise TypeError(f"append: element {i} must be an Event. Got {type(event).__name__} instead.")
        if not events:
            return AppendResult(0, 0)
        now = float(self.clock())
        self.encoder.check(events, now, self.max_future_s)
        rows, unknown = self.encoder.encode(events)
        stored = self.log.append(rows, now)
        duplicates = tuple(str(row.event_id) for row, ok in zip(rows, stored, strict=True) if not ok)
        return AppendResult(len(rows) - len(duplicates), len(duplicates), duplicates, MappingProxyType(unknown))

    def history(self, user: RawId, limit: int, before: int | None = None, inline: Sequence[Event] = ()) -> History:
        """The user's newest `limit` behaviours strictly before `before` (None: all), base and appended, oldest first.

        Args:
            user: the raw user id.
            limit: the most behaviours returned (the newest).
            before: the cutoff, epoch seconds (None: every behaviour).
            inline: behaviours sent with a request and not stored: merged as if appended after the log's (checked
                as `append` checks them; the user of each must be `user`).

        Raises:
            ValueError: `limit` < 1, or an inline behaviour that `append` would refuse or of another user.
        """
        if isinstance(limit, bool) or not isinstance(limit, int | np.integer) or limit < 1:
            raise ValueError(f"history: limit must be an int >= 1. Got {limit!r} instead.")
        key, dense = self.encoder.user_key(user)
        cutoff = NO_CUTOFF if before is None else int(before)
        base = self._base(dense, int(limit), cutoff)
        appended = self.log.read(key, cutoff, int(limit))  # [k, W]
        if inline:
            appended = self._with_inline(key, appended, list(inline), cutoff, int(limit))  # [k', W]
        merged, k = self._merge(base, appended, int(limit)) if appended.shape[0] else (base, 0)
        return History(
            user=dense,
            timestamp=merged["timestamp"],
            item=merged["item"],
            category=merged["category"],
            extra=merged["extra"],
            action=merged.get("action"),
            domain=merged.get("domain"),
            scene=merged.get("scene"),
            appended=k,
            before=before,
        )

    def _with_inline(self, key: str, logged: np.ndarray, inline: list[Event], cutoff: int, limit: int) -> np.ndarray:
        """Log rows [k, W] with the inline behaviours before `cutoff` merged in by time (after logged ties)."""
        self.encoder.check(inline, float(self.clock()), self.max_future_s)
        rows, _ = self.encoder.encode(inline)
        for i, row in enumerate(rows):
            if row.user != key:
                raise ValueError(f"inline behaviour {i} belongs to user {row.user!r}, not to the request's {key!r}.")
        packed = np.frombuffer(b"".join(row.packed for row in rows), "<i8").reshape(len(rows), -1).astype(np.int64)
        both = np.concatenate([logged, packed[packed[:, 0] < cutoff]])  # [k + j, W]
        order = np.argsort(both[:, 0], kind="stable")  # logged rows first among equal times, then inline ones
        return both[order][-limit:]

    def _merge(
        self, base: dict[str, np.ndarray], appended: np.ndarray, limit: int
    ) -> tuple[dict[str, np.ndarray], int]:
        """The newest `limit` of base rows [n] and log rows [k, W] (each time-ordered), time-ordered, and how many of
        them came from the log. Ties: base first, then the log's arrival order."""
        ts = base["timestamp"]
        n, k = ts.shape[0], appended.shape[0]
        # Base rows before the oldest log row stay in front: only the tail [split, n) interleaves (late events are
        # usually recent, so the tail is short; it is empty when every log row is newer than the base).
        split = int(np.searchsorted(ts, appended[0, 0], side="right"))
        at = np.searchsorted(ts[split:], appended[:, 0], side="right") + np.arange(k)  # [k] rows of the merged tail
        from_log = np.zeros(n - split + k, bool)  # [n - split + k]
        from_log[at] = True
        keep = min(limit, n + k)
        head = max(0, keep - from_log.shape[0])  # rows of the untouched front that are kept
        merged = {}
        for name, value in base.items():
            tail = np.empty((n - split + k, *value.shape[1:]), np.int64)  # [n - split + k] or [.., M] / [.., E]
            tail[~from_log] = value[split:]
            tail[from_log] = self._column(appended, name)
            merged[name] = np.concatenate([value[split - head : split], tail[from_log.shape[0] - keep + head :]])
        return merged, int(from_log[from_log.shape[0] - keep + head :].sum())

    def _column(self, packed: np.ndarray, name: str) -> np.ndarray:
        """One field of packed rows [k, W]: [k] or [k, M] / [k, E]."""
        M = self.taxonomy_levels
        if name == "category":
            return packed[:, 5 : 5 + M]
        if name == "extra":
            return packed[:, 5 + M :]
        return packed[:, ("timestamp", "item", *SMALL_FIELDS).index(name)]

    def _base(self, user: int, limit: int, cutoff: int) -> dict[str, np.ndarray]:
        """The user's newest `limit` base behaviours before `cutoff`, each stored field as an int64 copy."""
        arrays = self.store.arrays
        lo, hi = int(self.store.offsets[user]), int(self.store.offsets[user + 1])
        if cutoff != NO_CUTOFF:
            hi = lo + int(np.searchsorted(arrays["timestamp"][lo:hi], cutoff, side="left"))
        lo = max(lo, hi - limit)
        out = {
            name: np.array(arrays[name][lo:hi], np.int64)
            for name in ("timestamp", "item", *SMALL_FIELDS)
            if name in arrays
        }
        out["category"] = (
            np.array(arrays["category"][lo:hi], np.int64) if self.taxonomy_levels else np.zeros((hi - lo, 0), np.int64)
        )
        out["extra"] = (
            np.array(arrays["extra"][lo:hi], np.int64) if self.extra_fields else np.zeros((hi - lo, 0), np.int64)
        )
        return out

    def to_batch(self, history: History, cutoff: int | None = None) -> Batch:
        """The one-row `Batch` that `collate` builds for these behaviours and cutoff (history fields, `target_time`,
        `user`; `target` 0 and `label` None: `longrec.search.one_user_request` adds the candidates).

        Args:
            history: from `history(...)`.
            cutoff: the request's time, epoch seconds (time gaps are measured to it); default `history.before`, or
                one second after the newest behaviour.

        Raises:
            ValueError: a behaviour at or after `cutoff` (its time gap would be <= 0: read with `before=cutoff`).
        """
        from longrec.data.dataset import collate  # torch loads here: processes that only ingest stay light

        n, M, E = len(history), self.taxonomy_levels, len(self.extra_fields)
        if cutoff is None:
            cutoff = history.before if history.before is not None else int(history.timestamp[-1]) + 1 if n else 0
        if n and int(history.timestamp[-1]) >= cutoff:
            raise ValueError(
                f"to_batch: the history holds a behaviour at {int(history.timestamp[-1])}, not before the cutoff "
                f"{cutoff}; read it with history(user, limit, before={cutoff})."
            )
        arrays = {"item": history.item, "timestamp": history.timestamp}
        if M:
            arrays["category"] = history.category
        arrays.update({name: value for name in SMALL_FIELDS if (value := getattr(history, name)) is not None})
        if E:
            arrays["extra"] = history.extra
        if n == 0:  # collate reads row 0 for padding (and zeroes it): every store has one
            arrays = {name: np.zeros((1, *value.shape[1:]), np.int64) for name, value in arrays.items()}
        one = TrajectoryStore(  # trajectory 1 is this history; trajectory 0 is empty, as in every store
            root=self.store.root,
            manifest=self.store.manifest,
            offsets=np.array([0, 0, n], np.int64),
            arrays=arrays,
            item_category=self.store.item_category,
            item_count=self.store.item_count,
            item_extra=self.store.item_extra,
            owner=np.array([0, history.user], np.int64),
        )
        sample = SampleSet(
            user=np.ones(1, np.int64),
            end=np.full(1, n, np.int64),
            target_item=np.zeros(1, np.int64),
            target_category=np.zeros((1, M), np.int64),
            target_extra=np.zeros((1, E), np.int64),
            target_time=np.full(1, cutoff, np.int64),
            label=np.zeros(1, np.float32),
            goal=np.zeros(1, np.int64),
            scene=np.zeros(1, np.int64),
            event_id=np.full(1, -1, np.int64),
        )
        return collate(one, sample, np.zeros(1, np.int64), max(n, 1)).replace(label=None)

    def stats(self) -> HistoryStats:
        """Sizes of the base and the log (the log's count may scan it: for a health endpoint, not per request)."""
        log = self.log.stats()
        with self.encoder.lock:
            unknown = dict(self.encoder.unknown)
        return HistoryStats(
            backend=self.log.backend,
            users=int(np.count_nonzero(np.diff(self.store.offsets))),
            base_behaviours=int(self.store.offsets[-1]),
            appended_events=log.events,
            appended_users=log.users,
            log_bytes=log.bytes,
            unknown=MappingProxyType(unknown),
        )
