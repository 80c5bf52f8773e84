"""Serving fixtures: a prepared store with every side field and a redis-server of the test's own on 127.0.0.1 (the
history store); a small store, a trained DIN run, its exported artifact and a run whose weights differ from it in known
places (the "next day" of a delta)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from longrec.config import Config
from longrec.data.batch import Batch
from longrec.data.dataset import collate
from longrec.data.prepare import prepare
from longrec.data.protocols import ProtocolConfig
from longrec.data.store import TrajectoryStore
from longrec.run import train
from longrec.serve.artifact import export_run
from longrec.train.checkpoint import load_checkpoint, save_checkpoint
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


CHANGED_ITEMS = (3, 5, 17)  # item rows the "next day" run changes


def run_config(store: Path, **train: object) -> Config:
    return Config.from_dict(
        {
            "model": {"name": "din", "dim": 4, "attention_hidden": [8], "head_hidden": [8]},
            "data": {"path": str(store), "max_history": 10},
            "train": {"batch_size": 16, "epochs": 1, "lr": 0.01, "progress": False, **train},
        }
    )


@pytest.fixture(scope="session")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("serve-store") / "s"
    prepare(make_log(num_users=30, events=20, seed=9), out, ProtocolConfig.for_protocol("T"))
    return out


@pytest.fixture(scope="session")
def run_dir(store_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("serve-runs") / "din"
    train(run_config(store_path), out)
    return out


@pytest.fixture(scope="session")
def artifact_dir(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_run(run_dir, tmp_path_factory.mktemp("serve-models") / "din")


def next_day(run: Path, out: Path, items: tuple[int, ...] = CHANGED_ITEMS) -> Path:
    """A copy of `run` whose best model differs in the item rows `items` and in every dense tensor."""
    shutil.copytree(run, out)
    checkpoint = load_checkpoint(out / "checkpoint.pt")
    state = checkpoint["model"]
    for name, tensor in state.items():
        if name.endswith("item_embedding.weight"):
            tensor[list(items)] += 0.5
        elif "embedding" not in name and tensor.is_floating_point():
            tensor += 0.01
    checkpoint["step"] += 10
    save_checkpoint(out / "checkpoint.pt", checkpoint)
    return out


@pytest.fixture(scope="session")
def next_run_dir(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return next_day(run_dir, tmp_path_factory.mktemp("serve-next") / "din-day2")


@pytest.fixture(scope="session")
def batch(store_path: Path) -> Batch:
    store = TrajectoryStore.open(store_path)
    samples = store.samples("test")
    return collate(store, samples, np.arange(min(16, len(samples))), 10)


def logits(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    with torch.no_grad():
        return model(batch)


def read_meta(folder: Path, name: str = "model.json") -> dict[str, object]:
    return dict(json.loads((folder / name).read_text()))
