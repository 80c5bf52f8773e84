"""The Redis backend's own bounds and keys; the shared contract is in test_history.py."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import redis

from longrec.serve.history import Event
from longrec.serve.history_redis import RedisLog, open_redis
from tests.serve.conftest import start_redis
from tests.serve.test_history import NOW, Clock


def test_each_user_keeps_the_newest_max_keep_behaviours_and_max_ids_ids(history_store: Path, redis_url: str) -> None:
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    with open_redis(history_store, redis_url, prefix=prefix, max_keep=3, max_ids=2, clock=Clock()) as history:
        times = [NOW - 5, NOW - 1, NOW - 4, NOW - 2, NOW - 3]
        history.append([Event(user="new", item=7, timestamp=t, event_id=f"e{i}") for i, t in enumerate(times)])
        assert history.history("new", limit=10).timestamp.tolist() == [NOW - 3, NOW - 2, NOW - 1]  # oldest trimmed
        assert history.append([Event(user="new", item=7, timestamp=NOW, event_id="e4")]).duplicates == 1
        assert history.append([Event(user="new", item=7, timestamp=NOW, event_id="e0")]).accepted == 1  # pushed out
        sha = history.store.manifest["vocab_sha"]
        client = redis.Redis.from_url(redis_url)
        try:
            keys = sorted(k.decode() for k in client.keys(f"{prefix}:*"))
            assert keys == [f"{prefix}:{sha}:{{new}}:{kind}" for kind in ("events", "ids", "seq")]
            assert client.zcard(f"{prefix}:{sha}:{{new}}:ids") == 2
            assert 0 < client.ttl(f"{prefix}:{sha}:{{new}}:ids") <= 86_400
        finally:
            client.close()


def test_a_client_that_decodes_responses_is_refused(history_store: Path, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        with pytest.raises(ValueError, match=r"must return bytes \(decode_responses=False\)"):
            RedisLog(client, vocab_sha="x", width=9)
        with pytest.raises(ValueError, match=r"max_keep must be >= 1. Got 0 instead"):
            RedisLog(redis.Redis.from_url(redis_url), vocab_sha="x", width=9, max_keep=0)
    finally:
        client.close()


def test_the_redis_fixture_fails_with_how_to_install_when_redis_server_is_missing(tmp_path: Path) -> None:
    with pytest.raises(pytest.fail.Exception, match=r"redis-server-missing is not on PATH.*'make install-redis'"):
        start_redis(tmp_path, binary="redis-server-missing")
