"""The tree reads as the pipeline (docs/architecture.md): layered imports, no import cycles, readable files."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "src" / "longrec"
MAX_LINES = 500
MACHINE_ROOT = "/" + "work" + "/"  # where this project's checkouts live on the machines it is developed on


def test_each_stage_imports_only_the_stages_below_it() -> None:
    pytest.importorskip("importlinter")
    # In a child process: import-linter configures logging, which would silence this process's loggers.
    code = "from importlinter.cli import lint_imports; raise SystemExit(lint_imports(no_cache=True, no_logo=True))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def _cycles(graph: object) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    modules = sorted(graph.modules)  # type: ignore[attr-defined]
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in modules}  # type: ignore[attr-defined]
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in modules:
        if start in index:
            continue
        work = [(start, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            if i < len(edges[node]):
                work.append((node, i + 1))
                child = edges[node][i]
                if child not in index:
                    work.append((child, 0))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return found


def test_no_modules_import_each_other_in_a_loop() -> None:
    grimp = pytest.importorskip("grimp")
    sys.path.insert(0, str(ROOT / "src"))
    try:
        graph = grimp.build_graph("longrec", exclude_type_checking_imports=True, cache_dir=None)
    finally:
        sys.path.remove(str(ROOT / "src"))
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    class Graph:
        def __init__(self) -> None:
            self.modules = {"a", "b", "c", "d"}
            self.imports = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}

        def find_modules_directly_imported_by(self, module: str) -> set[str]:
            return self.imports[module]

    assert _cycles(Graph()) == [["a", "b", "c"]]


def test_source_files_stay_readable_or_say_why_they_are_long() -> None:
    long = []
    for path in sorted(SOURCES.rglob("*.py")):
        lines = path.read_text().count("\n")
        docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
        if lines > MAX_LINES and "Why one file:" not in docstring:
            long.append(f"{os.path.relpath(path, ROOT)} ({lines} lines)")
    assert not long, f"over {MAX_LINES} lines without 'Why one file:' in the module docstring: {long}"


def test_sources_point_nowhere_outside_the_repository() -> None:
    offenders = []
    for path in sorted(SOURCES.rglob("*.py")):
        text = path.read_text()
        for marker in ("SPEC §", MACHINE_ROOT, "shared/seeds", "STYLE.md"):
            if marker in text:
                offenders.append(f"{os.path.relpath(path, ROOT)}: {marker!r}")
    assert not offenders, offenders


def test_no_model_family_imports_another() -> None:
    """Shared pieces live in layers / checks / temporal / target_attention / tdpe, not in a sibling model's file."""
    from longrec.models import MODELS

    families = {cls.__module__ for _, cls in MODELS.values()}
    borrowed = []
    for module in sorted(families):
        tree = ast.parse((ROOT / "src" / Path(*module.split("."))).with_suffix(".py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in families and node.module != module:
                borrowed.append(f"{module} imports {node.module}")
    assert not borrowed, borrowed
