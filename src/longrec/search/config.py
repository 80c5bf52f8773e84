"""`SearchConfig`: which searcher picks the K behaviours a model attends to, and its settings (the `[search]` table)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from longrec.settings import RESUME_FREE, ConfigError

__all__ = ["SearchConfig"]


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
    # embedding searchers: behaviours embedded+scored at a time; 0 = auto, -1 = all L (multiple of 1024)
    chunk: int = field(default=0, metadata=RESUME_FREE)

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
