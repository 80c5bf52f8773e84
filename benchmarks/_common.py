"""Plumbing shared by the benchmark scripts: machine facts, JSON output, and README result sections.

Each script answers one question, prints a table, writes JSON (and PNG where a curve says more), and can replace its
own section of benchmarks/README.md between `<!-- BEGIN name -->` and `<!-- END name -->` markers, so the README
always holds the latest numbers a script actually produced.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from longrec.config import Config
from longrec.files import atomic_write_text, dumps_json

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
SHARED_DATA = HERE.parent / ".." / "shared" / "data"


def machine() -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, threads, torch, commit, date."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": commit,
        "date": dt.date.today().isoformat(),
    }


def machine_line(info: dict[str, Any]) -> str:
    return (
        f"Machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} with {info['torch_threads']} "
        f"threads; commit {info['commit']}, {info['date']}."
    )


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    atomic_write_text(Path(path), dumps_json(payload))


def update_readme_section(name: str, body: str, readme: Path = README) -> None:
    """Replace the text between `<!-- BEGIN name -->` and `<!-- END name -->` (appending the section if absent)."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    text = readme.read_text() if readme.is_file() else "# Benchmarks\n"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    atomic_write_text(readme, text)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def config_from(values: dict[str, Any]) -> Config:
    """An experiment config from dotted keys ({"model.name": "din", "train.lr": 0.01, ...}), checked like a file."""
    tree: dict[str, Any] = {}
    for key, value in values.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = list(value) if isinstance(value, tuple) else value
    return Config.from_dict(tree, "the benchmark")
