"""`SyntheticConfig`: every knob of the synthetic generator, checked at construction (all problems at once)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from longrec.ingest.synthetic.mechanisms import MECHANISMS, SCENES

__all__ = ["SyntheticConfig"]


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (isinstance(value, int | float | np.integer | np.floating)) and not isinstance(value, bool)


@dataclass(frozen=True)
class SyntheticConfig:
    """Every knob of the synthetic generator; `__post_init__` rejects bad values, listing all problems at once."""

    # Scale.
    num_users: int = 2000
    events_per_user: int = 300  # mean behaviours per user; each user draws uniformly in mean * [1 - s, 1 + s]
    events_spread: float = 0.5  # s in [0, 1)
    num_items: int = 5000  # ad items, ids 1 .. num_items
    num_content_items: int = 20000  # content items, ids num_items + 1 .. num_items + num_content_items
    # Unified taxonomy industry ⊃ category ⊃ SPU and the content domain's own tags (mapped to levels 1-2).
    num_industries: int = 10
    num_categories: int = 100
    num_spus: int = 500
    num_content_tags: int = 300
    num_brands: int = 200  # brand is a function of the SPU
    num_noise_tags: int = 50  # values of the (c) noise field
    # Impressions and goals.
    impressions_per_user: int = 20
    goals: tuple[str, ...] = ("click", "cart", "buy")
    goal_decay_factors: tuple[float, ...] = (0.2, 1.0, 5.0)  # (e): τ multiplier per goal, aligned with goals
    target_from_history_prob: float = 0.6  # shown ad from the SPU of a recent ad behaviour, else from popularity
    target_recency_mean: float = 3.0  # mean number of ad behaviours back that the history-drawn target comes from
    impression_gap_seconds: float = 300.0  # mean delay of an impression after the behaviour it follows
    # Popularity, interests, sessions, funnel.
    zipf_exponent: float = 1.1  # item popularity within a category / SPU / tag, and tag popularity within a category
    category_zipf_exponent: float = 0.8  # category popularity prior
    num_interests: int = 4  # interest slots per user
    interest_concentration: float = 1.0  # Dirichlet alpha of the slot weights
    drift_prob: float = 0.05  # probability that a session replaces one interest slot
    explore_prob: float = 0.1  # probability that an event ignores the interests (popularity prior instead)
    session_length: float = 8.0  # mean behaviours per session
    session_gap_seconds: float = 60.0  # mean gap between behaviours of a session
    ad_fraction: float = 0.1  # share of behaviours in the ad domain (the rest is content)
    ad_funnel: tuple[float, float, float] = (0.3, 0.3, 0.4)  # P(click | view), P(cart | click), P(buy | cart)
    content_funnel: tuple[float, float] = (0.1, 0.3)  # P(like | view), P(share | like)
    # Planted mechanisms and their strengths.
    mechanisms: tuple[str, ...] = ("a", "b", "c", "d", "e", "f")
    target_positive_rate: float = 0.3  # the bias is calibrated so that mean(prob) equals this
    weight_a: float = 2.5
    weight_b: float = 1.0
    weight_d: float = 1.5
    weight_f: float = 1.5
    tau_min_days: float = 1.0  # (a): per-category τ, log-uniform in [tau_min_days, tau_max_days]
    tau_max_days: float = 60.0
    content_tau_days: float = 14.0  # (b): decay of content behaviours
    pair_pool: int = 6  # (d): A_t, B_t are drawn among this many most popular categories (>= 3)
    f_top_k: int = 20  # (f): how many recent same-SPU behaviours are averaged
    weight_g: float = 2.0
    g_categories: int = 2  # (g): the least popular categories become memory categories (only planted memories)
    g_memories: int = 3  # (g): memory behaviours per user, planted as the user's oldest behaviours
    g_min_back: int = 1000  # (g): only same-SPU behaviours more than this many behaviours before the impression count
    g_target_prob: float = 0.5  # (g): share of impressions that show an item of a memory SPU
    weight_h: float = 2.5
    h_tau_days: float = 14.0  # (h): decay of the behaviours of category π_scene(c) behind a target of category c
    h_identity_scenes: tuple[str, ...] = ("feed",)  # (h): scenes whose π is the identity; every other one migrates
    h_cross_prob: float = 0.5  # (h): share of history-drawn targets drawn by another scene's π (a prior draw)
    relevance_min_weight: float = 0.05  # (a), (b): a decayed match is "relevant" when its weight is at least this
    # Randomness and time.
    seed: int = 0
    start_time: int = 1_672_531_200  # 2023-01-01 00:00:00 UTC, epoch seconds
    span_days: float = 365.0

    def __post_init__(self) -> None:
        problems: list[str] = []
        positive_ints = (
            "num_users",
            "events_per_user",
            "num_items",
            "num_content_items",
            "num_industries",
            "num_categories",
            "num_spus",
            "num_content_tags",
            "num_brands",
            "num_noise_tags",
            "impressions_per_user",
            "num_interests",
            "f_top_k",
            "pair_pool",
            "g_categories",
            "g_memories",
        )
        for name in positive_ints:
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                problems.append(f"SyntheticConfig.{name} must be a positive int. Got {value!r} instead.")
        for name in ("seed", "start_time", "g_min_back"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                problems.append(f"SyntheticConfig.{name} must be a non-negative int. Got {value!r} instead.")
        if not problems:  # the order checks need valid ints
            chain = ("num_industries", "num_categories", "num_spus", "num_items")
            for coarse, fine in itertools.pairwise(chain):
                if getattr(self, coarse) > getattr(self, fine):
                    problems.append(
                        f"SyntheticConfig.{coarse} ({getattr(self, coarse)}) must be <= {fine} "
                        f"({getattr(self, fine)}): every node of the taxonomy needs at least one child."
                    )
            if not self.num_categories <= self.num_content_tags <= self.num_content_items:
                problems.append(
                    "SyntheticConfig must have num_categories <= num_content_tags <= num_content_items (every "
                    f"category needs a content tag, every tag an item). Got {self.num_categories}, "
                    f"{self.num_content_tags}, {self.num_content_items} instead."
                )
            if "g" in self.mechanisms and self.g_categories >= self.num_categories:
                problems.append(
                    f"SyntheticConfig.g_categories ({self.g_categories}) must be < num_categories "
                    f"({self.num_categories}) when mechanism 'g' is on: other categories must remain for the interests."
                )
            if "d" in self.mechanisms and not 3 <= self.pair_pool <= self.num_categories:
                problems.append(
                    f"SyntheticConfig.pair_pool must be in [3, num_categories = {self.num_categories}] when mechanism "
                    "'d' is on (the pair A_t, B_t must differ from each other and from the target). "
                    f"Got {self.pair_pool} instead."
                )
        probabilities = (
            "explore_prob",
            "drift_prob",
            "ad_fraction",
            "target_from_history_prob",
            "g_target_prob",
            "h_cross_prob",
        )
        for name in probabilities:
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value <= 1.0:
                problems.append(f"SyntheticConfig.{name} must be a probability in [0, 1]. Got {value!r} instead.")
        for name, funnel, size in (("ad_funnel", self.ad_funnel, 3), ("content_funnel", self.content_funnel, 2)):
            if len(funnel) != size or not all(_is_number(p) and 0.0 <= p <= 1.0 for p in funnel):
                problems.append(
                    f"SyntheticConfig.{name} must hold {size} probabilities in [0, 1]. Got {funnel!r} instead."
                )
        open_unit = (("events_spread", 0.0, True), ("target_positive_rate", 0.0, False))
        for name, low, closed in open_unit:
            value = getattr(self, name)
            ok = _is_number(value) and (low <= value if closed else low < value) and value < 1.0
            if not ok:
                bracket = "[0, 1)" if closed else "(0, 1)"
                problems.append(f"SyntheticConfig.{name} must be in {bracket}. Got {value!r} instead.")
        value = self.relevance_min_weight
        if not _is_number(value) or not 0.0 < value <= 1.0:
            problems.append(f"SyntheticConfig.relevance_min_weight must be in (0, 1]. Got {value!r} instead.")
        positive_floats = (
            "interest_concentration",
            "session_gap_seconds",
            "impression_gap_seconds",
            "tau_min_days",
            "tau_max_days",
            "content_tau_days",
            "h_tau_days",
            "span_days",
        )
        for name in positive_floats:
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 < value < math.inf:
                problems.append(f"SyntheticConfig.{name} must be a positive finite number. Got {value!r} instead.")
        for name in ("zipf_exponent", "category_zipf_exponent", "target_recency_mean"):
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value < math.inf:
                problems.append(f"SyntheticConfig.{name} must be a finite number >= 0. Got {value!r} instead.")
        if not _is_number(self.session_length) or not 1.0 <= self.session_length < math.inf:
            problems.append(f"SyntheticConfig.session_length must be >= 1. Got {self.session_length!r} instead.")
        if _is_number(self.span_days) and self.span_days > 36_500:
            problems.append(f"SyntheticConfig.span_days must be <= 36500 (100 years). Got {self.span_days} instead.")
        if _is_number(self.tau_min_days) and _is_number(self.tau_max_days) and self.tau_max_days < self.tau_min_days:
            problems.append(
                f"SyntheticConfig.tau_max_days ({self.tau_max_days}) must be >= tau_min_days ({self.tau_min_days})."
            )
        for name in ("weight_a", "weight_b", "weight_d", "weight_f", "weight_g", "weight_h"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value):
                problems.append(f"SyntheticConfig.{name} must be a finite number. Got {value!r} instead.")
        if (
            not self.goals
            or not all(isinstance(g, str) and g for g in self.goals)
            or len(set(self.goals)) != len(self.goals)
        ):
            problems.append(
                f"SyntheticConfig.goals must be a non-empty tuple of distinct non-empty strings. Got {self.goals!r}."
            )
        if len(self.goal_decay_factors) != len(self.goals) or not all(
            _is_number(f) and 0.0 < f < math.inf for f in self.goal_decay_factors
        ):
            problems.append(
                f"SyntheticConfig.goal_decay_factors must hold one positive factor per goal ({len(self.goals)} for "
                f"{self.goals!r}). Got {self.goal_decay_factors!r} instead."
            )
        scenes = self.h_identity_scenes
        if isinstance(scenes, str) or not all(isinstance(z, str) and z in SCENES for z in scenes):
            problems.append(
                f"SyntheticConfig.h_identity_scenes must be a tuple of scene names among {', '.join(SCENES)}. "
                f"Got {scenes!r} instead."
            )
        if "h" in self.mechanisms and _is_int(self.num_categories) and self.num_categories < 2:
            problems.append(
                "SyntheticConfig.num_categories must be >= 2 when mechanism 'h' is on (a migrating scene maps every "
                f"category to another one). Got {self.num_categories} instead."
            )
        unknown = [m for m in self.mechanisms if m not in MECHANISMS]
        if unknown:
            problems.append(
                f"SyntheticConfig.mechanisms has unknown mechanism(s) {unknown}. Known mechanisms: "
                f"{', '.join(MECHANISMS)}."
            )
        elif len(set(self.mechanisms)) != len(self.mechanisms):
            problems.append(f"SyntheticConfig.mechanisms must not repeat a letter. Got {self.mechanisms!r} instead.")
        if problems:
            raise ValueError(f"{len(problems)} problem(s) in SyntheticConfig:\n  - " + "\n  - ".join(problems))

    def on(self, mechanism: str) -> bool:
        """Whether a planted mechanism ('a'..'h') is switched on."""
        return mechanism in self.mechanisms
