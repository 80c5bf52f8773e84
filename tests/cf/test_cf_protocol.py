"""The top-N protocol and the baselines: split, metric against brute force, EASE against its closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest

from longrec.cf import Split, ease_weights, evaluate_topn, interaction_matrix, item_knn, popularity, split_interactions


def _random_matrix(users: int, items: int, density: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((users, items)) < density).astype(np.float32)


def test_interaction_matrix_dedupes_and_filters_rare_items() -> None:
    x = interaction_matrix(np.array([10, 10, 10, 20, 30]), np.array([7, 7, 8, 7, 9]), min_item_count=2)
    assert x.tolist() == [[1.0], [1.0]]  # items 8 and 9 have one user each; user 30 is left with none
    with pytest.raises(ValueError, match="min_item_count"):
        interaction_matrix(np.array([1]), np.array([1]), min_item_count=2)


def test_split_is_disjoint_complete_seeded_and_near_80_10_10() -> None:
    x = _random_matrix(50, 200, 0.2, 0)
    a, b = split_interactions(x, seed=3), split_interactions(x, seed=3)
    assert np.array_equal(a.train + a.valid + a.test, x)
    assert np.array_equal(a.test, b.test)
    assert not np.array_equal(a.test, split_interactions(x, seed=4).test)
    assert a.train.sum() / x.sum() == pytest.approx(0.8, abs=0.02)
    assert a.test.sum() / x.sum() == pytest.approx(0.1, abs=0.02)
    assert (a.test.sum(1)[x.sum(1) >= 3] >= 1).all()


def _brute_force(scores: np.ndarray, seen: np.ndarray, held: np.ndarray, k: int) -> tuple[float, float]:
    recalls, ndcgs = [], []
    for u in range(scores.shape[0]):
        relevant = set(np.flatnonzero(held[u]).tolist())
        if not relevant:
            continue
        candidates = sorted((i for i in range(scores.shape[1]) if not seen[u, i]), key=lambda i: (-scores[u, i], i))
        top = candidates[:k]
        hits = [1.0 if i in relevant else 0.0 for i in top]
        recalls.append(sum(hits) / len(relevant))
        dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
        ideal = sum(1 / math.log2(r + 2) for r in range(min(k, len(relevant))))
        ndcgs.append(dcg / ideal)
    return float(np.mean(recalls)), float(np.mean(ndcgs))


@pytest.mark.parametrize("which", ["valid", "test"])
def test_topn_metrics_match_brute_force(which: str) -> None:
    x = _random_matrix(40, 60, 0.25, 1)
    split = split_interactions(x, seed=0)
    scores = np.random.default_rng(2).integers(0, 5, x.shape).astype(np.float32)  # many ties: the id order breaks them
    got = evaluate_topn(scores, split, which, k=5)
    seen = split.train if which == "valid" else split.train + split.valid
    held = split.valid if which == "valid" else split.test
    recall, ndcg = _brute_force(scores, seen, held, 5)
    assert got["recall@5"] == pytest.approx(recall)
    assert got["ndcg@5"] == pytest.approx(ndcg)


def test_seen_items_are_never_recommended() -> None:
    train = np.array([[1, 0, 0, 0]], dtype=np.float32)
    split = Split(train, np.zeros_like(train), np.array([[0, 0, 1, 0]], dtype=np.float32))
    # The train item scores highest; masked, the held-out item 2 is ranked first.
    assert evaluate_topn(np.array([[9.0, 1.0, 2.0, 0.0]]), split, "test", k=1)["recall@1"] == 1.0
    with pytest.raises(ValueError, match="shape"):
        evaluate_topn(np.zeros((1, 3)), split)


def test_ease_matches_its_closed_form_per_column() -> None:
    x = _random_matrix(30, 8, 0.4, 5).astype(np.float64)
    l2 = 3.0
    b = ease_weights(x.astype(np.float32), l2)
    for j in range(x.shape[1]):
        # Column j: ridge regression of X_j on the other columns, with the self-weight forced to zero.
        others = [i for i in range(x.shape[1]) if i != j]
        a = x[:, others]
        w = np.linalg.solve(a.T @ a + l2 * np.eye(len(others)), a.T @ x[:, j])
        assert np.allclose(b[others, j], w, atol=1e-8)
        assert b[j, j] == 0.0


def test_item_knn_and_popularity() -> None:
    x = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=np.float32)
    s = item_knn(x, neighbours=1)
    assert s[0, 2] == 0.0 and s[2, 0] == 0.0  # item 2 never co-occurs with 0 or 1
    assert s[0, 0] == pytest.approx(1.0)  # the neighbour of item 0 is item 1 (cosine 1)
    assert popularity(x)[2].tolist() == [2.0, 2.0, 1.0]
