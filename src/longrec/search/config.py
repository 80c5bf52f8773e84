"""`SearchConfig`: which searcher picks the K behaviours a model attends to, and its settings (the `[search]` table).

The table is flat and names the chosen searcher's settings next to `method`, `k` and `chunk`:

    search = { method = "simhash", k = 20, hash_bits = 32 }

Each searcher's settings are a frozen dataclass next to its function (`SimHashOptions` in search/simhash.py, ...),
listed in `SEARCHERS` (search/registry.py); `SearchConfig.options` holds the chosen searcher's. `fill_search` builds
a `SearchConfig` from the table and reports every problem at once: an unknown key (did you mean ...?), a key of
another searcher, a bad value. `SearchConfig.to_table` writes the same flat table back.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from longrec.search.category import CategoryOptions
from longrec.search.combined import HardSoftOptions
from longrec.search.hierarchical import HierarchicalOptions
from longrec.search.registry import SEARCHERS
from longrec.search.sdim import SDIMOptions
from longrec.search.simhash import SimHashOptions
from longrec.settings import RESUME_FREE, ConfigError, fill_dataclass

__all__ = ["SearchConfig", "SearchOptions", "fill_search"]

# The settings class of every searcher that has one (the `options` of `SEARCHERS`; a test keeps the two in step).
SearchOptions = CategoryOptions | HardSoftOptions | HierarchicalOptions | SDIMOptions | SimHashOptions

_TOP = ("method", "k", "chunk")  # the keys of the table that are not a searcher's setting


@dataclass(frozen=True)
class SearchConfig:
    """The search stage (`longrec.search`): which searcher picks the K behaviours the model attends to.

    `options` left None takes the method's defaults (`SearchConfig("simhash", 20)` has `SimHashOptions()`).
    """

    method: str = "none"  # none (whole history) | a name in longrec.search.SEARCHERS
    k: int = 20  # behaviours kept per sample
    options: SearchOptions | None = None  # the method's settings class (None for a method without settings)
    # embedding searchers: behaviours embedded+scored at a time; 0 = auto, -1 = all L (multiple of 1024)
    chunk: int = field(default=0, metadata=RESUME_FREE)

    def __post_init__(self) -> None:
        problems = []
        if self.method != "none" and self.method not in SEARCHERS:
            close = difflib.get_close_matches(self.method, list(SEARCHERS), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            known = ", ".join(["none", *sorted(SEARCHERS)])
            problems.append(f"search.method: unknown searcher {self.method!r}{hint}. Known searchers: {known}.")
        if self.k < 1:
            problems.append(f"search.k must be a positive int. Got {self.k} instead.")
        if not (self.chunk in (0, -1) or (self.chunk > 0 and self.chunk % 1024 == 0)):
            problems.append(
                f"search.chunk must be 0 (auto), -1 (the whole history at once) or a positive multiple of 1024 "
                f"(search scores blocks of 1024 behaviours). Got {self.chunk} instead."
            )
        entry = SEARCHERS.get(self.method)
        expected = entry.options if entry is not None else None
        if expected is not None and self.options is None:
            object.__setattr__(self, "options", expected())  # the method's defaults (frozen: set once, here)
        registered = entry is not None or self.method == "none"
        wrong = _options_problems(self.method, expected, self.options) if registered else []
        problems += wrong
        if entry is not None and entry.check_k is not None and self.k >= 1 and not wrong:
            problems += entry.check_k(self.k, dataclasses.asdict(self.options) if self.options is not None else {})
        if problems:
            raise ConfigError(problems, "SearchConfig")

    def to_table(self) -> dict[str, Any]:
        """The flat `[search]` table: `method`, `k`, the method's settings and `chunk` (what `fill_search` reads)."""
        settings = dataclasses.asdict(self.options) if self.options is not None else {}
        return {"method": self.method, "k": self.k, **settings, "chunk": self.chunk}

    @classmethod
    def from_table(cls, table: Mapping[str, Any], *, lenient: bool = False) -> SearchConfig:
        """`fill_search` that raises: `SearchConfig.from_table({"method": "simhash", "k": 8, "hash_bits": 16})`.

        Raises:
            ConfigError: every problem of the table, at once.
        """
        problems: list[str] = []
        config = fill_search(table, "search.", problems, lenient=lenient)
        if config is None:
            raise ConfigError(problems, "the search table")
        return config


def _options_problems(method: str, expected: type | None, options: object) -> list[str]:
    """What is wrong with `options` as the settings of `method` (whose settings class is `expected`)."""
    if expected is None and options is not None:
        return [f"search.method = {method!r} takes no settings. Got {type(options).__name__} instead."]
    if expected is not None and type(options) is not expected:
        return [f"search.method = {method!r} takes {expected.__name__}. Got {type(options).__name__} instead."]
    return []


def fill_search(
    table: Mapping[str, Any], prefix: str, problems: list[str], *, lenient: bool = False
) -> SearchConfig | None:
    """Build a `SearchConfig` from the flat `[search]` table, appending every problem to `problems`.

    Args:
        table: `method`, `k`, `chunk` and the settings of the chosen method (`hash_bits`, `level`, ...).
        prefix: how keys are named in problems ("search.").
        problems: where problems go: an unknown key (with a did-you-mean hint), a setting of another method, a wrong
            type, a rejected value.
        lenient: drop settings of other methods instead of reporting them (config.json files of runs written before
            the settings moved to their searchers hold every searcher's settings).

    Returns:
        The config, or None if there was any problem.
    """
    before = len(problems)
    method = table.get("method", "none")
    valid = isinstance(method, str) and (method == "none" or method in SEARCHERS)  # else the method is the problem
    expected = SEARCHERS[method].options if valid and method != "none" else None
    own = [f.name for f in dataclasses.fields(expected)] if expected is not None else []
    owners: dict[str, list[str]] = {}  # setting -> the methods that have it
    for name, entry in SEARCHERS.items():
        for f in dataclasses.fields(entry.options) if entry.options is not None else ():
            owners.setdefault(f.name, []).append(name)
    settings = {}
    for key, value in table.items():
        if key in _TOP:
            continue
        if key in own:
            settings[key] = value
        elif key in owners:
            if valid and not lenient:
                fix = f"= {owners[key][0]!r}" if len(owners[key]) == 1 else "to one of them"
                problems.append(
                    f"{prefix}{key} is a setting of {', '.join(owners[key])}; {prefix}method is {method!r} "
                    f"(remove it, or set {prefix}method {fix})"
                )
        else:
            known = [*_TOP, *owners]
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join([*_TOP, *own])}"
            problems.append(f"{prefix}{key}: unknown key ({hint})")
    top = {key: table[key] for key in _TOP if key in table}
    options = fill_dataclass(expected, settings, prefix, problems) if expected is not None else None
    if expected is None or options is not None:
        config = fill_dataclass(SearchConfig, {**top, "options": options}, prefix, problems)
        return config if len(problems) == before else None
    # The settings failed their own checks: check method, k and chunk alone (method is known to be valid here), and
    # the settings against k with the values as given, so one run reports every problem.
    alone = fill_dataclass(SearchConfig, {**top, "method": "none"}, prefix, problems)
    check_k = SEARCHERS[method].check_k
    if alone is not None and check_k is not None:
        defaults = {f.name: f.default for f in dataclasses.fields(expected)}
        problems += check_k(alone.k, {**defaults, **settings})
    return None
