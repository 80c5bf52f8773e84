import random
import threading

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from longrec.data.batch import Batch
from longrec.models import build_model
from longrec.search import one_user_request
from longrec.serve.cache import UserStateCache

L, EVENTS, USERS = 12, 20, 4
T0 = 1_700_000_000  # epoch seconds of the first event


def event_log(seed: int = 0, users: int = USERS, events: int = EVENTS) -> dict[str, torch.Tensor]:
    """Each user's trajectory: `events` behaviours with items, a 2-level category path and increasing timestamps."""
    g = torch.Generator().manual_seed(seed)
    item = torch.randint(1, 50, (users, events), generator=g)  # [U, EVENTS]
    category = torch.stack([item % 5 + 1, item % 13 + 6], dim=-1)  # [U, EVENTS, 2]
    time = T0 + torch.randint(60, 4000, (users, events), generator=g).cumsum(1)  # [U, EVENTS] int64
    return {"item": item, "category": category, "time": time}


LOG = event_log()


def serving_batch(
    counts: list[int], users: list[int] | None = None, timestamps: bool = True, log: dict[str, torch.Tensor] = LOG
) -> Batch:
    """One row per user (or per entry of `users`): the user's first counts[u] events, the last L of them, left-padded,
    scored against a target at one second after the newest event plus an hour."""
    users = list(range(len(counts))) if users is None else users
    B = len(users)
    history = torch.zeros(B, L, dtype=torch.long)
    category = torch.zeros(B, L, 2, dtype=torch.long)
    delta = torch.zeros(B, L)
    target_time = torch.zeros(B, dtype=torch.long)
    for b, u in enumerate(users):
        n = counts[u]
        keep = slice(max(n - L, 0), n)
        k = keep.stop - keep.start
        now = int(log["time"][u, n - 1]) + 3600 if n else T0
        history[b, L - k :] = log["item"][u, keep]
        category[b, L - k :] = log["category"][u, keep]
        delta[b, L - k :] = (now - log["time"][u, keep]).float()
        target_time[b] = now
    mask = history != 0
    return Batch(
        history=history,
        history_mask=mask,
        target=torch.arange(1, B + 1) * 3 % 49 + 1,
        history_category=category,
        target_category=torch.stack([torch.arange(B) % 5 + 1, torch.arange(B) % 13 + 6], dim=-1),
        history_time_delta=delta,
        history_position=mask.flip(1).cumsum(1).flip(1) * mask,
        target_time=target_time if timestamps else None,
        user=torch.tensor(users),
    )


def vista(attention: str = "softmax", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("vista", num_items=50, num_categories=20, taxonomy_levels=2, dim=8, attention=attention).eval()


class Counting:
    """Wraps a model and records how many rows each `user_state` call computes."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.calls = model, []

    def user_state(self, batch: Batch) -> torch.Tensor:
        self.calls.append(len(batch))
        return self.model.user_state(batch)


@pytest.mark.parametrize("attention", ["softmax", "silu"])
def test_scoring_from_the_cache_equals_recomputing(attention: str) -> None:
    model, batch = vista(attention), serving_batch([20, 7, 0, 3])
    cache = UserStateCache(capacity=10)
    expected = model(batch)
    with torch.no_grad():
        first = model.score_with_state(cache.state_for(model, batch, "v1", now=0.0), batch)
        second = model.score_with_state(cache.state_for(model, batch, "v1", now=1.0), batch)
    torch.testing.assert_close(first, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    assert (cache.misses, cache.hits, cache.refreshes, len(cache)) == (4, 4, 0, 4)


def test_only_missing_users_are_computed_as_one_sub_batch() -> None:
    model, batch = vista(), serving_batch([20, 7, 0, 3])
    counting, cache = Counting(model), UserStateCache(capacity=10)
    cache.state_for(counting, serving_batch([20, 7, 0, 3], users=[1, 3]), "v1", now=0.0)
    state = cache.state_for(counting, batch, "v1", now=0.0)
    assert counting.calls == [2, 2]
    with torch.no_grad():
        torch.testing.assert_close(model.score_with_state(state, batch), model(batch), rtol=1e-6, atol=1e-6)


def test_get_returns_the_fresh_rows_and_none_when_nothing_is_cached() -> None:
    model, batch = vista(), serving_batch([20, 7, 0, 3])
    cache = UserStateCache(capacity=10)
    states, fresh = cache.get(batch, "v1", now=0.0)
    assert states is None and not fresh.any()
    cache.put(batch, model.user_state(batch)[:, :2], "v1", now=0.0)  # any per-user tensor; here [B, 2, E]
    states, fresh = cache.get(serving_batch([20, 7, 0, 3], users=[2, 0, 0]), "v1", now=0.0)
    assert fresh.all() and states.shape == (3, 2, 24)
    torch.testing.assert_close(states[1], model.user_state(batch)[0, :2], rtol=0, atol=0)


def test_a_new_model_version_does_not_read_the_old_states() -> None:
    old, new, batch = vista(seed=0), vista(seed=1), serving_batch([20, 7, 0, 3])
    cache = UserStateCache(capacity=10)
    cache.state_for(old, batch, "v1", now=0.0)
    state = cache.state_for(new, batch, "v2", now=0.0)
    assert cache.misses == 8 and cache.hits == 0 and len(cache) == 8  # v1 and v2 side by side (an A/B test)
    with torch.no_grad():
        torch.testing.assert_close(new.score_with_state(state, batch), new(batch), rtol=1e-6, atol=1e-6)
    assert cache.invalidate("v1") == 4 and len(cache) == 4 and (0, "v2") in cache and (0, "v1") not in cache


def test_states_older_than_max_age_are_recomputed() -> None:
    counting, batch = Counting(vista()), serving_batch([20, 7, 0, 3])
    cache = UserStateCache(capacity=10, max_age_s=60.0)
    cache.state_for(counting, batch, "v1", now=1000.0)
    cache.state_for(counting, batch, "v1", now=1060.0)  # exactly max_age_s old: still fresh
    cache.state_for(counting, batch, "v1", now=1061.0)
    assert counting.calls == [4, 4] and (cache.misses, cache.hits, cache.refreshes) == (4, 4, 4)
    cache.state_for(counting, batch, "v1", now=1100.0)  # the refreshed states are new again
    assert counting.calls == [4, 4]


@pytest.mark.parametrize("timestamps", [True, False])
def test_states_are_recomputed_after_enough_new_behaviours(timestamps: bool) -> None:
    # Users 0 and 1 have 5 and 9 events; without timestamps the growth is counted as the history length, which
    # grows until L = 12.
    counting = Counting(vista())
    cache = UserStateCache(capacity=10, refresh_after_new=2)
    cache.state_for(counting, serving_batch([5, 9], timestamps=timestamps), "v1", now=0.0)
    cache.state_for(counting, serving_batch([6, 10], timestamps=timestamps), "v1", now=0.0)  # 1 new each: fresh
    assert counting.calls == [2] and cache.hits == 2
    cache.state_for(counting, serving_batch([7, 10], timestamps=timestamps), "v1", now=0.0)  # user 0: 2 new
    assert counting.calls == [2, 1] and cache.refreshes == 1


def test_new_behaviours_are_counted_by_timestamp_past_the_padded_length() -> None:
    # Histories of 15 and 18 events are cut to the last L = 12: their length no longer grows, their timestamps do.
    counting = Counting(vista())
    cache = UserStateCache(capacity=10, refresh_after_new=3)
    cache.state_for(counting, serving_batch([15, 15]), "v1", now=0.0)
    cache.state_for(counting, serving_batch([17, 18]), "v1", now=0.0)
    assert counting.calls == [2, 1] and (cache.hits, cache.refreshes) == (1, 1)


def test_least_recently_used_users_are_evicted_at_capacity() -> None:
    model, batch = vista(), serving_batch([20, 7, 0, 3])
    cache = UserStateCache(capacity=2)
    cache.state_for(model, serving_batch([20, 7, 0, 3], users=[0, 1]), "v1", now=0.0)
    cache.state_for(model, serving_batch([20, 7, 0, 3], users=[0]), "v1", now=0.0)  # user 0 is now the most recent
    cache.state_for(model, serving_batch([20, 7, 0, 3], users=[2]), "v1", now=0.0)
    assert (0, "v1") in cache and (2, "v1") in cache and (1, "v1") not in cache
    assert len(cache) == 2 and cache.evictions == 1
    with torch.no_grad():  # more distinct users than capacity in one call still returns every state
        state = cache.state_for(model, batch, "v1", now=0.0)
        torch.testing.assert_close(model.score_with_state(state, batch), model(batch), rtol=1e-6, atol=1e-6)
    assert len(cache) == 2


def test_a_batch_with_one_user_and_several_candidates_computes_the_user_once() -> None:
    model = vista()
    batch = serving_batch([20, 7, 0, 3], users=[1, 1, 1, 3, 1])  # user 1 scores 4 candidates, user 3 one
    counting, cache = Counting(model), UserStateCache(capacity=10)
    state = cache.state_for(counting, batch, "v1", now=0.0)
    assert counting.calls == [2] and cache.misses == 2 and len(cache) == 2
    with torch.no_grad():
        torch.testing.assert_close(model.score_with_state(state, batch), model(batch), rtol=1e-6, atol=1e-6)
    cache.state_for(counting, batch, "v1", now=0.0)
    assert counting.calls == [2] and cache.hits == 2  # counted once per distinct user


def test_rows_of_one_user_with_different_histories_are_rejected() -> None:
    batch = serving_batch([20, 7, 0, 3])
    mixed = batch.replace(user=torch.tensor([0, 1, 0, 2]))
    with pytest.raises(ValueError, match=r"batch rows 0 and 2 both belong to user 0 but carry different histories"):
        UserStateCache(capacity=10).state_for(vista(), mixed, "v1", now=0.0)


def test_bad_arguments_are_reported() -> None:
    with pytest.raises(ValueError, match=r"UserStateCache\.capacity must be a positive int\. Got 0 instead\."):
        UserStateCache(capacity=0)
    with pytest.raises(ValueError, match=r"UserStateCache\.max_age_s must be a float >= 0 or None\. Got -1\.0"):
        UserStateCache(capacity=1, max_age_s=-1.0)
    with pytest.raises(ValueError, match=r"UserStateCache\.refresh_after_new must be a positive int or None\. Got 0"):
        UserStateCache(capacity=1, refresh_after_new=0)
    with pytest.raises(ValueError, match=r"UserStateCache reads batch\.user \[B\] .*but it is None"):
        UserStateCache(capacity=1).state_for(vista(), serving_batch([3]).replace(user=None), "v1", now=0.0)


def test_a_one_user_request_is_looked_up_once_and_scores_like_recomputing() -> None:
    model = vista()
    counting, cache = Counting(model), UserStateCache(capacity=10)
    candidates = {"target": torch.arange(1, 31), "target_category": torch.stack([torch.arange(30) % 5 + 1] * 2, -1)}
    request = one_user_request(serving_batch([20]), candidates)  # user 0 against 30 candidates, one history
    state = cache.state_for(counting, request, "v1", now=0.0)
    assert state.shape[0] == 30 and state.stride(0) == 0, "one state, viewed by the 30 candidates"
    again = cache.state_for(counting, request, "v1", now=1.0)
    assert counting.calls == [1] and (cache.misses, cache.hits, len(cache)) == (1, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model.score_with_state(again, request), model(request), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("refresh_after_new", [1, 3])
def test_threads_sharing_a_cache_get_states_of_their_own_history_or_an_accepted_older_one(
    refresh_after_new: int,
) -> None:
    # 8 threads serve 24 users whose histories grow while they are served; a request may lag its user's newest history
    # by up to 2 behaviours (a slow request), so the cache often holds a state newer than the request. Every state
    # served must be the uncached state of the request's own history or of an older one that the refresh policy
    # accepts (fewer than `refresh_after_new` behaviours behind), never of a newer one.
    users, events, threads, rounds, capacity = 24, 30, 8, 40, 8
    log, model = event_log(seed=1, users=users, events=events), vista()
    reference = []  # reference[u][n - 1]: the state of user u's first n events, computed without the cache
    with torch.no_grad():
        for u in range(users):
            rows = [serving_batch([n] * users, [u], log=log).fields() for n in range(1, events + 1)]
            reference.append(model.user_state(Batch(**{k: torch.cat([r[k] for r in rows]) for k in rows[0]})))
    cache = UserStateCache(capacity=capacity, refresh_after_new=refresh_after_new)
    frontier = [1] * users  # each user's newest history so far (events seen)
    failures: list[tuple[str, str]] = []  # (kind, what happened)
    lookups = [0] * threads
    start = threading.Barrier(threads)

    def serve(worker: int) -> None:
        rng = random.Random(worker)
        start.wait()
        for _ in range(rounds):
            chosen = rng.sample(range(users), rng.choice([1, 1, 2, 3]))
            counts = [0] * users
            for u in chosen:
                if rng.random() < 0.5:
                    frontier[u] = min(frontier[u] + 1, events)  # the user acted
                counts[u] = max(1, frontier[u] - rng.randint(0, 2))
            if len(chosen) == 1 and rng.random() < 0.5:  # one user against 5 candidates, one history
                candidates = {"target": torch.arange(1, 6), "target_category": torch.tensor([[1, 6]] * 5)}
                batch = one_user_request(serving_batch(counts, chosen, log=log), candidates)
            else:  # a collated batch; the first user's row twice
                batch = serving_batch(counts, [*chosen, chosen[0]], log=log)
            try:  # every failure is reported below, not lost in the thread
                state = cache.state_for(model, batch, "v1", now=0.0)
                lookups[worker] += len(chosen)
                if (size := len(cache)) > capacity:
                    failures.append(("over capacity", f"worker {worker}: {size} entries, capacity {capacity}"))
                for b, u in enumerate(batch.user.tolist()):
                    n = counts[u]
                    accepted = range(max(1, n - refresh_after_new + 1), n + 1)  # own history or an accepted older one
                    if not any(torch.allclose(state[b], reference[u][m - 1], rtol=1e-5, atol=1e-5) for m in accepted):
                        served = [m for m in range(1, events + 1) if torch.allclose(state[b], reference[u][m - 1])]
                        failures.append(
                            ("wrong state", f"worker {worker}: user {u} at {n} events got that at {served}")
                        )
            except Exception as error:
                failures.append((type(error).__name__, f"worker {worker}: {type(error).__name__}: {error}"))

    workers = [threading.Thread(target=serve, args=(w,)) for w in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    counted = cache.hits + cache.misses + cache.refreshes
    if counted != sum(lookups):
        failures.append(("counters", f"hits + misses + refreshes = {counted}, lookups = {sum(lookups)}"))
    kinds = {kind: sum(k == kind for k, _ in failures) for kind, _ in failures}
    assert not failures, f"{len(failures)} failures {kinds}, e.g. {[what for _, what in failures[:4]]}"
    assert len(cache) <= capacity and cache.evictions > 0 and cache.hits > 0


@pytest.mark.parametrize("timestamps", [True, False])
def test_a_state_of_a_newer_history_is_not_served_to_an_older_request_nor_replaced_by_its_state(
    timestamps: bool,
) -> None:
    # A slow request (7 events) arrives after the user's newer history (9 events) was cached: it must not see the 2
    # behaviours it does not hold, and its state must not overwrite the newer one.
    model = vista()
    counting, cache = Counting(model), UserStateCache(capacity=10, refresh_after_new=3)
    new, old = serving_batch([9], timestamps=timestamps), serving_batch([7], timestamps=timestamps)
    cache.state_for(counting, new, "v1", now=0.0)
    state = cache.state_for(counting, old, "v1", now=1.0)
    assert counting.calls == [1, 1] and (cache.misses, cache.hits, cache.refreshes) == (2, 0, 0)
    with torch.no_grad():
        torch.testing.assert_close(model.score_with_state(state, old), model(old), rtol=1e-6, atol=1e-6)
    states, fresh = cache.get(new, "v1", now=2.0)
    assert fresh.all(), "the newer entry stayed"
    with torch.no_grad():
        torch.testing.assert_close(states, model.user_state(new), rtol=1e-6, atol=1e-6)
    cache.put(old, model.user_state(old), "v1", now=3.0)  # put directly: still not replaced
    assert cache.get(new, "v1", now=4.0)[1].all() and not cache.get(old, "v1", now=4.0)[1].any()


@pytest.mark.parametrize(("users", "counts"), [([0, 1], [7, 7]), ([0, 0], [7, 7]), ([0, 0], [7, 9])])
def test_concurrent_misses_compute_in_parallel_and_leave_one_entry_per_user(
    users: list[int], counts: list[int]
) -> None:
    # Both user_state calls must be running at once to pass the barrier: a lock held around the model deadlocks them
    # (BrokenBarrierError after the timeout). Two misses of one user both compute; the entry left is the newer one.
    model, both = vista(), threading.Barrier(2, timeout=5.0)

    class Meeting:
        def user_state(self, batch: Batch) -> torch.Tensor:
            both.wait()
            return model.user_state(batch)

    cache, errors = UserStateCache(capacity=10), []
    requests = [serving_batch([n] * 2, [u]) for u, n in zip(users, counts, strict=True)]

    def serve(batch: Batch) -> None:
        try:
            cache.state_for(Meeting(), batch, "v1", now=0.0)
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=serve, args=(batch,)) for batch in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and cache.misses == 2 and len(cache) == len(set(users))
    newest = requests[counts.index(max(counts))]
    states, fresh = cache.get(newest, "v1", now=0.0)
    assert fresh.all()
    with torch.no_grad():
        torch.testing.assert_close(states, model.user_state(newest), rtol=1e-6, atol=1e-6)


def one_row(times: list[int], length: int, target_time: int, timestamps: bool) -> Batch:
    """User 0's history: the behaviours at `times` (sorted), the last `length` columns of them, left-padded."""
    kept = times[-length:] if length else []
    history = torch.zeros(1, length, dtype=torch.long)
    delta = torch.zeros(1, length)
    if kept:
        history[0, length - len(kept) :] = torch.arange(len(kept)) % 49 + 1
        delta[0, length - len(kept) :] = (target_time - torch.tensor(kept, dtype=torch.long)).float()
    return Batch(
        history=history,
        history_mask=history != 0,
        target=torch.tensor([1]),
        history_time_delta=delta if timestamps else None,
        target_time=torch.tensor([target_time]) if timestamps else None,
        user=torch.tensor([0]),
    )


def stale_by_counting(newest: float | None, length: int, batch: Batch, refresh_after_new: int) -> bool:
    """The reference: count every behaviour of the row newer than the state's (O(L)), as the cache did before."""
    mask = batch.history_mask[0]  # [L]
    if newest is not None and batch.target_time is not None and batch.history_time_delta is not None:
        times = batch.target_time.double() - batch.history_time_delta[0].double()  # [L]
        slack = 1.0 + batch.history_time_delta[0].double() * 2.0**-22  # [L]
        new = int(((times > newest + slack) & mask).sum())
    else:
        new = int(mask.sum()) - length
    return new >= refresh_after_new


@settings(max_examples=100, deadline=None)
@given(gaps=st.lists(st.sampled_from([0, 1, 2, 3, 4, 10**7]), min_size=1, max_size=20), data=st.data())
def test_the_refresh_check_on_two_columns_decides_as_counting_the_whole_history(gaps: list[int], data) -> None:
    # One user's time-sorted trajectory (ties, steps of seconds, gaps of months); the cached state saw its first
    # `seen` events and the request holds its first `held` events, both left-padded to L, each with its own target
    # time (float32 deltas of years round by several seconds). Every refresh_after_new from 1 to L + 2 is checked.
    times = (T0 + torch.tensor(gaps).cumsum(0)).tolist()
    L = data.draw(st.integers(1, 12), label="L")
    seen = data.draw(st.integers(0, len(times)), label="seen")
    held = min(max(seen + data.draw(st.integers(-2, L + 2), label="held - seen"), 0), len(times))
    state_time, request_time = (times[-1] + data.draw(st.sampled_from([0, 10**8]), label="wait") for _ in "ab")
    state_row = one_row(times[:seen], L, state_time, timestamps=True)
    request = one_row(times[:held], L, request_time, data.draw(st.booleans(), label="request has timestamps"))
    cache = UserStateCache(capacity=1)
    cache.put(state_row, torch.zeros(1, 2), "v1", now=0.0)
    entry = cache._entries[(0, "v1")]
    for refresh_after_new in range(1, L + 3):
        cache.refresh_after_new = refresh_after_new
        history = cache._read_histories(request, [0])[0]
        assert history.length == int(request.history_mask.sum())
        expected = stale_by_counting(entry.newest, entry.length, request, refresh_after_new)
        assert cache._is_stale(entry, history, now=0.0) == expected, f"refresh_after_new={refresh_after_new}"
