"""VISTA: VIrtual Sequential Target Attention (Chen et al., Meta, arXiv 2510.22049, "Massive Memorization with
Hundreds of Trillions of Parameters for Sequential Transducer Generative Recommenders").

Target attention from every candidate to every behaviour costs O(C·L) per request. VISTA splits it in two stages:
1. **summarisation** (`user_state`): S learnable summary ("virtual seed") tokens, shared by all users, attend over
   the user's whole history and become S per-user summary vectors Z [B, S, E]. It reads only history fields, so it
   is computed once per user and cached (`longrec.serve.cache.UserStateCache`), refreshed now and then;
2. **candidate attention** (`score_with_state`): the candidate attends over the S summaries only (softmax target
   attention), and a head MLP reads [v_t, pooled, v_t ⊙ pooled]. Its cost does not depend on L.
`forward(batch)` is exactly `score_with_state(user_state(batch), batch)`.

Summarisation (ours where the paper is vague): each summary token is a *virtual target*. Layer 1 is multi-head
target attention of the S tokens over the behaviours ẽ_i = item ⊕ categories + temporal encoding, with queries
W_q z_s, keys W_k ẽ_i and the behaviour embeddings themselves as values (head h reads its d-wide slice), so a summary
is a mixture of behaviours and lives in the space the candidate is embedded in (TIN's representation argument).
Measured on the planted category-match task of the tests (test AUC, 300 steps, S = 16; mean pooling 0.64): values
through W_v and W_o with residual + LayerNorm + FFN, about 0.64; summaries also attending over themselves (a
"self-attention" sink), 0.83; plain behaviour values, 0.86. Each further layer re-attends with the previous summaries
as queries and adds the result (a residual, as Stacked TIN). The history is never updated, so there is no [B, L, L]
term. Two attention kinds (`attention`):
- "softmax": softmax_i(<q_s, k_i> / sqrt(d)) over the real behaviours; cost O(S·L·E).
- "silu" (quasi-linear attention): φ(Q)(φ(K)^T V) / (sqrt(d)·n), φ = SiLU, n = number of real behaviours. K^T V is
  computed first ([d, d] per head), so the cost is O(L·d²) per head, and a new behaviour could be folded into the
  cached K^T V incrementally. Normalisation: SiLU is not positive, so the usual linear-attention normaliser
  Σ_i φ(q)·φ(k_i) can be 0 or negative and blow up; we divide by the behaviour count instead (a mean, as HSTU's
  pointwise attention does). Masked behaviours have φ(k) zeroed, so they add nothing; an empty history gives 0.
  Being a mean, it is less selective than softmax (0.80 against 0.86 on the task above).

Reconstruction loss (`reconstruction_weight > 0`, ours; the paper predicts the next history item from the summary):
the most recent behaviour of each history is held out, summaries are computed on the rest, and the held-out
behaviour must be recognised among the batch's held-out behaviours (in-batch sampled softmax, accidental hits masked)
by score(i, j) = logsumexp_s <W_t v_j, z_{i,s}> / sqrt(E), the log of candidate attention's normaliser. No extra
parameters: the summaries learn to answer candidate queries for what the user did next. Rows with fewer than two real
behaviours are left out. It costs one more summarisation pass (training only), through `forward_with_extra_loss`.

Temporal encoding (`temporal`): "position" (default; relative position, recomputed from the mask when
`history_position` is None, as in TIN) does not change until new behaviours arrive, so a cached state stays exact.
"time_gap" / "both" read `history_time_delta`, which is relative to the request time: a cached state then drifts
with age, which the cache's `max_age_s` bounds. The goal never enters the user side (no TDPE): a per-goal history
encoding would make the state per (user, goal); `goal_heads` decouples goals on the candidate side only.

Shapes: B batch, L history length, D embedding dim, M taxonomy levels, E = D·(1 + M) behaviour width (D without
categories), S summary tokens, N keys, H heads, d = E / H head width, T goals, R rows with a held-out behaviour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longrec.data.batch import Batch
from longrec.models.checks import check_behaviour_config, check_int, check_sizes
from longrec.models.layers import BehaviourEmbedding, lookup, mlp
from longrec.models.tdpe import GoalHeads, check_goal_options
from longrec.models.temporal import YEAR, time_gap_bucket

__all__ = ["ATTENTIONS", "VISTA", "VISTAConfig", "silu_attention", "softmax_attention"]

ATTENTIONS = ("softmax", "silu")
VISTA_TEMPORAL = ("none", "position", "time_gap", "both")


@dataclass(frozen=True)
class VISTAConfig:
    num_items: int  # item vocabulary size, id 0 = padding
    num_categories: int = 0  # category vocabulary shared by every taxonomy level, id 0 = missing; 0 = no categories
    taxonomy_levels: int = 0  # M, depth of history_category [B, L, M]
    dim: int = 16  # D, width of each embedding table
    num_summaries: int = 16  # S summary tokens (the paper's best: 128 tokens of width 256, at its scale)
    attention: str = "softmax"  # summarisation attention: softmax | silu (quasi-linear φ(Q)(φ(K)^T V))
    num_layers: int = 1  # summarisation layers
    num_heads: int = 1  # H heads of the summarisation attention; must divide dim
    temporal: str = "position"  # behaviour encoding: none | position | time_gap | both
    num_positions: int = 256  # P rows of the relative-position table (row 0 = padding); older behaviours share row P-1
    time_buckets: int = 32  # G log-spaced time-gap buckets, see tin.time_gap_bucket
    min_gap_seconds: float = 60.0  # time_gap_bucket: gaps up to this share bucket 1
    max_gap_seconds: float = YEAR  # time_gap_bucket: gaps beyond this share the last bucket
    head_hidden: tuple[int, ...] = (200, 80)  # widths of the output MLP
    init_std: float = 0.05  # embeddings and temporal tables start at N(0, init_std²)
    num_goals: int = 1  # T, goal vocabulary size incl. id 0 = unknown (from the data); read by goal_heads
    goal_heads: bool = False  # one final head layer per goal (tdpe.GoalHeads)
    reconstruction_weight: float = 0.0  # weight of the held-out-behaviour reconstruction loss; 0 = off

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_behaviour_config(
            owner, self.num_items, self.num_categories, self.taxonomy_levels, self.dim, self.init_std
        )
        object.__setattr__(self, "head_hidden", check_sizes(owner, "head_hidden", self.head_hidden))
        check_goal_options(owner, self.num_goals, "shared", self.goal_heads)
        for name in ("num_summaries", "num_layers", "num_heads"):
            check_int(owner, name, getattr(self, name))
        if self.dim % self.num_heads:
            raise ValueError(f"{owner}.num_heads must divide dim = {self.dim}. Got {self.num_heads} instead.")
        if self.attention not in ATTENTIONS:
            raise ValueError(
                f"{owner}.attention must be one of {', '.join(ATTENTIONS)}. Got {self.attention!r} instead."
            )
        if self.temporal not in VISTA_TEMPORAL:
            raise ValueError(
                f"{owner}.temporal must be one of {', '.join(VISTA_TEMPORAL)}. Got {self.temporal!r} instead."
            )
        check_int(owner, "num_positions", self.num_positions, minimum=2)
        check_int(owner, "time_buckets", self.time_buckets, minimum=3)
        lo, hi = self.min_gap_seconds, self.max_gap_seconds
        if isinstance(lo, bool) or not isinstance(lo, int | float) or not lo > 0:
            raise ValueError(f"{owner}.min_gap_seconds must be a positive float. Got {lo!r} instead.")
        if isinstance(hi, bool) or not isinstance(hi, int | float) or not hi > lo:
            raise ValueError(f"{owner}.max_gap_seconds must be > min_gap_seconds = {lo}. Got {hi!r} instead.")
        w = self.reconstruction_weight
        if isinstance(w, bool) or not isinstance(w, int | float) or not (0 <= w < math.inf):
            raise ValueError(f"{owner}.reconstruction_weight must be a float >= 0 (0 = off). Got {w!r} instead.")


def softmax_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """softmax_j(<q_s, k_j> / sqrt(d)) v_j over the real keys.

    Args:
        q: [B, H, S, d] queries.
        k: [B, H, N, d] keys.
        v: [B, H, N, d] values.
        mask: [B, N] bool, True = real key.

    Returns:
        [B, H, S, d]; zeros for a row with no real key.
    """
    m = mask[:, None, None, :]  # [B, 1, 1, N]
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # [B, H, S, N]
    scores = scores.masked_fill(~m, torch.finfo(scores.dtype).min)  # [B, H, S, N]
    return (scores.softmax(dim=-1) * m) @ v  # [B, H, S, d]


def silu_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """Quasi-linear attention φ(Q)(φ(K)^T V) / (sqrt(d)·n) with φ = SiLU and n = number of real keys (>= 1).

    Args and returns as `softmax_attention`; cost O(N·d²) per head instead of O(S·N·d). Masked keys contribute 0.
    """
    d = q.shape[-1]
    m = mask[:, None, :, None].to(k.dtype)  # [B, 1, N, 1]
    kv = (F.silu(k) * m).transpose(-1, -2) @ v  # [B, H, d, d], φ(K)^T V
    n = mask.sum(dim=-1).clamp(min=1).to(q.dtype)[:, None, None, None]  # [B, 1, 1, 1]
    return (F.silu(q) @ kv) / (n * math.sqrt(d))  # [B, H, S, d]


class _SummaryLayer(nn.Module):
    """Multi-head attention of the summaries over the behaviours; the values are the behaviour embeddings themselves."""

    def __init__(self, width: int, num_heads: int, attention: str) -> None:
        super().__init__()
        self.num_heads, self.attend = num_heads, softmax_attention if attention == "softmax" else silu_attention
        self.query, self.key = nn.Linear(width, width), nn.Linear(width, width)

    def _heads(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # [B, N, E] -> [B, H, N, d]

    def forward(self, z: Tensor, e: Tensor, mask: Tensor) -> Tensor:
        """Summaries (or summary tokens) z [B, S, E], behaviours e [B, L, E], mask [B, L] -> attended [B, S, E]."""
        q, k, v = self._heads(self.query(z)), self._heads(self.key(e)), self._heads(e)  # [B, H, S|L, d]
        return self.attend(q, k, v, mask).transpose(1, 2).flatten(-2)  # [B, S, E]


class VISTA(nn.Module):
    """Summary tokens attend over the history (cacheable user state); the candidate attends over the summaries."""

    def __init__(self, config: VISTAConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = BehaviourEmbedding(
            config.num_items, config.dim, config.num_categories, config.taxonomy_levels, config.init_std
        )
        E, std = self.embedding.out_dim, config.init_std
        position = config.temporal in ("position", "both")
        gap = config.temporal in ("time_gap", "both")
        self.position_embedding = nn.Parameter(torch.randn(config.num_positions, E) * std) if position else None
        self.gap_embedding = nn.Parameter(torch.randn(config.time_buckets, E) * std) if gap else None
        self.summary_tokens = nn.Parameter(torch.randn(config.num_summaries, E))  # [S, E], shared by all users
        self.layers = nn.ModuleList(
            _SummaryLayer(E, config.num_heads, config.attention) for _ in range(config.num_layers)
        )
        self.target_query = nn.Linear(E, E)  # candidate attention: W_t v_t against the summaries
        T = config.num_goals
        self.head = GoalHeads(3 * E, config.head_hidden, T) if config.goal_heads else mlp(3 * E, config.head_hidden)
        self.reads: tuple[str, ...] = (
            self.embedding.reads + (("history_time_delta",) if gap else ()) + (("goal",) if config.goal_heads else ())
        )

    def _behaviours(self, batch: Batch) -> Tensor:
        """ẽ_i = item ⊕ categories + temporal encoding, [B, L, E]; reads history fields only."""
        e = lookup(self.embedding.tables, self.embedding.history_ids(batch))  # [B, L, E]
        mask = batch.history_mask
        if self.position_embedding is not None:
            position = batch.history_position
            if position is None:  # left padding: position = real behaviours from this column to the end
                position = mask.flip(1).cumsum(1).flip(1) * mask  # [B, L]
            e = e + self.position_embedding[position.clamp(0, self.config.num_positions - 1)]  # [B, L, E]
        if self.gap_embedding is not None:
            assert batch.history_time_delta is not None  # in self.reads: check_batch's job
            c = self.config
            bucket = time_gap_bucket(batch.history_time_delta, c.time_buckets, c.min_gap_seconds, c.max_gap_seconds)
            e = e + self.gap_embedding[bucket]  # [B, L, E]
        return e

    def _summarise(self, e: Tensor, mask: Tensor) -> Tensor:
        """The summary tokens after every layer over behaviours e [B, L, E] with mask [B, L]: [B, S, E]."""
        z = self.summary_tokens.expand(e.shape[0], -1, -1)  # [B, S, E]
        for i, layer in enumerate(self.layers):
            # Layer 1 turns the tokens into behaviour mixtures; later layers refine them (residual, as Stacked TIN).
            z = layer(z, e, mask) if i == 0 else z + layer(z, e, mask)  # [B, S, E]
        return z

    def user_state(self, batch: Batch) -> Tensor:
        """The S summary vectors of each user's history, [B, S, E]; reads only history fields (cacheable per user)."""
        return self._summarise(self._behaviours(batch), batch.history_mask)  # [B, S, E]

    def _candidate_query(self, v: Tensor) -> Tensor:
        return self.target_query(v) / math.sqrt(v.shape[-1])  # [..., E]

    def score_with_state(self, state: Tensor, batch: Batch) -> Tensor:
        """Candidate side: the target attends over the summaries; reads target fields (and goal), never the history.

        Args:
            state: [B, S, E] summaries from `user_state` (computed now or read from a cache).
            batch: supplies target, target_category (with categories) and goal (with goal_heads).

        Returns:
            [B] click logits.
        """
        v = lookup(self.embedding.tables, self.embedding.target_ids(batch))  # [B, E]
        scores = torch.einsum("be,bse->bs", self._candidate_query(v), state)  # [B, S]
        pooled = torch.einsum("bs,bse->be", scores.softmax(dim=-1), state)  # [B, E]
        x = torch.cat([v, pooled, v * pooled], dim=-1)  # [B, 3E]
        if self.config.goal_heads:
            return self.head(x, batch.goal)  # [B], the head of each example's goal
        return self.head(x).squeeze(-1)  # [B]

    def forward(self, batch: Batch) -> Tensor:
        """Return one click logit per example, shape [B]: `score_with_state(user_state(batch), batch)`."""
        return self.score_with_state(self.user_state(batch), batch)  # [B]

    def reconstruction_loss(self, batch: Batch, e: Tensor | None = None) -> Tensor:
        """In-batch softmax loss of recognising each history's most recent behaviour from the summaries of the rest.

        Args:
            batch: histories (left-padded, so the most recent behaviour sits in column L - 1).
            e: ẽ [B, L, E] when the caller already has it (saves a lookup).

        Returns:
            Scalar mean cross-entropy over the rows with >= 2 real behaviours (0 when there is none).
        """
        mask = batch.history_mask
        if mask.shape[1] == 0:
            return self.summary_tokens.new_zeros(())
        e = self._behaviours(batch) if e is None else e  # [B, L, E]
        valid = mask.sum(dim=1) >= 2  # [B]
        if not bool(valid.any()):
            return self.summary_tokens.new_zeros(())
        rest = mask.clone()  # [B, L]
        rest[:, -1] = False  # hold out the most recent behaviour
        z = self._summarise(e[valid], rest[valid])  # [R, S, E]
        held_out = [ids[valid][:, -1] for ids in self.embedding.history_ids(batch)]  # [R] (and [R, M])
        v = lookup(self.embedding.tables, held_out)  # [R, E], item ⊕ categories, no temporal encoding
        scores = torch.einsum("je,ise->ijs", self._candidate_query(v), z).logsumexp(dim=-1)  # [R, R]
        item = held_out[0]  # [R]
        hit = (item.unsqueeze(0) == item.unsqueeze(1)) & ~torch.eye(len(item), dtype=torch.bool, device=item.device)
        scores = scores.masked_fill(hit, torch.finfo(scores.dtype).min)  # [R, R], the same item is no negative
        return F.cross_entropy(scores, torch.arange(len(item), device=item.device))

    def forward_with_extra_loss(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Logits [B] (as `forward`) and `reconstruction_weight` × the reconstruction loss (a scalar; 0 when off)."""
        weight = self.config.reconstruction_weight
        e = self._behaviours(batch)  # [B, L, E]
        logits = self.score_with_state(self._summarise(e, batch.history_mask), batch)  # [B]
        if weight == 0:
            return logits, logits.new_zeros(())
        return logits, weight * self.reconstruction_loss(batch, e)
