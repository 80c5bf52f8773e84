"""ETA: End-to-end Target Attention (Chen et al., 2021, https://arxiv.org/abs/2108.04468).

ETA makes the retrieval of a long history end-to-end: the behaviours are hashed with SimHash computed from the *same*
embeddings the attention learns (no separately trained retrieval model, unlike SIM soft search), the K behaviours
closest to the target in Hamming distance are kept (the `simhash` searcher, `search/simhash.py`), and multi-head
target attention runs over those K: per head h, α_{h,i} = softmax_i(<W_Q^h v_t, W_K^h e_i> / sqrt(D)),
o_h = Σ_i α_{h,i} W_V^h e_i. The head MLP reads [o_1 ⊕ ... ⊕ o_H, v_t] and returns one click logit.

Configure it as `model.name = "eta"` with `search.method = "simhash"` (the ETA pipeline); with `search.method =
"none"` it is plain multi-head target attention over the whole history (the upper bound ETA approximates).

Design choices (the paper leaves them open):
- `search_embeddings` returns the raw behaviour embeddings (item ⊕ category levels) for both query and keys: ETA
  hashes the item embeddings, not the attention projections, so retrieval does not move with W_Q/W_K.
- The paper's short-term (recent behaviours) attention module is left out: the `latest` searcher plus another
  model covers it, and this file stays one mechanism.
- Each head has width D (`dim`); the projections have no bias, as in the Transformer.
- An empty history gives o = 0 and a finite logit from the target alone.

Shapes: B batch, L history length (K after search), D embedding dim, M taxonomy levels, E = D·(1 + M) behaviour
width (D without categories), H heads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from longrec.data.batch import Batch
from longrec.models.checks import check_behaviour_config, check_int, check_sizes
from longrec.models.layers import BehaviourEmbedding, mlp

__all__ = ["ETA", "ETAConfig"]


@dataclass(frozen=True)
class ETAConfig:
    num_items: int  # item vocabulary size, id 0 = padding
    num_categories: int = 0  # category vocabulary shared by every taxonomy level, id 0 = missing; 0 = no categories
    taxonomy_levels: int = 0  # M, depth of history_category [B, L, M]
    dim: int = 16  # D, width of each embedding table and of each attention head
    num_heads: int = 2  # H
    head_hidden: tuple[int, ...] = (200, 80)  # widths of the output MLP
    init_std: float = 0.05  # embeddings start at N(0, init_std²)

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_behaviour_config(
            owner, self.num_items, self.num_categories, self.taxonomy_levels, self.dim, self.init_std
        )
        check_int(owner, "num_heads", self.num_heads)
        object.__setattr__(self, "head_hidden", check_sizes(owner, "head_hidden", self.head_hidden))


class ETA(nn.Module):
    """Multi-head softmax target attention over the (SimHash-searched) behaviours."""

    def __init__(self, config: ETAConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = BehaviourEmbedding(
            config.num_items, config.dim, config.num_categories, config.taxonomy_levels, config.init_std
        )
        E, HD = self.embedding.out_dim, config.num_heads * config.dim
        self.query = nn.Linear(E, HD, bias=False)
        self.key = nn.Linear(E, HD, bias=False)
        self.value = nn.Linear(E, HD, bias=False)
        self.head = mlp(HD + E, config.head_hidden)
        self.reads: tuple[str, ...] = self.embedding.reads

    def _attend(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """Attention weights α [B, H, L] (0 on padding), per-head values [B, H, L, D] and the target v_t [B, E]."""
        h, t = self.embedding(batch)  # [B, L, E], [B, E]
        H, D = self.config.num_heads, self.config.dim
        q = self.query(t).unflatten(-1, (H, D))  # [B, H, D]
        k = self.key(h).unflatten(-1, (H, D))  # [B, L, H, D]
        v = self.value(h).unflatten(-1, (H, D)).transpose(1, 2)  # [B, H, L, D]
        mask = batch.history_mask.unsqueeze(1)  # [B, 1, L]
        scores = torch.einsum("bhd,blhd->bhl", q, k) / math.sqrt(D)  # [B, H, L]
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)  # [B, H, L]
        alpha = scores.softmax(dim=-1) * mask  # [B, H, L]; an empty history gets all zeros, no NaN
        return alpha, v, t

    def attention_weights(self, batch: Batch) -> Tensor:
        """Per-head softmax weights over the real behaviours, [B, H, L]; each row sums to 1 (0 if empty)."""
        return self._attend(batch)[0]  # [B, H, L]

    def search_embeddings(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """What the simhash searcher hashes: the target embedding [B, E] and the behaviour embeddings [B, L, E]."""
        h, t = self.embedding(batch)  # [B, L, E], [B, E]
        return t, h

    def forward(self, batch: Batch) -> Tensor:
        """Return one click logit per example, shape [B]."""
        alpha, v, t = self._attend(batch)  # [B, H, L], [B, H, L, D], [B, E]
        interest = torch.einsum("bhl,bhld->bhd", alpha, v).flatten(1)  # [B, H·D]
        return self.head(torch.cat([interest, t], dim=-1)).squeeze(-1)  # [B]
