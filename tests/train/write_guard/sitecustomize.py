"""Test helper (tests/train/test_distributed.py puts this folder on PYTHONPATH of a data-parallel run): in every
rank but 0, any attempt to create, write, rename or delete a file under $LONGREC_TEST_WRITE_GUARD raises
PermissionError, so a rank other than 0 that writes the run directory fails the run."""

import os
import sys

_GUARDED = os.environ.get("LONGREC_TEST_WRITE_GUARD")
_WRITES = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_EVENTS = {"os.rename", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree", "os.truncate", "os.link", "os.symlink"}


def _inside(path: object) -> bool:
    if _GUARDED is None or not isinstance(path, str | bytes | os.PathLike):
        return False
    guarded = os.path.abspath(_GUARDED)
    return os.path.commonpath([os.path.abspath(os.fsdecode(os.fspath(path))), guarded]) == guarded


def _guard(event: str, args: tuple) -> None:
    if event == "open" and _inside(args[0]):
        mode, flags = args[1], args[2]
        writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & _WRITES)
        if writes:
            raise PermissionError(f"rank {os.environ['RANK']} wrote {args[0]} (mode {mode!r}): only rank 0 may write")
    elif event in _EVENTS and any(_inside(a) for a in args[:2]):
        raise PermissionError(f"rank {os.environ['RANK']} called {event}{args[:2]}: only rank 0 may write")


if _GUARDED is not None and os.environ.get("RANK", "0") != "0":
    sys.addaudithook(_guard)
