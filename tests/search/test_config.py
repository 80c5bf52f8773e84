"""The `[search]` table: each searcher's settings class, the flat table, every problem at once, the package layering."""

from __future__ import annotations

import ast
import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

import pytest
import torch

import longrec.search
from longrec.config import Config, load_config
from longrec.data.batch import Batch
from longrec.search import SEARCHERS, SearchEmbedder
from longrec.search.category import CategoryOptions
from longrec.search.combined import HardSoftOptions
from longrec.search.config import SearchConfig, SearchOptions
from longrec.search.hierarchical import HierarchicalOptions
from longrec.search.sdim import SDIMOptions
from longrec.search.simhash import SimHashOptions
from longrec.settings import ConfigError

# A non-default value for every setting of every searcher that has settings.
SETTINGS: dict[str, dict[str, Any]] = {
    "category": {"level": 0, "fill": "latest"},
    "hierarchical": {"min_depth": 2, "fill": "latest"},
    "hard+soft": {"hard_method": "category", "hard_k": 3, "level": 0, "min_depth": 2},
    "simhash": {"hash_bits": 16, "seed": 3},
    "sdim": {"hash_rounds": 8, "round_bits": 2, "seed": 3},
}


def test_every_problem_of_a_search_table_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "exp.toml"
    path.write_text('search = { method = "category", k = 8, levle = 0, hash_bits = 32, seed = 1 }\n')
    with pytest.raises(ConfigError) as err:
        load_config(path, ["search.chunk=100", "search.level=fine"])
    assert err.value.problems == [
        "search.levle: unknown key (did you mean 'level'?)",
        "search.hash_bits is a setting of simhash; search.method is 'category' (remove it, or set search.method = "
        "'simhash')",
        "search.seed is a setting of simhash, sdim; search.method is 'category' (remove it, or set search.method to "
        "one of them)",
        "search.level: expected int, got str 'fine' (--set)",
        "search.chunk must be 0 (auto), -1 (the whole history at once) or a positive multiple of 1024 (search scores "
        "blocks of 1024 behaviours). Got 100 instead. (--set)",
    ]


def test_a_rejected_setting_the_check_against_k_and_an_unknown_method_are_reported_with_the_rest() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["search.method=hard+soft", "search.k=4", "search.hard_k=5", "search.min_depth=0"])
    assert err.value.problems == [
        "search.min_depth must be >= 1 (1 = fall back to the coarsest taxonomy level). Got 0. (--set)",
        "search.hard_k (5) must be <= search.k (4): the hard block is part of the K kept. (--set)",
    ]
    with pytest.raises(ConfigError) as err:
        load_config(None, ["search.method=simhsh", "search.k=0", "search.hash_bits=8", "search.option=1"])
    assert err.value.problems == [  # hash_bits is simhash's: not reported while the method itself is unknown
        "search.option: unknown key (known keys: method, k, chunk) (--set)",
        "search.method: unknown searcher 'simhsh' (did you mean 'simhash'?). Known searchers: none, category, "
        "hard+soft, hierarchical, latest, sdim, simhash, soft. (--set)",
        "search.k must be a positive int. Got 0 instead. (--set)",
    ]


@pytest.mark.parametrize("method", sorted(SEARCHERS))
def test_the_search_section_of_config_json_is_flat_and_round_trips(method: str) -> None:
    given = {"method": method, "k": 5, **SETTINGS.get(method, {})}
    config = load_config(None, [f"search.{key}={json.dumps(value)}" for key, value in given.items()])
    saved = json.loads(config.to_json())["search"]
    assert saved == {**given, "chunk": 0}, "only the chosen searcher's settings, under the keys users write"
    assert Config.from_dict(json.loads(config.to_json())) == config
    options = SEARCHERS[method].options
    assert config.search.options == (options(**SETTINGS[method]) if options is not None else None)


def test_search_config_fills_the_methods_defaults_and_refuses_another_methods_options() -> None:
    assert SearchConfig("simhash", 8).options == SimHashOptions()
    assert SearchConfig("soft", 8).options is None and SearchConfig().options is None
    with pytest.raises(ConfigError, match=r"search.method = 'simhash' takes SimHashOptions. Got SDIMOptions instead"):
        SearchConfig("simhash", 8, SDIMOptions())
    with pytest.raises(ConfigError, match=r"search.method = 'latest' takes no settings. Got CategoryOptions instead"):
        SearchConfig("latest", 8, CategoryOptions())
    with pytest.raises(ConfigError, match=r"search.method = 'none' takes no settings"):
        SearchConfig("none", 8, CategoryOptions())
    with pytest.raises(ConfigError, match=r"search.hard_k \(10\) must be <= search.k \(4\)"):
        SearchConfig("hard+soft", 4)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: SimHashOptions(hash_bits=0), r"search.hash_bits must be a positive int. Got 0 instead."),
        (lambda: SDIMOptions(hash_rounds=0), r"search.hash_rounds must be a positive int. Got 0 instead."),
        (lambda: SDIMOptions(round_bits=-1), r"search.round_bits must be a positive int. Got -1 instead."),
        (lambda: CategoryOptions(level=1.5), r"search.level must be an int \(0 = coarsest, -1 = finest\). Got 1.5"),
        (lambda: CategoryOptions(level=True), r"search.level must be an int .* Got True instead."),
        (lambda: HierarchicalOptions(min_depth=0), r"search.min_depth must be >= 1 .* Got 0."),
        (lambda: HardSoftOptions(hard_method="soft"), r"search.hard_method must be one of category, hierarchical"),
        (lambda: HardSoftOptions(hard_k=-1), r"search.hard_k must be >= 0. Got -1 instead."),
        (lambda: HardSoftOptions(min_depth=0), r"search.min_depth must be >= 1"),
        (lambda: HardSoftOptions(level="x"), r"search.level must be an int"),
    ],
)
def test_each_options_class_rejects_bad_values(build: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build()


def test_hard_soft_options_report_every_problem_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        HardSoftOptions(hard_method="categroy", hard_k=-2, level=None, min_depth=0)  # type: ignore[arg-type]
    assert len(err.value.problems) == 4


def test_every_searchers_settings_class_lives_next_to_it_and_is_a_frozen_search_option() -> None:
    classes = {entry.options for entry in SEARCHERS.values() if entry.options is not None}
    assert classes == set(typing.get_args(SearchOptions)), "SearchOptions lists exactly the registry's classes"
    for name, entry in SEARCHERS.items():
        if entry.options is None:
            continue
        assert entry.options.__module__ == entry.search.__module__, f"{name}: settings defined away from the searcher"
        assert dataclasses.is_dataclass(entry.options) and entry.options.__dataclass_params__.frozen  # type: ignore[attr-defined]
        entry.options()  # the defaults are valid


def test_a_model_with_search_embeddings_is_a_search_embedder() -> None:
    class Embeds(torch.nn.Module):
        def search_embeddings(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.zeros(len(batch), 2), torch.zeros(*batch.history.shape, 2)  # [B, D], [B, L, D]

    assert isinstance(Embeds(), SearchEmbedder)
    assert not isinstance(torch.nn.Linear(1, 1), SearchEmbedder)


# Packages above the search stage: the search package must not import them (nor the experiment config).
ABOVE = (
    "longrec.config",
    "longrec.models",
    "longrec.train",
    "longrec.eval",
    "longrec.run",
    "longrec.cli",
    "longrec.serve",
)


def _imports(path: Path) -> tuple[list[str], list[str]]:
    """(modules imported at module level, modules imported inside a function or class) of one source file."""
    tree = ast.parse(path.read_text())
    top, nested = [], []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            (top if node in tree.body else nested).extend(names)
    return top, nested


def test_the_search_package_imports_nothing_above_it_and_has_no_cycle() -> None:
    package = Path(longrec.search.__file__).parent
    graph: dict[str, set[str]] = {}
    for path in sorted(package.glob("*.py")):
        module = "longrec.search" if path.stem == "__init__" else f"longrec.search.{path.stem}"
        top, nested = _imports(path)
        assert not nested, f"{module} imports inside a function: {nested}"
        above = [name for name in top if name.startswith(ABOVE)]
        assert not above, f"{module} imports {above}, above the search stage"
        graph[module] = {name for name in top if name.startswith("longrec.search")}
    for module, deps in graph.items():
        if module != "longrec.search":
            assert "longrec.search" not in deps, f"{module} imports the package itself"
    seen: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join([*path, module])}"
        if module in seen:
            return
        for dep in graph.get(module, ()):
            visit(dep, (*path, module))
        seen.add(module)

    for module in graph:
        visit(module, ())
