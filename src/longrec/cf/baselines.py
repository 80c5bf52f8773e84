"""Simple collaborative-filtering baselines that a diffusion model must beat: popularity, ItemKNN and EASE.

Each takes the train matrix X [U, I] (binary) and returns scores [U, I]; `longrec.cf.data.evaluate_topn` masks the
seen items. EASE (Steck, WWW 2019) is the closed-form shallow auto-encoder

    B = argmin_B ||X - X B||² + λ||B||²  s.t. diag(B) = 0,   P = (XᵀX + λI)⁻¹,   B_ij = -P_ij / P_jj (i ≠ j),

scores = X B. It is often the strongest model on small dense data such as the MovieLens slice.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["ease", "ease_weights", "item_knn", "popularity"]


def popularity(train: NDArray[np.float32]) -> NDArray[np.float32]:
    """Every user gets the item counts of the train matrix [U, I] (the floor a personalised model must clear)."""
    return np.broadcast_to(train.sum(0, dtype=np.float32), train.shape).copy()


def ease_weights(train: NDArray[np.float32], l2: float) -> NDArray[np.float64]:
    """EASE's item–item matrix B [I, I] (zero diagonal) for the ridge weight `l2` > 0 (formula in the module doc)."""
    if not l2 > 0:
        raise ValueError(f"EASE's l2 must be > 0. Got {l2!r}.")
    x = np.asarray(train, dtype=np.float64)
    gram = x.T @ x  # [I, I]
    gram[np.diag_indices_from(gram)] += l2
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)[None, :]  # B_ij = -P_ij / P_jj
    b[np.diag_indices_from(b)] = 0.0
    return b


def ease(train: NDArray[np.float32], l2: float) -> NDArray[np.float32]:
    """EASE scores X B [U, I]."""
    return (np.asarray(train, dtype=np.float64) @ ease_weights(train, l2)).astype(np.float32)


def item_knn(train: NDArray[np.float32], neighbours: int) -> NDArray[np.float32]:
    """ItemKNN: cosine item–item similarity S = D⁻¹ᐟ² XᵀX D⁻¹ᐟ² (D = item counts, no self-similarity), each item
    keeping its `neighbours` most similar items; scores = X S [U, I]."""
    if neighbours < 1:
        raise ValueError(f"neighbours must be >= 1. Got {neighbours}.")
    x = np.asarray(train, dtype=np.float32)
    norm = np.sqrt(np.maximum(x.sum(0), 1.0))  # [I]
    sim = (x.T @ x) / norm[:, None] / norm[None, :]  # [I, I]
    np.fill_diagonal(sim, 0.0)
    if neighbours < sim.shape[1]:
        cut = np.argpartition(-sim, neighbours - 1, axis=0)[neighbours:]  # [I - n, I] rows outside each column's top n
        np.put_along_axis(sim, cut, 0.0, axis=0)
    return x @ sim
