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
import json
import re
import tomllib
import typing
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longrec.settings import ConfigError, dotted_keys, fill_dataclass, merge, parse_overrides

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

# Model-config fields that come from the prepared data, never from the experiment file.
DATA_SIZE_FIELDS = frozenset(
    {
        "num_users",
        "num_items",
        "num_categories",
        "taxonomy_levels",
        "num_actions",
        "num_domains",
        "num_scenes",
        "num_goals",
        "num_extra",
    }
)
METRICS = ("auc", "gauc", "gauc_category", "logloss")
PRECISIONS = ("fp32", "bf16")
DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?|auto")


@dataclass(frozen=True)
class DataConfig:
    """Which prepared store to read, and how to batch it."""

    path: str = ""  # directory written by `longrec prepare`
    max_history: int = 200  # L_max: most recent behaviours kept per sample
    num_workers: int = 0  # background processes building batches (0 = in the training process)
    prefetch_factor: int = 4  # batches each worker builds ahead
    check_batches: bool = False  # check_batch on every batch (shapes, id ranges); `longrec --debug train` sets it
    bucket_by_length: bool = False  # batch samples of similar history length together (less padding), order shuffled
    bucket_batches: int = 50  # bucket_by_length: batches per length-sorting pool; 0 = sort the whole epoch

    def __post_init__(self) -> None:
        problems = []
        if self.bucket_batches < 0:
            problems.append(f"data.bucket_batches must be >= 0. Got {self.bucket_batches} instead.")
        if self.max_history < 1:
            problems.append(f"data.max_history must be a positive int. Got {self.max_history} instead.")
        if self.num_workers < 0:
            problems.append(f"data.num_workers must be >= 0. Got {self.num_workers} instead.")
        if self.prefetch_factor < 1:
            problems.append(f"data.prefetch_factor must be >= 1. Got {self.prefetch_factor} instead.")
        if problems:
            raise ConfigError(problems, "DataConfig" if isinstance(self, DataConfig) else "TrainConfig")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, validation and stopping."""

    lr: float = 1e-3  # Adam learning rate
    batch_size: int = 256
    eval_batch_size: int = 4096
    epochs: int = 2
    seed: int = 0  # model init, shuffling, everything random in training
    l2: float = 0.0  # L2 penalty on non-embedding weights (added to the loss, never to the reported logloss)
    eval_every: int = 0  # validate every N steps; 0 = at the end of each epoch
    metric: str = "auc"  # validation metric that picks the best checkpoint: auc | gauc | gauc_category | logloss
    patience: int = 0  # stop after this many validations without improvement; 0 = never stop early
    max_steps: int = 0  # stop after this many steps in total; 0 = no limit
    threads: int = 0  # torch intra-op threads; 0 = leave torch's default
    progress: bool = True  # progress bar on stderr (off automatically when stderr is not a terminal)
    goal_weights: dict[str, float] = field(default_factory=dict)  # BCE weight per goal name ({buy = 2.0}); else 1
    precision: str = "fp32"  # fp32 | bf16: autocast (bf16 MLPs; fp32 attention softmax/pooling, loss and weights)
    key_collection: bool = False  # embedding lookups gather each distinct id once, then scatter back (SPEC §5)
    compile: bool = False  # torch.compile the model's forward methods (needs a C compiler on the CPU)
    device: str = "cpu"  # cpu | cuda | cuda:N | auto (cuda when available)

    def __post_init__(self) -> None:
        problems = []
        if self.precision not in PRECISIONS:
            problems.append(f"train.precision must be one of {', '.join(PRECISIONS)}. Got {self.precision!r} instead.")
        if not DEVICE_PATTERN.fullmatch(self.device):
            problems.append(f"train.device must be cpu, cuda, cuda:N or auto. Got {self.device!r} instead.")
        for goal, weight in self.goal_weights.items():
            ok = isinstance(weight, int | float) and not isinstance(weight, bool) and 0 <= weight < float("inf")
            if not isinstance(goal, str) or not goal or not ok:
                problems.append(f"train.goal_weights[{goal!r}] must be a finite float >= 0. Got {weight!r} instead.")
        for name in ("batch_size", "eval_batch_size", "epochs"):
            if getattr(self, name) < 1:
                problems.append(f"train.{name} must be a positive int. Got {getattr(self, name)} instead.")
        if self.lr <= 0:
            problems.append(f"train.lr must be > 0. Got {self.lr} instead.")
        if self.l2 < 0:
            problems.append(f"train.l2 must be >= 0. Got {self.l2} instead.")
        for name in ("eval_every", "patience", "max_steps", "threads"):
            if getattr(self, name) < 0:
                problems.append(f"train.{name} must be >= 0. Got {getattr(self, name)} instead.")
        if self.metric not in METRICS:
            problems.append(f"train.metric must be one of {', '.join(METRICS)}. Got {self.metric!r} instead.")
        if problems:
            raise ConfigError(problems, "DataConfig" if isinstance(self, DataConfig) else "TrainConfig")


@dataclass(frozen=True)
class SearchConfig:
    """The search stage (`longrec.search`): which searcher picks the K behaviours the model attends to."""

    method: str = "none"  # none (whole history) | a name in longrec.search.SEARCHERS
    k: int = 20  # behaviours kept per sample
    seed: int = 0  # random hash planes (simhash, sdim)
    hash_bits: int = 64  # simhash: signature bits (ETA)
    hash_rounds: int = 48  # sdim: hash rounds m (score = rounds in which a behaviour collides with the target)
    round_bits: int = 3  # sdim: bits per round τ (a collision needs all τ bits equal)
    level: int = -1  # category search: taxonomy column matched (Python indexing into M: 0 coarsest, -1 finest)
    min_depth: int = 1  # hierarchical search: shallowest match depth kept (1 = down to the coarsest level, M = finest)
    hard_method: str = "hierarchical"  # hard+soft: the hard searcher (category | hierarchical)
    hard_k: int = 10  # hard+soft: width of the hard block (the first hard_k columns); the soft block gets k - hard_k
    chunk: int = 0  # embedding searchers: behaviours embedded+scored at a time; 0 = auto, -1 = all L (multiple of 1024)

    def __post_init__(self) -> None:
        from longrec.search import SEARCHERS  # the registry imports torch: keep it out of module import time
        from longrec.search.combined import HARD_SEARCHERS

        problems = []
        if self.method != "none" and self.method not in SEARCHERS:
            close = difflib.get_close_matches(self.method, list(SEARCHERS), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            known = ", ".join(["none", *sorted(SEARCHERS)])
            problems.append(f"search.method: unknown searcher {self.method!r}{hint}. Known searchers: {known}.")
        if self.k < 1:
            problems.append(f"search.k must be a positive int. Got {self.k} instead.")
        for name in ("hash_bits", "hash_rounds", "round_bits"):
            if getattr(self, name) < 1:
                problems.append(f"search.{name} must be a positive int. Got {getattr(self, name)} instead.")
        if self.hard_method not in HARD_SEARCHERS:
            known = ", ".join(sorted(HARD_SEARCHERS))
            problems.append(f"search.hard_method must be one of {known}. Got {self.hard_method!r} instead.")
        if self.hard_k < 0:
            problems.append(f"search.hard_k must be >= 0. Got {self.hard_k} instead.")
        if self.min_depth < 1:
            problems.append(
                f"search.min_depth must be >= 1 (1 = fall back to the coarsest taxonomy level). Got {self.min_depth}."
            )
        if not (self.chunk in (0, -1) or (self.chunk > 0 and self.chunk % 1024 == 0)):
            problems.append(
                f"search.chunk must be 0 (auto), -1 (the whole history at once) or a positive multiple of 1024 "
                f"(search scores blocks of 1024 behaviours). Got {self.chunk} instead."
            )
        elif self.method == "hard+soft" and self.hard_k > self.k:
            problems.append(
                f"search.hard_k ({self.hard_k}) must be <= search.k ({self.k}): the hard block is part of the K kept."
            )
        if problems:
            raise ConfigError(problems, "SearchConfig")


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
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> Config:
        """The config of `to_dict()` (a run's config.json), checked as `load_config` checks a file.

        Raises:
            ConfigError: every problem, at once, naming `source`.
        """
        return _from_raw(raw, source)


def _check_model(section: dict[str, Any], problems: list[str]) -> ModelSection | None:
    from longrec.models import MODELS  # the registry imports torch: keep it out of module import time

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


def _from_raw(raw: dict[str, Any], source: str, set_keys: Collection[str] = ()) -> Config:
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
    search = fill_dataclass(SearchConfig, tables.get("search", {}), "search.", problems)
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
