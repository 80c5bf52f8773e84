"""SDIM: Sampling-based Deep Interest Modeling (Cao et al., CIKM 2022, https://arxiv.org/abs/2205.10249).

SDIM replaces target attention over a long history by hashing. The target and every behaviour are hashed with R
rounds of τ-bit SimHash (fixed random hyperplanes); in round r the behaviours whose τ-bit signature equals the
target's *collide* with it, and the round's interest is the sum of their embeddings, ℓ2-normalised. A behaviour at
angle θ to the target collides in a round with probability (1 - θ/π)^τ, so the average over rounds estimates an
attention whose weights are that sharpened angular similarity (the paper's argument) at O(L·R·τ) cost, with no
search stage and no attention parameters. The head MLP reads [interest, v_t] and returns one click logit.

Design choices (the paper leaves them open):
- Rounds are averaged (an unbiased estimate over hash functions, and the head width does not grow with R).
- ℓ2-normalising each round (`normalize = True`) follows the paper's handling of buckets of different sizes; with
  `normalize = False` a round's interest is the plain sum, so the number of collisions (intensity) survives.
- A round with no colliding behaviour (and an empty history) contributes a zero vector.
- The hyperplanes are a buffer drawn from `simhash_planes(E, R·τ, hash_seed)`: fixed, saved with the weights, and
  the same function the `sdim` and `simhash` searchers use; the collision test is `search.sdim.collisions`.
- Only behaviour and target embeddings are hashed (item ⊕ category levels); the paper's short-term attention module
  over the recent behaviours is left out.
`search_embeddings` exposes the same embeddings, so this model also runs behind any embedding searcher.

Shapes: B batch, L history length, D embedding dim, M taxonomy levels, E = D·(1 + M) behaviour width (D without
categories), R hash rounds, τ bits per round.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longrec.data.batch import Batch
from longrec.models.checks import check_behaviour_config, check_int, check_sizes
from longrec.models.layers import BehaviourEmbedding, mlp
from longrec.search.sdim import collisions
from longrec.search.simhash import simhash_bits, simhash_planes

__all__ = ["SDIM", "SDIMConfig"]


@dataclass(frozen=True)
class SDIMConfig:
    num_items: int  # item vocabulary size, id 0 = padding
    num_categories: int = 0  # category vocabulary shared by every taxonomy level, id 0 = missing; 0 = no categories
    taxonomy_levels: int = 0  # M, depth of history_category [B, L, M]
    dim: int = 16  # D, width of each embedding table
    hash_rounds: int = 48  # R (the paper's m): independent hash rounds averaged into the interest
    round_bits: int = 3  # τ: bits per round signature; larger = sharper, sparser collisions
    hash_seed: int = 0  # seed of the fixed random hyperplanes
    normalize: bool = True  # ℓ2-normalise each round's sum of colliding embeddings
    head_hidden: tuple[int, ...] = (200, 80)  # widths of the output MLP
    init_std: float = 0.05  # embeddings start at N(0, init_std²)

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_behaviour_config(
            owner, self.num_items, self.num_categories, self.taxonomy_levels, self.dim, self.init_std
        )
        check_int(owner, "hash_rounds", self.hash_rounds)
        check_int(owner, "round_bits", self.round_bits)
        check_int(owner, "hash_seed", self.hash_seed, minimum=0)
        if not isinstance(self.normalize, bool):
            raise ValueError(f"{owner}.normalize must be a bool. Got {self.normalize!r} instead.")
        object.__setattr__(self, "head_hidden", check_sizes(owner, "head_hidden", self.head_hidden))


class SDIM(nn.Module):
    """Hash-collision pooling of the whole history, averaged over rounds, then an MLP."""

    planes: Tensor

    def __init__(self, config: SDIMConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = BehaviourEmbedding(
            config.num_items, config.dim, config.num_categories, config.taxonomy_levels, config.init_std
        )
        E = self.embedding.out_dim
        self.register_buffer("planes", simhash_planes(E, config.hash_rounds * config.round_bits, config.hash_seed))
        self.head = mlp(2 * E, config.head_hidden)
        self.reads: tuple[str, ...] = self.embedding.reads

    def _pool(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Per-round interest [B, R, E] and the target embedding v_t [B, E]."""
        h, t = self.embedding(batch)  # [B, L, E], [B, E]
        R = self.config.hash_rounds
        hits = collisions(simhash_bits(t, self.planes), simhash_bits(h, self.planes), R)  # [B, L, R]
        hits = hits & batch.history_mask.unsqueeze(-1)  # [B, L, R], padding never collides
        pooled = torch.einsum("blr,ble->bre", hits.to(h.dtype), h)  # [B, R, E]
        return (F.normalize(pooled, dim=-1) if self.config.normalize else pooled), t  # [B, R, E]; 0 stays 0

    def interest(self, batch: Batch) -> Tensor:
        """Per-round pooled interest [B, R, E]: (normalised) sum of the behaviours colliding with the target."""
        return self._pool(batch)[0]  # [B, R, E]

    def search_embeddings(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """The hashed embeddings: target [B, E] and behaviours [B, L, E] (for the sdim/simhash/soft searchers)."""
        h, t = self.embedding(batch)  # [B, L, E], [B, E]
        return t, h

    def forward(self, batch: Batch) -> Tensor:
        """Return one click logit per example, shape [B]."""
        pooled, t = self._pool(batch)  # [B, R, E], [B, E]
        interest = pooled.mean(1)  # [B, E]
        return self.head(torch.cat([interest, t], dim=-1)).squeeze(-1)  # [B]
