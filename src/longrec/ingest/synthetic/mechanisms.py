"""The planted mechanisms: one function each, registered in the plain dict `MECHANISMS`.

A mechanism function gets the config, the world, one chunk's events (its users' time-sorted behaviours and labelled
impressions, `behaviour.Events`) and the chunk's random generator. It returns what it plants (`Planted`): a term added
to each impression's logit, computed only from the user's behaviours strictly before the impression (Δt > 0), with
the event ids of the behaviours behind it; and/or columns it adds to the log or to the ground truth. `generator` calls
the function of every mechanism that is on, in registry order, sums the terms into the logit and writes the columns.

Also here, because every mechanism (and the impression target draw) runs them: `SortedIndex`, "a user's rows of group
g strictly before time t" as a range of a sorted key array, and `expand`, which lists the rows of such ranges.
Shapes: N behaviours and P impressions of the chunk, n matched (impression, behaviour) pairs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # annotations only: config, world and behaviour import this module
    from longrec.ingest.synthetic.behaviour import Events
    from longrec.ingest.synthetic.config import SyntheticConfig
    from longrec.ingest.synthetic.world import World

__all__ = ["DAY", "MECHANISMS", "SCENES", "Mechanism", "Planted", "SortedIndex", "expand"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

DAY = 86_400  # seconds
SCENES = ("feed", "search", "article", "video")  # scene codes; here because config, world and (h) need them too
KEY_LIMIT = 2**62  # composite sort keys group * radix + time must stay below this


@dataclass(frozen=True)
class SortedIndex:
    """Behaviours sorted by (group, time), for "rows of group g strictly before time t" range queries."""

    key: IntArray  # [n] group * radix + relative time, sorted
    row: IntArray  # [n] behaviour index of each key
    radix: int

    @classmethod
    def build(cls, group: IntArray, time_rel: IntArray, rows: IntArray, radix: int) -> SortedIndex:
        if group.size and int(group.max()) >= KEY_LIMIT // radix:
            raise RuntimeError("synthetic: composite key overflow; reduce the chunk size")  # guarded by chunking
        key = group * radix + time_rel  # [n]
        order = np.argsort(key, kind="stable")  # [n]
        return cls(key=key[order], row=rows[order], radix=radix)

    def before(self, group: IntArray, time_rel: IntArray) -> tuple[IntArray, IntArray]:
        """[lo, hi) positions of the rows of each query group with time < the query's. [Q] each."""
        lo = np.searchsorted(self.key, group * self.radix, side="left")  # [Q]
        hi = np.searchsorted(self.key, group * self.radix + time_rel, side="left")  # [Q]
        return lo.astype(np.int64), hi.astype(np.int64)


def expand(lo: IntArray, hi: IntArray) -> tuple[IntArray, IntArray]:
    """All (query, position) pairs with position in [lo, hi). -> query [P], position [P], query-major."""
    length = hi - lo  # [Q]
    query = np.repeat(np.arange(lo.shape[0], dtype=np.int64), length)  # [P]
    start = np.cumsum(length) - length  # [Q] first pair of each query
    position = np.arange(query.shape[0], dtype=np.int64) - start[query] + lo[query]  # [P]
    return query, position


@dataclass(frozen=True)
class Planted:
    """What one mechanism plants in a chunk: a label term and the behaviours behind it, and any columns it adds."""

    term: FloatArray | None = None  # [P] added to the impression's logit; None: the mechanism has no term
    relevant: tuple[IntArray, IntArray] | None = None  # (impression index [n], behaviour event_id [n]) behind `term`
    log_columns: dict[str, npt.NDArray[Any]] = field(default_factory=dict)  # each [N + P], in log order
    truth_columns: dict[str, npt.NDArray[Any]] = field(default_factory=dict)  # each [P], one value per impression


Plant = Callable[["SyntheticConfig", "World", "Events", np.random.Generator], Planted]


@dataclass(frozen=True)
class Mechanism:
    """A registry entry: the function that plants the mechanism and a one-line description (in synthetic.json)."""

    plant: Plant
    doc: str  # the module meant to find it, then what it plants


def _decayed(
    events: Events, query: IntArray, row: IntArray, tau_seconds: Any, weight: float, cfg_min: float
) -> Planted:
    """`weight · log1p(Σ exp(−Δt / τ))` over matched pairs; the pairs with a decay of at least `cfg_min` are relevant.

    query, row [n]: impression index and behaviour row of each match; tau_seconds: τ in seconds, [n] or a scalar.
    """
    decay = np.exp(-(events.imp_time[query] - events.beh_time[row]) / tau_seconds)  # [n] Δt > 0
    term = weight * np.log1p(np.bincount(query, weights=decay, minlength=events.num_impressions))  # [P]
    keep = decay >= cfg_min  # [n]
    return Planted(term, (query[keep], events.beh_event[row[keep]]))


def _same_spu_ads(cfg: SyntheticConfig, events: Events) -> tuple[SortedIndex, IntArray, IntArray]:
    """The user's ad behaviours of the target's SPU before each impression: their index and [lo, hi) ([P] each)."""
    S1 = cfg.num_spus + 1
    ad = np.flatnonzero(events.is_ad)  # [Na] in (user, time) order
    index = SortedIndex.build(events.beh_user[ad] * S1 + events.beh_cat3[ad], events.beh_rel[ad], ad, events.radix)
    lo, hi = index.before(events.imp_user * S1 + events.imp_cat3, events.imp_rel)  # [P] each
    return index, lo, hi


def same_spu_decay(cfg: SyntheticConfig, world: World, events: Events, rng: np.random.Generator) -> Planted:
    """(a) Same-SPU (`cat_3`) ad behaviours with a category-specific decay: `w_a · log1p(Σ exp(−Δt / τ))`.

    τ = `tau_days[cat_2(target)]`, log-uniform in [`tau_min_days`, `tau_max_days`], times the goal's factor under (e)
    (`Events.tau_days`). Relevant: the matches whose decay is at least `relevance_min_weight`.
    """
    index, lo, hi = _same_spu_ads(cfg, events)
    query, position = expand(lo, hi)  # [n]
    row = index.row[position]  # [n]
    return _decayed(events, query, row, events.tau_days[query] * DAY, cfg.weight_a, cfg.relevance_min_weight)


def content_decay(cfg: SyntheticConfig, world: World, events: Events, rng: np.random.Generator) -> Planted:
    """(b) Content behaviours of the target's `cat_2`: `w_b · log1p(Σ exp(−Δt / content_tau_days))`.

    A coarse match (content has no `cat_3`) across domains: what hierarchical search over merged trajectories finds.
    """
    C1 = cfg.num_categories + 1
    e = events
    content = np.flatnonzero(~e.is_ad)  # [Nc]
    index = SortedIndex.build(e.beh_user[content] * C1 + e.beh_cat2[content], e.beh_rel[content], content, e.radix)
    query, position = expand(*index.before(e.imp_user * C1 + e.imp_cat2, e.imp_rel))  # [n]
    row = index.row[position]  # [n]
    return _decayed(e, query, row, cfg.content_tau_days * DAY, cfg.weight_b, cfg.relevance_min_weight)


def noise_field(cfg: SyntheticConfig, world: World, events: Events, rng: np.random.Generator) -> Planted:
    """(c) A `noise_tag` field, uniform at random on every row, carrying no label signal.

    The column exists only when (c) is on, so an entangled attention over all fields has something to be distracted by.
    """
    rows = events.num_behaviours + events.num_impressions
    return Planted(log_columns={"noise_tag": rng.integers(1, cfg.num_noise_tags + 1, rows)})  # [N + P] by design


def ordered_pair(cfg: SyntheticConfig, world: World, events: Events, rng: np.random.Generator) -> Planted:
    """(d) `+w_d` when a `cat_2 == A_t` behaviour precedes, strictly in time, a `cat_2 == B_t` behaviour.

    Each target category t has a planted ordered pair (A_t, B_t) of other categories (`World.pair_first/second`);
    neither matches the target alone, so only an order-2 interaction reveals it. Relevant: the latest B_t before the
    impression and the latest A_t before that B_t.
    """
    C1 = cfg.num_categories + 1
    e = events
    every = np.arange(e.num_behaviours, dtype=np.int64)  # [N]
    cat_index = SortedIndex.build(e.beh_user * C1 + e.beh_cat2, e.beh_rel, every, e.radix)
    radix, key = e.radix, cat_index.key
    group_b = e.imp_user * C1 + world.pair_second[e.imp_cat2]  # [P]
    last_b = np.searchsorted(key, group_b * radix + e.imp_rel, side="left") - 1  # [P] latest B before
    has_b = (last_b >= 0) & (key[np.maximum(last_b, 0)] // radix == group_b)  # [P]
    b_rel = key[np.maximum(last_b, 0)] % radix  # [P]
    group_a = e.imp_user * C1 + world.pair_first[e.imp_cat2]  # [P]
    last_a = np.searchsorted(key, group_a * radix + b_rel, side="left") - 1  # [P] latest A before it
    has_a = (last_a >= 0) & (key[np.maximum(last_a, 0)] // radix == group_a)  # [P]
    present = has_a & has_b  # [P]
    hit = np.flatnonzero(present)  # [h]
    rows_ab = np.stack([cat_index.row[last_a[hit]], cat_index.row[last_b[hit]]], axis=1).reshape(-1)  # [2h]
    return Planted(cfg.weight_d * present, (np.repeat(hit, 2), e.beh_event[rows_ab]))


def goal_decay(cfg: SyntheticConfig, world: World, events: Events, rng: np.random.Generator) -> Planted:
    """(e) The decay time constant of (a) is multiplied by a per-goal factor.

    No term of its own: `World.goal_factor` is `goal_decay_factors` (default click x0.2, cart x1, buy x5) when (e) is
    on and 1 for every goal otherwise, and `Events.tau_days` (the τ that (a) uses) includes it. (e) without (a)
    changes nothing.
    """
    return Planted()


def quality_effect(cfg: SyntheticConfig, world: World, events: Events, rng: np.random.Generator) -> Planted:
    """(f) Relevance by category, effect by hidden item quality: `w_f · mean q_item` over the <= `f_top_k` most
    recent same-SPU ad behaviours.

    Attention must learn the category match and the representation the quality, and the two optima disagree.
    """
    index, lo, hi = _same_spu_ads(cfg, events)
    first = np.maximum(lo, hi - cfg.f_top_k)  # [P]
    query, position = expand(first, hi)  # [n] <= K most recent matches
    row = index.row[position]  # [n]
    total = np.bincount(query, weights=world.quality[events.beh_item[row]], minlength=events.num_impressions)  # [P]
    term = cfg.weight_f * total / np.maximum(hi - first, 1)  # [P]
    return Planted(term, (query, events.beh_event[row]))


def long_range_memory(cfg: SyntheticConfig, world: World, events: Events, rng: np.random.Generator) -> Planted:
    """(g) `+w_g` when a memory-SPU target has a same-SPU behaviour more than `g_min_back` behaviours back.

    `World` makes the least popular categories memory categories (no prior mass), and `behaviour` plants each user's
    `g_memories` memory behaviours as their oldest and shows memory-SPU items in some impressions. Only the far
    behaviours count, and memory SPUs occur nowhere else, so the most recent `g_min_back` behaviours hold no evidence.
    Adds the truth column `memory_target` (the shown item is of a memory SPU).
    """
    e = events
    # Far = more than g_min_back behaviours before the impression: rows are sorted by (user, time), so the user's
    # behaviours before the impression end at row `end`, and the far ones lie below row end - g_min_back.
    end = np.searchsorted(e.beh_user * e.radix + e.beh_rel, e.imp_user * e.radix + e.imp_rel, side="left")  # [P]
    memory_target = np.isin(e.imp_cat3, world.memory_spus)  # [P]
    index, lo, hi = _same_spu_ads(cfg, e)
    query, position = expand(lo, hi)  # [n] same-SPU earlier ad rows
    row = index.row[position]  # [n]
    far = (row < end[query] - cfg.g_min_back) & memory_target[query]  # [n]
    term = cfg.weight_g * (np.bincount(query[far], minlength=e.num_impressions) > 0).astype(np.float64)  # [P]
    return Planted(term, (query[far], e.beh_event[row[far]]), truth_columns={"memory_target": memory_target})


def scene_migration(cfg: SyntheticConfig, world: World, events: Events, rng: np.random.Generator) -> Planted:
    """(h) Interest migrates between scenarios: in scene z a target of category c relates to the behaviours of
    category π_z(c), `w_h · log1p(Σ exp(−Δt / h_tau_days))` over the user's behaviours (any domain) of that category.

    π_z is the identity for the scenes in `h_identity_scenes` (default: the feed) and a random derangement of the
    categories for every other scene (`World.scene_category_map`), so the same history implies different targets in
    different scenes; `behaviour` moves a history-drawn target to π_z⁻¹ of its category, z the request's scene or, with
    probability `h_cross_prob`, another draw from the impression scenes' prior (then this scene's rule scores a target
    meant for another). Relevant: the matches whose decay is at least `relevance_min_weight`. Adds the truth columns
    `scene` (the request's), `h_category` (π_z(c)) and `h_target_scene` (the scene whose π drew a history-drawn target;
    "" for a target from the popularity prior).
    """
    C1 = cfg.num_categories + 1
    e = events
    every = np.arange(e.num_behaviours, dtype=np.int64)  # [N]
    index = SortedIndex.build(e.beh_user * C1 + e.beh_cat2, e.beh_rel, every, e.radix)
    wanted = world.scene_category_map[e.imp_scene, e.imp_cat2]  # [P] π_z(c)
    query, position = expand(*index.before(e.imp_user * C1 + wanted, e.imp_rel))  # [n]
    row = index.row[position]  # [n]
    planted = _decayed(e, query, row, cfg.h_tau_days * DAY, cfg.weight_h, cfg.relevance_min_weight)
    names = np.asarray(SCENES)
    scene = names[e.imp_scene]  # [P] the request's scene name
    assert e.target_scene is not None  # behaviour draws it when (h) is on
    drawn_for = np.where(e.target_scene >= 0, names[np.maximum(e.target_scene, 0)], "")  # [P] "" = from popularity
    columns = {"scene": scene, "h_category": wanted, "h_target_scene": drawn_for}
    return Planted(planted.term, planted.relevant, truth_columns=columns)


# Registry order is the order the functions run in (it fixes the random draws of those that draw) and the order of
# the truth columns. A new mechanism goes at the end, so configs without it keep their frames.
MECHANISMS: dict[str, Mechanism] = {
    "a": Mechanism(
        same_spu_decay,
        "TIN/TDPE: same-SPU ad behaviours with a category-specific exponential time decay, w_a*log1p(sum decay)",
    ),
    "b": Mechanism(
        content_decay,
        "hierarchical search: content behaviours matching the target only at cat_2, w_b*log1p(sum decay)",
    ),
    "c": Mechanism(
        noise_field,
        "DSI-TIN: a uniformly random noise_tag field on every row that carries no label signal",
    ),
    "d": Mechanism(
        ordered_pair,
        "Stacked TIN: +w_d when a behaviour of category A_t precedes one of B_t (planted pair per target cat_2)",
    ),
    "e": Mechanism(
        goal_decay,
        "TDPE/TD-SASRec: the decay time constant of (a) is multiplied by a per-goal factor",
    ),
    "f": Mechanism(
        quality_effect,
        "DARE: relevance by category (recent same-SPU behaviours), effect by hidden item quality, w_f*mean(q)",
    ),
    "g": Mechanism(
        long_range_memory,
        "long-range search: +w_g when a memory-SPU target has a same-SPU behaviour over g_min_back behaviours back",
    ),
    "h": Mechanism(
        scene_migration,
        "SFPNet: in scene z a target of category c relates to behaviours of category pi_z(c), w_h*log1p(sum decay)",
    ),
}
# Mechanisms whose term_* and relevant_* truth columns exist even when they are off (zeros, empty lists), as they did
# before (g) existed; any other mechanism with a term has its columns only when it is on.
ALWAYS_IN_TRUTH = ("a", "b", "d", "f")
