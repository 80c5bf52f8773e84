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

Shapes: B batch, L history length, D embedding dim, M taxonomy levels, E = D·(1 + M) behaviour width (D without
categories), P position rows, G time-gap buckets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from longrec.data.batch import Batch
from longrec.models.layers import BehaviourEmbedding, check_behaviour_config, check_int, check_sizes, mlp

__all__ = ["TEMPORAL", "TIN", "TINConfig", "time_gap_bucket"]

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

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_behaviour_config(
            owner, self.num_items, self.num_categories, self.taxonomy_levels, self.dim, self.init_std
        )
        object.__setattr__(self, "head_hidden", check_sizes(owner, "head_hidden", self.head_hidden))
        if self.temporal not in TEMPORAL:
            raise ValueError(f"{owner}.temporal must be one of {', '.join(TEMPORAL)}. Got {self.temporal!r} instead.")
        check_int(owner, "num_positions", self.num_positions, minimum=2)  # the target's row plus one behaviour row
        check_int(owner, "time_buckets", self.time_buckets, minimum=3)
        lo, hi = self.min_gap_seconds, self.max_gap_seconds
        if isinstance(lo, bool) or not isinstance(lo, int | float) or not lo > 0:
            raise ValueError(f"{owner}.min_gap_seconds must be a positive float. Got {lo!r} instead.")
        if isinstance(hi, bool) or not isinstance(hi, int | float) or not hi > lo:
            raise ValueError(f"{owner}.max_gap_seconds must be > min_gap_seconds = {lo}. Got {hi!r} instead.")


def _table(rows: int, width: int, std: float) -> nn.Embedding:
    table = nn.Embedding(rows, width)
    nn.init.normal_(table.weight, std=std)
    return table


class TIN(nn.Module):
    """Target-aware temporal encoding, softmax target attention and the target-aware representation."""

    def __init__(self, config: TINConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = BehaviourEmbedding(
            config.num_items, config.dim, config.num_categories, config.taxonomy_levels, config.init_std
        )
        E = self.embedding.out_dim
        uses_gap = config.temporal in ("time_gap", "both")
        self.position_embedding = (
            _table(config.num_positions, E, config.init_std) if config.temporal in ("position", "both") else None
        )
        self.gap_embedding = _table(config.time_buckets, E, config.init_std) if uses_gap else None
        self.head = mlp(2 * E, config.head_hidden)
        self.reads: tuple[str, ...] = self.embedding.reads + (("history_time_delta",) if uses_gap else ())

    def _encode(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """Temporally encoded behaviours ẽ [B, L, E], target ṽ_t [B, E], and the plain target v_t [B, E]."""
        h, v = self.embedding(batch)  # [B, L, E], [B, E]
        e, t = h, v
        if self.position_embedding is not None:
            position = batch.history_position
            if position is None:  # left padding: position = real behaviours from this column to the end
                position = batch.history_mask.flip(1).cumsum(1).flip(1) * batch.history_mask  # [B, L]
            position = position.clamp(0, self.config.num_positions - 1)  # [B, L]
            e = e + self.position_embedding(position)  # [B, L, E]
            t = t + self.position_embedding.weight[0]  # [B, E], the target is position 0
        if self.gap_embedding is not None:
            assert batch.history_time_delta is not None  # in self.reads: check_batch's job
            c = self.config
            bucket = time_gap_bucket(batch.history_time_delta, c.time_buckets, c.min_gap_seconds, c.max_gap_seconds)
            e = e + self.gap_embedding(bucket)  # [B, L, E]
            t = t + self.gap_embedding.weight[0]  # [B, E], the target's gap is 0
        return e, t, v

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
        return self.head(torch.cat([u, v], dim=-1)).squeeze(-1)  # [B]
