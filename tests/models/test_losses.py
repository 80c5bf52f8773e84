"""The ranking losses against naive per-row references, in every negative layout and with every correction:
sampled_softmax_loss, bpr_loss, and CROLoss (its special cases, its weighting identity, what α does to the gradient,
the Lambda gradient)."""

from __future__ import annotations

import math

import pytest
import torch

from longrec.models.losses import bpr_loss, croloss, sampled_softmax_loss

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


# ------------------------------------------------------------------------------------------------------- BPR
def test_bpr_is_the_mean_pairwise_logistic_loss_over_the_valid_pairs(vectors) -> None:
    user, positive, negatives = vectors
    positive_ids = torch.tensor([1, 2, 3, 4, 5])
    negative_ids = torch.tensor([[1, 9, 9, 9], [9, 9, 9, 9], [3, 3, 9, 9], [9, 9, 9, 4], [9, 9, 9, 9]])
    pairs = [
        math.log1p(math.exp(float(user[b] @ negatives[b, n] - user[b] @ positive[b]) / 0.5))
        for b in range(B)
        for n in range(N)
        if negative_ids[b, n] != positive_ids[b]
    ]
    got = bpr_loss(user, positive, negatives, temperature=0.5, positive_ids=positive_ids, negative_ids=negative_ids)
    assert len(pairs) == B * N - 4 and got.item() == pytest.approx(sum(pairs) / len(pairs), rel=1e-5)
    others = [torch.cat([positive[:b], positive[b + 1 :]]) for b in range(B)]  # in-batch
    pairs = [math.log1p(math.exp(float(user[b] @ o - user[b] @ positive[b]))) for b in range(B) for o in others[b]]
    assert bpr_loss(user, positive).item() == pytest.approx(sum(pairs) / len(pairs), rel=1e-5)


# --------------------------------------------------------------------------------------------------- CROLoss
def scores(positive: list[float], negatives: list[list[float]]) -> tuple[torch.Tensor, ...]:
    """user [B, 1] = 1, so <user, item> is the item's one coordinate: scores given directly, as leaf tensors."""
    pos = torch.tensor(positive).unsqueeze(1).requires_grad_()  # [B, 1]
    neg = torch.tensor(negatives).unsqueeze(-1).requires_grad_()  # [B, N, 1]
    return torch.ones(len(positive), 1), pos, neg


@pytest.mark.parametrize("layout", ["per_row", "shared", "in_batch"])
def test_log_weighting_with_the_exp_kernel_is_the_sampled_softmax(vectors, layout: str) -> None:
    user, positive, negatives = vectors
    ids = torch.tensor([1, 2, 3, 2, 5])  # rows 1 and 3 share an item: in-batch, an accidental hit
    kwargs: dict = {"temperature": 0.7, "positive_ids": ids, "positive_log_q": -torch.rand(B) * 2}
    if layout == "per_row":
        kwargs |= {"negative_ids": torch.tensor([[1, 9, 9, 9]] + [[9] * N] * 4), "negative_log_q": -torch.rand(B, N)}
    elif layout == "shared":
        negatives, kwargs["negative_ids"] = negatives[0], torch.tensor([3, 9, 9, 9])
    args = (user.clone().requires_grad_(), positive.clone().requires_grad_())
    got = croloss(*args, None if layout == "in_batch" else negatives, alpha=1.0, kernel="exp", **kwargs)
    got.backward()
    grads = [a.grad.clone() for a in args]
    args = (user.clone().requires_grad_(), positive.clone().requires_grad_())
    expected = sampled_softmax_loss(*args, None if layout == "in_batch" else negatives, **kwargs)
    expected.backward()
    torch.testing.assert_close(got, expected)
    for g, a in zip(grads, args, strict=True):
        torch.testing.assert_close(g, a.grad)


def test_uniform_weighting_with_the_softplus_kernel_sums_the_bpr_losses(vectors) -> None:
    user, positive, negatives = (v.clone().requires_grad_() for v in vectors)
    got = croloss(user, positive, negatives, alpha=0.0, kernel="softplus", temperature=0.5)
    grads = torch.autograd.grad(got, (user, positive, negatives))
    expected = N * bpr_loss(user, positive, negatives, temperature=0.5)  # the row's sum = N × the pair mean
    torch.testing.assert_close(got, expected)
    for g, e in zip(grads, torch.autograd.grad(expected, (user, positive, negatives)), strict=True):
        torch.testing.assert_close(g, e)


def test_hinge_with_uniform_weighting_sums_the_pairwise_hinge_losses() -> None:
    user, pos, neg = scores([0.0, 2.0], [[0.5, -3.0, 1.0], [1.5, 0.0, 2.5]])
    got = croloss(user, pos, neg, alpha=0.0, kernel="hinge")
    hinge = [max(0.0, 1 + n - p) for p, row in ((0.0, [0.5, -3.0, 1.0]), (2.0, [1.5, 0.0, 2.5])) for n in row]
    assert got.item() == pytest.approx(sum(hinge) / 2, rel=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 1.5, 2.0])
def test_the_loss_is_the_weighted_sum_of_one_minus_recall_at_every_n(alpha: float) -> None:
    """Brute force: with a sharp kernel the smoothed rank is the exact rank, and the loss is Σ_N w(N)(1 - Recall@N)
    with w(N) = ∫_N^{N+1} t^-α dt, counted N by N from the exact ranks."""
    g = torch.Generator().manual_seed(0)
    Bn, Nn = 6, 12
    table = torch.randperm(Bn * (Nn + 1), generator=g).float().view(Bn, Nn + 1) * 0.5  # distinct, 0.5 apart
    user, pos, neg = scores(table[:, 0].tolist(), table[:, 1:].tolist())
    got = croloss(user, pos, neg, alpha=alpha, kernel="sigmoid", temperature=0.005)

    def w(n: int) -> float:
        return math.log((n + 1) / n) if alpha == 1 else ((n + 1) ** (1 - alpha) - n ** (1 - alpha)) / (1 - alpha)

    total = 0.0
    for b in range(Bn):
        rank = 1 + int((table[b, 1:] > table[b, 0]).sum())
        total += sum(w(n) * (0.0 if rank <= n else 1.0) for n in range(1, Nn + 2))
    assert got.item() == pytest.approx(total / Bn, rel=1e-4)


def test_a_smaller_alpha_larger_n_shifts_the_gradient_to_positives_ranked_far_down() -> None:
    """Row 0's positive has 1 candidate above it, row 1's has 30, each at x = log(e - 1), where softplus(x) = 1, and
    the rest far below: smoothed ranks r = 2 and 31, and ∂r/∂s_p = -(candidates above)·σ(x). So
    |∂loss/∂s_p| = W'(r)·(r - 1)·(1 - 1/e) / B with W'(r) = r^-α: a weighting on small N (α = 2) gives the positive
    near the top 8x the gradient of the far one; uniform weighting (α = 0, every N alike) gives the far one 30x."""
    up = math.log(math.e - 1)  # softplus(up) = 1, σ(up) = 1 - 1/e
    near = [up] + [-40.0] * 30
    far = [up] * 30 + [-40.0]
    ratios = {}
    for alpha in (0.0, 0.5, 1.0, 1.5, 2.0):
        user, pos, neg = scores([0.0, 0.0], [near, far])
        croloss(user, pos, neg, alpha=alpha, kernel="softplus").backward()
        g_near, g_far = pos.grad[:, 0].abs().tolist()
        for g, r in ((g_near, 2), (g_far, 31)):  # the weight is W'(r) = r^-α, exactly
            assert g == pytest.approx(r**-alpha * (r - 1) * (1 - 1 / math.e) / 2, rel=1e-4)
        ratios[alpha] = g_far / g_near
    assert list(ratios.values()) == sorted(ratios.values(), reverse=True)  # smaller α -> more to the far positive
    assert ratios[0.0] == pytest.approx(30, rel=1e-4) and ratios[2.0] == pytest.approx(30 * (2 / 31) ** 2, rel=1e-4)


def test_the_lambda_gradient_is_the_weight_at_the_detached_sigmoid_rank_times_the_kernel_rank_gradient() -> None:
    user, pos, neg = scores([0.3, -0.2, 1.0], [[0.1, 0.9, -0.4, 0.2], [0.5, 0.0, 0.3, -1.0], [2.0, 1.5, 0.0, 0.8]])
    alpha, T = 1.5, 0.5
    got = croloss(user, pos, neg, alpha=alpha, kernel="softplus", temperature=T, lambda_method=True)
    grads = torch.autograd.grad(got, (pos, neg))
    # the value is the plain loss
    plain = croloss(user, pos, neg, alpha=alpha, kernel="softplus", temperature=T)
    torch.testing.assert_close(got, plain)
    # the gradient: mean_b r̂_b^-α · ∂r_b/∂θ, r̂ with the sigmoid kernel (detached), r with softplus
    x = (neg[..., 0] - pos) / T  # [B, N]
    r_hat = (1 + torch.sigmoid(x).sum(1)).detach()
    r = 1 + torch.nn.functional.softplus(x).sum(1)
    expected = torch.autograd.grad((r_hat**-alpha * r).mean(), (pos, neg))
    for g, e in zip(grads, expected, strict=True):
        torch.testing.assert_close(g, e)
    # and it is not the plain gradient W'(r)·∂r, nor the gradient of the sigmoid-rank loss
    for other in (plain, croloss(user, pos, neg, alpha=alpha, kernel="sigmoid", temperature=T)):
        assert not torch.allclose(torch.autograd.grad(other, pos)[0], grads[0], rtol=1e-3)
    # with the same kernel for both roles, the Lambda gradient is the plain one
    same = croloss(user, pos, neg, alpha=alpha, kernel="sigmoid", temperature=T, lambda_method=True)
    sigmoid = croloss(user, pos, neg, alpha=alpha, kernel="sigmoid", temperature=T)
    torch.testing.assert_close(torch.autograd.grad(same, neg)[0], torch.autograd.grad(sigmoid, neg)[0])


@pytest.mark.parametrize("kernel", ["sigmoid", "softplus", "exp", "hinge"])
def test_accidental_hits_and_in_batch_self_pairs_never_count_in_the_rank(kernel: str) -> None:
    user, pos, neg = scores([0.0, 1.0], [[5.0, -1.0, 0.5], [0.0, 3.0, 2.0]])
    hit = torch.tensor([[7, 8, 9], [2, 8, 2]])  # row 1's columns 0 and 2 are its own item 2
    got = croloss(user, pos, neg, alpha=0.5, kernel=kernel, positive_ids=torch.tensor([1, 2]), negative_ids=hit)
    got.backward()
    assert float(neg.grad[1, 0]) == 0 and float(neg.grad[1, 2]) == 0 and float(neg.grad[1, 1]) != 0
    row0 = croloss(*scores([0.0], [[5.0, -1.0, 0.5]]), alpha=0.5, kernel=kernel)
    row1 = croloss(*scores([1.0], [[3.0]]), alpha=0.5, kernel=kernel)  # only the candidate that is no hit
    assert got.item() == pytest.approx((row0.item() + row1.item()) / 2, rel=1e-5)
    # in-batch: each row ranks against the other rows' positives; a duplicate of its own item is not a negative
    user, positive = torch.ones(3, 1), torch.tensor([[0.0], [2.0], [0.0]])
    got = croloss(user, positive, alpha=0.5, kernel=kernel, positive_ids=torch.tensor([4, 5, 4]))
    row = croloss(*scores([0.0], [[2.0]]), alpha=0.5, kernel=kernel)  # rows 0 and 2: only row 1's item counts
    row_1 = croloss(*scores([2.0], [[0.0, 0.0]]), alpha=0.5, kernel=kernel)
    assert got.item() == pytest.approx((2 * row.item() + row_1.item()) / 3, rel=1e-5)


def test_rank_scale_with_log_weighting_is_a_uniform_log_q_on_the_negatives(vectors) -> None:
    user, positive, negatives = vectors
    got = croloss(user, positive, negatives, alpha=1.0, kernel="exp", rank_scale=50.0)
    expected = sampled_softmax_loss(user, positive, negatives, negative_log_q=torch.full((N,), -math.log(50.0)))
    torch.testing.assert_close(got, expected)


def test_croloss_is_finite_for_far_apart_scores() -> None:
    """Every kernel and α, except exp with α < 1 or the Lambda gradient, whose r really is beyond float range here
    (e^400): the rank is computed in log space."""
    for kernel in ("sigmoid", "softplus", "exp", "hinge"):
        for alpha in (0.0, 1.0, 2.0) if kernel != "exp" else (1.0, 2.0):
            user, pos, neg = scores([-200.0, 200.0], [[200.0, 0.0], [-200.0, 0.0]])
            lam = alpha > 1 and kernel != "exp"
            loss = croloss(user, pos, neg, alpha=alpha, kernel=kernel, temperature=1.0, lambda_method=lam)
            loss.backward()
            assert torch.isfinite(loss) and torch.isfinite(pos.grad).all(), (kernel, alpha)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": -0.5}, r"croloss alpha must be a float >= 0 .*Got -0\.5 instead\."),
        ({"alpha": True}, r"croloss alpha must be a float >= 0"),
        ({"kernel": "gauss"}, r"croloss kernel must be one of sigmoid, softplus, exp, hinge\. Got 'gauss' instead\."),
        ({"lambda_kernel": "step"}, r"croloss lambda_kernel must be one of .* Got 'step' instead\."),
        ({"lambda_method": "yes"}, r"croloss lambda_method must be a bool\. Got 'yes' instead\."),
        ({"temperature": 0.0}, r"croloss temperature must be a positive float\. Got 0\.0 instead\."),
        ({"rank_scale": -1.0}, r"croloss rank_scale must be a positive float\. Got -1\.0 instead\."),
        ({"negatives": torch.ones(5, 4, 2)}, r"croloss negatives must have shape \[5, 4, 3\]\. Got \[5, 4, 2\]"),
        ({"negative_ids": torch.ones(5, dtype=torch.long)}, r"croloss with in-batch negatives .* takes positive_ids"),
    ],
)
def test_bad_croloss_arguments_are_named(kwargs: dict, match: str) -> None:
    args = {"user": torch.ones(5, 3), "positive": torch.ones(5, 3), **kwargs}
    with pytest.raises(ValueError, match=match):
        croloss(**args)
