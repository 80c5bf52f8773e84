"""The user–item matrix and the standard top-N protocol of collaborative filtering.

A CF model sees no sequence and no time: only which items each user interacted with, a binary matrix
X ∈ {0, 1}^{U×I}. The protocol is the one of the CF literature (Mult-VAE, EASE, DiffRec, S-Diff): each user's
interactions are split at random (seeded) into train / valid / test (80 / 10 / 10 by default); a model is fitted on
the train matrix and, for every user with held-out items, ranks ALL items the user did not interact with in training
(and, for test, not in valid either); Recall@K = |top-K ∩ held-out| / |held-out| and NDCG@K (binary gains) are
averaged over those users (`longrec.eval.metrics.recall_at_k` / `ndcg_at_k`).

Matrices are dense float32 numpy arrays: the MovieLens slice (610 users × ~9,700 items, or ~3,600 items rated >= 4
after a 5-core item filter) is a few MB. Sparse storage is the next step for catalogues of 10^5+ items.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from longrec.data.sharded import open_store
from longrec.eval.metrics import ndcg_at_k, recall_at_k
from longrec.ingest.movielens import load_movielens

__all__ = [
    "Split",
    "evaluate_topn",
    "interaction_matrix",
    "movielens_matrix",
    "split_interactions",
    "store_matrix",
    "top_k",
]


def interaction_matrix(
    users: NDArray[np.int64], items: NDArray[np.int64], min_item_count: int = 1
) -> NDArray[np.float32]:
    """Binary matrix [U, I] from (user, item) pairs of any int ids; duplicate pairs count once.

    Items with fewer than `min_item_count` distinct users are dropped (an item nobody else saw cannot be recommended
    by a collaborative model), then users left with no item. Rows and columns follow the sorted ids.
    """
    u = np.asarray(users)
    i = np.asarray(items)
    if u.shape != i.shape or u.ndim != 1 or u.size == 0:
        raise ValueError(
            f"users and items must be 1-D arrays of the same non-zero length. Got {u.shape} and {i.shape}."
        )
    pairs = np.unique(np.stack([u, i], 1), axis=0)  # [P, 2] distinct pairs
    _, item_index, counts = np.unique(pairs[:, 1], return_inverse=True, return_counts=True)
    keep = counts[item_index] >= min_item_count  # [P]
    pairs = pairs[keep]
    if pairs.size == 0:
        raise ValueError(f"no item has {min_item_count} or more users; lower min_item_count.")
    _, rows = np.unique(pairs[:, 0], return_inverse=True)
    _, cols = np.unique(pairs[:, 1], return_inverse=True)
    x = np.zeros((int(rows.max()) + 1, int(cols.max()) + 1), dtype=np.float32)
    x[rows, cols] = 1.0
    return x


def movielens_matrix(path: str | Path, min_rating: float = 4.0, min_item_count: int = 5) -> NDArray[np.float32]:
    """The implicit-feedback matrix of a MovieLens ratings file: a rating >= `min_rating` is an interaction.

    Reads through `longrec.ingest.movielens.load_movielens` (its checks and errors); `min_rating = 4` is the usual
    conversion of ratings to implicit feedback (DiffRec, S-Diff on ML-1M).
    """
    loaded = load_movielens(path, min_rating=min_rating)
    try:
        log = loaded.collect()
    finally:
        loaded.close()
    return interaction_matrix(log["user_id"].to_numpy(), log["item_id"].to_numpy(), min_item_count)


def store_matrix(root: str | Path, min_item_count: int = 5) -> NDArray[np.float32]:
    """The binary matrix of a prepared store's (or sharded folder's) trajectories: every stored behaviour of a user
    is an interaction (the store's actions are not filtered here; prepare the store with the actions you want)."""
    store = open_store(root)
    rows = np.repeat(np.arange(store.offsets.shape[0] - 1), np.diff(store.offsets))  # [N] trajectory of each row
    users = rows if store.owner is None else np.asarray(store.owner)[rows]
    items = np.asarray(store.arrays["item"][np.arange(int(store.offsets[-1]))])  # a sharded folder reads by rows
    return interaction_matrix(users, items, min_item_count)


@dataclass(frozen=True)
class Split:
    """A per-user random split of a binary matrix: three disjoint binary matrices [U, I] summing to the whole."""

    train: NDArray[np.float32]
    valid: NDArray[np.float32]
    test: NDArray[np.float32]


def split_interactions(x: NDArray[np.float32], seed: int, fractions: tuple[float, float] = (0.8, 0.1)) -> Split:
    """Split each user's interactions at random into train / valid / test.

    A user with n interactions gives round(n·f_train) (at least 1) to train, round(n·f_valid) to valid (none if that
    would leave test empty for n >= 3) and the rest to test; a user with 1 or 2 interactions keeps them all in train.

    Args:
        x: [U, I] binary.
        seed: the numpy seed of the shuffles.
        fractions: (train, valid) shares; test gets the rest.
    """
    f_train, f_valid = fractions
    if not (0 < f_train < 1 and 0 <= f_valid < 1 and f_train + f_valid < 1):
        raise ValueError(f"fractions must be (train, valid) with 0 < train, train + valid < 1. Got {fractions}.")
    rng = np.random.default_rng(seed)
    parts = [np.zeros_like(x) for _ in range(3)]
    for user in range(x.shape[0]):
        items = rng.permutation(np.flatnonzero(x[user]))
        n = items.size
        if n < 3:
            parts[0][user, items] = 1.0
            continue
        n_train = max(1, round(n * f_train))
        n_valid = min(round(n * f_valid), n - n_train - 1)
        parts[0][user, items[:n_train]] = 1.0
        parts[1][user, items[n_train : n_train + n_valid]] = 1.0
        parts[2][user, items[n_train + n_valid :]] = 1.0
    return Split(*parts)


def top_k(scores: NDArray[np.floating], seen: NDArray[np.float32], k: int) -> NDArray[np.int64]:
    """The k best-scored items per user among those not `seen` [U, k], best first (ties: lower item id first)."""
    s = np.where(seen > 0, -np.inf, np.asarray(scores, dtype=np.float64))  # [U, I]
    return np.argsort(-s, axis=1, kind="stable")[:, :k].astype(np.int64)  # a stable sort keeps lower ids first


def evaluate_topn(scores: NDArray[np.floating], split: Split, which: str = "test", k: int = 20) -> dict[str, float]:
    """Recall@k and NDCG@k of `scores` [U, I] on the held-out `which` matrix, ranking every item not seen before.

    For "valid", train items are excluded from the ranking; for "test", train and valid items are. Users without
    held-out items are skipped.
    """
    if which not in ("valid", "test"):
        raise ValueError(f"which must be 'valid' or 'test'. Got {which!r}.")
    held = split.valid if which == "valid" else split.test
    if np.shape(scores) != held.shape:
        raise ValueError(f"scores must have the matrix's shape {list(held.shape)}. Got {list(np.shape(scores))}.")
    if np.isnan(scores).any():
        raise ValueError("scores hold NaN; did the model diverge?")
    seen = split.train if which == "valid" else split.train + split.valid
    users = np.flatnonzero(held.sum(1) > 0)
    retrieved = top_k(np.asarray(scores)[users], seen[users], k)  # [U', k]
    relevant = [np.flatnonzero(held[u]).tolist() for u in users]
    return {
        f"recall@{k}": recall_at_k(retrieved, relevant, k),
        f"ndcg@{k}": ndcg_at_k(retrieved, relevant, k),
        "users": float(users.size),
    }
