"""Typed experiment configs: TOML files and `--set key=value` overrides fill frozen dataclasses.

Every problem (unknown key, wrong type, bad value) is collected and raised at once as one `ConfigError`, with
did-you-mean hints. The resolved config is saved as `config.json` in each run directory.

Example:
    >>> cfg = load_config(None, ["model.name=din", "train.lr=0.01", "data.path=data/synth"])
    >>> cfg.train.lr
    0.01
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import typing
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longrec.data.config import DataConfig
from longrec.files import dumps_json
from longrec.models import DATA_SIZE_FIELDS, MODELS
from longrec.search.config import SearchConfig, fill_search
from longrec.settings import ConfigError, dotted_keys, fill_dataclass, merge, parse_overrides
from longrec.train.config import TrainConfig

__all__ = [
    "DATA_SIZE_FIELDS",
    "Config",
    "ConfigError",
    "DataConfig",
    "ModelSection",
    "SearchConfig",
    "TrainConfig",
    "load_config",
]


@dataclass(frozen=True)
class ModelSection:
    """`model = { name = "din", dim = 16, ... }`: the registry name plus that model's hyper-parameters."""

    name: str = "din"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    """A whole experiment."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["model"] = {"name": self.model.name, **self.model.params}
        out["search"] = self.search.to_table()  # flat: the chosen searcher's settings only
        return out

    def to_json(self) -> str:
        return dumps_json(self.to_dict())

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config", *, lenient: bool = False) -> Config:
        """The config of `to_dict()` (a run's config.json), checked as `load_config` checks a file.

        Args:
            raw: the nested tables.
            source: what problems name.
            lenient: drop search settings of searchers other than `search.method` (config.json files written before
                each searcher had its own settings hold every searcher's); other problems are still reported.

        Raises:
            ConfigError: every problem, at once, naming `source`.
        """
        return _from_raw(raw, source, lenient=lenient)


def _check_model(section: dict[str, Any], problems: list[str]) -> ModelSection | None:
    params = dict(section)
    name = params.pop("name", "din")
    if name not in MODELS:
        close = difflib.get_close_matches(str(name), list(MODELS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        problems.append(f"model.name: unknown model {name!r}{hint}. Known models: {', '.join(sorted(MODELS))}.")
        return None
    config_cls = MODELS[name][0]
    given = [k for k in params if k in DATA_SIZE_FIELDS]
    for key in given:
        problems.append(f"model.{key}: comes from the prepared data; remove it from the config")
    hints = typing.get_type_hints(config_cls)
    # Validate values by building the model config with placeholder data sizes.
    dummy = {f.name: _placeholder(hints[f.name]) for f in dataclasses.fields(config_cls) if f.name in DATA_SIZE_FIELDS}
    checked = {k: v for k, v in params.items() if k not in DATA_SIZE_FIELDS}
    before = len(problems)
    built = fill_dataclass(config_cls, {**dummy, **checked}, "model.", problems)
    if built is None or len(problems) > before:
        return None
    return ModelSection(name=name, params={k: getattr(built, k) for k in checked})


def _placeholder(tp: Any) -> Any:
    return [8] if typing.get_origin(tp) in (list, tuple) else 8


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a TOML experiment file (or defaults when `path` is None), apply `--set` overrides, and check it all.

    Args:
        path: a TOML file with `[model]`, `[data]` and `[train]` tables (all optional).
        overrides: `key=value` strings, e.g. `["train.lr=0.01", "model.dim=32"]`.

    Returns:
        The resolved, validated `Config`.

    Raises:
        FileNotFoundError: `path` does not exist.
        ConfigError: every problem found, at once.
    """
    source = str(path) if path else "config"
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file {p} not found.")
        try:
            raw = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ConfigError([f"not valid TOML: {err}"], source) from err
    given = parse_overrides(overrides or [])
    if given:
        source = f"{source} + --set" if path is not None else "--set"
    return _from_raw(merge(raw, given), source, dotted_keys(given))


def _from_raw(raw: dict[str, Any], source: str, set_keys: Collection[str] = (), lenient: bool = False) -> Config:
    """Check and build a `Config` from nested tables; problems about keys in `set_keys` are marked '(--set)'."""
    problems: list[str] = []
    sections = {f.name for f in dataclasses.fields(Config)}
    for key in raw:
        if key not in sections:
            close = difflib.get_close_matches(key, sorted(sections), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known sections: {', '.join(sorted(sections))}"
            problems.append(f"{key}: unknown section ({hint})")
    tables: dict[str, dict[str, Any]] = {}
    for name in sections:
        value = raw.get(name, {})
        if isinstance(value, dict):
            tables[name] = value
        else:
            problems.append(f"{name}: expected a table of settings, got {type(value).__name__} {value!r}")
    model = _check_model(tables["model"], problems) if "model" in tables else None
    data = fill_dataclass(DataConfig, tables.get("data", {}), "data.", problems)
    search = fill_search(tables.get("search", {}), "search.", problems, lenient=lenient)
    train = fill_dataclass(TrainConfig, tables.get("train", {}), "train.", problems)
    if search is not None and data is not None and search.method != "none" and search.k > data.max_history:
        problems.append(
            f"search.k ({search.k}) must be <= data.max_history ({data.max_history}): search keeps at most the whole "
            "history."
        )
    if problems or model is None or data is None or train is None or search is None:
        raise ConfigError([_mark_set(p, set_keys) for p in problems], source)
    return Config(model=model, data=data, search=search, train=train)


def _mark_set(problem: str, set_keys: Collection[str]) -> str:
    """'train.lr must be > 0 ...' -> '... (--set)' when train.lr came from --set."""
    key = problem.split(":", 1)[0].split(" ", 1)[0].split("[", 1)[0]
    return f"{problem} (--set)" if key in set_keys else problem
