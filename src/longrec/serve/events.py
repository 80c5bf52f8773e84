"""Behaviours as they arrive (`Event`) and as the append logs store them (`LogRow`, packed dense ids).

`EventEncoder` checks a call's events (the future, unknown extra fields, too deep a category path) and turns them into
log rows: dense ids of the base store's vocabulary, side information filled from the item tables, the raw event as
JSON, and whether every raw value was known. `longrec.serve.history` states the rules; this module implements them.

Packed rows: W = 5 + M + E little-endian int64 values per behaviour, [timestamp, item, action, domain, scene,
category (M), extra (E)]. Shapes: n events of one call, M taxonomy levels, E extra id fields, W packed width.
"""

from __future__ import annotations

import difflib
import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from longrec.data.store import TrajectoryStore
from longrec.data.vocab import IdLookup, Vocabulary

__all__ = ["SMALL_FIELDS", "AppendResult", "Event", "EventEncoder", "LogRow", "RawId", "packed_width"]

RawId = int | str
SMALL_FIELDS = ("action", "domain", "scene")  # packed columns 2, 3, 4


def _is_raw_id(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, str) and value != "")


@dataclass(frozen=True)
class Event:
    """One behaviour as it arrives: raw ids, as in the canonical log (`longrec.ingest.schema`).

    `category` is the taxonomy path, coarse to fine (None: the item's path); `extra` the extra id fields by name
    (a field not given: the item's value). Raw ids are int or non-empty str; `timestamp` is int epoch seconds.
    """

    user: RawId
    item: RawId
    timestamp: int
    event_id: str | None = None
    action: RawId | None = None
    domain: RawId | None = None
    scene: RawId | None = None
    category: tuple[RawId | None, ...] | None = None
    extra: Mapping[str, RawId | None] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be an int or a non-empty str"
            for name in ("user", "item")
            if not _is_raw_id(getattr(self, name))
        ]
        if isinstance(self.timestamp, np.integer):
            object.__setattr__(self, "timestamp", int(self.timestamp))
        if (
            not isinstance(self.timestamp, int)
            or isinstance(self.timestamp, bool)
            or not -(2**63) <= self.timestamp < 2**63
        ):
            problems.append("timestamp must be an int of epoch seconds")
        if self.event_id is not None and (not isinstance(self.event_id, str) or self.event_id == ""):
            problems.append("event_id must be a non-empty str or None")
        problems += [
            f"{name} must be None, an int or a non-empty str"
            for name in SMALL_FIELDS
            if not _optional(getattr(self, name))
        ]
        if self.category is not None:
            if isinstance(self.category, str) or not isinstance(self.category, Sequence):
                problems.append("category must be a sequence of raw ids (coarse to fine) or None")
            else:
                object.__setattr__(self, "category", tuple(self.category))
                if not all(_optional(v) for v in self.category):
                    problems.append("category levels must be None, ints or non-empty strs")
        if not isinstance(self.extra, Mapping) or not all(
            isinstance(k, str) and _optional(v) for k, v in self.extra.items()
        ):
            problems.append("extra must map field names to None, ints or non-empty strs")
        else:
            object.__setattr__(self, "extra", MappingProxyType(dict(self.extra)))
        if problems:
            raise ValueError(f"Event: {'; '.join(problems)}. Got {self!r} instead.")

    def raw(self) -> dict[str, Any]:
        """The event as a JSON-ready dict of its given fields (the log keeps it for compaction)."""
        out: dict[str, Any] = {"user": self.user, "item": self.item, "timestamp": self.timestamp}
        for name in ("event_id", *SMALL_FIELDS, "category"):
            value = getattr(self, name)
            if value is not None:
                out[name] = list(value) if name == "category" else value
        if self.extra:
            out["extra"] = dict(self.extra)
        return out


def _optional(value: Any) -> bool:
    return value is None or _is_raw_id(value)


@dataclass(frozen=True)
class AppendResult:
    """What one `append` call stored: every accepted event is durable when it returns."""

    accepted: int
    duplicates: int
    duplicate_ids: tuple[str, ...] = ()
    unknown: Mapping[str, int] = field(default_factory=dict, hash=False)  # out-of-vocabulary values per field


@dataclass(frozen=True)
class LogRow:
    """One event as a log stores it."""

    user: str  # the user's key (`EventEncoder.user_key`)
    dense_user: int  # 0 = unknown to the vocabulary
    event_id: str | None
    timestamp: int
    packed: bytes  # int64 [W] little-endian: timestamp, item, action, domain, scene, category [M], extra [E]
    raw: str  # the event as JSON, raw ids
    known: bool  # every given raw value (but the user's) is in the vocabulary


def packed_width(store: TrajectoryStore) -> int:
    """W: the int64 values a log stores per behaviour for this store (5 + M + E)."""
    return 5 + store.taxonomy_levels + len(store.manifest.get("extra_fields", []))


class EventEncoder:
    """Events -> log rows with the dense ids of one store's vocabulary (thread-safe).

    Args:
        store: the base store: its vocabularies, taxonomy depth, extra fields and item tables.
    """

    def __init__(self, store: TrajectoryStore) -> None:
        self.store = store
        self.taxonomy_levels = store.taxonomy_levels  # M
        self.extra_fields: tuple[str, ...] = tuple(store.manifest.get("extra_fields", []))  # E names
        self.width = packed_width(store)  # W
        self.unknown: dict[str, int] = {}  # out-of-vocabulary values per field since created
        self.vocabulary = Vocabulary(store)
        self.lock = threading.Lock()

    def vocab(self, name: str) -> IdLookup:
        """The lookup of one vocabulary (user_id, item_id, cat_1, ..., action, ...), built on first use."""
        return self.vocabulary.lookup(name)

    def user_key(self, user: RawId) -> tuple[str, int]:
        """The user's log key (the raw id cast to the vocabulary's type, as text) and dense id (0 = unknown)."""
        ids = self.vocab("user_id")
        cast = ids.cast(user)
        return str(user if cast is None else cast), int(ids.dense([user])[0])

    def check(self, events: list[Event], now: float, max_future_s: float) -> None:
        """Refuse the call (ValueError naming the event) before anything is stored; see the module rules."""
        M = self.taxonomy_levels
        for i, e in enumerate(events):
            where = f"append: event {i} (user {e.user!r}, event_id {e.event_id!r})"
            ahead = e.timestamp - now
            if ahead > max_future_s:
                raise ValueError(
                    f"{where}: timestamp {e.timestamp} is {ahead:,.0f} s ahead of the server clock ({now:.0f}); at "
                    f"most {max_future_s:g} s ahead is accepted. Check the sender's clock and the unit (epoch "
                    "seconds, not milliseconds). Nothing of this call was stored."
                )
            if e.category is not None and len(e.category) > M:
                raise ValueError(
                    f"{where}: category has {len(e.category)} levels; this store's taxonomy has {M}. Nothing of this "
                    "call was stored."
                )
            for name in e.extra:
                if name not in self.extra_fields:
                    close = difflib.get_close_matches(name, self.extra_fields, n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    known = ", ".join(self.extra_fields) or "none"
                    raise ValueError(
                        f"{where}: extra field {name!r} is not one of this store's extra fields ({known}){hint}. "
                        "Nothing of this call was stored."
                    )

    def encode(self, events: list[Event]) -> tuple[list[LogRow], dict[str, int]]:
        """Events -> log rows with dense ids of the base vocabulary, and the unknown values per field."""
        packed, known, unknown = self.pack(events)
        user_ids = self.vocab("user_id")
        dense_user = user_ids.dense([e.user for e in events])  # [n]
        rows = []
        for i, e in enumerate(events):
            cast = user_ids.cast(e.user)
            rows.append(
                LogRow(
                    user=str(e.user if cast is None else cast),
                    dense_user=int(dense_user[i]),
                    event_id=e.event_id,
                    timestamp=e.timestamp,
                    packed=packed[i].tobytes(),
                    raw=json.dumps(e.raw(), separators=(",", ":")),
                    known=bool(known[i]),
                )
            )
        return rows, unknown

    def pack(self, events: Sequence[Event]) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
        """Events -> packed dense rows [n, W] (what a log stores), whether each was fully known [n], and the unknown
        values per field (added to `self.unknown`). Scoring packs its candidates with it: no log row is built."""
        n, M = len(events), self.taxonomy_levels
        packed = np.zeros((n, self.width), "<i8")  # [n, W]
        packed[:, 0] = [e.timestamp for e in events]
        known = np.ones(n, bool)  # [n]
        unknown: dict[str, int] = {}

        def lookup(vocab: str, what: str, values: list[Any], rows: np.ndarray) -> np.ndarray:
            dense = self.vocab(vocab).dense(values)  # [r]
            missing = (dense == 0) & np.array([v is not None for v in values], bool)  # [r]
            if missing.any():
                unknown[what] = unknown.get(what, 0) + int(missing.sum())
                known[rows[missing]] = False
            return dense

        every = np.arange(n)
        item = lookup("item_id", "item", [e.item for e in events], every)  # [n]
        packed[:, 1] = item
        for column, name in enumerate(SMALL_FIELDS, start=2):
            if name in self.store.arrays:
                packed[:, column] = lookup(name, name, [getattr(e, name) for e in events], every)
        if M:
            packed[:, 5 : 5 + M] = self.store.item_category[item]  # [n, M] the item's path by default
            given = np.array([i for i, e in enumerate(events) if e.category is not None], np.int64)
            for m in range(M if given.size else 0):
                paths = [events[i].category or () for i in given]
                values = [path[m] if m < len(path) else None for path in paths]
                packed[given, 5 + m] = lookup(f"cat_{m + 1}", "category", values, given)
        if self.extra_fields:
            packed[:, 5 + M :] = self.store.item_extra[item]  # [n, E] the item's ids by default
            for j, name in enumerate(self.extra_fields):
                given = np.array([i for i, e in enumerate(events) if name in e.extra], np.int64)
                if given.size:
                    values = [events[i].extra[name] for i in given]
                    packed[given, 5 + M + j] = lookup(name, name, values, given)
        with self.lock:
            for name, count in unknown.items():
                self.unknown[name] = self.unknown.get(name, 0) + count
        return packed, known, unknown
