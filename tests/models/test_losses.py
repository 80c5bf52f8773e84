"""sampled_softmax_loss against a naive per-row reference, in every negative layout and with every correction."""

from __future__ import annotations

import math

import pytest
import torch

from longrec.models.losses import sampled_softmax_loss

B, N, D = 5, 4, 3


def naive(
    user: torch.Tensor,
    positive: torch.Tensor,
    negatives: list[torch.Tensor],
    temperature: float = 1.0,
    positive_log_q: list[float] | None = None,
    negative_log_q: list[list[float]] | None = None,
    hits: list[list[bool]] | None = None,
) -> float:
    """-log softmax of the positive, row by row, in plain Python floats."""
    total = 0.0
    for b in range(user.shape[0]):
        pos = float(user[b] @ positive[b]) / temperature - (positive_log_q[b] if positive_log_q else 0.0)
        terms = [math.exp(pos)]
        for n, item in enumerate(negatives[b]):
            if hits and hits[b][n]:
                continue
            terms.append(
                math.exp(float(user[b] @ item) / temperature - (negative_log_q[b][n] if negative_log_q else 0))
            )
        total += -(pos - math.log(sum(terms)))
    return total / user.shape[0]


@pytest.fixture
def vectors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(B, D, generator=g), torch.randn(B, D, generator=g), torch.randn(B, N, D, generator=g)


def test_per_row_negatives_match_the_naive_softmax(vectors) -> None:
    user, positive, negatives = vectors
    got = sampled_softmax_loss(user, positive, negatives, temperature=0.5)
    assert got.item() == pytest.approx(naive(user, positive, list(negatives), temperature=0.5), rel=1e-5)


def test_shared_negatives_equal_the_same_negatives_given_per_row(vectors) -> None:
    user, positive, negatives = vectors
    shared = negatives[0]  # [N, D]
    got = sampled_softmax_loss(user, positive, shared)
    torch.testing.assert_close(got, sampled_softmax_loss(user, positive, shared.expand(B, N, D)))
    assert got.item() == pytest.approx(naive(user, positive, [shared] * B), rel=1e-5)


def test_in_batch_negatives_are_the_other_rows_positives(vectors) -> None:
    user, positive, _ = vectors
    others = [torch.cat([positive[:b], positive[b + 1 :]]) for b in range(B)]
    got = sampled_softmax_loss(user, positive)
    assert got.item() == pytest.approx(naive(user, positive, others), rel=1e-5)


def test_accidental_hits_are_dropped(vectors) -> None:
    user, positive, negatives = vectors
    positive_ids = torch.tensor([1, 2, 3, 4, 5])
    negative_ids = torch.tensor([[1, 9, 9, 9], [9, 9, 9, 9], [3, 3, 9, 9], [9, 9, 9, 4], [9, 9, 9, 9]])
    hits = (negative_ids == positive_ids.unsqueeze(1)).tolist()
    got = sampled_softmax_loss(user, positive, negatives, positive_ids=positive_ids, negative_ids=negative_ids)
    assert got.item() == pytest.approx(naive(user, positive, list(negatives), hits=hits), rel=1e-5)
    assert got.item() != pytest.approx(sampled_softmax_loss(user, positive, negatives).item(), rel=1e-3)


def test_in_batch_duplicates_of_the_positive_are_not_negatives(vectors) -> None:
    user, positive, _ = vectors
    positive = positive.clone()
    positive[3] = positive[1]  # rows 1 and 3 clicked the same item
    ids = torch.tensor([10, 11, 12, 11, 14])
    got = sampled_softmax_loss(user, positive, positive_ids=ids)
    others = [torch.cat([positive[:b], positive[b + 1 :]]) for b in range(B)]
    hits = [[int(j) == int(ids[b]) for j in torch.cat([ids[:b], ids[b + 1 :]])] for b in range(B)]
    assert got.item() == pytest.approx(naive(user, positive, others, hits=hits), rel=1e-5)


def test_log_q_correction_is_subtracted_from_every_candidate(vectors) -> None:
    user, positive, negatives = vectors
    g = torch.Generator().manual_seed(1)
    pos_q, neg_q = -torch.rand(B, generator=g) * 3, -torch.rand(B, N, generator=g) * 3
    got = sampled_softmax_loss(user, positive, negatives, temperature=2.0, positive_log_q=pos_q, negative_log_q=neg_q)
    expected = naive(user, positive, list(negatives), 2.0, pos_q.tolist(), neg_q.tolist())
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # In-batch: the column of row j's positive is corrected by row j's log Q, on the diagonal and off it.
    others = [torch.cat([positive[:b], positive[b + 1 :]]) for b in range(B)]
    other_q = [torch.cat([pos_q[:b], pos_q[b + 1 :]]).tolist() for b in range(B)]
    got = sampled_softmax_loss(user, positive, positive_log_q=pos_q)
    assert got.item() == pytest.approx(naive(user, positive, others, 1.0, pos_q.tolist(), other_q), rel=1e-5)


def test_gradients_reach_user_positive_and_negatives_but_not_dropped_hits(vectors) -> None:
    user, positive, negatives = (v.clone().requires_grad_() for v in vectors)
    ids = torch.arange(1, B + 1)
    negative_ids = torch.full((B, N), 99)
    negative_ids[0, 2] = 1  # an accidental hit: no gradient may reach it
    sampled_softmax_loss(user, positive, negatives, positive_ids=ids, negative_ids=negative_ids).backward()
    assert user.grad.abs().sum() > 0 and positive.grad.abs().sum() > 0
    assert negatives.grad[0, 2].abs().sum() == 0 and negatives.grad[0, 1].abs().sum() > 0
    assert all(torch.isfinite(t.grad).all() for t in (user, positive, negatives))


def test_a_confident_correct_model_has_a_small_loss() -> None:
    user = torch.eye(4) * 20
    assert sampled_softmax_loss(user, torch.eye(4)).item() < 1e-6
    assert sampled_softmax_loss(user, torch.eye(4).roll(1, 0)).item() > 10


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"positive": torch.ones(5, 2)}, r"needs user \[B, D\] and positive of the same shape\. Got user \[5, 3\]"),
        ({"temperature": 0.0}, r"temperature must be a positive float\. Got 0\.0 instead\."),
        ({"negatives": torch.ones(5, 4, 2)}, r"negatives must have shape \[5, 4, 3\]\. Got \[5, 4, 2\] instead\."),
        ({"negatives": torch.ones(4, 3), "negative_ids": torch.ones(3, dtype=torch.long)}, r"negative_ids must"),
        ({"negative_ids": torch.ones(5, dtype=torch.long)}, r"in-batch negatives .* takes positive_ids"),
        (
            {"negatives": torch.ones(4, 3), "negative_ids": torch.ones(4, dtype=torch.long)},
            r"needs positive_ids with negative_ids",
        ),
        ({"positive_log_q": torch.ones(4)}, r"positive_log_q must have shape \[5\]\. Got \[4\] instead\."),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, match: str) -> None:
    args = {"user": torch.ones(5, 3), "positive": torch.ones(5, 3), **kwargs}
    with pytest.raises(ValueError, match=match):
        sampled_softmax_loss(**args)
