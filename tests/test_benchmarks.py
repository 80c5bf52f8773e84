"""The benchmark scripts stand on one harness (benchmarks/_harness.py), and benchmarks/README.md holds what their
results JSON render: every script imports, parses its options (the harness's plus its own) and, with --from-json,
rebuilds its README section from its committed JSON exactly as the README holds it."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from longrec.data.batch import Batch
from longrec.models import build_model
from longrec.search.config import SearchConfig

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
README = BENCHMARKS / "README.md"
SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("bench_*.py"))


@pytest.fixture(scope="module")
def modules() -> Iterator[dict[str, ModuleType]]:
    """The harness and every script, imported as `python benchmarks/<script>.py` would (the folder on sys.path)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield {name: importlib.import_module(name) for name in ["_harness", *SCRIPTS]}
    finally:
        sys.path.remove(str(BENCHMARKS))


def names(script: str) -> tuple[str, Path]:
    """bench_search_latency -> (its README section "search-latency", its results JSON)."""
    name = script.removeprefix("bench_")
    return name.replace("_", "-"), BENCHMARKS / "results" / f"{name}.json"


def test_there_are_benchmarks_and_no_script_imports_another() -> None:
    assert len(SCRIPTS) >= 9
    for script in SCRIPTS:
        source = (BENCHMARKS / f"{script}.py").read_text()
        assert not re.search(r"^\s*(from|import) bench_", source, re.M), f"{script} imports another script"
        assert "import _harness as harness" in source, f"{script} does not stand on the harness"
        for marker in ("SPEC §", "/" + "work" + "/", "/tmp/bench"):
            assert marker not in source.split('"""', 2)[-1], f"{script}: {marker!r} outside its docstring"


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_script_parses_the_harness_options_and_its_own(modules: dict[str, ModuleType], script: str) -> None:
    parser = modules[script].parser()
    args = parser.parse_args([])
    _, results = names(script)
    assert args.json == results
    assert args.from_json is None and not args.update_readme and args.readme == README
    assert "--from-json" in parser.format_help() and modules[script].__doc__.split("\n")[0] in parser.format_help()


@pytest.mark.parametrize("script", SCRIPTS)
def test_from_json_rebuilds_the_readme_section_unchanged(
    modules: dict[str, ModuleType], script: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    harness, module = modules["_harness"], modules[script]
    section, results = names(script)
    committed = harness.read_section(README, section)
    assert committed is not None, f"benchmarks/README.md has no {section} section"
    readme = tmp_path / "README.md"
    shutil.copy(README, readme)
    before = results.read_bytes()
    args = module.parser().parse_args(["--from-json", str(results), "--update-readme", "--readme", str(readme)])
    harness.main(args, section, module.measure, module.render)
    assert readme.read_text() == README.read_text()  # the section (tables and all) and everything around it
    assert results.read_bytes() == before  # re-rendering writes no JSON
    assert committed in capsys.readouterr().out


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


@pytest.mark.parametrize("script", SCRIPTS)
def test_results_hold_no_absolute_path(script: str) -> None:
    _, results = names(script)
    found = [s for s in _strings(json.loads(results.read_text())) if re.match(r"^(/|[A-Za-z]:\\)", s)]
    assert not found, found


def test_write_section_replaces_only_between_its_markers(modules: dict[str, ModuleType], tmp_path: Path) -> None:
    harness = modules["_harness"]
    readme = tmp_path / "README.md"
    readme.write_text("# B\n\n<!-- BEGIN a -->\nold\n<!-- END a -->\n\nReading of a, by hand.\n")
    harness.write_section(readme, "a", "new | table")
    harness.write_section(readme, "b", "appended")
    text = readme.read_text()
    assert "<!-- BEGIN a -->\nnew | table\n<!-- END a -->\n\nReading of a, by hand.\n" in text
    assert harness.read_section(readme, "a") == "new | table" and harness.read_section(readme, "b") == "appended"


def _batch(B: int, L: int = 6, items: int = 30, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(
        history=torch.randint(1, items, (B, L), generator=g),
        history_mask=torch.ones(B, L, dtype=torch.bool),
        target=torch.randint(1, items, (B,), generator=g),
        label=torch.randint(0, 2, (B,), generator=g).float(),
    )


def test_trainer_times_every_step_and_counts_each_steps_fastest_round(modules: dict[str, ModuleType]) -> None:
    harness = modules["_harness"]
    trainers = []
    for _ in range(2):
        torch.manual_seed(0)
        trainers.append(
            harness.Trainer(
                build_model("din", num_items=30, dim=4, attention_hidden=(8,), head_hidden=(8,)),
                SearchConfig(),
                lr=0.01,
            )
        )
    batches = [_batch(4, seed=i) for i in range(3)]
    harness.alternate_steps(trainers, batches, warmup=1, rounds=2)
    plain, other = trainers
    assert plain.losses == other.losses and len(plain.losses) == 6  # same seed, same batches: same steps
    assert [len(r.steps) for r in plain.rounds] == [2, 2] and all(len(r.warmup) == 1 for r in plain.rounds)
    fastest = sum(min(a, b) for a, b in zip(plain.rounds[0].times, plain.rounds[1].times, strict=True))
    assert plain.best_rate() == pytest.approx(8 / fastest)
    timed = plain.epoch(iter(batches), limit=3, warmup=1)
    assert timed.sizes == [4, 4] and len(timed.waits) == 2 and timed.rate > 0 and plain.rounds[-1] is timed


def test_a_store_is_prepared_once_per_knobs(modules: dict[str, ModuleType], tmp_path: Path) -> None:
    stores = modules["_harness"].Stores(tmp_path)
    knobs = {"num_users": 20, "events_per_user": 30, "impressions_per_user": 3}
    first = stores.synthetic(**knobs)
    stamp = (first.folder / "store.json").stat().st_mtime_ns
    again = stores.synthetic(**knobs)
    other = stores.synthetic(**(knobs | {"num_users": 24}))
    assert again.folder == first.folder and (first.folder / "store.json").stat().st_mtime_ns == stamp
    assert other.folder != first.folder and other.open().sizes["num_items"] > 0
    assert first.truth().height == first.info["counts"]["impressions"]
