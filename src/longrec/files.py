"""Writing outputs without losing anything: atomic files and folders, and output folders that are never the user's.

Every command that writes a folder (`prepare`, `import-samples`, `synth`, `train`, `demo`, `analyze`, `export`,
`cascade`) follows one rule, `check_output`:

- `--out` may be a new path, an empty folder, or **a previous output of the same command**, recognised by its marker
  file (a store's `manifest.json`, a synthetic log's `synthetic.json`, a run's `config.json`, ...) and holding only
  entries that command writes. Anything else (a folder with a file the command did not write, a file, the current
  directory) is refused with `OutputError`, and nothing is touched.
- A previous output is replaced only with `force=True` (the CLI's `--force`), except for outputs that are cheap to
  rebuild and meant to be redrawn in place (`OutputKind.replace_freely`: the demo folder, analysis plots).

Whole folders are written atomically (`output_directory`): into a temporary sibling `.NAME.tmp-PID-XXXX`, then the old
output (if any) is renamed to `.NAME.old-PID-XXXX`, the new one renamed into place and the old one removed. A crash at
any point leaves NAME either old or new, plus temporary siblings that the next write to NAME cleans up
(`clean_stale`, logged): a `.tmp-` folder of a process that is no longer alive is removed; an `.old-` folder of a dead
process is put back when NAME is missing (the crash fell between the two renames), else removed.

Single files go through a temporary file and a rename (`atomic_write_text`, `atomic_path`), and every new file or
folder gets the permissions the user's umask gives (`mkstemp`/`mkdtemp` alone would make them private). JSON is
strict (`dumps_json`): NaN and infinities are written as null, never as bare `NaN`, which is not JSON.

`lock_directory` holds an exclusive `flock` on a folder's lock file for the length of a block: a second writer fails
at once with who holds it. POSIX only (fcntl).
"""

from __future__ import annotations

import errno
import fcntl
import fnmatch
import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ARTIFACT",
    "CASCADE",
    "CONTENT",
    "DELTA",
    "DELTAS",
    "DEMO",
    "PLOTS",
    "RUN",
    "STORE",
    "SUMMARIES",
    "SYNTHETIC",
    "DirectoryLockedError",
    "OutputError",
    "OutputKind",
    "atomic_path",
    "atomic_write_text",
    "check_output",
    "clean_stale",
    "dumps_json",
    "lock_directory",
    "output_directory",
    "read_json_object",
    "write_json",
]

logger = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
_STALE = re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[^.]+$")


class OutputError(ValueError):
    """An output path that may not be written: it holds something the command did not write, or needs --force."""


class DirectoryLockedError(OutputError):
    """Another process holds the folder's lock."""


@dataclass(frozen=True)
class OutputKind:
    """What a command writes into its output folder, so a previous output can be recognised."""

    what: str  # "prepared store"
    command: str  # the command that writes it, for messages: "longrec prepare"
    marker: str  # the file that identifies it
    entries: tuple[str, ...]  # glob patterns of every top-level entry it may hold
    replace_freely: bool = False  # a previous output is replaced without force (cheap to rebuild)
    hint: str = ""  # said after "Pass --force to replace it" (e.g. how to continue a previous run instead)

    def owns(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.entries)


STORE = OutputKind(
    "prepared store",
    "longrec prepare / import-samples",
    "manifest.json",
    ("manifest.json", "trajectories", "items", "vocab", "samples", "content"),
)
CONTENT = OutputKind("content modality", "longrec content add", "content.json", ("content.json", "vectors.npy"))
SYNTHETIC = OutputKind(
    "synthetic log", "longrec synth", "synthetic.json", ("synthetic.json", "log.parquet", "truth.parquet", "*.csv")
)
RUN = OutputKind(
    "run directory",
    "longrec train",
    "config.json",
    (
        "config.json",
        "run.json",
        "run.lock",
        "checkpoint.pt",
        "last.pt",
        "metrics.jsonl",
        "metrics.json",
        "metrics.csv",
        "log.txt",
        "eval_*.json",
        "plots",
        "tensorboard",
    ),
    hint=" To continue it instead, pass --resume.",
)
CASCADE = OutputKind("cascade report", "longrec cascade", "cascade.json", ("cascade.json",))
DEMO = OutputKind(
    "demo folder", "longrec demo", "demo.json", ("demo.json", "summary.json", "raw", "data", "runs"), True
)
PLOTS = OutputKind("analysis folder", "longrec analyze", "analysis.json", ("analysis.json", "*.png"), True)
ARTIFACT = OutputKind(
    "serving model", "longrec export", "model.json", ("model.json", "weights.safetensors", "vocab", "items")
)
SUMMARIES = OutputKind(
    "summary store", "longrec summarise", "summaries.json", ("summaries.json", "model.safetensors", "*.npy")
)
DELTA = OutputKind("model delta", "longrec export --delta-from", "delta.json", ("delta.json", "delta.safetensors"))
DELTAS = OutputKind("delta series", "longrec.serve.delta.DeltaExporter", "deltas.json", ("deltas.json", "step-*"))


def _umask() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # no /proc: read it by setting it (and putting it back at once)
    os.umask(mask)
    return mask


def _chmod_new(path: Path, directory: bool = False) -> None:
    """Give a file made by mkstemp (0600) or a folder made by mkdtemp (0700) the mode the umask gives new ones."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def clean_stale(out: str | Path) -> list[str]:
    """Remove (or put back) the temporary siblings of `out` left by killed processes; return what was done."""
    out = Path(out).absolute()
    if not out.parent.is_dir():
        return []
    done: list[str] = []
    for sibling in sorted(out.parent.iterdir()):
        match = _STALE.match(sibling.name)
        if not match or match["name"] != out.name or _pid_alive(int(match["pid"])):
            continue
        if match["kind"] == "old" and not out.exists():
            os.replace(sibling, out)
            done.append(f"restored {out} from {sibling.name} (a replace was interrupted by pid {match['pid']})")
        else:
            shutil.rmtree(sibling, ignore_errors=True) if sibling.is_dir() else sibling.unlink(missing_ok=True)
            done.append(f"removed {sibling} (left by pid {match['pid']}, which is no longer running)")
    for line in done:
        logger.warning(line)
    return done


def _clean_inside(folder: Path) -> None:
    """Remove the temporary files a killed writer left inside `folder` (`.NAME.tmp-PID-...` of a dead PID)."""
    for entry in folder.iterdir():
        match = _STALE.match(entry.name)
        if match and match["kind"] == "tmp" and not _pid_alive(int(match["pid"])):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            logger.warning("removed %s (left by pid %s, which is no longer running)", entry, match["pid"])


def check_output(out: str | Path, kind: OutputKind, force: bool = False) -> bool:
    """Whether `out` may be written as a `kind` output; True when it holds a previous one that will be replaced.

    Raises:
        OutputError: `out` is the current directory or one of its parents, a file, a folder holding entries `kind`
            does not write (named in the message), or a previous output without `force`.
    """
    path = Path(out)
    resolved = path.resolve()
    if resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents:
        raise OutputError(f"--out {out}: is the current directory or one of its parents; name a new folder instead.")
    if not path.exists():
        return False
    if not path.is_dir():
        raise OutputError(f"--out {out}: exists and is not a folder. Choose a new folder for the {kind.what}.")
    _clean_inside(path)
    entries = sorted(p.name for p in path.iterdir() if p.name != LOCK_FILE)  # a lock alone is an empty folder
    if not entries:
        return False
    foreign = [name for name in entries if not kind.owns(name)]
    if foreign or kind.marker not in entries:
        shown = ", ".join(repr(n) for n in (foreign or entries)[:5]) + (" ..." if len(foreign or entries) > 5 else "")
        raise OutputError(
            f"--out {out}: the folder is not empty and is not a {kind.what} written by '{kind.command}' "
            f"(it holds {shown}). longrec never deletes what it did not write: choose a new or empty folder "
            "(--force replaces only a previous output of this command)."
        )
    if not force and not kind.replace_freely:
        raise OutputError(
            f"--out {out}: already holds a {kind.what} written by '{kind.command}'. Pass --force to replace it, "
            f"or choose a new folder.{kind.hint}"
        )
    return True


@contextmanager
def output_directory(out: str | Path, kind: OutputKind, force: bool = False) -> Iterator[Path]:
    """Check `out` (`check_output`), then yield a temporary sibling to write into; on success it becomes `out`.

    On an error inside the block the temporary folder is removed and `out` is left as it was.
    """
    replace = check_output(out, kind, force)
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    try:
        yield tmp
        _chmod_new(tmp, directory=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-", dir=out.parent))
    os.rmdir(old)  # only its unique name is wanted
    if out.exists():
        if not replace:  # something appeared at `out` while we were writing: never overwrite it
            shutil.rmtree(tmp, ignore_errors=True)
            raise OutputError(f"--out {out}: was created by someone else while the {kind.what} was being written.")
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old.exists():
            os.replace(old, out)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path next to `path`; after the block it is renamed onto `path` (removed on error).

    For writers that take a path (`torch.save`, `np.save`, `write_parquet`): readers never see half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _chmod_new(tmp)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.filename is not None and Path(err.filename) == tmp:  # name the file the user knows, not our temp
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file through a temporary file and a rename, so readers never see half of it."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _strict(value: Any) -> Any:
    """`value` with NaN/inf floats as None, tuples as lists and numpy scalars/arrays as Python values."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    tolist = getattr(value, "tolist", None)  # numpy scalars and arrays, torch tensors
    if callable(tolist) and not isinstance(value, str | bytes):
        return _strict(tolist())
    return value


def dumps_json(value: Any, indent: int | None = 2) -> str:
    """Strict JSON text (NaN and infinities as null), keys sorted, ending in a newline when indented."""
    text = json.dumps(_strict(value), indent=indent, sort_keys=True, allow_nan=False, default=str)
    return text + "\n" if indent is not None else text


def write_json(path: str | Path, value: Any) -> None:
    """`dumps_json(value)` written atomically."""
    atomic_write_text(path, dumps_json(value))


def read_json_object(path: str | Path, what: str) -> dict[str, Any]:
    """A JSON object file. Raises `FileNotFoundError` naming it as not a `what`, or `ValueError` when it is damaged
    (not valid JSON, or not an object)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: '{path.parent}' is not a {what}.")
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is damaged (not valid JSON: {err}).") from err
    if not isinstance(value, dict):
        raise ValueError(f"{path} is damaged: expected a JSON object, got {type(value).__name__}.")
    return value


@contextmanager
def lock_directory(directory: str | Path, what: str = "folder") -> Iterator[None]:
    """Hold an exclusive lock on `directory` (its `run.lock` file, left in place) for the block.

    Raises:
        FileNotFoundError: `directory` does not exist.
        DirectoryLockedError: another process holds it; the message names its pid and command.
    """
    path = Path(directory) / LOCK_FILE
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{directory} not found: no {what} to lock.")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            raise DirectoryLockedError(
                f"{directory}: this {what} is in use by {holder}. Wait for it to finish, or use another folder."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({' '.join(_command_line())})\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _command_line() -> list[str]:
    try:
        args = Path("/proc/self/cmdline").read_bytes().split(b"\0")
        return [a.decode(errors="replace") for a in args if a][:8]
    except OSError:
        return ["longrec"]
