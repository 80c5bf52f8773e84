"""SDIM-style search: keep the behaviours whose hash signature collides with the target's in the most rounds.

SDIM (Cao et al., CIKM 2022, https://arxiv.org/abs/2205.10249) hashes the target and every behaviour with m rounds
of τ-bit SimHash; a behaviour *collides* with the target in a round when all τ bits agree, which happens with
probability (1 - θ/π)^τ (θ = their angle): a sharpened angular similarity, estimated by the fraction of rounds with
a collision. The SDIM model (`models/sdim.py`) pools the colliding behaviours directly; this searcher turns the same
statistic into a top-K, so SDIM-style sampling can feed any model with `search_embeddings`.

Design choices: score_i = number of rounds (of `hash_rounds`) in which behaviour i collides with the target, each
round `round_bits` bits, hyperplanes from `simhash_planes(D, m·τ, SDIMOptions.seed)`; ties (many, since the score
takes m + 1 values) go to the more recent behaviour (`topk_positions`' rule). Behaviours that never collide can still
fill the K slots (in recency order) so every searcher keeps min(K, real) behaviours. Scores are computed per block of
`SCORE_BLOCK` behaviours (`sdim_scores`), so the temporaries stay bounded and chunked search returns the same top-K.

Shapes: B batch, L history length, K kept behaviours, D embedding dim, R hash rounds (m), τ bits per round.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from longrec.data.batch import Batch
from longrec.search.exact import blockwise, topk_positions
from longrec.search.simhash import simhash_bits, simhash_planes
from longrec.settings import ConfigError

__all__ = ["SDIMOptions", "collisions", "sdim", "sdim_scores"]


@dataclass(frozen=True)
class SDIMOptions:
    """The settings of `sdim` (flat in the `[search]` table: `search = { method = "sdim", hash_rounds = 16 }`)."""

    hash_rounds: int = 48  # R rounds m (score = rounds in which a behaviour collides with the target)
    round_bits: int = 3  # τ bits per round (a collision needs all τ bits equal)
    seed: int = 0  # seeds the random hyperplanes

    def __post_init__(self) -> None:
        problems = [
            f"search.{name} must be a positive int. Got {value} instead."
            for name, value in (("hash_rounds", self.hash_rounds), ("round_bits", self.round_bits))
            if value < 1
        ]
        if problems:
            raise ConfigError(problems, "SDIMOptions")


def collisions(query_bits: Tensor, key_bits: Tensor, rounds: int) -> Tensor:
    """Per-round collisions between the target's and the behaviours' signatures.

    Args:
        query_bits: [B, R·τ] bool, the target's signature (`simhash_bits`), round r in bits [r·τ, (r+1)·τ).
        key_bits: [B, L, R·τ] bool, the behaviours' signatures.
        rounds: R, the number of rounds the bits split into.

    Returns:
        [B, L, R] bool, True where all τ bits of round r agree.
    """
    q = query_bits.unflatten(-1, (rounds, -1)).unsqueeze(1)  # [B, 1, R, τ]
    h = key_bits.unflatten(-1, (rounds, -1))  # [B, L, R, τ]
    return (q == h).all(-1)  # [B, L, R]


def sdim_scores(query: Tensor, keys: Tensor, options: SDIMOptions) -> Tensor:
    """In how many of the `hash_rounds` rounds each behaviour's signature collides with the target's.

    Args:
        query: [B, D] the target's search embedding.
        keys: [B, L, D] (or one chunk [B, c, D]) the behaviours' search embeddings.
        options: `hash_rounds` (R), `round_bits` (τ) and `seed` for the hyperplanes.

    Returns:
        [B, L] int64 in [0, R], higher = more similar; computed per block of `SCORE_BLOCK` behaviours.
    """
    R = options.hash_rounds
    planes = simhash_planes(
        query.shape[-1], R * options.round_bits, options.seed, query.device, query.dtype
    )  # [D, R·τ]
    q = simhash_bits(query, planes)  # [B, R·τ]
    return blockwise(lambda h: collisions(q, simhash_bits(h, planes), R).sum(-1), keys)  # [B, L]


def sdim(
    batch: Batch, k: int, query: Tensor | None, keys: Tensor | None, options: SDIMOptions
) -> tuple[Tensor, Tensor]:
    """Top-K by the number of hash rounds in which a behaviour collides with the target (ties -> more recent).

    Args:
        batch: the collated batch (only `history_mask` is read).
        k: behaviours to keep.
        query: [B, D] the target's search embedding.
        keys: [B, L, D] the behaviours' search embeddings.
        options: `hash_rounds` (R), `round_bits` (τ) and `seed` for the hyperplanes.

    Returns:
        positions [B, K] (most collisions first) and kept [B, K].
    """
    if query is None or keys is None:
        raise ValueError("sdim search needs the model's search embeddings: the model has no search_embeddings().")
    return topk_positions(sdim_scores(query, keys, options), batch.history_mask, k)
