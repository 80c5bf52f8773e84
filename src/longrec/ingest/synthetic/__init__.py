"""Synthetic commercial behaviour trajectories with planted, switchable mechanisms and exported ground truth.

No public dataset has merged ad + content trajectories, several advertising goals *and* known reasons for each label,
so this seeded generator provides them. It writes a canonical behaviour log
(`longrec.ingest.schema`): behaviour rows plus labelled impression rows, whose labels depend only on the behaviours
strictly before the impression, through the planted mechanisms below.

**World** (`world.py`). A 3-level unified taxonomy industry (`cat_1`) ⊃ category (`cat_2`) ⊃ SPU (`cat_3`); ad
items belong to one SPU, content items to a content tag that the mapping table sends to a unified (cat_1, cat_2), so
content never reaches level 3. Ad items have a hidden quality q ~ N(0, 1).

**Behaviour** (`behaviour.py`). Users with drifting interest slots, in sessions; a behaviour is an ad with
probability `ad_fraction` (content is the majority, as in Tencent: ~1,500 content vs ~170 ad per user) and holds the
deepest stage of its funnel (ad: view → click → cart → buy; content: view → like → share).

**Impressions.** `impressions_per_user` labelled rows per user (`domain = "ad"`, `action = "impression"`), each a
few minutes after a random behaviour of the user; the shown ad comes with probability `target_from_history_prob`
from the SPU of a recent ad behaviour (so positives relate to history), else from the global popularity prior. The
goal is uniform over `goals`. Label ~ Bernoulli(sigmoid(logit)), logit = bias + Σ of the ON mechanisms' terms, each
computed from the behaviours with Δt = t_impression − t_i > 0 only; `bias` is calibrated so that the mean
probability equals `target_positive_rate`.

**Planted mechanisms** (`mechanisms.py`; letter → module meant to find it; weights `weight_*`):

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
- (h) → SFPNet: interest migrates between scenarios (opt-in, off by default). Impressions come in the feed or in
  search; in scene z a target of category c relates to the user's behaviours (any domain) of category π_z(c),
  `w_h · log1p(Σ exp(−Δt / h_tau_days))`. π_z is the identity for the scenes in `h_identity_scenes` (the feed) and a
  random cycle through all categories (π_z(c) ≠ c) elsewhere. A history-drawn target is an item of π_z⁻¹ of its
  history behaviour's category, z the request's scene or, with probability `h_cross_prob`, a scene drawn from the
  impression scenes' prior: the same history then comes with the targets of both scenes in both scenes, and only the
  request's scene says which relate to it (a scenario-blind model cannot tell).

**Ground truth.** `SyntheticLog.truth` has one row per labelled impression (`event_id`, `user_id`, logit, prob, label,
per-mechanism terms, the effective τ of (a)) and list columns of contributing behaviour `event_id`s: `relevant_a` /
`relevant_b` (matches whose decay weight ≥ `relevance_min_weight`), `relevant_d` (the witnessing pair: the latest B_t
and the latest A_t before it), `relevant_f` (the ≤ `f_top_k` behaviours averaged), `relevant` (their union: what a
perfect search retrieves). A switched-off mechanism has a zero term and empty lists. With (g) on, the truth also has
`term_g` and `relevant_g` (the far same-SPU behaviours of a memory target) and `memory_target` (whether the shown item
is of a memory SPU); the memory SPUs are in `planted["memory_spus"]`. With (h) on, the truth has `term_h`,
`relevant_h`, `scene` (the request's), `h_category` (π_z(c), the category whose behaviours count) and
`h_target_scene` (the scene whose π drew a history-drawn target, "" otherwise); π per scene is in
`planted["scene_category_map"]`. Configs without (g) or (h) give the frames they gave before those existed. τ per
category, goal factors, the planted pairs, item qualities and the bias are in `SyntheticLog.planted` (and
`synthetic.json`).

Generation (`generator.py`) is vectorised numpy over chunks of users (≤ ~1M events per chunk bounds the memory), so
it scales to 10^5 events per user. The same config (seed included) gives identical frames. `config.py` holds
`SyntheticConfig`.

**Adding a mechanism (i).** A mechanism is one function in `mechanisms.py` and one entry in its `MECHANISMS` dict:

1. `def plant_i(cfg, world, events, rng) -> Planted`: the term [P] it adds to each impression's logit, computed
   only from the user's behaviours strictly before the impression (`SortedIndex.before` finds them), and the
   (impression index, behaviour event_id) pairs behind it; or columns it adds (`log_columns`, `truth_columns`).
2. `"i": Mechanism(plant_i, "<module meant to find it>: <what it plants>")` at the end of `MECHANISMS`, so that it
   runs last and configs without it keep their frames.

Its knobs (`weight_i`, ...) are fields of `SyntheticConfig`, like `weight_a`. With (i) on, the label includes its
term and the truth gains `term_i` and `relevant_i`; `relevant` includes its pairs. A mechanism that also needs
planted parameters or behaviours of its own, as (e), (g) and (h) do, draws them in `world.py` or `behaviour.py` under
`cfg.on("i")`, so that the random draws of configs without it do not move.
"""

from longrec.ingest.synthetic.behaviour import ACTIONS, SCENES
from longrec.ingest.synthetic.config import SyntheticConfig
from longrec.ingest.synthetic.generator import SyntheticLog, generate
from longrec.ingest.synthetic.mechanisms import MECHANISMS

__all__ = ["ACTIONS", "MECHANISMS", "SCENES", "SyntheticConfig", "SyntheticLog", "generate"]
