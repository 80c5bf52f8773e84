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
`time_gap_bucket` is public: TDPE reuses the same bucketing.

Multi-goal ads (`tdpe`, `goal_heads`; see `models/tdpe.py`): `tdpe = "separate"` gives every advertising goal
(`batch.goal`) its own position and time-gap tables (Target-Decoupled Positional Encoding), `"shared_delta"` a shared
table plus a per-goal delta that starts at zero; `goal_heads = true` replaces the head's last layer by one per goal.
The defaults (`"shared"`, `false`) are plain TIN, with the same parameters, state-dict keys and seeded values.

Shapes: B batch, L history length, D embedding dim, M taxonomy levels, E = D·(1 + M) behaviour width (D without
categories), P position rows, G time-gap buckets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from longrec.data.batch import Batch
from longrec.models.checks import check_behaviour_config, check_int, check_sizes
from longrec.models.layers import BehaviourEmbedding, mlp
from longrec.models.tdpe import GoalHeads, TargetDecoupledEncoding, check_goal_options

__all__ = [
    "TEMPORAL",
    "TIN",
    "TINConfig",
    "TemporalOptions",
    "add_temporal_encoding",
    "check_temporal_options",
    "temporal_tables",
    "time_gap_bucket",
]

TEMPORAL = ("position", "time_gap", "both")
_YEAR = 365.0 * 86_400.0  # seconds


def time_gap_bucket(seconds: Tensor, num_buckets: int, min_seconds: float = 60.0, max_seconds: float = _YEAR) -> Tensor:
    """Log-spaced bucket of a time gap to the target: 0 for a gap <= 0 (the target itself), else 1..G-1.

    Bucket 1 holds gaps in (0, min_seconds]; buckets 2..G-2 split (min_seconds, max_seconds] into G - 3 equal steps
    of log(gap); bucket G-1 holds everything longer than max_seconds. Monotone in the gap.

    Args:
        seconds: [...] float time gaps (behaviour to target), >= 0.
        num_buckets: G >= 3, including bucket 0 for the target.
        min_seconds: upper edge of bucket 1, > 0.
        max_seconds: lower edge of the last bucket, > min_seconds.

    Returns:
        [...] int64 bucket ids in [0, G).
    """
    if isinstance(num_buckets, bool) or not isinstance(num_buckets, int) or num_buckets < 3:
        raise ValueError(f"time_gap_bucket num_buckets must be an int >= 3. Got {num_buckets!r} instead.")
    if not 0 < min_seconds < max_seconds:
        raise ValueError(
            f"time_gap_bucket needs 0 < min_seconds < max_seconds. Got min_seconds={min_seconds}, "
            f"max_seconds={max_seconds} instead."
        )
    x = seconds.to(torch.float64)  # [...]; float64 so edges and gaps compare exactly
    edges = torch.logspace(
        math.log10(min_seconds), math.log10(max_seconds), num_buckets - 2, dtype=torch.float64, device=x.device
    )  # [G - 2]
    bucket = 1 + torch.bucketize(x, edges)  # [...], in [1, G - 1]: x <= edges[0] -> 1, x > edges[-1] -> G - 1
    return torch.where(x > 0, bucket, 0)  # [...]


class TemporalOptions(Protocol):
    """The temporal-encoding fields that TINConfig, StackedTINConfig and DSITINConfig share (read-only)."""

    @property
    def temporal(self) -> str: ...
    @property
    def num_positions(self) -> int: ...
    @property
    def time_buckets(self) -> int: ...
    @property
    def min_gap_seconds(self) -> float: ...
    @property
    def max_gap_seconds(self) -> float: ...
    @property
    def num_goals(self) -> int: ...
    @property
    def tdpe(self) -> str: ...
    @property
    def init_std(self) -> float: ...


def check_temporal_options(owner: str, options: TemporalOptions) -> None:
    """Check the temporal fields of a TIN-family config; messages name `owner` (the config class)."""
    if options.temporal not in TEMPORAL:
        raise ValueError(f"{owner}.temporal must be one of {', '.join(TEMPORAL)}. Got {options.temporal!r} instead.")
    check_int(owner, "num_positions", options.num_positions, minimum=2)  # the target's row plus one behaviour row
    check_int(owner, "time_buckets", options.time_buckets, minimum=3)
    lo, hi = options.min_gap_seconds, options.max_gap_seconds
    if isinstance(lo, bool) or not isinstance(lo, int | float) or not lo > 0:
        raise ValueError(f"{owner}.min_gap_seconds must be a positive float. Got {lo!r} instead.")
    if isinstance(hi, bool) or not isinstance(hi, int | float) or not hi > lo:
        raise ValueError(f"{owner}.max_gap_seconds must be > min_gap_seconds = {lo}. Got {hi!r} instead.")


def temporal_tables(
    options: TemporalOptions, width: int
) -> tuple[TargetDecoupledEncoding | None, TargetDecoupledEncoding | None]:
    """The position table [P, E] and the time-gap table [G, E] that `options.temporal` asks for (per goal under
    TDPE), in that order; None for a kind it leaves out."""
    T, mode, std = options.num_goals, options.tdpe, options.init_std
    position = options.temporal in ("position", "both")
    gap = options.temporal in ("time_gap", "both")
    return (
        TargetDecoupledEncoding(options.num_positions, width, T, mode, std) if position else None,
        TargetDecoupledEncoding(options.time_buckets, width, T, mode, std) if gap else None,
    )


def add_temporal_encoding(
    batch: Batch,
    e: Tensor,
    t: Tensor,
    position_table: TargetDecoupledEncoding | None,
    gap_table: TargetDecoupledEncoding | None,
    options: TemporalOptions,
) -> tuple[Tensor, Tensor]:
    """ẽ_i = e_i + p^{(τ)}_{f(x_i)} and ṽ_t = v_t + p^{(τ)}_0 for each table given (position first, then time gap).

    Args:
        batch: supplies history_position (recomputed from the mask when None), history_time_delta (read only with
            a gap table) and goal (read only by TDPE tables; None = goal 0).
        e: [B, L, E] behaviour embeddings.
        t: [B, E] target embedding.
        position_table: relative-position table, or None.
        gap_table: time-gap bucket table, or None.
        options: num_positions (older behaviours share the last row) and the time_gap_bucket edges.

    Returns:
        ẽ [B, L, E] and ṽ_t [B, E].
    """
    goal, B = batch.goal, len(batch)
    if position_table is not None:
        position = batch.history_position
        if position is None:  # left padding: position = real behaviours from this column to the end
            position = batch.history_mask.flip(1).cumsum(1).flip(1) * batch.history_mask  # [B, L]
        position = position.clamp(0, options.num_positions - 1)  # [B, L]
        e = e + position_table(position, goal)  # [B, L, E]
        t = t + position_table.target(goal, B)  # [B, E], the target is position 0
    if gap_table is not None:
        assert batch.history_time_delta is not None  # in the model's reads: check_batch's job
        o = options
        bucket = time_gap_bucket(batch.history_time_delta, o.time_buckets, o.min_gap_seconds, o.max_gap_seconds)
        e = e + gap_table(bucket, goal)  # [B, L, E]
        t = t + gap_table.target(goal, B)  # [B, E], the target's gap is 0
    return e, t


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
    max_gap_seconds: float = _YEAR  # time_gap_bucket: gaps beyond this share the last bucket
    head_hidden: tuple[int, ...] = (200, 80)  # widths of the output MLP
    init_std: float = 0.05  # embeddings (and temporal tables) start at N(0, init_std²)
    num_goals: int = 1  # T, goal vocabulary size incl. id 0 = unknown (from the data); read by tdpe and goal_heads
    tdpe: str = "shared"  # temporal tables per goal: shared (plain TIN) | separate | shared_delta (models/tdpe.py)
    goal_heads: bool = False  # one final head layer per goal (GoalHeads) instead of one for all goals

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_behaviour_config(
            owner, self.num_items, self.num_categories, self.taxonomy_levels, self.dim, self.init_std
        )
        object.__setattr__(self, "head_hidden", check_sizes(owner, "head_hidden", self.head_hidden))
        check_goal_options(owner, self.num_goals, self.tdpe, self.goal_heads)
        check_temporal_options(owner, self)


class TIN(nn.Module):
    """Target-aware temporal encoding, softmax target attention and the target-aware representation."""

    def __init__(self, config: TINConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = BehaviourEmbedding(
            config.num_items, config.dim, config.num_categories, config.taxonomy_levels, config.init_std
        )
        E = self.embedding.out_dim
        self.position_embedding, self.gap_embedding = temporal_tables(config, E)  # [P, E], [G, E] (per goal: TDPE)
        T = config.num_goals
        self.head = GoalHeads(2 * E, config.head_hidden, T) if config.goal_heads else mlp(2 * E, config.head_hidden)
        reads_gap = self.gap_embedding is not None
        reads_goal = config.goal_heads or config.tdpe != "shared"
        self.reads: tuple[str, ...] = (
            self.embedding.reads + (("history_time_delta",) if reads_gap else ()) + (("goal",) if reads_goal else ())
        )

    def _encode(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """Temporally encoded behaviours ẽ [B, L, E], target ṽ_t [B, E], and the plain target v_t [B, E]."""
        h, v = self.embedding(batch)  # [B, L, E], [B, E]
        e, t = add_temporal_encoding(batch, h, v, self.position_embedding, self.gap_embedding, self.config)
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
