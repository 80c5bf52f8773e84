"""Outputs: never over a folder longrec did not write, atomic replace with crash recovery, strict JSON, umask."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from longrec.files import (
    STORE,
    OutputError,
    atomic_write_text,
    check_output,
    clean_stale,
    dumps_json,
    output_directory,
)


def _store_like(path: Path) -> None:
    path.mkdir(parents=True)
    (path / "manifest.json").write_text("{}")
    (path / "samples").mkdir()


def test_new_empty_and_previous_outputs_are_accepted_anything_else_refused(tmp_path: Path) -> None:
    assert check_output(tmp_path / "new", STORE) is False
    (tmp_path / "empty").mkdir()
    assert check_output(tmp_path / "empty", STORE) is False
    _store_like(tmp_path / "old")
    with pytest.raises(OutputError, match=r"already holds a prepared store .* Pass --force"):
        check_output(tmp_path / "old", STORE)
    assert check_output(tmp_path / "old", STORE, force=True) is True
    (tmp_path / "old" / "my_notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"not a prepared store .* \(it holds 'my_notes.txt'\)"):
        check_output(tmp_path / "old", STORE, force=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="exists and is not a folder"):
        check_output(tmp_path / "file", STORE)


def test_the_current_directory_and_its_parents_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    for out in (".", "..", str(tmp_path)):
        with pytest.raises(OutputError, match="is the current directory or one of its parents"):
            check_output(out, STORE)


def test_a_failed_write_leaves_the_previous_output_and_no_temporary_folder(tmp_path: Path) -> None:
    _store_like(tmp_path / "out")
    with pytest.raises(RuntimeError, match="disk full"), output_directory(tmp_path / "out", STORE, force=True) as tmp:
        (tmp / "manifest.json").write_text("new")
        raise RuntimeError("disk full")
    assert (tmp_path / "out" / "manifest.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_temporary_folders_of_killed_processes_are_cleaned_or_put_back(tmp_path: Path) -> None:
    dead = 2**22 + 12345  # above the default pid_max: no such process
    (tmp_path / f".out.tmp-{dead}-abc").mkdir()
    (tmp_path / f".other.tmp-{dead}-abc").mkdir()  # another output's: not ours to touch
    _store_like(tmp_path / f".out.old-{dead}-xyz")  # a replace killed between its two renames: `out` is missing
    done = clean_stale(tmp_path / "out")
    assert len(done) == 2 and any("restored" in line for line in done)
    assert (tmp_path / "out" / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".other.tmp-{dead}-abc", "out"]
    mine = tmp_path / f".out.tmp-{os.getpid()}-live"  # a live process's temporary folder stays
    mine.mkdir()
    assert clean_stale(tmp_path / "out") == [] and mine.is_dir()


def test_json_is_strict_nan_and_infinity_become_null() -> None:
    text = dumps_json({"auc": float("nan"), "x": [1.0, float("inf")], "t": (1, 2)})
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON")) == {
        "auc": None,
        "t": [1, 2],
        "x": [1.0, None],
    }


def test_new_files_and_folders_get_the_users_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        with output_directory(tmp_path / "store", STORE) as tmp:
            (tmp / "manifest.json").write_text("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "store").stat().st_mode) == 0o750


def test_a_temporary_file_a_killed_writer_left_inside_an_output_does_not_make_it_foreign(tmp_path: Path) -> None:
    _store_like(tmp_path / "out")
    dead = 2**22 + 12345
    (tmp_path / "out" / f".manifest.json.tmp-{dead}-q1").write_text("half")
    (tmp_path / "out" / f".manifest.json.tmp-{os.getpid()}-q2").write_text("being written")
    with pytest.raises(OutputError, match=r"it holds '\.manifest\.json\.tmp-\d+-q2'"):
        check_output(tmp_path / "out", STORE, force=True)
    assert not (tmp_path / "out" / f".manifest.json.tmp-{dead}-q1").exists()
