"""TIN: Temporal Interest Network (Zhou et al., WWW 2024, https://arxiv.org/abs/2308.08487).

TIN makes both the attention and the pooled representation target-aware and temporal:
- temporal encoding: ẽ_i = e_i + p_{f(x_i)} and ṽ_t = v_t + p_{f(x_t)}, where f is the behaviour's relative
  position to the target (target = 0, most recent behaviour = 1, ...) and/or its bucketed time gap to the target
  (target = bucket 0);
- target-aware attention: α_i = softmax_i(<ẽ_i, ṽ_t> / sqrt(E)) over the real behaviours;
- target-aware representation: u = Σ_i α_i (ẽ_i ⊙ ṽ_t), so the pooled vector already holds the behaviour-target
  cross (the paper's 4-way interaction argument); the head MLP reads [u, v_t].

Design choices (the paper leaves them open):
- `temporal = "position"` is the default: it is what the paper's experiments use (a relative-position table, 431
  rows on Amazon), it needs no timestamps, and where `history_position` is absent it is recomputed from the mask
  (left padding: the behaviour at column i has position = number of real behaviours at columns >= i), so the
  model reads no optional field. Positions past the table share its last row. Searched batches keep the original
  positions (`gather_history` moves `history_position`), so TIN on the top-K still sees how far back each kept
  behaviour is. `"time_gap"` buckets `history_time_delta` on a log scale (`time_gap_bucket`); `"both"` adds the
  two encodings (one table each), which suits data where recency in events and in seconds disagree (sessions).
- Behaviour and target share one embedding (`BehaviourEmbedding`: item ⊕ one category vector per level) and one
  temporal table per kind, as in the paper's released code; E = D·(1 + M) is the attention dim d.
- Empty history: α = 0 everywhere, u = 0 and the logit depends on the target alone.

`search_embeddings` returns (ṽ_t / sqrt(E), ẽ_i), so soft search ranks behaviours by TIN's own attention logits:
`search.method = "soft"` gives TIN on its top-K (TWIN-style consistency), and K = L reproduces the full model.
The temporal encoding itself (`time_gap_bucket`, the tables, `add_temporal_encoding`) is in `models/temporal.py`:
DSI-TIN, Stacked TIN, TD-SASRec and VISTA share it.

Target decoupling (`tdpe`, `tdpe_key`, `goal_heads`; see `models/tdpe.py`): `tdpe = "separate"` gives every value
of a target-side key its own position and time-gap tables (Target-Decoupled Positional Encoding), `"shared_delta"` a
shared table plus a per-key delta that starts at zero. The key is the advertising goal (`tdpe_key = "goal"`, the
default), the target's category at a taxonomy level (`"category"`, `tdpe_level`), the request's scene (`"scene"`) or
an extra id column by name (listed in `extra_fields`); `goal_heads = true` replaces the head's last layer by one per
goal. The defaults (`"shared"`, `"goal"`, `false`) are plain TIN, with the same parameters, state-dict keys and seeded
values. Note that a shared table is already target-aware through <p_{f(x_i)}, v_t>: the target's category embedding
can tilt the decay per category; a per-category table gives each category a free decay curve instead.

Shapes: B batch, L history length, D embedding dim, M taxonomy levels, E = D·(1 + M) behaviour width (D without
categories), P position rows, G time-gap buckets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from longrec.data.batch import Batch
from longrec.models.checks import check_behaviour_config, check_sizes
from longrec.models.layers import BehaviourEmbedding, mlp
from longrec.models.tdpe import GoalHeads, TDPEKey, check_goal_options, check_key_fields, decoupling_reads, tdpe_key_of
from longrec.models.temporal import YEAR, add_temporal_encoding, check_temporal_options, temporal_tables

__all__ = ["TIN", "TINConfig"]


@dataclass(frozen=True)
class TINConfig:
    num_items: int  # item vocabulary size, id 0 = padding
    num_categories: int = 0  # category vocabulary shared by every taxonomy level, id 0 = missing; 0 = no categories
    taxonomy_levels: int = 0  # M, depth of history_category [B, L, M]
    dim: int = 16  # D, width of each embedding table
    temporal: str = "position"  # f(x): position | time_gap | both (sum of the two encodings)
    num_positions: int = 256  # P rows of the position table (row 0 = the target); older behaviours share row P-1
    time_buckets: int = 32  # G log-spaced time-gap buckets (bucket 0 = the target), see time_gap_bucket
    min_gap_seconds: float = 60.0  # time_gap_bucket: gaps up to this share bucket 1
    max_gap_seconds: float = YEAR  # time_gap_bucket: gaps beyond this share the last bucket
    head_hidden: tuple[int, ...] = (200, 80)  # widths of the output MLP
    init_std: float = 0.05  # embeddings (and temporal tables) start at N(0, init_std²)
    num_goals: int = 1  # T, goal vocabulary size incl. id 0 = unknown (from the data); read by tdpe and goal_heads
    num_scenes: int = 0  # scene vocabulary incl. id 0 (from the data); read by tdpe_key = "scene"
    num_extra: tuple[int, ...] = ()  # vocabulary of each extra id column incl. id 0 (from the data)
    extra_fields: tuple[str, ...] = ()  # names of the extra id columns, in order (the store's extra_fields)
    tdpe: str = "shared"  # temporal tables per key value: shared (plain TIN) | separate | shared_delta (models/tdpe.py)
    tdpe_key: str = "goal"  # what picks the table: goal | category | scene | an extra column named in extra_fields
    tdpe_level: int = 0  # tdpe_key = "category": taxonomy level, 1 = coarsest .. M = finest; 0 = the finest
    goal_heads: bool = False  # one final head layer per goal (GoalHeads) instead of one for all goals

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_behaviour_config(
            owner, self.num_items, self.num_categories, self.taxonomy_levels, self.dim, self.init_std
        )
        object.__setattr__(self, "head_hidden", check_sizes(owner, "head_hidden", self.head_hidden))
        check_goal_options(owner, self.num_goals, self.tdpe, self.goal_heads)
        check_temporal_options(owner, self)
        num_extra, extra_fields = check_key_fields(owner, self.num_scenes, self.num_extra, self.extra_fields)
        object.__setattr__(self, "num_extra", num_extra)
        object.__setattr__(self, "extra_fields", extra_fields)
        tdpe_key_of(owner, self)  # an unknown key, or one the data has no vocabulary for, is a config error


class TIN(nn.Module):
    """Target-aware temporal encoding, softmax target attention and the target-aware representation."""

    def __init__(self, config: TINConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = BehaviourEmbedding(
            config.num_items, config.dim, config.num_categories, config.taxonomy_levels, config.init_std
        )
        E = self.embedding.out_dim
        self.tdpe_key = tdpe_key_of(type(config).__name__, config)
        self.position_embedding, self.gap_embedding = temporal_tables(config, E, self.tdpe_key)  # [P, E], [G, E]
        T = config.num_goals
        self.head = GoalHeads(2 * E, config.head_hidden, T) if config.goal_heads else mlp(2 * E, config.head_hidden)
        reads = [*self.embedding.reads, *(["history_time_delta"] if self.gap_embedding is not None else [])]
        reads += decoupling_reads(self.tdpe_key, config.tdpe, config.goal_heads)
        self.reads: tuple[str, ...] = tuple(dict.fromkeys(reads))  # in order, without repeats

    @property
    def temporal_key(self) -> TDPEKey | None:
        """The key whose value picks the temporal tables (TDPE), or None when one table serves every target."""
        return self.tdpe_key if self.config.tdpe != "shared" else None

    def _encode(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """Temporally encoded behaviours ẽ [B, L, E], target ṽ_t [B, E], and the plain target v_t [B, E]."""
        h, v = self.embedding(batch)  # [B, L, E], [B, E]
        tables = self.position_embedding, self.gap_embedding
        e, t = add_temporal_encoding(batch, h, v, *tables, self.config, self.tdpe_key)  # [B, L, E], [B, E]
        return e, t, v  # [B, L, E], [B, E], [B, E]

    def _attend(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Attention weights α [B, L] (0 on padding), ẽ [B, L, E], ṽ_t [B, E] and v_t [B, E]."""
        e, t, v = self._encode(batch)  # [B, L, E], [B, E], [B, E]
        mask = batch.history_mask
        scores = torch.einsum("ble,be->bl", e, t) / math.sqrt(e.shape[-1])  # [B, L]
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)  # [B, L]
        # An empty history gets a uniform softmax over padding, which the mask then zeroes: α = 0, no NaN.
        alpha = scores.softmax(dim=-1) * mask  # [B, L]
        return alpha, e, t, v

    def attention_weights(self, batch: Batch) -> Tensor:
        """α_i, the softmax attention over the real behaviours, [B, L]; rows sum to 1 (0 for an empty history)."""
        return self._attend(batch)[0]  # [B, L]

    def search_embeddings(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Soft-search query ṽ_t / sqrt(E) [B, E] and keys ẽ [B, L, E]: <query, key_i> is TIN's attention logit."""
        e, t, _ = self._encode(batch)  # [B, L, E], [B, E]
        return t / math.sqrt(e.shape[-1]), e

    def forward(self, batch: Batch) -> Tensor:
        """Return one click logit per example, shape [B]."""
        alpha, e, t, v = self._attend(batch)  # [B, L], [B, L, E], [B, E], [B, E]
        u = torch.einsum("bl,ble->be", alpha, e) * t  # [B, E], Σ_i α_i (ẽ_i ⊙ ṽ_t)
        x = torch.cat([u, v], dim=-1)  # [B, 2E]
        if self.config.goal_heads:
            return self.head(x, batch.goal)  # [B], the head of each example's goal
        return self.head(x).squeeze(-1)  # [B]
