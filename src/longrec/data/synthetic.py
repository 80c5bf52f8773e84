"""Synthetic commercial behaviour trajectories with planted, switchable mechanisms and exported ground truth.

No public dataset has merged ad + content trajectories, several advertising goals *and* known reasons for each label,
so this seeded generator provides them (SPEC §1, "Synthetic generator"). It writes a canonical behaviour log
(`longrec.ingest.schema`): behaviour rows plus labelled impression rows, whose labels depend only on the behaviours
strictly before the impression, through the planted mechanisms below.

**World.** A 3-level unified taxonomy industry (`cat_1`) ⊃ category (`cat_2`) ⊃ SPU (`cat_3`), ids 1-based and
unique per level. Ad items (ids `1 .. num_items`) each belong to one SPU; the ad domain's raw category *is* the SPU
(`source_category = "ad:<spu>"`, identity mapping). Content items (ids `num_items + 1 .. num_items +
num_content_items`, a disjoint range) carry a content tag (`"content:<tag>"`) from the content domain's own taxonomy,
which the mapping table sends to a unified (cat_1, cat_2); content never reaches level 3 (`cat_3` null). Brands are
tied to SPUs (structured but signal-free); ad items have a hidden quality q ~ N(0, 1).

**Behaviour.** Each user has `num_interests` interest slots (categories drawn from a Zipf popularity prior, mixed by
Dirichlet weights) that drift: a session replaces one slot with probability `drift_prob`. Events come in sessions
(session starts uniform over `span_days`, exponential gaps of about a minute inside a session). An event explores a
random popular category with probability `explore_prob`, else follows a slot; it is an ad behaviour with probability
`ad_fraction` (content is the majority, as in Tencent: ~1,500 content vs ~170 ad per user) and picks its item by
Zipf popularity within the category (ad) or within a content tag of the category (content). Actions follow a funnel
(ad: view → click → cart → buy; content: view → like → share); one row per behaviour holds the deepest stage.

**Impressions.** `impressions_per_user` labelled rows per user (`domain = "ad"`, `action = "impression"`), each a
few minutes after a random behaviour of the user; the shown ad comes with probability `target_from_history_prob`
from the SPU of a recent ad behaviour (so positives relate to history), else from the global popularity prior. The
goal is uniform over `goals`. Label ~ Bernoulli(sigmoid(logit)), logit = bias + Σ of the ON mechanisms' terms, each
computed from the behaviours with Δt = t_impression − t_i > 0 only; `bias` is calibrated so that the mean
probability equals `target_positive_rate`.

**Planted mechanisms** (letter → module meant to find it; weights `weight_*`):

- (a) → TIN / TDPE: same-SPU (`cat_3`) ad behaviours with a category-specific decay,
  `w_a · log1p(Σ exp(−Δt / τ))`, τ = `tau_days[cat_2(target)]` (log-uniform in [`tau_min_days`, `tau_max_days`]).
- (b) → hierarchical hard search, cross-domain trajectories: content behaviours of the target's `cat_2` (a coarse
  match: content has no `cat_3`), `w_b · log1p(Σ exp(−Δt / content_tau_days))`.
- (c) → DSI-TIN: a `noise_tag` field, uniform at random on every row, carrying no label signal (the column exists only
  when (c) is on, so an entangled attention over all fields has something to be distracted by).
- (d) → Stacked TIN: each target category t has a planted ordered pair (A_t, B_t) of other categories (≠ t, A ≠ B,
  drawn among the `pair_pool` most popular categories so that the pair occurs); `+w_d` if some `cat_2 == A_t`
  behaviour (any domain) precedes, strictly in time, a `cat_2 == B_t` behaviour, both before the impression. Neither
  A_t nor B_t matches the target alone, so only an order-2 interaction reveals it. The pair is present for ~30% of
  impressions at 300 events per user and for almost all at 10^5 (no time window), so it is informative at the default
  scale only.
- (e) → TDPE / TD-SASRec: (a)'s τ is multiplied by a per-goal factor (`goal_decay_factors`, default click ×0.2,
  cart ×1, buy ×5); off → factor 1 for every goal. (e) without (a) changes nothing.
- (f) → DARE: relevance is decided by category (the ≤ `f_top_k` most recent same-SPU ad behaviours) but each relevant
  behaviour's effect is the hidden item quality: `w_f · mean q_item`. Attention must learn category match, the
  representation must learn quality, and the two optima disagree.
- (g) → long histories + search (opt-in, off by default): long-range relevance that a recent window cannot see. The
  `g_categories` least popular categories become *memory* categories: the interest/explore/popularity priors never
  draw them; instead each user gets `g_memories` ad behaviours of random memory-category SPUs, planted as the user's
  oldest behaviours (before the first session). With probability `g_target_prob` an impression shows an item of a
  memory SPU (half the time one of the user's own memories, else a random one), and `+w_g` when a same-SPU behaviour
  lies **more than `g_min_back` behaviours before the impression**. Only those far behaviours count, and memory SPUs
  occur nowhere else, so the most recent `g_min_back` behaviours hold no evidence: a model that sees only the recent
  window cannot tell a remembered target from a new one, while search over the whole history (category search on
  `cat_3`, or soft search) can retrieve the memory. Users need histories longer than `g_min_back` (e.g. 10^4 events).

**Ground truth.** `SyntheticLog.truth` has one row per labelled impression (`event_id`, `user_id`, logit, prob, label,
per-mechanism terms, the effective τ of (a)) and list columns of contributing behaviour `event_id`s: `relevant_a` /
`relevant_b` (matches whose decay weight ≥ `relevance_min_weight`), `relevant_d` (the witnessing pair: the latest B_t
and the latest A_t before it), `relevant_f` (the ≤ `f_top_k` behaviours averaged), `relevant` (their union: what a
perfect search retrieves). A switched-off mechanism has a zero term and empty lists. With (g) on, the truth also has
`term_g` and `relevant_g` (the far same-SPU behaviours of a memory target) and `memory_target` (whether the shown item
is of a memory SPU); the memory SPUs are in `planted["memory_spus"]`. Configs without (g) give the frames they gave
before (g) existed. τ per category, goal factors,
the planted pairs, item qualities and the bias are in `SyntheticLog.planted` (and `synthetic.json`).

Generation is vectorised numpy over chunks of users (≤ ~1M events per chunk bounds the memory), so it scales to
10^5 events per user. The same config (seed included) gives identical frames.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa

from longrec.files import SYNTHETIC, output_directory

__all__ = ["ACTIONS", "MECHANISMS", "SCENES", "SyntheticConfig", "SyntheticLog", "generate"]

logger = logging.getLogger(__name__)

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

MECHANISMS: dict[str, str] = {
    "a": "TIN/TDPE: same-SPU ad behaviours with a category-specific exponential time decay, w_a*log1p(sum decay)",
    "b": "hierarchical search: content behaviours matching the target only at cat_2, w_b*log1p(sum decay)",
    "c": "DSI-TIN: a uniformly random noise_tag field on every row that carries no label signal",
    "d": "Stacked TIN: +w_d when a behaviour of category A_t precedes one of B_t (planted pair per target cat_2)",
    "e": "TDPE/TD-SASRec: the decay time constant of (a) is multiplied by a per-goal factor",
    "f": "DARE: relevance by category (recent same-SPU behaviours), effect by hidden item quality, w_f*mean(q)",
    "g": "long-range search: +w_g when a memory-SPU target has a same-SPU behaviour over g_min_back behaviours back",
}
SCENES = ("feed", "search", "article", "video")
ACTIONS = ("view", "click", "cart", "buy", "like", "share", "impression")
DOMAINS = ("ad", "content")
# Scene probabilities per row kind, over SCENES: ads live in the feed and search, content in feed/article/video.
_AD_SCENES = (0.6, 0.4, 0.0, 0.0)
_CONTENT_SCENES = (0.3, 0.0, 0.35, 0.35)
_IMPRESSION_SCENES = (0.7, 0.3, 0.0, 0.0)
_DAY = 86_400  # seconds
_CHUNK_EVENTS = 1_000_000  # behaviours generated at once; bounds memory for 10^5-event users
_KEY_LIMIT = 2**62  # composite sort keys group * radix + time must stay below this


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
        for name in ("weight_a", "weight_b", "weight_d", "weight_f", "weight_g"):
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
        """Whether a planted mechanism ('a'..'g') is switched on."""
        return mechanism in self.mechanisms

    def terms(self) -> str:
        """The mechanisms with a label term and a ground-truth column: a, b, d, f always (zero when off), g when on."""
        return "abdfg" if self.on("g") else "abdf"


# --------------------------------------------------------------------------------------------------------------------
# World: taxonomy, catalogue, planted parameters.


@dataclass(frozen=True)
class _Segments:
    """Members grouped by a parent id, with a Zipf popularity within each group, for vectorised sampling."""

    members: IntArray  # [n] member ids, sorted by group
    cdf: FloatArray  # [n] group id + cumulative within-group probability in (0, 1]; increasing

    def sample(self, groups: IntArray, rng: np.random.Generator) -> IntArray:
        """One member per query group, by popularity. groups [Q] -> member ids [Q]."""
        u = np.minimum(rng.random(groups.shape[0]), 1.0 - 1e-9)  # [Q]; < 1 keeps the draw inside its group
        return self.members[np.searchsorted(self.cdf, groups + u, side="right")]  # [Q]


def _segments(groups: IntArray, exponent: float, rng: np.random.Generator, first_id: int) -> _Segments:
    """Zipf-within-group sampler; `groups[j]` is the parent of member `first_id + j`, ranks shuffled per group."""
    n = groups.shape[0]
    perm = rng.permutation(n)  # [n] random popularity ranks
    order = perm[np.argsort(groups[perm], kind="stable")]  # [n] members sorted by group, random order inside
    g = groups[order]  # [n]
    first = np.r_[True, g[1:] != g[:-1]]  # [n] first member of each group
    last = np.r_[g[1:] != g[:-1], True]  # [n]
    start = np.maximum.accumulate(np.where(first, np.arange(n), 0))  # [n] index of the group's first member
    weight = (np.arange(n) - start + 1.0) ** -exponent  # [n] rank^-s
    cumulative = np.cumsum(weight)  # [n]
    before = (cumulative - weight)[start]  # [n] mass of the earlier groups
    total = cumulative[last][np.cumsum(first) - 1] - before  # [n] mass of the member's group
    within = (cumulative - before) / total  # [n] in (0, 1]
    within[last] = 1.0  # exact, so a draw never spills into the next group
    return _Segments(members=(order + first_id).astype(np.int64), cdf=g + within)


def _assign_parents(num_children: int, num_parents: int, rng: np.random.Generator) -> IntArray:
    """Parent id (1-based) of each child, every parent used at least once. -> [num_children]."""
    extra = rng.integers(1, num_parents + 1, num_children - num_parents)  # [children - parents]
    return rng.permutation(np.concatenate([np.arange(1, num_parents + 1), extra])).astype(np.int64)


@dataclass(frozen=True)
class _World:
    """Catalogue, taxonomy and planted parameters shared by all users. Arrays are indexed by 1-based id (0 unused)."""

    industry_of_category: IntArray  # [C + 1] cat_1 of each cat_2
    category_of_spu: IntArray  # [S + 1] cat_2 of each SPU
    spu_of_item: IntArray  # [I + 1] SPU of each ad item
    brand_of_spu: IntArray  # [S + 1]
    category_of_tag: IntArray  # [G + 1] unified cat_2 of each content tag
    tag_of_content: IntArray  # [J + 1] tag of each content item (local index 1..J)
    category_cdf: FloatArray  # [C] cumulative popularity prior over categories 1..C
    items_by_category: _Segments
    items_by_spu: _Segments
    tags_by_category: _Segments
    contents_by_tag: _Segments
    tau_days: FloatArray  # [C + 1] (a): τ of each target category
    pair_first: IntArray  # [C + 1] (d): A_t
    pair_second: IntArray  # [C + 1] (d): B_t
    quality: FloatArray  # [I + 1] (f): hidden item quality
    goal_factor: FloatArray  # [T] (e): τ multiplier per goal (ones when (e) is off)
    memory_spus: IntArray  # [S_g] (g): SPUs of the memory categories, sorted (empty when (g) is off)

    def sample_categories(self, size: int, rng: np.random.Generator) -> IntArray:
        """Categories drawn from the popularity prior. -> [size] in 1..C."""
        return _sample_categories(self.category_cdf, size, rng)


def _sample_categories(cdf: FloatArray, size: int, rng: np.random.Generator) -> IntArray:
    """Categories drawn from a cumulative prior over 1..C. -> [size]."""
    index = np.searchsorted(cdf, rng.random(size), side="right")  # [size]
    return np.minimum(index, cdf.shape[0] - 1).astype(np.int64) + 1


def _build_world(cfg: SyntheticConfig, rng: np.random.Generator) -> _World:
    C, S = cfg.num_categories, cfg.num_spus
    industry_of_category = np.r_[0, _assign_parents(C, cfg.num_industries, rng)]  # [C + 1]
    category_of_spu = np.r_[0, _assign_parents(S, C, rng)]  # [S + 1]
    spu_of_item = np.r_[0, _assign_parents(cfg.num_items, S, rng)]  # [I + 1]
    brand_of_spu = np.r_[0, rng.integers(1, cfg.num_brands + 1, S)]  # [S + 1]
    category_of_tag = np.r_[0, _assign_parents(cfg.num_content_tags, C, rng)]  # [G + 1]
    tag_of_content = np.r_[0, _assign_parents(cfg.num_content_items, cfg.num_content_tags, rng)]  # [J + 1]
    rank = rng.permutation(C)  # [C] popularity rank of category c + 1
    prior = (rank + 1.0) ** -cfg.category_zipf_exponent  # [C]
    memory_spus = np.zeros(0, np.int64)  # [S_g]
    if cfg.on("g"):  # the least popular categories: no prior mass, so only the planted memories ever show them
        memory = np.argsort(rank)[C - cfg.g_categories :] + 1  # [g_categories] category ids
        prior[memory - 1] = 0.0
        memory_spus = np.flatnonzero(np.isin(category_of_spu, memory)).astype(np.int64)  # [S_g]
    category_cdf = np.cumsum(prior / prior.sum())  # [C]
    s = cfg.zipf_exponent
    items_by_category = _segments(category_of_spu[spu_of_item[1:]], s, rng, first_id=1)
    items_by_spu = _segments(spu_of_item[1:], s, rng, first_id=1)
    tags_by_category = _segments(category_of_tag[1:], s, rng, first_id=1)
    contents_by_tag = _segments(tag_of_content[1:], s, rng, first_id=1)
    log_tau = rng.uniform(math.log(cfg.tau_min_days), math.log(cfg.tau_max_days), C)  # [C]
    tau_days = np.r_[0.0, np.exp(log_tau)]  # [C + 1]
    pair_first = np.zeros(C + 1, np.int64)  # [C + 1]
    pair_second = np.zeros(C + 1, np.int64)  # [C + 1]
    if C >= 3:  # A_t, B_t among the most popular categories, so that the pair does occur in histories
        pool = np.argsort(rank)[: max(3, min(cfg.pair_pool, C))] + 1  # [pool] category ids, most popular first
        target = np.arange(1, C + 1)  # [C]
        first, second = rng.choice(pool, C), rng.choice(pool, C)  # [C] each
        bad = (first == target) | (second == target) | (first == second)  # [C]
        while bad.any():  # rejection sampling; terminates since the pool has >= 3 categories
            first[bad], second[bad] = rng.choice(pool, int(bad.sum())), rng.choice(pool, int(bad.sum()))
            bad = (first == target) | (second == target) | (first == second)
        pair_first[1:], pair_second[1:] = first, second
    quality = np.r_[0.0, rng.standard_normal(cfg.num_items)]  # [I + 1]
    goal_factor = np.asarray(cfg.goal_decay_factors if cfg.on("e") else [1.0] * len(cfg.goals), dtype=np.float64)
    return _World(
        industry_of_category=industry_of_category,
        category_of_spu=category_of_spu,
        spu_of_item=spu_of_item,
        brand_of_spu=brand_of_spu,
        category_of_tag=category_of_tag,
        tag_of_content=tag_of_content,
        category_cdf=category_cdf,
        items_by_category=items_by_category,
        items_by_spu=items_by_spu,
        tags_by_category=tags_by_category,
        contents_by_tag=contents_by_tag,
        tau_days=tau_days,
        pair_first=pair_first,
        pair_second=pair_second,
        quality=quality,
        goal_factor=goal_factor,
        memory_spus=memory_spus,
    )


# --------------------------------------------------------------------------------------------------------------------
# Per-chunk generation.


@dataclass(frozen=True)
class _SortedIndex:
    """Behaviours sorted by (group, time), for "rows of group g strictly before time t" range queries."""

    key: IntArray  # [n] group * radix + relative time, sorted
    row: IntArray  # [n] behaviour index of each key
    radix: int

    @classmethod
    def build(cls, group: IntArray, time_rel: IntArray, rows: IntArray, radix: int) -> _SortedIndex:
        if group.size and int(group.max()) >= _KEY_LIMIT // radix:
            raise RuntimeError("synthetic: composite key overflow; reduce the chunk size")  # guarded by chunking
        key = group * radix + time_rel  # [n]
        order = np.argsort(key, kind="stable")  # [n]
        return cls(key=key[order], row=rows[order], radix=radix)

    def before(self, group: IntArray, time_rel: IntArray) -> tuple[IntArray, IntArray]:
        """[lo, hi) positions of the rows of each query group with time < the query's. [Q] each."""
        lo = np.searchsorted(self.key, group * self.radix, side="left")  # [Q]
        hi = np.searchsorted(self.key, group * self.radix + time_rel, side="left")  # [Q]
        return lo.astype(np.int64), hi.astype(np.int64)


def _expand(lo: IntArray, hi: IntArray) -> tuple[IntArray, IntArray]:
    """All (query, position) pairs with position in [lo, hi). -> query [P], position [P], query-major."""
    length = hi - lo  # [Q]
    query = np.repeat(np.arange(lo.shape[0], dtype=np.int64), length)  # [P]
    start = np.cumsum(length) - length  # [Q] first pair of each query
    position = np.arange(query.shape[0], dtype=np.int64) - start[query] + lo[query]  # [P]
    return query, position


@dataclass
class _Chunk:
    """Rows of one chunk of users in log order, and its impressions (in log order) with their label terms."""

    columns: dict[str, npt.NDArray[Any]]  # each [rows]
    impression: dict[str, npt.NDArray[Any]]  # each [P]
    pairs: dict[str, tuple[IntArray, IntArray]]  # mechanism -> (impression index [n], behaviour event_id [n])


def _choice(probabilities: Sequence[float], size: int, rng: np.random.Generator) -> IntArray:
    """Codes 0..len-1 drawn with the given probabilities. -> [size]."""
    cdf = np.cumsum(np.asarray(probabilities, dtype=np.float64))  # [n]
    index = np.searchsorted(cdf / cdf[-1], rng.random(size), side="right")  # [size]
    return np.minimum(index, len(probabilities) - 1).astype(np.int64)


def _generate_chunk(
    cfg: SyntheticConfig,
    world: _World,
    counts: IntArray,
    user_offset: int,
    row_offset: int,
    rng: np.random.Generator,
) -> _Chunk:
    """Behaviours, impressions and label terms of users `user_offset + 1 ..` with `counts` behaviours each."""
    U = counts.shape[0]
    N = int(counts.sum())
    span = cfg.span_days * _DAY  # seconds
    users = np.arange(U, dtype=np.int64)  # [U] chunk-local user index
    user_first = np.cumsum(counts) - counts  # [U] first behaviour of each user (before the time sort)
    beh_user = np.repeat(users, counts)  # [N]

    # Sessions: starts uniform over the span, sorted per user (local user index keeps users apart).
    num_sessions = np.maximum(1, np.rint(counts / cfg.session_length)).astype(np.int64)  # [U]
    session_user = np.repeat(users, num_sessions)  # [Ns]
    session_first = np.cumsum(num_sessions) - num_sessions  # [U]
    session_start = np.sort(session_user * span + rng.random(session_user.shape[0]) * span) - session_user * span
    event_session = np.sort(  # [N] each behaviour joins a random session of its user; sorted = grouped by session
        session_first[beh_user] + np.floor(rng.random(N) * num_sessions[beh_user]).astype(np.int64)
    )
    gap = rng.exponential(cfg.session_gap_seconds, N)  # [N]
    cumulative = np.cumsum(gap)  # [N]
    first_in_session = np.r_[True, event_session[1:] != event_session[:-1]]  # [N]
    session_head = np.maximum.accumulate(np.where(first_in_session, np.arange(N), 0))  # [N]
    offset = session_start[event_session] + cumulative - cumulative[session_head]  # [N] seconds since start_time
    beh_time = cfg.start_time + np.floor(offset).astype(np.int64)  # [N]

    # Interests: K slots per session, refreshed at the user's first session and when a session drifts.
    K = cfg.num_interests
    Ns = session_user.shape[0]
    fresh = np.zeros((Ns, K), dtype=bool)  # [Ns, K]
    fresh[session_first, :] = True
    drift = rng.random(Ns) < cfg.drift_prob  # [Ns]
    fresh[np.flatnonzero(drift), rng.integers(0, K, Ns)[drift]] = True
    slot_value = np.zeros((Ns, K), dtype=np.int64)  # [Ns, K]
    slot_value[fresh] = world.sample_categories(int(fresh.sum()), rng)
    source = np.maximum.accumulate(np.where(fresh, np.arange(Ns)[:, None], 0), axis=0)  # [Ns, K] last refresh
    interest = slot_value[source, np.arange(K)[None, :]]  # [Ns, K] forward-filled per user (first session is fresh)
    slot_weight = np.cumsum(rng.dirichlet(np.full(K, cfg.interest_concentration), U), axis=1)  # [U, K]
    slot = (rng.random(N)[:, None] > slot_weight[beh_user]).sum(axis=1)  # [N]
    beh_cat2 = interest[event_session, np.minimum(slot, K - 1)]  # [N]
    explore = rng.random(N) < cfg.explore_prob  # [N]
    beh_cat2[explore] = world.sample_categories(int(explore.sum()), rng)

    # Domain, item, taxonomy path.
    is_ad = rng.random(N) < cfg.ad_fraction  # [N]
    ad = np.flatnonzero(is_ad)  # [Na]
    content = np.flatnonzero(~is_ad)  # [Nc]
    beh_item = np.zeros(N, np.int64)  # [N]
    beh_cat3 = np.zeros(N, np.int64)  # [N] 0 = null (content)
    beh_source = np.zeros(N, np.int64)  # [N] raw domain category: SPU (ad) or content tag
    beh_item[ad] = world.items_by_category.sample(beh_cat2[ad], rng)
    beh_cat3[ad] = world.spu_of_item[beh_item[ad]]
    beh_source[ad] = beh_cat3[ad]
    tag = world.tags_by_category.sample(beh_cat2[content], rng)  # [Nc]
    beh_source[content] = tag
    beh_item[content] = cfg.num_items + world.contents_by_tag.sample(tag, rng)
    beh_brand = world.brand_of_spu[beh_cat3] * is_ad  # [N] 0 = null

    # Funnel: the deepest stage reached; action codes index ACTIONS.
    r = rng.random((N, 3))  # [N, 3]
    p_click, p_cart, p_buy = cfg.ad_funnel
    p_like, p_share = cfg.content_funnel
    click = r[:, 0] < p_click  # [N]
    cart = click & (r[:, 1] < p_cart)  # [N]
    ad_action = click.astype(np.int64) + cart + (cart & (r[:, 2] < p_buy))  # [N] view 0 .. buy 3
    like = r[:, 0] < p_like  # [N]
    content_action = np.where(like, 4 + (r[:, 1] < p_share), 0)  # [N] view 0, like 4, share 5
    beh_action = np.where(is_ad, ad_action, content_action)  # [N]
    beh_scene = np.where(is_ad, _choice(_AD_SCENES, N, rng), _choice(_CONTENT_SCENES, N, rng))  # [N]

    # (g) memories: G ad behaviours of memory SPUs per user, strictly before the user's first session.
    G = cfg.g_memories if cfg.on("g") else 0
    memory_spu = np.zeros((U, 0), np.int64)  # [U, G]
    if G:
        memory_spu = world.memory_spus[rng.integers(0, world.memory_spus.shape[0], (U, G))]  # [U, G]
        first_start = np.floor(session_start[session_first]).astype(np.int64)  # [U] seconds since start_time
        back = 1 + np.floor(rng.exponential(_DAY, (U, G))).astype(np.int64)  # [U, G] >= 1 s before it
        mem_spu = memory_spu.reshape(-1)  # [U·G]
        mem_item = world.items_by_spu.sample(mem_spu, rng)  # [U·G]
        beh_user = np.r_[beh_user, np.repeat(users, G)]
        beh_time = np.r_[beh_time, cfg.start_time + (first_start[:, None] - back).reshape(-1)]
        beh_cat2 = np.r_[beh_cat2, world.category_of_spu[mem_spu]]
        beh_cat3 = np.r_[beh_cat3, mem_spu]
        beh_item = np.r_[beh_item, mem_item]
        beh_source = np.r_[beh_source, mem_spu]
        beh_brand = np.r_[beh_brand, world.brand_of_spu[mem_spu]]
        is_ad = np.r_[is_ad, np.ones(U * G, bool)]
        beh_action = np.r_[beh_action, np.full(U * G, ACTIONS.index("buy"), np.int64)]
        beh_scene = np.r_[beh_scene, _choice(_AD_SCENES, U * G, rng)]
        N += U * G

    # Time-sort each user's behaviours (sessions may overlap).
    order = np.lexsort((beh_time, beh_user))  # [N]
    beh_user, beh_time, beh_cat2, beh_cat3 = beh_user[order], beh_time[order], beh_cat2[order], beh_cat3[order]
    beh_item, beh_source, beh_brand, is_ad = beh_item[order], beh_source[order], beh_brand[order], is_ad[order]
    beh_action, beh_scene = beh_action[order], beh_scene[order]

    # Impressions: a few minutes after a random behaviour past the user's first 10%.
    P_u = cfg.impressions_per_user
    imp_user = np.repeat(users, P_u)  # [P]
    P = imp_user.shape[0]
    warm = counts // 10  # [U]
    block_first = user_first + np.arange(U) * G  # [U] first row of each user after the sort (memories first)
    anchor = block_first[imp_user] + G + warm[imp_user]  # [P]
    anchor += np.floor(rng.random(P) * (counts - warm)[imp_user]).astype(np.int64)
    imp_time = beh_time[anchor] + 1 + np.floor(rng.exponential(cfg.impression_gap_seconds, P)).astype(np.int64)
    imp_time = imp_time[np.lexsort((imp_time, imp_user))]  # [P] time-sorted per user (imp_user is already sorted)

    # Log order: by user, time, impressions before behaviours at the same second; event_id = row number. The sort is
    # stable, so impressions keep their (user, time) order and their event ids increase with their index.
    all_user = np.r_[beh_user, imp_user]  # [N + P]
    all_time = np.r_[beh_time, imp_time]  # [N + P]
    log_order = np.lexsort((np.r_[np.ones(N, np.int64), np.zeros(P, np.int64)], all_time, all_user))  # [N + P]
    rank = np.empty(N + P, np.int64)  # [N + P] log position of each generated row
    rank[log_order] = np.arange(N + P)
    beh_event = row_offset + rank[:N]  # [N]
    imp_event = row_offset + rank[N:]  # [P] increasing

    # Relative times and a radix for composite (group, time) keys.
    t0 = int(all_time.min())
    radix = int(all_time.max()) - t0 + 2
    beh_rel = beh_time - t0  # [N]
    imp_rel = imp_time - t0  # [P]

    # Target ad: from the SPU of a recent earlier ad behaviour, else from the popularity prior.
    ad = np.flatnonzero(is_ad)  # [Na] in (user, time) order
    ad_index = _SortedIndex.build(beh_user[ad], beh_rel[ad], ad, radix)
    lo, hi = ad_index.before(imp_user, imp_rel)  # [P] the user's earlier ad behaviours
    back = np.zeros(P, np.int64)  # [P] how many same-user ad behaviours back the target's SPU comes from
    if cfg.target_recency_mean:
        back = np.floor(rng.exponential(cfg.target_recency_mean, P)).astype(np.int64)
    pick = np.maximum(hi - 1 - back, lo)  # [P]
    from_history = (rng.random(P) < cfg.target_from_history_prob) & (hi > lo)  # [P]
    popular = world.items_by_category.sample(world.sample_categories(P, rng), rng)  # [P]
    spu_hist = np.ones(P, np.int64)  # [P] SPU of the picked behaviour (placeholder 1 where none)
    if ad.size:
        spu_hist = beh_cat3[ad_index.row[np.minimum(pick, ad.size - 1)]]
    hist_item = world.items_by_spu.sample(spu_hist, rng)  # [P]
    imp_item = np.where(from_history, hist_item, popular)  # [P]
    if G:  # (g): some impressions show a memory SPU's item, half the time one of the user's own memories
        own = memory_spu[imp_user, rng.integers(0, G, P)]  # [P]
        other = world.memory_spus[rng.integers(0, world.memory_spus.shape[0], P)]  # [P]
        spu_memory = np.where(rng.random(P) < 0.5, own, other)  # [P]
        memory_item = world.items_by_spu.sample(spu_memory, rng)  # [P]
        imp_item = np.where(rng.random(P) < cfg.g_target_prob, memory_item, imp_item)  # [P]
    imp_cat3 = world.spu_of_item[imp_item]  # [P]
    imp_cat2 = world.category_of_spu[imp_cat3]  # [P]
    imp_goal = rng.integers(0, len(cfg.goals), P)  # [P]
    imp_scene = _choice(_IMPRESSION_SCENES, P, rng)  # [P]
    tau_days = world.tau_days[imp_cat2] * world.goal_factor[imp_goal]  # [P] (a) decay, per goal under (e)

    terms = {m: np.zeros(P) for m in cfg.terms()}  # each [P]
    pairs: dict[str, tuple[IntArray, IntArray]] = {}
    empty = np.zeros(0, np.int64)
    S1, C1 = cfg.num_spus + 1, cfg.num_categories + 1
    if cfg.on("a") or cfg.on("f"):
        spu_index = _SortedIndex.build(beh_user[ad] * S1 + beh_cat3[ad], beh_rel[ad], ad, radix)
        lo, hi = spu_index.before(imp_user * S1 + imp_cat3, imp_rel)  # [P] same-SPU earlier ad behaviours
        if cfg.on("a"):
            query, position = _expand(lo, hi)  # [n]
            row = spu_index.row[position]  # [n]
            weight = np.exp(-(imp_time[query] - beh_time[row]) / (tau_days[query] * _DAY))  # [n] Δt > 0
            terms["a"] = cfg.weight_a * np.log1p(np.bincount(query, weights=weight, minlength=P))
            keep = weight >= cfg.relevance_min_weight  # [n]
            pairs["a"] = (query[keep], beh_event[row[keep]])
        if cfg.on("f"):
            query, position = _expand(np.maximum(lo, hi - cfg.f_top_k), hi)  # [n] ≤ K most recent matches
            row = spu_index.row[position]  # [n]
            total = np.bincount(query, weights=world.quality[beh_item[row]], minlength=P)  # [P]
            terms["f"] = cfg.weight_f * total / np.maximum(hi - np.maximum(lo, hi - cfg.f_top_k), 1)
            pairs["f"] = (query, beh_event[row])
    if cfg.on("b"):
        content = np.flatnonzero(~is_ad)  # [Nc]
        content_index = _SortedIndex.build(beh_user[content] * C1 + beh_cat2[content], beh_rel[content], content, radix)
        query, position = _expand(*content_index.before(imp_user * C1 + imp_cat2, imp_rel))  # [n]
        row = content_index.row[position]  # [n]
        weight = np.exp(-(imp_time[query] - beh_time[row]) / (cfg.content_tau_days * _DAY))  # [n]
        terms["b"] = cfg.weight_b * np.log1p(np.bincount(query, weights=weight, minlength=P))
        keep = weight >= cfg.relevance_min_weight  # [n]
        pairs["b"] = (query[keep], beh_event[row[keep]])
    if cfg.on("d"):
        every = np.arange(N, dtype=np.int64)  # [N]
        cat_index = _SortedIndex.build(beh_user * C1 + beh_cat2, beh_rel, every, radix)
        group_b = imp_user * C1 + world.pair_second[imp_cat2]  # [P]
        last_b = np.searchsorted(cat_index.key, group_b * radix + imp_rel, side="left") - 1  # [P] latest B before
        has_b = (last_b >= 0) & (cat_index.key[np.maximum(last_b, 0)] // radix == group_b)  # [P]
        b_rel = cat_index.key[np.maximum(last_b, 0)] % radix  # [P]
        group_a = imp_user * C1 + world.pair_first[imp_cat2]  # [P]
        last_a = np.searchsorted(cat_index.key, group_a * radix + b_rel, side="left") - 1  # [P] latest A before it
        has_a = (last_a >= 0) & (cat_index.key[np.maximum(last_a, 0)] // radix == group_a)  # [P]
        present = has_a & has_b  # [P]
        terms["d"] = cfg.weight_d * present
        hit = np.flatnonzero(present)  # [h]
        rows_ab = np.stack([cat_index.row[last_a[hit]], cat_index.row[last_b[hit]]], axis=1).reshape(-1)  # [2h]
        pairs["d"] = (np.repeat(hit, 2), beh_event[rows_ab])
    if G:
        # Far = more than g_min_back behaviours before the impression: rows are sorted by (user, time), so the user's
        # behaviours before the impression end at row `end`, and the far ones lie below row end - g_min_back.
        end = np.searchsorted(beh_user * radix + beh_rel, imp_user * radix + imp_rel, side="left")  # [P]
        memory_target = np.isin(imp_cat3, world.memory_spus)  # [P]
        index = _SortedIndex.build(beh_user[ad] * S1 + beh_cat3[ad], beh_rel[ad], ad, radix)
        query, position = _expand(*index.before(imp_user * S1 + imp_cat3, imp_rel))  # [n] same-SPU earlier ad rows
        row = index.row[position]  # [n]
        far = (row < end[query] - cfg.g_min_back) & memory_target[query]  # [n]
        terms["g"] = cfg.weight_g * (np.bincount(query[far], minlength=P) > 0).astype(np.float64)
        pairs["g"] = (query[far], beh_event[row[far]])
    for m in cfg.terms():
        pairs.setdefault(m, (empty, empty))

    imp_brand = world.brand_of_spu[imp_cat3]  # [P]

    # Columns in log order: generated rows (behaviours, then impressions) permuted by log_order.
    def merged(behaviour: npt.NDArray[Any], impression: npt.NDArray[Any]) -> npt.NDArray[Any]:
        return np.r_[behaviour, impression][log_order]  # [N + P]

    columns: dict[str, npt.NDArray[Any]] = {
        "user_id": user_offset + 1 + merged(beh_user, imp_user),
        "item_id": merged(beh_item, imp_item),
        "timestamp": merged(beh_time, imp_time),
        "domain": merged((~is_ad).astype(np.int64), np.zeros(P, np.int64)),
        "scene": merged(beh_scene, imp_scene),
        "action": merged(beh_action, np.full(P, ACTIONS.index("impression"), np.int64)),
        "cat_1": world.industry_of_category[merged(beh_cat2, imp_cat2)],
        "cat_2": merged(beh_cat2, imp_cat2),
        "cat_3": merged(beh_cat3, imp_cat3),
        "brand": merged(beh_brand, imp_brand),
        "source": merged(beh_source, imp_cat3),
        "goal": merged(np.full(N, -1, np.int64), imp_goal),
    }
    if cfg.on("c"):
        columns["noise_tag"] = rng.integers(1, cfg.num_noise_tags + 1, N + P)  # [N + P] no signal, by design
    columns["event_id"] = row_offset + np.arange(N + P, dtype=np.int64)
    impression = {
        "event_id": imp_event,
        "user_id": user_offset + 1 + imp_user,
        "timestamp": imp_time,
        "goal": imp_goal,
        "item_id": imp_item,
        "cat_2": imp_cat2,
        "cat_3": imp_cat3,
        "tau_days": tau_days,
        **{f"term_{m}": terms[m] for m in cfg.terms()},
        **({"memory_target": np.isin(imp_cat3, world.memory_spus)} if G else {}),
    }
    return _Chunk(columns=columns, impression=impression, pairs=pairs)


# --------------------------------------------------------------------------------------------------------------------
# Assembly: bias calibration, labels, frames.


def _calibrate_bias(score: FloatArray, rate: float) -> float:
    """The bias b with mean(sigmoid(b + score)) = rate (bisection; the mean is increasing in b)."""
    low, high = -50.0, 50.0
    for _ in range(100):
        mid = 0.5 * (low + high)
        if np.mean(1.0 / (1.0 + np.exp(-(mid + score)))) < rate:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def _list_column(name: str, query: IntArray, values: IntArray, num_rows: int) -> pl.Series:
    """A list[int64] column from (row, value) pairs, values sorted within each row. -> Series [num_rows]."""
    order = np.lexsort((values, query))  # [n]
    offsets = np.r_[0, np.cumsum(np.bincount(query, minlength=num_rows))].astype(np.int64)  # [num_rows + 1]
    array = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values[order].astype(np.int64)))
    return pl.Series(name, array).cast(pl.List(pl.Int64))


def _chunks(counts: IntArray, radix_bound: int, max_category: int) -> list[tuple[int, int]]:
    """[start, stop) user ranges with at most _CHUNK_EVENTS behaviours (or one user) and no key overflow."""
    max_users = max(1, _KEY_LIMIT // (radix_bound * (max_category + 1)) - 1)
    bounds: list[tuple[int, int]] = []
    start, events = 0, 0
    for user, count in enumerate(counts.tolist()):
        if user > start and (events + count > _CHUNK_EVENTS or user - start >= max_users):
            bounds.append((start, user))
            start, events = user, 0
        events += count
    bounds.append((start, counts.shape[0]))
    return bounds


def _code_to_string(column: str, names: Sequence[str]) -> pl.Expr:
    mapping = dict(enumerate(names))
    return pl.col(column).replace_strict(mapping, default=None, return_dtype=pl.String)


@dataclass
class SyntheticLog:
    """A generated log, its ground truth, the taxonomy mapping table, the config and the planted parameters."""

    log: pl.DataFrame  # canonical behaviour log + labelled impression rows, sorted by (user_id, timestamp)
    truth: pl.DataFrame  # one row per labelled impression: logit, prob, terms, relevant event ids
    taxonomy_map: pl.DataFrame  # domain, source_category -> unified cat_1, cat_2, cat_3 (null where unreachable)
    config: SyntheticConfig
    planted: dict[str, Any] = field(default_factory=dict)  # bias, τ per category, goal factors, pairs, qualities
    stats: dict[str, Any] = field(default_factory=dict)  # sizes, positive rates, term spreads, generation time

    def metadata(self) -> dict[str, Any]:
        """What `synthetic.json` holds: config, mechanism docs, planted parameters and stats."""
        return {
            "config": asdict(self.config),
            "mechanisms": {m: {"on": self.config.on(m), "doc": doc} for m, doc in MECHANISMS.items()},
            "item_ids": {
                "ad": [1, self.config.num_items],
                "content": [self.config.num_items + 1, self.config.num_items + self.config.num_content_items],
            },
            "planted": self.planted,
            "stats": self.stats,
        }

    def write(self, out_dir: Path | str, force: bool = False) -> None:
        """Write log.parquet, truth.parquet, taxonomy_map.csv and synthetic.json into `out_dir`, atomically.

        `out_dir` must be new, empty, or a previous synthetic log (replaced only with `force`); the files go to a
        temporary sibling folder renamed into place at the end (`longrec.files.output_directory`), so a failure leaves
        no partial folder and the old one intact.

        Raises:
            OutputError: `out_dir` is a file, holds anything else, or is a previous log and `force` is False.
        """
        with output_directory(out_dir, SYNTHETIC, force) as tmp:
            self.log.write_parquet(tmp / "log.parquet")
            self.truth.write_parquet(tmp / "truth.parquet")
            self.taxonomy_map.write_csv(tmp / "taxonomy_map.csv")
            (tmp / "synthetic.json").write_text(json.dumps(self.metadata(), indent=1) + "\n")


def _taxonomy_map(cfg: SyntheticConfig, world: _World) -> pl.DataFrame:
    spu = np.arange(1, cfg.num_spus + 1)  # [S]
    tag = np.arange(1, cfg.num_content_tags + 1)  # [G]
    ad = pl.DataFrame(
        {
            "domain": "ad",
            "source_category": [f"ad:{s}" for s in spu.tolist()],
            "cat_1": world.industry_of_category[world.category_of_spu[spu]],
            "cat_2": world.category_of_spu[spu],
            "cat_3": spu,
        }
    )
    content = pl.DataFrame(
        {
            "domain": "content",
            "source_category": [f"content:{g}" for g in tag.tolist()],
            "cat_1": world.industry_of_category[world.category_of_tag[tag]],
            "cat_2": world.category_of_tag[tag],
            "cat_3": pl.Series([None] * tag.shape[0], dtype=pl.Int64),
        }
    )
    return pl.concat([ad, content])


def _track(items: Sequence[tuple[int, int]], progress: bool) -> Iterable[tuple[int, int]]:
    if not progress:
        return items
    from rich.progress import track  # only when asked: keeps the import light

    return track(items, description="synthetic users", transient=True)


def generate(config: SyntheticConfig, progress: bool = False) -> SyntheticLog:
    """Generate a synthetic log with the planted mechanisms of `config` (see the module docstring).

    Args:
        config: every knob, the seed included; the same config gives identical frames.
        progress: show a progress bar over user chunks (stderr).

    Returns:
        The log (canonical columns, behaviours and labelled impressions), the ground truth per impression, the
        taxonomy mapping table, the config, the planted parameters and summary stats.

    Example:
        >>> data = generate(SyntheticConfig(num_users=10, events_per_user=50, impressions_per_user=4))
        >>> data.truth.height
        40
    """
    started = time.perf_counter()
    world_seed, users_seed, label_seed = np.random.SeedSequence(config.seed).spawn(3)
    world = _build_world(config, np.random.default_rng(world_seed))
    user_rng = np.random.default_rng(users_seed)
    spread = user_rng.uniform(1 - config.events_spread, 1 + config.events_spread, config.num_users)  # [users]
    counts = np.maximum(1, np.rint(config.events_per_user * spread)).astype(np.int64)  # [users] behaviours per user
    radix_bound = int(config.span_days * _DAY) + 10**9  # sessions may spill past the span; generous margin
    bounds = _chunks(counts, radix_bound, max(config.num_spus, config.num_categories))
    chunk_seeds = users_seed.spawn(len(bounds))
    parts: list[_Chunk] = []
    row_offset = 0
    for index, (start, stop) in enumerate(_track(bounds, progress)):
        rng = np.random.default_rng(chunk_seeds[index])
        parts.append(_generate_chunk(config, world, counts[start:stop], start, row_offset, rng))
        row_offset += int(parts[-1].columns["event_id"].shape[0])
        logger.debug("synthetic: users %d..%d done, %d rows so far", start, stop, row_offset)

    # Labels: bias calibrated on the summed terms, then Bernoulli draws.
    imp = {k: np.concatenate([p.impression[k] for p in parts]) for k in parts[0].impression}  # each [P]
    P = imp["event_id"].shape[0]
    letters = config.terms()  # "abdf", plus "g" when on
    score = sum((imp[f"term_{m}"] for m in letters), start=np.zeros(P))  # [P]
    bias = _calibrate_bias(score, config.target_positive_rate)
    logit = bias + score  # [P]
    prob = 1.0 / (1.0 + np.exp(-logit))  # [P]
    label = (np.random.default_rng(label_seed).random(P) < prob).astype(np.int8)  # [P]

    # The log frame: codes -> strings, 0 sentinels -> null.
    raw = {k: np.concatenate([p.columns[k] for p in parts]) for k in parts[0].columns}  # each [rows]
    is_impression = raw["action"] == ACTIONS.index("impression")  # [rows]
    label_column = np.full(is_impression.shape[0], -1, np.int8)  # [rows]
    label_column[is_impression] = label  # impressions are in event_id order in both
    frame = pl.DataFrame({**raw, "label": label_column})
    nullable = (pl.col(c).replace(0, None) for c in ("cat_3", "brand"))
    log = frame.select(
        "user_id",
        "item_id",
        "timestamp",
        _code_to_string("domain", DOMAINS),
        _code_to_string("scene", SCENES),
        _code_to_string("action", ACTIONS),
        "cat_1",
        "cat_2",
        *nullable,
        *(["noise_tag"] if config.on("c") else []),
        pl.concat_str(_code_to_string("domain", DOMAINS), pl.lit(":"), pl.col("source").cast(pl.String)).alias(
            "source_category"
        ),
        "event_id",
        pl.col("label").replace(-1, None),
        _code_to_string("goal", config.goals),
    )

    # Ground truth: per-mechanism (impression, event_id) pairs, re-based to global impression indices.
    joined: dict[str, tuple[IntArray, IntArray]] = {}
    first_impression = np.cumsum([0] + [p.impression["event_id"].shape[0] for p in parts])  # [chunks + 1]
    for m in letters:
        joined[m] = (
            np.concatenate([p.pairs[m][0] + first_impression[i] for i, p in enumerate(parts)]).astype(np.int64),
            np.concatenate([p.pairs[m][1] for p in parts]).astype(np.int64),
        )
    union_key = np.sort(np.concatenate([q * row_offset + e for q, e in joined.values()]))  # [n] (impression, event)
    union_key = union_key[np.r_[True, union_key[1:] != union_key[:-1]]] if union_key.size else union_key  # deduped
    truth = pl.DataFrame(
        {
            "event_id": imp["event_id"],
            "user_id": imp["user_id"],
            "timestamp": imp["timestamp"],
            "goal": pl.Series([config.goals[g] for g in imp["goal"].tolist()], dtype=pl.String),
            "item_id": imp["item_id"],
            "cat_2": imp["cat_2"],
            "cat_3": imp["cat_3"],
            "tau_days": imp["tau_days"],
            "logit": logit,
            "prob": prob,
            "label": label,
            **{f"term_{m}": imp[f"term_{m}"] for m in letters},
            **({"memory_target": imp["memory_target"]} if "memory_target" in imp else {}),
        }
    ).with_columns(
        *(_list_column(f"relevant_{m}", *joined[m], P) for m in letters),
        _list_column("relevant", union_key // max(row_offset, 1), union_key % max(row_offset, 1), P),
    )

    num_ad = int((log["domain"] == "ad").sum()) - P
    positives = float(label.mean()) if P else 0.0
    planted: dict[str, Any] = {
        "bias": bias,
        "tau_days_by_category": {int(c): float(world.tau_days[c]) for c in range(1, config.num_categories + 1)},
        "goal_decay_factors": {g: float(f) for g, f in zip(config.goals, world.goal_factor, strict=True)},
        "pairs_by_category": {
            int(c): [int(world.pair_first[c]), int(world.pair_second[c])] for c in range(1, config.num_categories + 1)
        },
        "item_quality": world.quality[1:].tolist(),  # index i = ad item i + 1
    }
    if config.on("g"):
        planted["memory_spus"] = world.memory_spus.tolist()
    stats: dict[str, Any] = {
        "num_users": config.num_users,
        "num_rows": log.height,
        "num_behaviours": log.height - P,
        "num_ad_behaviours": num_ad,
        "num_content_behaviours": log.height - P - num_ad,
        "num_impressions": P,
        "events_per_user": {"min": int(counts.min()), "mean": float(counts.mean()), "max": int(counts.max())},
        "positive_rate": positives,
        "positive_rate_by_goal": {
            g: float(label[imp["goal"] == i].mean()) if (imp["goal"] == i).any() else None
            for i, g in enumerate(config.goals)
        },
        "term_std": {m: float(imp[f"term_{m}"].std()) for m in letters},
        "relevant_mean_size": {
            **{m: float(joined[m][0].shape[0] / max(P, 1)) for m in letters},
            "union": float(union_key.shape[0] / max(P, 1)),
        },
        "pair_prevalence": float((imp["term_d"] != 0).mean()) if config.on("d") and P else None,
        "chunks": len(bounds),
        "seconds": round(time.perf_counter() - started, 3),
    }
    logger.info("synthetic: %d rows, %d impressions, positive rate %.3f", log.height, P, positives)
    return SyntheticLog(
        log=log,
        truth=truth,
        taxonomy_map=_taxonomy_map(config, world),
        config=config,
        planted=planted,
        stats=stats,
    )
