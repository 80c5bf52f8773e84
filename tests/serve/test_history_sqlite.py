"""The embedded backend: durability under kill -9, reopening, the vocabulary guard, and compaction."""

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
from longrec.cli import main
from longrec.data.prepare import prepare
from longrec.data.protocols import ProtocolConfig
from longrec.data.shards import prepare_shards
from longrec.serve.history import Event, HistoryStore
from longrec.serve.history_compact import compact
from longrec.serve.history_sqlite import LogSealedError, SqliteLog, open_embedded
from tests.serve.conftest import history_log
from tests.serve.test_history import FIELDS, NOW, Clock

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


def _fill(history: HistoryStore) -> None:
    """Known users (ties with the base, out of order, out-of-vocabulary items), unknown users, ids."""
    base = history.store.trajectory(history.encoder.user_key(100)[1])["timestamp"]
    tie = int(base[5])
    history.append(
        [
            Event(user=100, item=14, timestamp=tie, event_id="t1"),
            Event(user=100, item=999_999, timestamp=tie, event_id="t2", category=(1, 1008)),  # out of vocabulary
            Event(user=100, item=21, timestamp=tie, event_id="t3", action="teleport"),
            Event(user=101, item=7, timestamp=NOW - 50, event_id="u1"),
            Event(user="nobody", item=7, timestamp=NOW - 40, event_id="n1"),
            Event(user="nobody", item=999_999, timestamp=NOW - 30),
            Event(user=102, item=28, timestamp=1_500_000_000),  # older than its whole base trajectory
        ]
    )


USERS: list[int | str] = [100, 101, 102, 103, "nobody", "never"]
CUTOFFS = [None, NOW - 35, 1_600_500_000]


def _histories(history: HistoryStore) -> dict[tuple[int | str, int | None], dict[str, np.ndarray | None]]:
    return {
        (user, cutoff): {name: getattr(history.history(user, 10_000, cutoff), name) for name in FIELDS}
        for user in USERS
        for cutoff in CUTOFFS
    }


def _assert_same(got: dict, expected: dict) -> None:  # type: ignore[type-arg]
    for key, fields in expected.items():
        for name, value in fields.items():
            np.testing.assert_array_equal(got[key][name], value, err_msg=f"{key}: {name}")


def test_compaction_folds_the_log_into_a_store_and_every_history_reads_the_same(
    history_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    history = open_embedded(history_store, log=tmp_path / "history.sqlite", clock=clock)
    replica = open_embedded(history_store, log=tmp_path / "history.sqlite", clock=clock)
    try:
        _fill(history)
        late = Event(user=103, item=7, timestamp=NOW - 20, event_id="late")
        snapshot = SqliteLog.snapshot

        def snapshot_then_append(log: SqliteLog) -> tuple[int, list]:  # type: ignore[type-arg]
            taken = snapshot(log)
            replica.append([late])  # arrives while compaction builds the store
            return taken

        monkeypatch.setattr(SqliteLog, "snapshot", snapshot_then_append)
        expected = _histories(history)
        result = compact(history, tmp_path / "c1")
        monkeypatch.undo()
        expected[(103, None)] = {name: getattr(history.history(103, 10_000), name) for name in FIELDS}  # + late
        assert (result.folded, result.raw_kept, result.live, result.ids) == (5, 2, 3, 6)
        with open_embedded(tmp_path / "c1", clock=clock) as after:
            _assert_same(_histories(after), expected)
            assert after.store.manifest["vocab_sha"] == history.store.manifest["vocab_sha"]
            assert after.stats().base_behaviours == history.stats().base_behaviours + 5
            assert after.append([Event(user=100, item=7, timestamp=NOW - 1, event_id="t1")]).duplicates == 1
            assert after.append([late]).duplicates == 1
        with pytest.raises(LogSealedError, match=r"history.sqlite was compacted into .*c1: nothing more is appended"):
            replica.append([Event(user=100, item=7, timestamp=NOW - 1)])
        assert len(history.history(103, 10_000)) == len(expected[(103, None)]["timestamp"])  # reads still work
    finally:
        history.close()
        replica.close()
    with open_embedded(tmp_path / "c1", clock=clock) as after:  # a compacted history compacts again
        second = compact(after, tmp_path / "c2")
        assert (second.folded, second.raw_kept) == (1, 2)  # the new event; the raw records are carried over
    with open_embedded(tmp_path / "c2", clock=clock) as again:
        _assert_same(_histories(again), expected)


def test_a_sharded_store_serves_and_compacts_like_the_whole_store(tmp_path: Path) -> None:
    # `prepare --shards 3` of the same log: histories (base + log, every cutoff) read the same as over the whole
    # store, and compaction folds them into one store that reads the same again.
    protocol = ProtocolConfig.for_protocol("T", min_history=0)
    prepare(history_log(), tmp_path / "whole", protocol)
    prepare_shards(history_log(), tmp_path / "sharded", protocol, 3)
    clock = Clock()
    with open_embedded(tmp_path / "whole", log=tmp_path / "whole.sqlite", clock=clock) as whole:
        _fill(whole)
        expected = _histories(whole)
    with open_embedded(tmp_path / "sharded", log=tmp_path / "sharded.sqlite", clock=clock) as sharded:
        assert len(sharded.store.shards) == 3
        _fill(sharded)
        _assert_same(_histories(sharded), expected)
        compact(sharded, tmp_path / "c1")
    with open_embedded(tmp_path / "c1", clock=clock) as after:
        assert "shards" not in after.store.manifest
        _assert_same(_histories(after), expected)


def test_longrec_compact_is_one_command_that_refuses_a_missing_log(
    history_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with open_embedded(history_store, log=tmp_path / "history.sqlite") as history:
        history.append([Event(user=100, item=7, timestamp=int(time.time()) - 60, event_id="a")])
    args = ["compact", str(history_store), "--log", str(tmp_path / "history.sqlite"), "--out", str(tmp_path / "c1")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "1 logged behaviours folded into the store" in out and "the old log is sealed" in out
    assert main(["compact", str(tmp_path / "c1"), "--out", str(tmp_path / "c1")]) == 2
    assert "already holds a compacted history written by 'longrec compact'" in capsys.readouterr().err
    assert main(["compact", str(history_store), "--log", str(tmp_path / "nope.sqlite"), "--out", "x"]) == 2
    assert "nope.sqlite not found" in capsys.readouterr().err
    assert not Path("x").exists()
