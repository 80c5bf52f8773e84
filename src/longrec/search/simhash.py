"""SimHash search: ETA's (Chen et al. 2021, https://arxiv.org/abs/2108.04468) locality-sensitive top-K.

ETA replaces the inner-product scan over a long history by SimHash (random-hyperplane LSH, Charikar 2002): each
embedding x gets the signature sign(x·P) for `hash_bits` fixed random hyperplanes P [D, bits], and behaviours are
ranked by the Hamming distance between their signature and the target's. Each bit disagrees with probability
θ/π (θ = the angle between the two vectors), so a small Hamming distance means a small angle: the searcher
approximates top-K by *cosine*, which is the inner-product top-K when the keys have equal norms.

Design choices (the paper leaves them open):
- The hyperplanes are drawn once from N(0, 1) by a CPU generator seeded with `SimHashOptions.seed`, so the same seed
  gives the same planes on every device; they are not learned (ETA: "fixed random projection").
- The distance is the number of disagreeing signature bits, counted per block of `SCORE_BLOCK` behaviours
  (`simhash_scores`): the [B, block, N] bool temporaries stay bounded whatever L, and a chunk of the history gets the
  bit-identical signatures the whole history gets, so chunked search (docs/long_histories.md) returns the same top-K.
  `pack_bits` / `hamming` give the same distance from signatures packed 32 bits per int64 word (16x less memory than
  bool, every intermediate below 2^57), for storing signatures.
- Ties (equal distance, frequent with few bits) go to the more recent behaviour: the score is `-distance`, and
  `topk_positions` breaks ties by recency.

`simhash_planes` and `simhash_bits` are the hashing every hash-based module shares (`search/sdim.py`,
`models/sdim.py`).

Shapes: B batch, L history length, K kept behaviours, D embedding dim, N signature bits, W = ceil(N / 32) words.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from longrec.data.batch import Batch
from longrec.search.exact import blockwise, topk_positions
from longrec.settings import ConfigError

__all__ = [
    "SimHashOptions",
    "hamming",
    "pack_bits",
    "popcount",
    "simhash",
    "simhash_bits",
    "simhash_planes",
    "simhash_scores",
]

_WORD = 32  # signature bits per int64 word: popcount intermediates stay far from overflow


@dataclass(frozen=True)
class SimHashOptions:
    """The settings of `simhash` (flat in the `[search]` table: `search = { method = "simhash", hash_bits = 32 }`)."""

    hash_bits: int = 64  # N signature bits (ETA)
    seed: int = 0  # seeds the random hyperplanes

    def __post_init__(self) -> None:
        if self.hash_bits < 1:
            raise ConfigError(
                [f"search.hash_bits must be a positive int. Got {self.hash_bits} instead."], "SimHashOptions"
            )


def simhash_planes(
    dim: int, bits: int, seed: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Random hyperplanes [D, N] ~ N(0, 1), a pure function of (dim, bits, seed) on every device."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(dim, bits, generator=g).to(device=device, dtype=dtype)  # [D, N]


def simhash_bits(x: Tensor, planes: Tensor) -> Tensor:
    """SimHash signature bits: True where x lies on the positive side of a hyperplane.

    Args:
        x: [..., D] embeddings.
        planes: [D, N] hyperplane normals (`simhash_planes`).

    Returns:
        [..., N] bool.
    """
    return (x @ planes) > 0  # [..., N]


def pack_bits(bits: Tensor) -> Tensor:
    """Pack bool bits [..., N] into int64 words [..., W] of 32 bits each (the last word zero-padded)."""
    N = bits.shape[-1]
    W = -(-N // _WORD)
    padded = torch.nn.functional.pad(bits, (0, W * _WORD - N))  # [..., W·32], padding bits are 0
    weights = 2 ** torch.arange(_WORD, device=bits.device, dtype=torch.int64)  # [32]
    return (padded.unflatten(-1, (W, _WORD)).long() * weights).sum(-1)  # [..., W]


def popcount(words: Tensor) -> Tensor:
    """Number of set bits of each int64 word holding 32 bits (SWAR bit count, elementwise)."""
    x = words - ((words >> 1) & 0x55555555)
    x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F
    return ((x * 0x01010101) >> 24) & 0xFF  # same shape as words


def hamming(a: Tensor, b: Tensor) -> Tensor:
    """Hamming distance between packed signatures [..., W] (broadcast) -> int64 [...]."""
    return popcount(a ^ b).sum(-1)  # [...]


def simhash_scores(query: Tensor, keys: Tensor, options: SimHashOptions) -> Tensor:
    """Minus the Hamming distance between the SimHash signatures of each behaviour and of the target.

    Args:
        query: [B, D] the target's search embedding.
        keys: [B, L, D] (or one chunk [B, c, D]) the behaviours' search embeddings.
        options: `hash_bits` signature bits and `seed` for the hyperplanes.

    Returns:
        [B, L] int64 in [-N, 0], higher = closer; computed per block of `SCORE_BLOCK` behaviours.
    """
    planes = simhash_planes(query.shape[-1], options.hash_bits, options.seed, query.device, query.dtype)  # [D, N]
    q = simhash_bits(query, planes).unsqueeze(1)  # [B, 1, N]
    return blockwise(lambda h: -(simhash_bits(h, planes) != q).sum(-1), keys)  # [B, L]


def simhash(
    batch: Batch, k: int, query: Tensor | None, keys: Tensor | None, options: SimHashOptions
) -> tuple[Tensor, Tensor]:
    """Top-K by Hamming distance between SimHash signatures of the model's search embeddings (ETA).

    Args:
        batch: the collated batch (only `history_mask` is read).
        k: behaviours to keep.
        query: [B, D] the target's search embedding.
        keys: [B, L, D] the behaviours' search embeddings.
        options: `hash_bits` signature bits and `seed` for the hyperplanes.

    Returns:
        positions [B, K] (closest first; ties -> more recent) and kept [B, K].
    """
    if query is None or keys is None:
        raise ValueError("simhash search needs the model's search embeddings: the model has no search_embeddings().")
    return topk_positions(simhash_scores(query, keys, options), batch.history_mask, k)
