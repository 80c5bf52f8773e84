"""The embedded backend: durability under kill -9, reopening, the vocabulary guard."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import longrec
from longrec.data.prepare import prepare
from longrec.data.protocols import ProtocolConfig
from longrec.serve.history import Event
from longrec.serve.history_sqlite import open_embedded
from tests.serve.conftest import history_log
from tests.serve.test_history import NOW, Clock

SRC = Path(longrec.__file__).resolve().parents[1]
CHILD = """
import sys
from longrec.serve.history import Event
from longrec.serve.history_sqlite import open_embedded

history = open_embedded(sys.argv[1], log=sys.argv[2], synchronous=sys.argv[3])
print("ready", flush=True)
i = 0
while True:
    history.append([Event(user=100 + i % 3, item=7, timestamp=1_650_000_000 + i, event_id=f"k{i}")])
    print(i, flush=True)  # acknowledged: append returned
    i += 1
"""


@pytest.mark.parametrize("synchronous", ["full", "normal"])
def test_every_acknowledged_event_survives_kill_9(history_store: Path, tmp_path: Path, synchronous: str) -> None:
    log = tmp_path / "history.sqlite"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(history_store), str(log), synchronous],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: list[str] = []

    def read() -> None:
        for line in child.stdout:  # type: ignore[union-attr]
            lines.append(line.strip())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 30
        while len(lines) < 200 and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        if len(lines) < 200:
            child.kill()
            pytest.fail(f"the child acknowledged {len(lines)} events in 30 s; its stderr: {child.stderr.read()}")  # type: ignore[union-attr]
        os.kill(child.pid, signal.SIGKILL)  # mid-loop: between two appends, or inside one
    finally:
        child.kill()
        child.wait(timeout=10)
        reader.join(timeout=10)
    assert lines[0] == "ready"
    acknowledged = [int(line) for line in lines[1:]]  # every line printed before the kill is here
    with open_embedded(history_store, log=log) as history:
        stored = np.concatenate([history.history(user, limit=100_000).timestamp for user in (100, 101, 102)])
    stored = stored[stored >= 1_650_000_000] - 1_650_000_000
    assert set(acknowledged) <= set(stored.tolist())
    assert len(stored) <= len(acknowledged) + 1  # at most the one in flight, committed but not yet printed
    assert sorted(stored.tolist()) == list(range(len(stored)))


def test_a_reopened_log_holds_what_was_appended_and_refuses_another_vocabulary(
    history_store: Path, tmp_path: Path
) -> None:
    log = tmp_path / "history.sqlite"
    with open_embedded(history_store, log=log, clock=Clock()) as history:
        history.append([Event(user=100, item=7, timestamp=NOW - 1, event_id="a")])
    with open_embedded(history_store, log=log, clock=Clock()) as history:
        assert history.history(100, limit=1).timestamp.tolist() == [NOW - 1]
        assert history.append([Event(user=100, item=7, timestamp=NOW - 1, event_id="a")]).duplicates == 1
    other = tmp_path / "other"
    prepare(history_log(seed=1).with_columns(item_id=history_log(seed=1)["item_id"] + 1), other, ProtocolConfig())
    with pytest.raises(ValueError, match=r"history.sqlite was written with vocab_sha '[0-9a-f]+'; this store needs"):
        open_embedded(other, log=log)
    (tmp_path / "junk.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(ValueError, match=r"junk.sqlite is not a history log"):
        open_embedded(history_store, log=tmp_path / "junk.sqlite")
    with pytest.raises(FileNotFoundError, match=r"missing.sqlite not found"):
        open_embedded(history_store, log=tmp_path / "missing.sqlite", create=False)
    with pytest.raises(ValueError, match=r"is not a folder written by 'longrec compact'; for a prepared store give"):
        open_embedded(history_store)
