"""The history store's contract (`longrec.serve.history`), run against both backends: embedded SQLite and Redis."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch

from longrec.data.batch import HISTORY_FIELDS
from longrec.data.dataset import collate
from longrec.data.store import TrajectoryStore
from longrec.serve.history import Event, HistoryStore
from longrec.serve.history_redis import open_redis
from longrec.serve.history_sqlite import open_embedded
from tests.serve.conftest import history_log

NOW = 1_700_000_000  # the fake server clock; the log's behaviours end around 1_602_400_000
FIELDS = ("timestamp", "item", "category", "extra", "action", "domain", "scene")


class Clock:
    """An injectable server clock."""

    def __init__(self, now: float = NOW) -> None:
        self.now = float(now)

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["embedded", "redis"])
def open_history(
    request: pytest.FixtureRequest, history_store: Path, tmp_path: Path
) -> Iterator[Callable[..., HistoryStore]]:
    """Open a history over the test's one log (a fresh SQLite file, or a fresh Redis key prefix); closed after."""
    opened: list[HistoryStore] = []
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else ""
    prefix = f"test-{uuid.uuid4().hex[:12]}"

    def make(**options: Any) -> HistoryStore:
        options.setdefault("clock", Clock())
        if request.param == "embedded":
            history = open_embedded(history_store, log=tmp_path / "history.sqlite", **options)
        else:
            history = open_redis(history_store, redis_url, prefix=prefix, **options)
        opened.append(history)
        return history

    try:
        yield make
    finally:
        for history in opened:
            history.close()


def base_rows(history: HistoryStore, user: int) -> dict[str, np.ndarray]:
    """User `user`'s (raw id) whole base trajectory, every field int64."""
    _, dense = history.encoder.user_key(user)
    return {k: np.asarray(v, np.int64) for k, v in history.store.trajectory(dense).items()}


def event(user: Any, item: Any, timestamp: int, **fields: Any) -> Event:
    return Event(user=user, item=item, timestamp=timestamp, **fields)


def test_appended_behaviours_are_read_back_merged_with_the_base_in_time_order(
    open_history: Callable[..., HistoryStore],
) -> None:
    history = open_history()
    base = base_rows(history, 100)
    times = [int(base["timestamp"][0]) - 10, int(base["timestamp"][len(base["timestamp"]) // 2]) + 1, NOW - 5]
    result = history.append([event(100, 7, t, event_id=f"e{i}") for i, t in enumerate(times)])
    assert (result.accepted, result.duplicates) == (3, 0)
    h = history.history(100, limit=10_000)
    assert h.appended == 3 and len(h) == len(base["timestamp"]) + 3
    np.testing.assert_array_equal(h.timestamp, np.sort(np.concatenate([base["timestamp"], times])))
    assert h.item.dtype == np.int64 and h.category.shape == (len(h), 2) and h.extra.shape == (len(h), 1)
    replica = open_history()  # a second process's view of the same log
    np.testing.assert_array_equal(replica.history(100, limit=10_000).timestamp, h.timestamp)


def test_an_appended_copy_of_a_logged_behaviour_reads_exactly_like_it(
    open_history: Callable[..., HistoryStore],
) -> None:
    """Raw fields -> dense ids as `prepare` maps them: the taxonomy levels' offsets, extras, action/domain/scene."""
    history = open_history()
    stored = base_rows(history, 103)
    ids = stored["event_id"][:5].tolist()
    raw = {row["event_id"]: row for row in history_log().filter(pl.col("event_id").is_in(ids)).iter_rows(named=True)}
    events, bare = [], []
    for i, row in enumerate(raw[e] for e in ids):
        t = NOW - 1000 + i
        fields = {name: row[name] for name in ("action", "domain", "scene")}
        events.append(
            event(
                105, row["item_id"], t, category=(row["cat_1"], row["cat_2"]), extra={"brand": row["brand"]}, **fields
            )
        )
        bare.append(event(106, row["item_id"], t, **fields))  # path and brand from the item table
    history.append(events + bare)
    for user in (105, 106):
        got = history.history(user, limit=5, before=NOW)
        assert got.appended == 5
        for name in FIELDS[1:]:  # `make_log` derives the path (and brand) from the item: the table holds the same
            np.testing.assert_array_equal(getattr(got, name), stored[name][:5], err_msg=f"user {user}: {name}")


def test_a_repeated_event_id_is_a_duplicate_and_events_without_an_id_always_append(
    open_history: Callable[..., HistoryStore],
) -> None:
    history = open_history()
    first = history.append([event(100, 7, NOW - 9, event_id="a"), event(100, 14, NOW - 8, event_id="a")])
    assert (first.accepted, first.duplicates, first.duplicate_ids) == (1, 1, ("a",))
    again = history.append([event(100, 21, NOW - 7, event_id="a"), event(100, 21, NOW - 7), event(100, 21, NOW - 7)])
    assert (again.accepted, again.duplicates) == (2, 1)
    assert history.append([event(101, 7, NOW - 9, event_id="a")]).accepted == 1  # ids are per user
    assert history.append([event("100", 7, NOW - 9, event_id="a")]).duplicates == 1  # "100" is user 100
    h = history.history(100, limit=3, before=NOW)
    assert h.appended == 3 and h.item.tolist() == [1, 3, 3]  # raw 7, 21, 21 are dense 1, 3
    assert history.stats().appended_events == 4


def test_event_ids_are_forgotten_after_the_dedup_window(open_history: Callable[..., HistoryStore]) -> None:
    clock = Clock()
    history = open_history(clock=clock, dedup_window_s=60.0)
    assert history.append([event(100, 7, NOW - 1, event_id="a")]).accepted == 1
    clock.now += 59
    assert history.append([event(100, 7, NOW - 1, event_id="a")]).duplicates == 1
    clock.now += 2  # 61 s after the first acceptance
    assert history.append([event(100, 7, NOW - 1, event_id="a")]).accepted == 1


def test_out_of_order_events_take_their_place_and_ties_keep_arrival_order_after_the_base(
    open_history: Callable[..., HistoryStore],
) -> None:
    history = open_history()
    base = base_rows(history, 100)
    tie = int(base["timestamp"][3])
    history.append([event(100, 7, NOW - 1, event_id="late")])
    history.append([event(100, 14, tie, event_id="x"), event(100, 21, tie - 1)])
    history.append([event(100, 28, tie, event_id="y")])
    h = history.history(100, limit=10_000)
    at = np.flatnonzero(h.timestamp == tie)
    ties_in_base = int((base["timestamp"] == tie).sum())
    np.testing.assert_array_equal(h.item[at[:ties_in_base]], base["item"][base["timestamp"] == tie])
    assert h.item[at[ties_in_base:]].tolist() == [2, 4]  # raw 14 then 28, in arrival order
    assert h.item[at[0] - 1] == 3 and h.timestamp[at[0] - 1] == tie - 1 and h.item[-1] == 1
    assert np.all(np.diff(h.timestamp) >= 0)


def test_limit_keeps_the_newest_behaviours_strictly_before_the_cutoff(
    open_history: Callable[..., HistoryStore],
) -> None:
    history = open_history()
    base = base_rows(history, 102)
    rng = np.random.default_rng(0)
    times = rng.integers(int(base["timestamp"][0]) - 100, int(base["timestamp"][-1]) + 100, size=30)
    items = 7 * rng.integers(1, 61, size=30)  # raw ids
    for lo in range(0, 30, 7):  # in a few calls
        history.append(
            [event(102, int(i), int(t)) for i, t in zip(items[lo : lo + 7], times[lo : lo + 7], strict=True)]
        )
    whole = history.history(102, limit=10_000)
    # The reference order: by time, then base before log, then arrival.
    ts = np.concatenate([base["timestamp"], times])
    source = np.repeat([0, 1], [len(base["timestamp"]), 30])
    order = np.lexsort((np.arange(ts.size), source, ts))
    item = np.concatenate([base["item"], history.encoder.vocab("item_id").dense(items.tolist())])
    np.testing.assert_array_equal(whole.timestamp, ts[order])
    np.testing.assert_array_equal(whole.item, item[order])
    for limit in (1, 5, 40):
        for before in (None, int(times[0]), int(base["timestamp"][10]), int(base["timestamp"][0])):
            h = history.history(102, limit=limit, before=before)
            keep = whole.timestamp < (before if before is not None else NOW)
            expected = np.flatnonzero(keep)[-limit:]
            for name in FIELDS:
                np.testing.assert_array_equal(getattr(h, name), getattr(whole, name)[expected])


def test_a_timestamp_too_far_in_the_future_refuses_the_whole_call(open_history: Callable[..., HistoryStore]) -> None:
    history = open_history(max_future_s=300.0)
    with pytest.raises(ValueError, match=r"event 1 \(user 100, event_id 'b'\): timestamp .* 301 s ahead of the server"):
        history.append([event(100, 7, NOW, event_id="a"), event(100, 7, NOW + 301, event_id="b")])
    assert history.stats().appended_events == 0
    assert history.append([event(100, 7, NOW + 300, event_id="a")]).accepted == 1  # within the tolerance
    assert history.history(100, limit=1).timestamp.tolist() == [NOW + 300]
    assert history.history(100, limit=1, before=NOW).appended == 0


def test_unknown_users_and_values_are_kept_as_out_of_vocabulary(open_history: Callable[..., HistoryStore]) -> None:
    history = open_history()
    assert len(history.history("nobody", limit=10)) == 0 and history.history("nobody", limit=10).user == 0
    result = history.append(
        [
            event("nobody", 999_999, NOW - 3, category=(1, 1008), action="view"),
            event("nobody", 999_999, NOW - 2, action="teleport", extra={"brand": "acme"}),
            event("nobody", 7, NOW - 1, category=(1, "unknown level")),
        ]
    )
    assert result.accepted == 3 and dict(result.unknown) == {"item": 2, "action": 1, "brand": 1, "category": 1}
    h = history.history("nobody", limit=10)
    assert h.user == 0 and h.item.tolist() == [0, 0, 1]
    cat_1 = history.encoder.vocab("cat_1").dense([1])[0]
    cat_2 = history.encoder.vocab("cat_2").dense([1008])[0]
    assert h.category.tolist() == [[cat_1, cat_2], [0, 0], [cat_1, 0]]  # the unknown item's path is kept
    assert h.action.tolist()[:2] == [history.encoder.vocab("action").dense(["view"])[0], 0]  # type: ignore[union-attr]
    assert h.extra.tolist()[:2] == [[0], [0]]
    assert history.stats().unknown["item"] == 2


def test_history_to_batch_equals_collate_on_the_base_store(open_history: Callable[..., HistoryStore]) -> None:
    history = open_history()
    store = history.store
    users = history.store.vocab("user_id").to_list()
    for split, max_history in (("test", 16), ("valid", 1000)):
        samples = store.samples(split)
        for i in range(0, len(samples), 7):
            expected = collate(store, samples, np.array([i]), max_history)
            cutoff = int(samples.target_time[i])
            h = history.history(users[int(samples.user[i]) - 1], limit=max_history, before=cutoff)
            got = history.to_batch(h, cutoff=cutoff)
            for name in (*HISTORY_FIELDS, "target_time", "user"):
                assert torch.equal(getattr(got, name), getattr(expected, name)), (split, i, name)
            assert got.label is None


def test_to_batch_refuses_a_behaviour_at_or_after_the_cutoff(open_history: Callable[..., HistoryStore]) -> None:
    history = open_history()
    h = history.history(100, limit=5)
    assert history.to_batch(h).history_time_delta.min() == 1  # type: ignore[union-attr]
    with pytest.raises(ValueError, match=r"not before the cutoff .*read it with history\(user, limit, before="):
        history.to_batch(h, cutoff=int(h.timestamp[-1]))
    empty = history.to_batch(history.history("nobody", limit=5), cutoff=NOW)
    assert empty.history.shape == (1, 1) and not empty.history_mask.any()


def test_bad_events_and_arguments_are_refused_with_what_was_expected(
    open_history: Callable[..., HistoryStore],
) -> None:
    with pytest.raises(ValueError, match=r"timestamp must be an int of epoch seconds"):
        event(100, 7, 1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"user must be an int or a non-empty str"):
        event(None, 7, 1)
    history = open_history()
    with pytest.raises(ValueError, match=r"extra field 'brnd' is not one of this store's extra fields \(brand\) "):
        history.append([event(100, 7, NOW, extra={"brnd": "x"})])
    with pytest.raises(ValueError, match=r"category has 3 levels; this store's taxonomy has 2"):
        history.append([event(100, 7, NOW, category=(1, 2, 3))])
    with pytest.raises(TypeError, match=r"element 0 must be an Event. Got dict instead"):
        history.append([{"user": 100}])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"limit must be an int >= 1. Got 0 instead"):
        history.history(100, limit=0)
    assert history.stats().appended_events == 0


def test_concurrent_appends_and_reads_lose_and_duplicate_nothing(open_history: Callable[..., HistoryStore]) -> None:
    history = open_history()
    base = len(base_rows(history, 101)["timestamp"])
    threads_n, calls, per_call = 4, 8, 3
    errors: list[BaseException] = []
    done = threading.Event()

    def writer(w: int) -> None:
        try:
            for c in range(calls):  # every id is sent by two writers: one of them stores it
                ids = [(w // 2) * 1000 + c * per_call + j for j in range(per_call)]
                history.append([event(101, 7, NOW - 10_000 + i, event_id=str(i)) for i in ids])
        except BaseException as err:
            errors.append(err)

    def reader() -> None:
        try:
            while not done.is_set():
                h = history.history(101, limit=10_000)
                assert np.all(np.diff(h.timestamp) >= 0)
                assert h.appended == 0 or len(np.unique(h.timestamp[-h.appended :])) == h.appended
        except BaseException as err:
            errors.append(err)

    workers = [threading.Thread(target=writer, args=(w,)) for w in range(threads_n)]
    readers = [threading.Thread(target=reader) for _ in range(2)]
    for t in workers + readers:
        t.start()
    for t in workers:
        t.join(timeout=60)
    done.set()
    for t in readers:
        t.join(timeout=60)
    assert not errors, errors
    h = history.history(101, limit=10_000)
    expected = sorted(
        NOW - 10_000 + (w // 2) * 1000 + i for w in range(0, threads_n, 2) for i in range(calls * per_call)
    )
    assert h.timestamp[base:].tolist() == expected
    assert history.stats().appended_events == len(expected)


def test_stats_count_the_base_and_the_log(open_history: Callable[..., HistoryStore], history_store: Path) -> None:
    history = open_history()
    store = TrajectoryStore.open(history_store)
    history.append([event(100, 7, NOW - 2), event("new", 7, NOW - 1)])
    stats = history.stats()
    assert (stats.users, stats.base_behaviours) == (store.manifest["counts"]["users"], int(store.offsets[-1]))
    assert (stats.appended_events, stats.appended_users) == (2, 2) and stats.log_bytes > 0
