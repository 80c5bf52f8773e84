"""Behaviour generation: one chunk of users' sessions, interests, behaviours and labelled impressions.

Each user has `num_interests` interest slots (categories drawn from a Zipf popularity prior, mixed by Dirichlet
weights) that drift: a session replaces one slot with probability `drift_prob`. Events come in sessions (session
starts uniform over `span_days`, exponential gaps of about a minute inside a session). An event explores a random
popular category with probability `explore_prob`, else follows a slot; it is an ad behaviour with probability
`ad_fraction` and picks its item by Zipf popularity within the category (ad) or within a content tag of the category
(content). Actions follow a funnel (ad: view -> click -> cart -> buy; content: view -> like -> share); one row per
behaviour holds the deepest stage. With (g) on, each user's `g_memories` memory behaviours are planted first.

Impressions come a few minutes after a random behaviour of the user; the shown ad comes from the SPU of a recent ad
behaviour with probability `target_from_history_prob` (with (g) on, some show a memory SPU), else from the popularity
prior. With (h) on, a history-drawn target is replaced by an item of category π_z⁻¹(c), c the category of the history
behaviour it came from and z the request's scene (or, with probability `h_cross_prob`, a scene drawn from the
impression scenes' prior), so that its relation to the history goes through π_z. The result,
`Events`, is what every planted mechanism reads; their labels are not drawn here.
Shapes: U users, N behaviours and P impressions of the chunk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from longrec.ingest.synthetic.config import SyntheticConfig
from longrec.ingest.synthetic.mechanisms import DAY, SCENES, SortedIndex
from longrec.ingest.synthetic.world import World

__all__ = ["ACTIONS", "DOMAINS", "SCENES", "Events", "generate_events"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

ACTIONS = ("view", "click", "cart", "buy", "like", "share", "impression")
DOMAINS = ("ad", "content")
# Scene probabilities per row kind, over SCENES: ads live in the feed and search, content in feed/article/video.
_AD_SCENES = (0.6, 0.4, 0.0, 0.0)
_CONTENT_SCENES = (0.3, 0.0, 0.35, 0.35)
_IMPRESSION_SCENES = (0.7, 0.3, 0.0, 0.0)


@dataclass(frozen=True)
class Events:
    """One chunk's behaviours, time-sorted per user, and its impressions; users are chunk-local 0..U-1.

    Times are epoch seconds; `*_rel` are the same minus the chunk's first time, and `radix` exceeds every `*_rel`, so
    `group * radix + time_rel` sorts by (group, time) (`SortedIndex`). Codes: action indexes ACTIONS, scene SCENES,
    goal `SyntheticConfig.goals`; 0 = null for cat_3 and brand.
    """

    beh_user: IntArray  # [N] sorted
    beh_time: IntArray  # [N] sorted within a user
    beh_rel: IntArray  # [N]
    beh_item: IntArray  # [N]
    beh_cat2: IntArray  # [N]
    beh_cat3: IntArray  # [N] 0 for content
    beh_source: IntArray  # [N] the domain's own category: SPU (ad) or content tag
    beh_brand: IntArray  # [N] 0 for content
    beh_action: IntArray  # [N]
    beh_scene: IntArray  # [N]
    beh_event: IntArray  # [N] event_id (row in the log)
    is_ad: BoolArray  # [N]
    imp_user: IntArray  # [P] sorted
    imp_time: IntArray  # [P] sorted within a user
    imp_rel: IntArray  # [P]
    imp_item: IntArray  # [P] the shown ad
    imp_cat2: IntArray  # [P]
    imp_cat3: IntArray  # [P]
    imp_goal: IntArray  # [P]
    imp_scene: IntArray  # [P]
    imp_event: IntArray  # [P] event_id, increasing
    tau_days: FloatArray  # [P] (a)'s decay time constant for this target and goal (per goal under (e))
    log_order: IntArray  # [N + P] behaviours then impressions -> log order
    radix: int
    target_scene: IntArray | None = None  # [P] (h): scene whose π drew a history-drawn target, -1 else; None: (h) off

    @property
    def num_behaviours(self) -> int:
        return int(self.beh_user.shape[0])

    @property
    def num_impressions(self) -> int:
        return int(self.imp_user.shape[0])


def _choice(probabilities: Sequence[float], size: int, rng: np.random.Generator) -> IntArray:
    """Codes 0..len-1 drawn with the given probabilities. -> [size]."""
    cdf = np.cumsum(np.asarray(probabilities, dtype=np.float64))  # [n]
    index = np.searchsorted(cdf / cdf[-1], rng.random(size), side="right")  # [size]
    return np.minimum(index, len(probabilities) - 1).astype(np.int64)


def generate_events(
    cfg: SyntheticConfig,
    world: World,
    counts: IntArray,
    row_offset: int,
    rng: np.random.Generator,
) -> Events:
    """Behaviours and impressions of one chunk of users, with `counts` behaviours each ([U]).

    Event ids start at `row_offset` (the rows of the earlier chunks).
    """
    U = counts.shape[0]
    N = int(counts.sum())
    span = cfg.span_days * DAY  # seconds
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
        back = 1 + np.floor(rng.exponential(DAY, (U, G))).astype(np.int64)  # [U, G] >= 1 s before it
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
    ad_index = SortedIndex.build(beh_user[ad], beh_rel[ad], ad, radix)
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
    target_scene = None  # [P] (h): the scene whose π drew a history-drawn target, -1 for the others
    if cfg.on("h"):  # (h): a history-drawn target moves to the category π_z⁻¹(c) of the interest c it came from ...
        inverse = np.zeros_like(world.scene_category_map)  # [Z, C + 1] π_z⁻¹
        np.put_along_axis(inverse, world.scene_category_map, np.arange(inverse.shape[1])[None, :], axis=1)
        # ... where z is the request's scene, or with probability h_cross_prob a scene drawn from the impression
        # scenes' prior: then the history and target are those of another scene, which this scene's rule scores.
        cross = rng.random(P) < cfg.h_cross_prob  # [P]
        z = np.where(cross, _choice(_IMPRESSION_SCENES, P, rng), imp_scene)  # [P]
        migrated = inverse[z, imp_cat2]  # [P] == imp_cat2 where π_z is the identity
        move = from_history & (migrated != imp_cat2)  # [P]
        imp_item[move] = world.items_by_category.sample(migrated[move], rng)
        imp_cat3 = world.spu_of_item[imp_item]  # [P]
        imp_cat2 = world.category_of_spu[imp_cat3]  # [P]
        target_scene = np.where(from_history, z, -1)  # [P]
    tau_days = world.tau_days[imp_cat2] * world.goal_factor[imp_goal]  # [P] (a) decay, per goal under (e)

    return Events(
        beh_user=beh_user,
        beh_time=beh_time,
        beh_rel=beh_rel,
        beh_item=beh_item,
        beh_cat2=beh_cat2,
        beh_cat3=beh_cat3,
        beh_source=beh_source,
        beh_brand=beh_brand,
        beh_action=beh_action,
        beh_scene=beh_scene,
        beh_event=beh_event,
        is_ad=is_ad,
        imp_user=imp_user,
        imp_time=imp_time,
        imp_rel=imp_rel,
        imp_item=imp_item,
        imp_cat2=imp_cat2,
        imp_cat3=imp_cat3,
        imp_goal=imp_goal,
        imp_scene=imp_scene,
        imp_event=imp_event,
        tau_days=tau_days,
        log_order=log_order,
        radix=radix,
        target_scene=target_scene,
    )
