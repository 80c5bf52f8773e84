"""A per-user state cache for models whose user side is computed once per user (VISTA, VQL: the `CachedUserState`
capability of `longrec.models.contract`).

Such a model splits its forward in two:
- `model.user_state(batch) -> [B, ...]` reads only history fields (VISTA's S summaries [B, S, E]);
- `model.score_with_state(state, batch) -> [B]` reads only target fields and the state, at a cost independent of L;
and `forward(batch) == score_with_state(user_state(batch), batch)`. Serving caches the user side between requests:

    cache = UserStateCache(capacity=100_000, max_age_s=3600.0, refresh_after_new=8)
    state = cache.state_for(model, batch, version="vista-2024-06-01", now=time.time())  # [B, S, E]
    logits = model.score_with_state(state, batch)  # [B]

**Keys** are (user id, model version): a new model version never reads an old version's states, and two versions
served side by side (an A/B test) keep their own entries; a retired version's entries age out by LRU, or
`invalidate(version)` drops them at once. **Refresh policy**: a cached state is recomputed when it is older than
`max_age_s` (wall time passed in by the caller, never read here, so tests control the clock), or when the user's
history gained at least `refresh_after_new` behaviours since it was computed; None turns a rule off. New behaviours are
counted by timestamp when the batch has `target_time` and `history_time_delta` (behaviour time = target_time - delta;
behaviours more than 1 s, plus float32 rounding, after the newest one the state saw), else as the growth in the number
of real behaviours, which stops at the padded length L. Without any rule a state is reused until evicted or
invalidated. **Never a newer history**: a request is not served a state computed from a history newer than its
own (one whose newest behaviour is more than 1 s, plus float32 rounding, after the request's, or as recent with more
real behaviours), which would leak behaviours the request does not hold into its score: it gets a state computed from
its own history, and `put` keeps the newer entry rather than replace it with an older one. Without timestamps
"newer" is "more real behaviours", which stops at the padded length L. **Eviction**: least recently used, at
`capacity` users × versions.

**Layout and cost.** The cache trusts the `Batch` layout (`longrec.data.batch`) and does not check it: histories are
left-padded (the real behaviours of a row are its last `length` columns; `collate` pads on the left and
`longrec.search.one_user_request` views one such row) and in chronological order, oldest first, so column L - 1 is
the newest behaviour and `history_time_delta` does not increase along the real columns (`prepare` sorts each
trajectory by timestamp). The behaviours newer than a cached state are therefore the last columns of the row, and at
least `refresh_after_new` = R of them are new exactly when column L - R is a real behaviour newer than the state's
newest. A lookup reads columns L - 1 and L - R and binary-searches the mask for the length: O(log L) per user, not O(L).

**Threads.** Every public method may be called from many threads at once: one lock guards the entries and the
counters, and it is never held while a model runs, so concurrent misses of different users compute in parallel.
Two concurrent misses of one user may both compute; the entry left is the one from the newer history (the later
`put` on a tie), and each request is served the state it computed. The counters are plain attributes updated under
the lock: their sums are exact once no call is in flight.

A state is computed from one history, so every row of one user in a batch must carry the same history (a serving
batch: one user, C candidates); `put` and `state_for` reject a batch whose rows of one user disagree. Counters count
distinct users per lookup, and `hits + misses + refreshes` is the number of lookups: `hits` (fresh entry), `misses`
(no entry for this user and version, or only one computed from a newer history than the request's), `refreshes` (an
entry that was too old or behind the history) and `evictions`. States are stored detached, on the device they were
computed on; the cache is in-process (a dict of tensors), for inference only (no gradient flows through it).

Shapes: B batch, L history length, S summary tokens, E state width, U distinct users in a batch.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor

from longrec.data.batch import Batch
from longrec.models.contract import CachedUserState
from longrec.search import shares_one_history

__all__ = ["UserStateCache"]


# float32 deltas of up to years round by a few seconds: two behaviour times differ when they are more than 1 s plus
# 2^-22 of their deltas apart.
_ROUNDING_PER_SECOND = 2.0**-22


@dataclass(frozen=True)
class _Entry:
    state: Tensor  # [...] one user's state, e.g. [S, E]
    computed_at: float  # the caller's wall time when it was computed
    length: int  # real behaviours in the history it was computed from
    newest: float | None  # epoch seconds of that history's most recent behaviour; None without timestamps
    newest_delta: float  # that behaviour's history_time_delta (its rounding grows with it); 0 without timestamps


@dataclass(frozen=True)
class _History:
    """What a lookup reads of one row's history: columns L - 1 and L - R and the length, in O(log L)."""

    length: int  # real behaviours
    timed: bool  # the batch has target_time and history_time_delta
    newest: float | None  # epoch seconds of column L - 1; None when not timed or without behaviours
    newest_delta: float  # its history_time_delta; 0 when newest is None
    recent: float | None  # epoch seconds of column L - R, the R-th newest; None when not timed, R > L or padding
    recent_delta: float  # its history_time_delta; 0 when recent is None


def _rows(batch: Batch, rows: Tensor) -> Batch:
    return Batch(**{name: value[rows] for name, value in batch.fields().items()})


def _newer(entry: _Entry, history: _History) -> bool:
    """Whether `entry` was computed from a newer history than `history`, one with behaviours `history` lacks."""
    if entry.newest is not None and history.newest is not None:
        tolerance = 1.0 + (entry.newest_delta + history.newest_delta) * _ROUNDING_PER_SECOND
        if abs(entry.newest - history.newest) > tolerance:
            return entry.newest > history.newest
    return entry.length > history.length  # as new (or untimed): the one with more behaviours


class UserStateCache:
    """LRU cache of per-user model states keyed by (user id, model version), with an age / new-behaviour refresh.

    Safe to share between threads (see the module docstring).

    Args:
        capacity: the most entries kept (users × versions); the least recently used goes first.
        max_age_s: recompute a state older than this many seconds of the caller's clock; None = no age limit.
        refresh_after_new: recompute a state once its user's history has this many behaviours more; None = never.
    """

    def __init__(self, capacity: int, max_age_s: float | None = None, refresh_after_new: int | None = None) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"UserStateCache.capacity must be a positive int. Got {capacity!r} instead.")
        if max_age_s is not None and (
            isinstance(max_age_s, bool) or not isinstance(max_age_s, int | float) or not max_age_s >= 0
        ):
            raise ValueError(f"UserStateCache.max_age_s must be a float >= 0 or None. Got {max_age_s!r} instead.")
        if refresh_after_new is not None and (
            isinstance(refresh_after_new, bool) or not isinstance(refresh_after_new, int) or refresh_after_new < 1
        ):
            raise ValueError(
                f"UserStateCache.refresh_after_new must be a positive int or None. Got {refresh_after_new!r} instead."
            )
        self.capacity, self.max_age_s, self.refresh_after_new = capacity, max_age_s, refresh_after_new
        self._entries: OrderedDict[tuple[int, str], _Entry] = OrderedDict()
        self._lock = threading.Lock()  # guards _entries and the counters; never held while a model runs
        self.hits = self.misses = self.refreshes = self.evictions = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, key: tuple[int, str]) -> bool:
        with self._lock:
            return key in self._entries

    def invalidate(self, version: str | None = None) -> int:
        """Drop every entry of `version` (every entry when None); return how many were dropped."""
        with self._lock:
            keys = [k for k in self._entries if version is None or k[1] == version]
            for key in keys:
                del self._entries[key]
        return len(keys)

    def get(self, batch: Batch, version: str, now: float) -> tuple[Tensor | None, Tensor]:
        """Look up the fresh cached states of the batch's users (updates the counters and the LRU order).

        A state computed from a newer history than a row's is not fresh for that row (counted as a miss).

        Args:
            batch: reads `user` [B] and the history fields the refresh policy needs (mask, target_time, time delta).
            version: the model version the states must come from.
            now: the caller's wall time, in seconds.

        Returns:
            states [B, ...] (zeros in the rows that are not fresh; None when no row is) and fresh [B] bool.
        """
        users = self._users(batch)
        first = self._first_rows(users)  # user -> first row
        histories = self._read_histories(batch, list(first.values()))
        found: dict[int, Tensor] = {}
        with self._lock:
            for user, history in zip(first, histories, strict=True):
                entry = self._entries.get((user, version))
                if entry is None or _newer(entry, history):
                    self.misses += 1
                elif self._is_stale(entry, history, now):
                    self.refreshes += 1
                else:
                    self.hits += 1
                    self._entries.move_to_end((user, version))
                    found[user] = entry.state
        fresh = torch.tensor([u in found for u in users], dtype=torch.bool)  # [B]
        if not found:
            return None, fresh
        table = list(found.values())  # U fresh states
        slot = {u: i for i, u in enumerate(found)}
        stacked = torch.stack([*table, torch.zeros_like(table[0])])  # [U + 1, ...], the last row stands in for misses
        index = torch.tensor([slot.get(u, len(table)) for u in users], device=stacked.device)  # [B]
        return stacked[index], fresh.to(stacked.device)  # [B, ...], [B]

    def put(self, batch: Batch, states: Tensor, version: str, now: float) -> None:
        """Store states [B, ...] (one per row; the first row of each user is kept) computed at wall time `now`.

        An entry computed from a newer history than the row's stays: an older history never replaces a newer one.

        Raises:
            ValueError: no `batch.user`, a states/batch size mismatch, or rows of one user with different histories.
        """
        users = self._users(batch)
        if states.shape[0] != len(users):
            raise ValueError(
                f"UserStateCache.put: states must have one row per example, [B, ...] = [{len(users)}, ...]. "
                f"Got {list(states.shape)} instead."
            )
        self._check_one_history_per_user(batch, users)
        first = self._first_rows(users)
        histories = self._read_histories(batch, list(first.values()))
        entries = {
            user: (_Entry(states[b].detach().clone(), now, h.length, h.newest, h.newest_delta), h)
            for (user, b), h in zip(first.items(), histories, strict=True)
        }
        with self._lock:
            for user, (entry, history) in entries.items():
                held = self._entries.get((user, version))
                if held is not None and _newer(held, history):
                    continue
                self._entries[(user, version)] = entry
                self._entries.move_to_end((user, version))
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
                self.evictions += 1

    def state_for(self, model: CachedUserState, batch: Batch, version: str, now: float) -> Tensor:
        """The user states of the batch [B, ...]: cached where fresh, computed (once per user) and cached elsewhere.

        Only the missing or stale users' histories go through `model.user_state`, as one sub-batch, without gradient
        and without holding the cache's lock. A row whose cached state comes from a newer history than its own gets a
        state computed from its own history.

        Args:
            model: has `user_state(batch) -> [B, ...]`.
            batch: a serving batch: `user` [B] set, and one history per user.
            version: the model version (part of the key).
            now: the caller's wall time, in seconds.

        Returns:
            [B, ...] states in batch order, e.g. VISTA's summaries [B, S, E] for `model.score_with_state`. For a
            one-user request (`longrec.search.one_user_request`: the C rows view one history) the user is looked up
            once and the state is returned as a view expanded over the C rows.
        """
        users = self._users(batch)
        if shares_one_history(batch) and len(set(users)) == 1:  # one user, C candidates (`one_user_request`)
            one = Batch(**{name: value[:1] for name, value in batch.fields().items()})  # [1, L] views, no copy
            state = self.state_for(model, one, version, now)  # [1, ...]: O(log L) bookkeeping, not O(C·L)
            return state.expand(len(users), *state.shape[1:])  # [B, ...] a view
        self._check_one_history_per_user(batch, users)
        cached, fresh = self.get(batch, version, now)  # [B, ...] or None, [B]
        first = self._first_rows(users)
        todo = [b for u, b in first.items() if not bool(fresh[b])]  # one row per user to compute
        if not todo:
            assert cached is not None  # every row is fresh
            return cached
        sub = _rows(batch, torch.tensor(todo, device=batch.history.device))
        with torch.no_grad():
            computed = model.user_state(sub)  # [R, ...]
        self.put(sub, computed, version, now)
        slot = {users[b]: i for i, b in enumerate(todo)}
        rows = [b for b, u in enumerate(users) if u in slot]  # rows served from `computed`
        index = torch.tensor([slot[users[b]] for b in rows], device=computed.device)  # [B - fresh]
        out = computed.new_zeros((len(users), *computed.shape[1:])) if cached is None else cached.clone()  # [B, ...]
        out[torch.tensor(rows, device=out.device)] = computed[index]  # [B, ...]
        return out

    def _is_stale(self, entry: _Entry, history: _History, now: float) -> bool:
        if self.max_age_s is not None and now - entry.computed_at > self.max_age_s:
            return True
        if self.refresh_after_new is None:
            return False
        if entry.newest is not None and history.timed:
            # The new behaviours are the row's last columns (time-sorted), so at least R are new iff the R-th newest
            # is: a behaviour more than 1 s plus its float32 rounding after the newest one the state saw.
            slack = 1.0 + history.recent_delta * _ROUNDING_PER_SECOND
            return history.recent is not None and history.recent > entry.newest + slack
        return history.length - entry.length >= self.refresh_after_new

    def _read_histories(self, batch: Batch, rows: list[int]) -> list[_History]:
        """What the refresh policy reads of `rows`' histories: columns L - 1 and L - R, and the length, O(log L)."""
        L = batch.history.shape[1]
        one = torch.ones(1, 1, dtype=torch.uint8, device=batch.history_mask.device)
        # Left padding: a mask row is False...False True...True, so bisection finds its first real column.
        lengths = [
            L - int(torch.searchsorted(batch.history_mask[b : b + 1].contiguous().view(torch.uint8), one)) for b in rows
        ]
        mask, deltas, target_time = batch.history_mask, batch.history_time_delta, batch.target_time
        if L == 0 or deltas is None or target_time is None:
            return [_History(n, False, None, 0.0, None, 0.0) for n in lengths]

        def column(j: int) -> tuple[list[float | None], list[float]]:
            """Epoch seconds of column j in each of `rows` (None on padding), and its delta (0 on padding)."""
            delta = deltas[:, j].double()  # [B]
            time, real, seconds = (target_time.double() - delta).tolist(), mask[:, j].tolist(), delta.tolist()
            return [time[b] if real[b] else None for b in rows], [seconds[b] if real[b] else 0.0 for b in rows]

        newest, newest_delta = column(L - 1)
        R = self.refresh_after_new
        recent, recent_delta = column(L - R) if R is not None and R <= L else ([None] * len(rows), [0.0] * len(rows))
        columns = zip(lengths, newest, newest_delta, recent, recent_delta, strict=True)
        return [_History(n, True, t, dt, r, dr) for n, t, dt, r, dr in columns]

    @staticmethod
    def _users(batch: Batch) -> list[int]:
        if batch.user is None:
            raise ValueError(
                "UserStateCache reads batch.user [B] (dense user ids) to key its entries, but it is None. "
                "Build the serving batch with the requesting user's id."
            )
        return [int(u) for u in batch.user.tolist()]

    @staticmethod
    def _first_rows(users: list[int]) -> dict[int, int]:
        first: dict[int, int] = {}
        for b, user in enumerate(users):
            first.setdefault(user, b)
        return first

    def _check_one_history_per_user(self, batch: Batch, users: list[int]) -> None:
        first = self._first_rows(users)
        if len(first) == len(users):  # no user has two rows: nothing to compare (and a lookup stays O(log L))
            return
        index = torch.tensor([first[u] for u in users], device=batch.history.device)  # [B], each row's first row
        differs = (batch.history != batch.history[index]).any(1) | (
            batch.history_mask != batch.history_mask[index]
        ).any(1)  # [B]
        if bool(differs.any()):
            b = int(differs.nonzero()[0])
            raise ValueError(
                f"batch rows {int(index[b])} and {b} both belong to user {users[b]} but carry different histories; "
                "a user-state cache serves one history per user (a serving batch: one user, C candidates)."
            )
