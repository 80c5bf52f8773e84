"""MeanPool: the target-blind baseline (the "Base Model" / Embedding&MLP of the DIN paper, §4).

Every behaviour counts the same: the history becomes the masked mean of its behaviour embeddings, whatever the
target, and the head MLP reads [mean, target] to return one click logit. Target-aware models (DIN, TIN, DARE, ...)
must beat it where relevance to the target matters; it is the ablation of target attention itself.

An empty history pools to zeros, so its logit depends on the target alone and stays finite.

Shapes: B batch, L history length, D embedding dim, M taxonomy levels, E = D·(1 + M) behaviour width (D without
categories).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from longrec.data.batch import Batch
from longrec.models.checks import check_behaviour_config, check_sizes
from longrec.models.layers import BehaviourEmbedding, mlp

__all__ = ["MeanPool", "MeanPoolConfig"]


@dataclass(frozen=True)
class MeanPoolConfig:
    num_items: int  # item vocabulary size, id 0 = padding
    num_categories: int = 0  # category vocabulary shared by every taxonomy level, id 0 = missing; 0 = no categories
    taxonomy_levels: int = 0  # M, depth of history_category [B, L, M]
    dim: int = 16  # D, width of each embedding table
    head_hidden: tuple[int, ...] = (200, 80)  # widths of the output MLP
    init_std: float = 0.05  # embeddings start at N(0, init_std²); DARE's protocol uses 0.01 with lr 1e-2

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_behaviour_config(
            owner, self.num_items, self.num_categories, self.taxonomy_levels, self.dim, self.init_std
        )
        object.__setattr__(self, "head_hidden", check_sizes(owner, "head_hidden", self.head_hidden))


class MeanPool(nn.Module):
    """Masked mean of the history, concatenated with the target, through an MLP."""

    def __init__(self, config: MeanPoolConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = BehaviourEmbedding(
            config.num_items, config.dim, config.num_categories, config.taxonomy_levels, config.init_std
        )
        self.head = mlp(2 * self.embedding.out_dim, config.head_hidden)
        self.reads: tuple[str, ...] = self.embedding.reads

    def forward(self, batch: Batch) -> Tensor:
        """Return one click logit per example, shape [B]."""
        h, t = self.embedding(batch)  # [B, L, E], [B, E]
        mask = batch.history_mask.unsqueeze(-1).to(h.dtype)  # [B, L, 1]
        # The mask, not padding_idx, zeroes padding: the pooled vector must not depend on what sits under it.
        count = mask.sum(dim=1).clamp(min=1.0)  # [B, 1], an empty history divides 0 by 1
        mean = (h * mask).sum(dim=1) / count  # [B, E]
        return self.head(torch.cat([mean, t], dim=-1)).squeeze(-1)  # [B]
