"""`longrec serve` as a real process on 127.0.0.1: the client round trip, and kill -9 while behaviours are appended
loses none that were acknowledged."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from longrec.data.store import TrajectoryStore
from longrec.data.vocab import Vocabulary
from longrec.serve.client import Client, ServeError

START_S = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(model: Path, store: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    command = [sys.executable, "-m", "longrec.cli", "--quiet", "serve", str(model), "--store", str(store)]
    command += ["--history-log", str(log), "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"longrec serve exited with {process.returncode}: {process.stderr.read().decode()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError(f"longrec serve did not become ready within {START_S:.0f} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


@pytest.fixture
def raw_ids(store_path: Path) -> tuple[list[object], list[object]]:
    vocab = Vocabulary(TrajectoryStore.open(store_path))
    return vocab.raw("user_id").to_list(), vocab.raw("item_id").to_list()


@pytest.fixture
def server(artifact_dir: Path, store_path: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    process, url = _start(artifact_dir, store_path, tmp_path / "history.sqlite")
    try:
        yield process, url
    finally:
        _stop(process)


def test_the_client_scores_appends_and_reads_the_status(
    server: tuple[subprocess.Popen[bytes], str], raw_ids: tuple[list[object], list[object]]
) -> None:
    users, items = raw_ids
    with Client(server[1]) as client:
        assert client.ready() and client.status()["current"]
        scored = client.score(users[0], [{"item": items[1]}, {"item": items[2]}])
        assert len(scored["scores"]) == 2 and all(0 < p < 1 for p in scored["scores"])
        assert client.append([{"user": users[0], "item": items[1], "timestamp": 1_600_000_000, "event_id": "x"}]) == {
            "accepted": 1,
            "duplicates": 0,
        }
        with pytest.raises(ServeError, match=r"HTTP 422: candidates: List should have at least 1 item"):
            client.score(users[0], [])
        assert 'longrec_requests_total{route="/v1/score",status="200"}' in client.metrics()


def test_kill_9_while_appending_loses_no_acknowledged_behaviour(
    artifact_dir: Path, store_path: Path, tmp_path: Path, raw_ids: tuple[list[object], list[object]]
) -> None:
    _, items = raw_ids
    log = tmp_path / "history.sqlite"
    process, url = _start(artifact_dir, store_path, log)
    acknowledged: list[str] = []
    stop = threading.Event()

    def append() -> None:
        with Client(url, timeout=5.0) as client:
            i = 0
            while not stop.is_set():
                event = {
                    "user": "durable-user",
                    "item": items[i % 20],
                    "timestamp": 1_600_000_000 + i,
                    "event_id": f"k{i}",
                }
                try:
                    client.append([event])
                except (httpx.HTTPError, ServeError):
                    return  # the server is gone: this event was never acknowledged
                acknowledged.append(f"k{i}")
                i += 1

    writer = threading.Thread(target=append)
    writer.start()
    try:
        deadline = time.monotonic() + 20
        while len(acknowledged) < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=15)
    finally:
        stop.set()
        writer.join(timeout=15)
        _stop(process)
    assert len(acknowledged) >= 40, "the server acknowledged too few appends before the kill"
    process, url = _start(artifact_dir, store_path, log)
    try:
        with Client(url) as client:
            result = client.score("durable-user", [{"item": items[0]}], timestamp=1_600_000_000 + 10**6)
            assert result["history_length"] >= min(len(acknowledged), 10)  # max_history = 10 in this run
            again = client.append(
                [
                    {"user": "durable-user", "item": items[0], "timestamp": 1_600_000_000, "event_id": a}
                    for a in acknowledged
                ]
            )
            assert again == {"accepted": 0, "duplicates": len(acknowledged)}, "every acknowledged event is stored"
    finally:
        _stop(process)
