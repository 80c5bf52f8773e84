"""Serving fixtures: a prepared store with every side field, and a redis-server of the test's own on 127.0.0.1."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from longrec.data.prepare import prepare
from longrec.data.protocols import ProtocolConfig
from tests.conftest import make_log

REDIS_START_S = 10.0


def history_log(seed: int = 0) -> pl.DataFrame:
    """`make_log` plus a domain, a scene, an extra id field (brand) and event ids: every field a history carries."""
    log = make_log(num_users=12, events=40, num_items=60, seed=seed)
    return log.with_columns(
        domain=pl.when(pl.col("item_id") % 3 == 0).then(pl.lit("ad")).otherwise(pl.lit("content")),
        scene=pl.when(pl.col("timestamp") % 2 == 0).then(pl.lit("feed")).otherwise(pl.lit("search")),
        brand=(pl.col("item_id") % 5).cast(pl.String),
        event_id=pl.int_range(pl.len(), dtype=pl.Int64) + 1000,
    )


@pytest.fixture(scope="session")
def history_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared store (protocol T, every user with samples) of `history_log()`."""
    out = tmp_path_factory.mktemp("history") / "store"
    prepare(history_log(), out, ProtocolConfig.for_protocol("T", min_history=0))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(folder: Path, binary: str = "redis-server") -> tuple[subprocess.Popen[bytes], int]:
    """Start `binary` on a free 127.0.0.1 port with its files in `folder`, in memory only; wait until it answers.

    Fails the test (never skips it) when the binary is missing or does not come up within REDIS_START_S.
    """
    path = shutil.which(binary)
    if path is None:
        pytest.fail(
            f"{binary} is not on PATH: the Redis history tests start their own server. Install it with "
            "'make install-redis' (Debian's redis-server package)."
        )
    for _ in range(3):  # another process may take the free port between the probe and the bind
        port = _free_port()
        server = subprocess.Popen(
            [
                path,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(folder),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + REDIS_START_S
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return server, port
            except OSError:
                time.sleep(0.02)
        stop_redis(server)
    pytest.fail(f"{binary} did not answer on 127.0.0.1 within {REDIS_START_S:g} s (three ports tried).")


def stop_redis(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    try:
        server.wait(timeout=5)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=5)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of this test session's own (127.0.0.1, a free port, no persistence), stopped at the end."""
    server, port = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_redis(server)
