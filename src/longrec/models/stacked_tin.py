"""Stacked TIN: L_s layers of TIN target attention, each with a query updated by the layer before (Tencent
Advertising, arXiv 2510.21714, "high-order behavioural correlations"; TIN: Zhou et al., WWW 2024).

One TIN layer crosses each behaviour with the target once (a 2nd-order cross). Stacking feeds what the first layer
found back into the query, so layer l attends to behaviours that relate to the target *and* to the evidence already
pooled, an (l+1)-th order cross such as "A, then B, then this ad". With ẽ_i and ṽ_t TIN's temporally encoded
behaviours and target (`tin.add_temporal_encoding`):

    q^(0) = ṽ_t
    α^(l)_i = softmax_i(<ẽ_i W_K^(l), q^(l-1) W_Q^(l)> / sqrt(E))
    u^(l) = Σ_i α^(l)_i (ẽ_i W_V^(l) ⊙ q^(l-1) W_Q^(l))
    q^(l) = LayerNorm(q^(l-1) + u^(l))
    logit = head([u^(1), ..., u^(L_s), v_t])

Design choices (the paper leaves them open):
- W_K^(l) is its own bias-free E x E map, not tied to W_V^(l): the attention and representation optima disagree
  (DARE), and a tied map would have to serve both. W_Q^(l) is shared by the score and the cross, as the formula says.
- Every projection starts at the identity, so a fresh one-layer stack *is* TIN (the test of the spec: one layer
  with identity projections equals TIN), and deeper layers start as TIN layers on an updated query.
- W_K and W_V are applied on the cheap side: <ẽ_i W_K, q'> = <ẽ_i, q' W_K^T> projects the query (not L keys), and
  Σ_i α_i (ẽ_i W_V) = (Σ_i α_i ẽ_i) W_V projects the pooled vector, so a layer costs O(L·E + E²) like TIN plus
  two E x E products, independent of L.
- The last layer's query is never read, so there are L_s - 1 LayerNorms (none without the chain), and every
  parameter gets a gradient.
- The head reads v_t (plain target) next to the u^(l), as TIN's head reads [u, v_t].
- `search_embeddings` gives the first layer's attention logits (query q^(0) W_Q^(1) W_K^(1)ᵀ / sqrt(E), keys ẽ), so
  soft search ranks behaviours by what the first layer attends to; layers after it attend within the kept K.
- TDPE (`tdpe`, keyed by `tdpe_key`: goal, category, scene or an extra column) and per-goal heads (`goal_heads`) as
  in TIN (`models/tdpe.py`).
- `query_chain` says which part of layer l > 1 reads the updated query q^(l-1): "full" (the formula: the
  attention score and the cross), "attention" or "cross" (the other part reads q^(0)), or "none" (every layer
  reads q^(0): L_s independent TIN heads, the ablation of the chain). The cross is where the chain pays. On the
  two-hop task of `longrec.train.probes` ("the partner of a bridge behaviour the first layer found") with a linear
  read-out, `benchmarks/bench_stacked_chain.py` measured test AUC after 3,000 steps: full 0.95, cross 0.99,
  attention 0.78, none 0.69. Layer 2 attends to the target's partner behaviours about as much whether or not they
  match the bridge (full: 0.33 vs 0.26 of its mass); the match is checked by the product of that partner with
  q^(1), which holds the bridge: an order-3 cross. An MLP head learns that product itself, only more slowly (AUC
  0.84 vs 0.78 at 1,000 steps, equal at 3,000).

Self-attention stacking (`self_attention_blocks` = N > 0; the paper also speaks of "stacking self-attention modules
for ranking", where 4 layers overfit on Amazon). N pre-LN Transformer blocks (`models/transformer.py`, TD-SASRec's)
run over the temporally encoded behaviours ẽ (the K that search kept) before the target attention, which then
attends over the contextualised behaviours: ẽ' = Block_N(...Block_1(ẽ)), keys and values from ẽ' instead of ẽ.
- Bidirectional, not causal: in ranking every kept behaviour is known when the request is scored and none is a
  training target, so a behaviour may read later ones (as BST does); causality is what SASRec's next-item objective
  needs, not what target attention over a fixed history needs. ẽ carries TIN's target-aware position / time-gap
  encoding, so the blocks still see order. A padding behaviour attends to itself only and is zeroed after the
  blocks; no real behaviour attends to padding.
- No final LayerNorm: the blocks are residual refinements of ẽ (each block adds its attention and FFN branches), so
  with those branches at zero the stack is the identity and the model is today's Stacked TIN, and the target
  attention keeps reading behaviours on ẽ's scale (TIN's attention is sensitive to the behaviours' magnitude).
- The blocks are built after every other module, so N = 0 draws no extra random numbers: the same seed gives the
  same model as before the option existed, bit for bit.
- `search_embeddings` still scores the un-contextualised ẽ: search selects the behaviours the blocks then read
  (a contextualised key would depend on the other behaviours, and search keys must be per-behaviour).

Shapes: B batch, L history length (K after search), D embedding dim, M taxonomy levels, E = D·(1 + M) behaviour
width (D without categories), L_s stacked layers, T goals, N self-attention blocks, H attention heads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from longrec.data.batch import Batch
from longrec.models.checks import check_behaviour_config, check_int, check_sizes
from longrec.models.layers import BehaviourEmbedding, mlp
from longrec.models.tdpe import GoalHeads, TDPEKey, check_goal_options, check_key_fields, decoupling_reads, tdpe_key_of
from longrec.models.temporal import add_temporal_encoding, check_temporal_options, temporal_tables
from longrec.models.transformer import TransformerBlock, attention_mask

__all__ = ["QUERY_CHAIN", "StackedTIN", "StackedTINConfig"]

QUERY_CHAIN = ("full", "attention", "cross", "none")  # which part of a layer reads the updated query


@dataclass(frozen=True)
class StackedTINConfig:
    num_items: int  # item vocabulary size, id 0 = padding
    num_categories: int = 0  # category vocabulary shared by every taxonomy level, id 0 = missing; 0 = no categories
    taxonomy_levels: int = 0  # M, depth of history_category [B, L, M]
    num_goals: int = 1  # T, goal vocabulary size incl. id 0 = unknown (from the data); read by tdpe and goal_heads
    dim: int = 16  # D, width of each embedding table
    num_layers: int = 2  # L_s stacked target-attention layers (1..4 typical; deep stacks overfit small data)
    temporal: str = "position"  # f(x): position | time_gap | both, as in TIN
    num_positions: int = 256  # P rows of the position table (row 0 = the target); older behaviours share row P-1
    time_buckets: int = 32  # G log-spaced time-gap buckets (bucket 0 = the target), see tin.time_gap_bucket
    min_gap_seconds: float = 60.0  # time_gap_bucket: gaps up to this share bucket 1
    max_gap_seconds: float = 365.0 * 86_400.0  # time_gap_bucket: gaps beyond this (a year) share the last bucket
    num_scenes: int = 0  # scene vocabulary incl. id 0 (from the data); read by tdpe_key = "scene"
    num_extra: tuple[int, ...] = ()  # vocabulary of each extra id column incl. id 0 (from the data)
    extra_fields: tuple[str, ...] = ()  # names of the extra id columns, in order (the store's extra_fields)
    tdpe: str = "shared"  # temporal tables per key value: shared | separate | shared_delta (models/tdpe.py)
    tdpe_key: str = "goal"  # what picks the table: goal | category | scene | an extra column named in extra_fields
    tdpe_level: int = 0  # tdpe_key = "category": taxonomy level, 1 = coarsest .. M = finest; 0 = the finest
    goal_heads: bool = False  # one final head layer per goal (GoalHeads) instead of one for all goals
    query_chain: str = "full"  # which part of layer l > 1 reads q^(l-1): full | attention | cross | none (ablation)
    head_hidden: tuple[int, ...] = (200, 80)  # widths of the output MLP
    init_std: float = 0.05  # embeddings (and temporal tables) start at N(0, init_std²)
    self_attention_blocks: int = 0  # N bidirectional pre-LN Transformer blocks over ẽ before target attention
    self_attention_heads: int = 1  # H of those blocks; must divide E
    self_attention_dropout: float = 0.0  # on their attention weights and residual branches (train mode only)

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_behaviour_config(
            owner, self.num_items, self.num_categories, self.taxonomy_levels, self.dim, self.init_std
        )
        check_int(owner, "num_layers", self.num_layers)
        if self.query_chain not in QUERY_CHAIN:
            raise ValueError(
                f"{owner}.query_chain must be one of {', '.join(QUERY_CHAIN)}. Got {self.query_chain!r} instead."
            )
        check_temporal_options(owner, self)
        check_goal_options(owner, self.num_goals, self.tdpe, self.goal_heads)
        object.__setattr__(self, "head_hidden", check_sizes(owner, "head_hidden", self.head_hidden))
        num_extra, extra_fields = check_key_fields(owner, self.num_scenes, self.num_extra, self.extra_fields)
        object.__setattr__(self, "num_extra", num_extra)
        object.__setattr__(self, "extra_fields", extra_fields)
        tdpe_key_of(owner, self)  # an unknown key, or one the data has no vocabulary for, is a config error
        check_int(owner, "self_attention_blocks", self.self_attention_blocks, minimum=0)
        check_int(owner, "self_attention_heads", self.self_attention_heads)
        width = self.dim * (1 + self.taxonomy_levels) if self.num_categories > 0 else self.dim
        if width % self.self_attention_heads:
            raise ValueError(
                f"{owner}.self_attention_heads must divide the behaviour width E = dim·(1 + taxonomy_levels) = "
                f"{width}. Got {self.self_attention_heads} instead."
            )
        p = self.self_attention_dropout
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p < 1:
            raise ValueError(f"{owner}.self_attention_dropout must be a float in [0, 1). Got {p!r} instead.")


def _identity(width: int) -> nn.Linear:
    layer = nn.Linear(width, width, bias=False)
    nn.init.eye_(layer.weight)
    return layer


class StackedTIN(nn.Module):
    """L_s TIN target-attention layers whose query is updated, LayerNorm(q + u), from one layer to the next."""

    def __init__(self, config: StackedTINConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = BehaviourEmbedding(
            config.num_items, config.dim, config.num_categories, config.taxonomy_levels, config.init_std
        )
        E, S = self.embedding.out_dim, config.num_layers
        self.tdpe_key = tdpe_key_of(type(config).__name__, config)
        self.position_embedding, self.gap_embedding = temporal_tables(config, E, self.tdpe_key)  # [P, E], [G, E]
        self.query_projections = nn.ModuleList([_identity(E) for _ in range(S)])  # W_Q^(l)
        self.key_projections = nn.ModuleList([_identity(E) for _ in range(S)])  # W_K^(l)
        self.value_projections = nn.ModuleList([_identity(E) for _ in range(S)])  # W_V^(l)
        chained = S - 1 if config.query_chain != "none" else 0  # the last layer's query is never read
        self.norms = nn.ModuleList([nn.LayerNorm(E) for _ in range(chained)])  # q^(l) for l < L_s
        width = (S + 1) * E  # [u^(1), ..., u^(L_s), v_t]
        T = config.num_goals
        self.head = GoalHeads(width, config.head_hidden, T) if config.goal_heads else mlp(width, config.head_hidden)
        reads = [*self.embedding.reads, *(["history_time_delta"] if self.gap_embedding is not None else [])]
        reads += decoupling_reads(self.tdpe_key, config.tdpe, config.goal_heads)
        self.reads: tuple[str, ...] = tuple(dict.fromkeys(reads))  # in order, without repeats
        c = config  # last, so that N = 0 draws nothing more from the seeded generator
        self.blocks = nn.ModuleList(
            TransformerBlock(E, c.self_attention_heads, 2 * E, c.self_attention_dropout)
            for _ in range(c.self_attention_blocks)
        )

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

    def _key_query(self, layer: int, q: Tensor, q_attend: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """q W_Q^(l) [B, E] (the cross) and the key-side query (q' W_Q^(l)) W_K^(l)ᵀ [B, E], with q' = q_attend or
        q: <ẽ_i, q' W_Q W_Kᵀ> = <ẽ_i W_K, q' W_Q>."""
        project, key = self.query_projections[layer], self.key_projections[layer].weight
        q_proj = project(q)  # [B, E]
        same = q_attend is None or q_attend is q
        q_key = (q_proj if same else project(q_attend)) @ key  # [B, E]; Linear is x Wᵀ, so Wᵀ's dual
        return q_proj, q_key

    def _stack(self, batch: Batch) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """Per-layer outputs u^(l) [B, E] and attention α^(l) [B, L], and the plain target v_t [B, E]."""
        e, q0, v = self._encode(batch)  # [B, L, E], q^(0) = ṽ_t [B, E], [B, E]
        mask, scale = batch.history_mask, math.sqrt(e.shape[-1])
        if len(self.blocks):  # ẽ' = the behaviours in the context of each other (bidirectional)
            allowed = attention_mask(mask, causal=False)  # [B, 1, L, L]
            for block in self.blocks:
                e = block(e, allowed)  # [B, L, E]
            e = e * mask.unsqueeze(-1)  # [B, L, E], padding back to 0
        chain = self.config.query_chain
        outputs, weights, q = [], [], q0
        for layer in range(self.config.num_layers):
            q_cross = q if chain in ("full", "cross") else q0  # [B, E]
            q_attend = q if chain in ("full", "attention") else q0  # [B, E]
            q_proj, q_key = self._key_query(layer, q_cross, q_attend)  # [B, E], [B, E]
            scores = torch.einsum("ble,be->bl", e, q_key) / scale  # [B, L]
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)  # [B, L]
            alpha = scores.softmax(dim=-1) * mask  # [B, L]; empty history: α = 0, no NaN (as TIN)
            pooled = torch.einsum("bl,ble->be", alpha, e)  # [B, E], Σ_i α_i ẽ_i
            u = self.value_projections[layer](pooled) * q_proj  # [B, E], Σ_i α_i (ẽ_i W_V ⊙ q W_Q)
            outputs.append(u)
            weights.append(alpha)
            if layer < len(self.norms):
                q = self.norms[layer](q + u)  # [B, E], q^(l)
        return outputs, weights, v

    def attention_weights(self, batch: Batch) -> Tensor:
        """α^(l)_i of every layer, [B, L_s, L]; each row sums to 1 over the real behaviours (0 when empty)."""
        return torch.stack(self._stack(batch)[1], dim=1)  # [B, L_s, L]

    def layer_outputs(self, batch: Batch) -> list[Tensor]:
        """u^(1), ..., u^(L_s), each [B, E]."""
        return self._stack(batch)[0]

    def search_embeddings(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Soft-search query [B, E] and keys ẽ [B, L, E] whose dot product is the first layer's attention logit."""
        e, t, _ = self._encode(batch)  # [B, L, E], [B, E]
        _, q_key = self._key_query(0, t)  # [B, E]
        return q_key / math.sqrt(e.shape[-1]), e

    def forward(self, batch: Batch) -> Tensor:
        """Return one click logit per example, shape [B]."""
        outputs, _, v = self._stack(batch)  # L_s x [B, E], [B, E]
        x = torch.cat([*outputs, v], dim=-1)  # [B, (L_s + 1)·E]
        if self.config.goal_heads:
            return self.head(x, batch.goal)  # [B], the head of each example's goal
        return self.head(x).squeeze(-1)  # [B]
