import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss, ndcg_score, roc_auc_score

from longrec.eval.metrics import auc, compute_metrics, gauc, logloss, logloss_from_logits, ndcg_at_k, recall_at_k

# Hand-computed golden example (6 rows, 3 users).
#   user 1: positive 0.8 vs negatives 0.3 and 0.8 -> (1 + 1/2) / 2 = 0.75, 3 impressions
#   user 2: positive 0.2 vs negative 0.6          -> 0,                   2 impressions
#   user 3: a single positive                      -> no AUC, skipped
#   GAUC = (3·0.75 + 2·0) / (3 + 2) = 0.45 (the unweighted mean would be 0.375)
#   global AUC: positives {0.8, 0.2, 0.9} vs negatives {0.3, 0.8, 0.6}: (2.5 + 0 + 3) / 9 = 11/18
GOLDEN_LABELS = [1, 0, 0, 1, 0, 1]
GOLDEN_SCORES = [0.8, 0.3, 0.8, 0.2, 0.6, 0.9]
GOLDEN_USERS = [1, 1, 1, 2, 2, 3]


def random_data(seed: int, n: int = 500, groups: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    scores = np.round(rng.normal(size=n) + labels, 1)  # rounding makes many ties
    return labels, scores, rng.integers(0, groups, n)


def gauc_reference(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    total = weight = 0.0
    for g in np.unique(groups):
        m = groups == g
        if 0 < labels[m].sum() < m.sum():
            total += m.sum() * roc_auc_score(labels[m], scores[m])
            weight += m.sum()
    return total / weight if weight else math.nan


def test_gauc_golden_six_rows_weights_users_by_impressions() -> None:
    assert gauc(GOLDEN_LABELS, GOLDEN_SCORES, GOLDEN_USERS) == pytest.approx(0.45)
    assert auc(GOLDEN_LABELS, GOLDEN_SCORES) == pytest.approx(11 / 18)


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_sklearn_with_ties(seed: int) -> None:
    labels, scores, _ = random_data(seed)
    assert len(np.unique(scores)) < len(scores) / 2  # the data really has ties
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auc_of_constant_scores_is_one_half() -> None:
    assert auc([0, 1, 1, 0, 1], np.zeros(5)) == pytest.approx(0.5)


def test_auc_is_nan_for_a_single_class() -> None:
    assert math.isnan(auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(auc([0, 0], [0.1, 0.2]))


@pytest.mark.parametrize("seed", range(5))
def test_gauc_matches_a_loop_of_sklearn_aucs(seed: int) -> None:
    labels, scores, groups = random_data(seed)
    assert gauc(labels, scores, groups) == pytest.approx(gauc_reference(labels, scores, groups), abs=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.integers(0, 1), st.integers(-3, 3), st.integers(0, 4)),  # (label, score, group): many ties
        min_size=1,
        max_size=40,
    )
)
def test_gauc_matches_the_loop_reference_on_any_small_input(rows: list[tuple[int, int, int]]) -> None:
    labels, scores, groups = (np.array(c) for c in zip(*rows, strict=True))
    expected = gauc_reference(labels, scores.astype(float), groups)
    got = gauc(labels, scores, groups)
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected, abs=1e-12)


def test_gauc_of_a_single_group_is_the_global_auc() -> None:
    labels, scores, _ = random_data(0)
    assert gauc(labels, scores, np.zeros(len(labels))) == pytest.approx(auc(labels, scores), abs=1e-12)


def test_gauc_skips_groups_with_one_class() -> None:
    labels, scores, groups = random_data(1)
    one_class = np.full(30, 999)  # a new group with only positives, scored anyhow
    extended = gauc(np.r_[labels, np.ones(30)], np.r_[scores, np.linspace(-9, 9, 30)], np.r_[groups, one_class])
    assert extended == pytest.approx(gauc(labels, scores, groups), abs=1e-12)


def test_gauc_is_nan_when_no_group_has_both_classes() -> None:
    assert math.isnan(gauc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4], [1, 1, 2, 2]))


def test_gauc_accepts_string_groups() -> None:
    users = np.array(["ann", "ann", "ann", "bob", "bob", "cy"])
    assert gauc(GOLDEN_LABELS, GOLDEN_SCORES, users) == pytest.approx(0.45)


def test_gauc_does_not_depend_on_row_order() -> None:
    labels, scores, groups = random_data(2)
    perm = np.random.default_rng(0).permutation(len(labels))
    assert gauc(labels[perm], scores[perm], groups[perm]) == pytest.approx(gauc(labels, scores, groups), abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_logloss_from_logits_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels, logits = rng.integers(0, 2, 200), rng.normal(scale=3, size=200)
    probs = 1 / (1 + np.exp(-logits))
    assert logloss_from_logits(labels, logits) == pytest.approx(log_loss(labels, probs), rel=1e-9)
    assert logloss(labels, probs) == pytest.approx(log_loss(labels, probs), rel=1e-9)


def test_logloss_from_logits_is_exact_for_extreme_logits() -> None:
    # Confidently wrong by 1000 costs 1000 nats; through probabilities it would be clipped or infinite.
    assert logloss_from_logits([0, 1], [1000.0, -1000.0]) == pytest.approx(1000.0)
    assert logloss_from_logits([1, 0], [1000.0, -1000.0]) == pytest.approx(0.0, abs=1e-300)


def test_logloss_clips_probabilities_at_eps() -> None:
    assert logloss([1], [0.0], eps=1e-7) == pytest.approx(-math.log(1e-7))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: auc([0, 1, 1], [0.1, 0.2]), r"scores must have the shape of labels \[N\] = \[3\]. Got \[2\] instead"),
        (lambda: auc([0, 2, 1], [0.1, 0.2, 0.3]), r"labels must be 0 or 1. Got labels\[1\] = 2 instead"),
        (lambda: auc([0, 0.5], [0.1, 0.2]), r"labels\[1\] = 0.5"),
        (lambda: auc([0, 1], [0.1, float("nan")]), r"scores\[1\] is NaN"),
        (lambda: auc([], []), "labels is empty"),
        (lambda: auc([[0, 1]], [[0.1, 0.2]]), r"labels must be a 1-D array \[N\]. Got shape \[1, 2\]"),
        (lambda: gauc([0, 1], [0.1, 0.2], [1]), r"groups must have the shape of labels \[N\] = \[2\]"),
        (lambda: logloss_from_logits([0, 1], [0.1, float("inf")]), r"logits\[1\] = inf is not finite"),
        (lambda: logloss([0, 1], [0.1, 1.5]), r"probs must lie in \[0, 1\]. Got probs\[1\] = 1.5"),
        (lambda: compute_metrics([0, 1], [0.1, 0.2], users=[1, 1], goals=[0]), r"goals must have the shape"),
    ],
)
def test_malformed_input_raises_a_clear_error(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_compute_metrics_reports_every_metric_overall_and_per_goal() -> None:
    labels, logits, users = random_data(3, n=400)
    rng = np.random.default_rng(3)
    categories, goals = rng.integers(0, 5, 400), rng.integers(0, 3, 400)
    out = compute_metrics(labels, logits, users, categories=categories, goals=goals)
    assert set(out) == {"auc", "gauc", "gauc_category", "logloss", "count", "positive_rate", "per_goal"}
    assert out["auc"] == pytest.approx(roc_auc_score(labels, logits))
    assert out["gauc"] == pytest.approx(gauc(labels, logits, users))
    assert out["gauc_category"] == pytest.approx(gauc(labels, logits, categories))
    assert out["count"] == 400 and out["positive_rate"] == pytest.approx(labels.mean())
    assert sorted(out["per_goal"]) == [0, 1, 2]
    assert sum(v["count"] for v in out["per_goal"].values()) == 400
    m = goals == 1
    assert out["per_goal"][1]["auc"] == pytest.approx(auc(labels[m], logits[m]))
    assert out["per_goal"][1]["gauc_category"] == pytest.approx(gauc(labels[m], logits[m], categories[m]))
    assert out["per_goal"][1]["logloss"] == pytest.approx(logloss_from_logits(labels[m], logits[m]))


def test_compute_metrics_survives_a_goal_with_one_class() -> None:
    out = compute_metrics([1, 0, 1, 1], [0.5, -0.5, 0.1, 0.2], users=[1, 1, 2, 2], goals=[7, 7, 8, 8])
    assert "gauc_category" not in out
    assert out["per_goal"][7]["auc"] == 1.0
    assert math.isnan(out["per_goal"][8]["auc"]) and math.isnan(out["per_goal"][8]["gauc"])
    assert out["per_goal"][8]["positive_rate"] == 1.0 and math.isfinite(out["per_goal"][8]["logloss"])


def test_recall_at_k_counts_hits_over_relevant_and_skips_rows_without_relevant() -> None:
    retrieved = [[3, 5, -1], [0, 1, 2], [4, 4, 4]]
    relevant = [{5, 9}, {2}, set()]  # the third row has nothing relevant: skipped
    assert recall_at_k(retrieved, relevant, k=2) == pytest.approx((1 / 2 + 0) / 2)
    assert recall_at_k(retrieved, relevant) == pytest.approx((1 / 2 + 1) / 2)
    assert math.isnan(recall_at_k([[1, 2]], [[-1]]))


def test_retrieval_metrics_credit_a_repeated_id_once_and_ignore_empty_slots() -> None:
    assert recall_at_k([[4, 4, -1]], [[4, 8]]) == pytest.approx(0.5)
    assert recall_at_k([[-1, -1]], [[-1, 3]]) == 0.0
    assert ndcg_at_k([[4, 4]], [[4, 8]]) == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_ndcg_at_k_hand_computed() -> None:
    # Relevant {1, 2}; retrieved [1, 9, 2]: DCG = 1 + 1/log2(4); ideal = 1 + 1/log2(3).
    assert ndcg_at_k(np.array([[1, 9, 2]]), np.array([[1, 2]])) == pytest.approx(1.5 / (1 + 1 / math.log2(3)))
    assert ndcg_at_k([[2, 1, 9]], [[1, 2]]) == pytest.approx(1.0)
    assert ndcg_at_k([[9, 8, 7]], [[1, 2]]) == 0.0


@pytest.mark.parametrize("seed", range(3))
def test_graded_ndcg_matches_sklearn(seed: int) -> None:
    # Search as ranking: rank L positions by a score, keep the top K, and grade them with per-position gains.
    rng = np.random.default_rng(seed)
    N, L, K = 8, 20, 6
    gains, scores = rng.exponential(size=(N, L)), rng.normal(size=(N, L))
    retrieved = np.argsort(-scores, axis=1)[:, :K]  # [N, K] positions, best first
    positions = np.tile(np.arange(L), (N, 1))  # [N, L] every position is relevant with its own gain
    expected = ndcg_score(gains, scores, k=K)
    assert ndcg_at_k(retrieved, positions, k=K, gains=gains) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: recall_at_k([[1, 2]], [[1]], k=3), r"k must be in \[1, K\] = \[1, 2\]. Got k=3 instead"),
        (lambda: recall_at_k([[1, 2]], [[1], [2]]), r"one row per retrieved row \(N = 1\). Got 2 rows"),
        (lambda: recall_at_k([[1, 2]], [[3, 3]]), r"relevant\[0\] lists id 3 twice"),
        (lambda: recall_at_k([1, 2], [[3]]), r"retrieved must be a 2-D int array"),
        (lambda: ndcg_at_k([[1, 2]], [[1, 2]], gains=[[1.0]]), r"gains must have the shape of relevant \[1, 2\]"),
        (lambda: ndcg_at_k([[1, 2]], [[1, 2]], gains=[[1.0, -1.0]]), "gains must be non-negative"),
    ],
)
def test_retrieval_metrics_reject_malformed_input(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
