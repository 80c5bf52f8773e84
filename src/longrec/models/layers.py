"""Blocks that two or more models share unchanged: the behaviour embedding, the PReLU MLP and config checks.

Shapes: B batch, L history length, M taxonomy levels, D embedding dim, E = D·(1 + M) behaviour width with categories
(E = D without them).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from longrec.data.batch import Batch

__all__ = ["BehaviourEmbedding", "check_behaviour_config", "check_int", "check_sizes", "mlp"]


def check_int(owner: str, name: str, value: object, minimum: int = 1) -> None:
    """Raise `ValueError` unless `value` is an int >= minimum (bools are rejected)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        expected = {0: "a non-negative int", 1: "a positive int"}.get(minimum, f"an int >= {minimum}")
        raise ValueError(f"{owner}.{name} must be {expected}. Got {value!r} instead.")


def check_sizes(owner: str, name: str, value: object) -> tuple[int, ...]:
    """Layer widths as a tuple of positive ints; a list (what `config.json` holds) is accepted and converted."""
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ValueError(f"{owner}.{name} must be a tuple of positive ints (layer widths). Got {value!r} instead.")
    for i, width in enumerate(value):
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"{owner}.{name}[{i}] must be a positive int (a layer width). Got {width!r} instead.")
    return tuple(value)


def check_behaviour_config(
    owner: str, num_items: object, num_categories: object, taxonomy_levels: object, dim: object, init_std: object
) -> None:
    """Check the fields every `BehaviourEmbedding` user declares; messages name `owner` (the config class)."""
    check_int(owner, "num_items", num_items, minimum=2)  # id 0 is padding, so one real item needs 2 rows
    check_int(owner, "num_categories", num_categories, minimum=0)
    check_int(owner, "taxonomy_levels", taxonomy_levels, minimum=0)
    check_int(owner, "dim", dim)
    if num_categories != 0 and taxonomy_levels == 0:
        raise ValueError(
            f"{owner}.taxonomy_levels must be >= 1 when num_categories = {num_categories} > 0 (M, the depth of "
            "history_category [B, L, M]). Got 0 instead; set num_categories = 0 to drop the category feature."
        )
    if num_categories == 1:
        raise ValueError(f"{owner}.num_categories must be 0 (no categories) or >= 2 (id 0 is padding). Got 1 instead.")
    if isinstance(init_std, bool) or not isinstance(init_std, int | float) or not init_std > 0:
        raise ValueError(f"{owner}.init_std must be a positive float. Got {init_std!r} instead.")


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int = 1) -> nn.Sequential:
    """Linear → PReLU for each hidden width, then a final Linear; acts on the last axis of any shape.

    PReLU keeps one shared slope: a per-channel slope would read dim 1 as channels, which is L for [B, L, W] input.
    """
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.PReLU()]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class BehaviourEmbedding(nn.Module):
    """Item embedding, concatenated with one category embedding per taxonomy level when categories are on.

    One category table serves every level (the vocabulary is shared); a missing level (id 0) embeds to zeros. The
    target goes through the same tables, so behaviours and target live in one space of width `out_dim` = E.

    Args:
        num_items: item vocabulary size, id 0 = padding.
        dim: D, the width of each table.
        num_categories: category vocabulary size, id 0 = padding/missing; 0 turns the category feature off.
        taxonomy_levels: M, the depth of the taxonomy path.
        init_std: embeddings start at N(0, init_std²); padding rows stay 0. DARE's 0.01 trains well at Adam lr 1e-2
            but slowly at 1e-3 (the small product terms take hundreds of steps to grow); 0.05 works at both.
    """

    def __init__(
        self, num_items: int, dim: int, num_categories: int = 0, taxonomy_levels: int = 0, init_std: float = 0.05
    ) -> None:
        super().__init__()
        self.item_embedding = nn.Embedding(num_items, dim, padding_idx=0)
        self.category_embedding = nn.Embedding(num_categories, dim, padding_idx=0) if num_categories > 0 else None
        self.out_dim = dim * (1 + taxonomy_levels) if num_categories > 0 else dim
        for table in (self.item_embedding, self.category_embedding):
            if table is not None:
                nn.init.normal_(table.weight, std=init_std)
                with torch.no_grad():
                    table.weight[0].zero_()

    @property
    def reads(self) -> tuple[str, ...]:
        """Optional `Batch` fields this embedding needs (for `check_batch(batch, reads=...)`)."""
        return ("history_category", "target_category") if self.category_embedding is not None else ()

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Return the behaviour embeddings h [B, L, E] and the target embedding t [B, E]."""
        h = self.item_embedding(batch.history)  # [B, L, D]
        t = self.item_embedding(batch.target)  # [B, D]
        if self.category_embedding is not None:
            assert batch.history_category is not None and batch.target_category is not None  # check_batch's job
            h_cat = self.category_embedding(batch.history_category).flatten(2)  # [B, L, M·D]
            t_cat = self.category_embedding(batch.target_category).flatten(1)  # [B, M·D]
            h = torch.cat([h, h_cat], dim=-1)  # [B, L, E]
            t = torch.cat([t, t_cat], dim=-1)  # [B, E]
        return h, t
