"""Losses beyond the loop's BCE, for two-tower (retrieval / pre-ranking) models that rank many candidates per user.

Every loss here scores one positive and a set of candidates (negatives) per row, s = <user, item> / temperature
- log Q(item), and differs only in how it turns the positive's standing among the candidates into a loss:

- `sampled_softmax_loss`: softmax cross-entropy of the positive against the candidates,
      loss_b = -log( exp(s_b⁺) / (exp(s_b⁺) + Σ_j exp(s_bj)) ),
  the sampled approximation of the full softmax over the catalogue (Jean et al., ACL 2015; Yi et al., RecSys 2019).
- `bpr_loss`: the pairwise logistic loss of BPR (Rendle et al., UAI 2009), -log σ(s_b⁺ - s_bj), averaged over
  every (row, candidate) pair: each pair on its own, blind to where the positive ranks overall.
- `croloss`: CROLoss, the Customizable Recall@N Optimization Loss (Tang et al., CIKM 2022,
  https://arxiv.org/abs/2208.02971), a smoothed Σ_N w(N)·(1 - Recall@N) whose weighting w picks the retrieval sizes
  N it cares about. Sampled softmax and BPR are two of its special cases (`croloss`'s docstring).

Negatives come in three layouts: per row [B, N, D], shared by every row [N, D] (e.g. all targets of a batch), or
None = in-batch (row b's negatives are the other rows' positives). Two standard corrections are optional:
- accidental hits: a negative with the row's own positive id is dropped (a popular item is often sampled as a
  negative for a user who clicked it; scoring it as a negative would push the positive down);
- logQ (Yi et al., RecSys 2019): candidates drawn with probability Q (e.g. by popularity) get log Q subtracted from
  their logit, so popular items are not over-penalised; in-batch negatives are drawn with the positives' frequency.

Shapes: B users (rows), N negatives per row (C candidates: N, or B in-batch), D embedding dim.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["CROLOSS_KERNELS", "bpr_loss", "croloss", "sampled_softmax_loss"]

CROLOSS_KERNELS = ("sigmoid", "softplus", "exp", "hinge")


def _check_shape(owner: str, name: str, value: Tensor | None, allowed: list[list[int]]) -> None:
    if value is not None and list(value.shape) not in allowed:
        expected = " or ".join(str(a) for a in allowed)
        raise ValueError(f"{owner} {name} must have shape {expected}. Got {list(value.shape)} instead.")


def _positive_float(owner: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"{owner} {name} must be a positive float. Got {value!r} instead.")
    return float(value)


def _candidate_logits(
    owner: str,
    user: Tensor,
    positive: Tensor,
    negatives: Tensor | None,
    temperature: float,
    positive_ids: Tensor | None,
    negative_ids: Tensor | None,
    positive_log_q: Tensor | None,
    negative_log_q: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The logits every loss here starts from, checked: the positive's [B, 1], the candidates' [B, C], and which
    candidates count [B, C] bool (False: the row's own positive in-batch, or an accidental hit)."""
    if user.dim() != 2 or list(positive.shape) != list(user.shape):
        raise ValueError(
            f"{owner} needs user [B, D] and positive of the same shape. "
            f"Got user {list(user.shape)}, positive {list(positive.shape)} instead."
        )
    _positive_float(owner, "temperature", temperature)
    B, D = user.shape
    _check_shape(owner, "positive_ids", positive_ids, [[B]])
    _check_shape(owner, "positive_log_q", positive_log_q, [[B]])
    rows = torch.arange(B, device=user.device)  # [B]
    if negatives is None:
        if negative_ids is not None or negative_log_q is not None:
            raise ValueError(
                f"{owner} with in-batch negatives (negatives=None) takes positive_ids and positive_log_q only: the "
                "negatives are the other rows' positives. Got negative_ids or negative_log_q."
            )
        logits = user @ positive.T / temperature  # [B, B], column j scores row j's positive
        if positive_log_q is not None:
            logits = logits - positive_log_q  # [B, B], every column corrected by its item's log Q
        valid = rows.unsqueeze(1) != rows  # [B, B], a row's own positive is not its negative
        if positive_ids is not None:
            valid = valid & (positive_ids.unsqueeze(1) != positive_ids.unsqueeze(0))  # [B, B]
        return logits.diagonal().unsqueeze(1), logits, valid  # [B, 1], [B, B], [B, B]
    if negatives.dim() == 2:
        _check_shape(owner, "negatives", negatives, [[negatives.shape[0], D]])
        negative_logits = user @ negatives.T  # [B, N], shared negatives
    else:
        _check_shape(owner, "negatives", negatives, [[B, negatives.shape[1], D]])
        negative_logits = torch.einsum("bd,bnd->bn", user, negatives)  # [B, N]
    N = negative_logits.shape[1]
    _check_shape(owner, "negative_ids", negative_ids, [[B, N], [N]])
    _check_shape(owner, "negative_log_q", negative_log_q, [[B, N], [N]])
    positive_logits = (user * positive).sum(-1, keepdim=True) / temperature  # [B, 1]
    negative_logits = negative_logits / temperature  # [B, N]
    if positive_log_q is not None:
        positive_logits = positive_logits - positive_log_q.unsqueeze(1)  # [B, 1]
    if negative_log_q is not None:
        negative_logits = negative_logits - negative_log_q  # [B, N]
    valid = torch.ones_like(negative_logits, dtype=torch.bool)  # [B, N]
    if negative_ids is not None:
        if positive_ids is None:
            raise ValueError(f"{owner} needs positive_ids with negative_ids, to find accidental hits.")
        valid = negative_ids != positive_ids.unsqueeze(1)  # [B, N]
    return positive_logits, negative_logits, valid


def sampled_softmax_loss(
    user: Tensor,
    positive: Tensor,
    negatives: Tensor | None = None,
    *,
    temperature: float = 1.0,
    positive_ids: Tensor | None = None,
    negative_ids: Tensor | None = None,
    positive_log_q: Tensor | None = None,
    negative_log_q: Tensor | None = None,
) -> Tensor:
    """Mean softmax cross-entropy of each row's positive against its sampled (or in-batch) negatives.

    We chose it as TD-SASRec's first ranking loss over BPR and sampled BCE because a pre-ranker orders thousands of
    candidates per request: the softmax trains the positive against all sampled negatives at once, where BPR sees one
    pair at a time and BCE treats every candidate as an independent coin.

    Args:
        user: [B, D] user vectors.
        positive: [B, D] embedding of each row's positive item.
        negatives: [B, N, D] per-row negatives, [N, D] negatives shared by every row, or None for in-batch
            negatives (row b scores every row's positive; its own is the label).
        temperature: logits are <user, item> / temperature, > 0.
        positive_ids: [B] int item id of each positive; with `negative_ids` (or in-batch) a negative with the same
            id as the row's positive is dropped (accidental hit).
        negative_ids: [B, N] or [N] item ids of the negatives (not used in-batch, where `positive_ids` serve).
        positive_log_q: [B] log-probability that each positive item is sampled; subtracted from its logit. In-batch,
            it also corrects the column where that positive serves as another row's negative.
        negative_log_q: [B, N] or [N] log-probability of each negative (not used in-batch).

    Returns:
        The scalar mean loss over the B rows.

    Example:
        >>> u, p = torch.eye(2), torch.eye(2)
        >>> round(sampled_softmax_loss(u, p).item(), 4)  # in-batch: logits [[1, 0], [0, 1]]
        0.3133
    """
    owner = "sampled_softmax_loss"
    s_pos, s_neg, valid = _candidate_logits(
        owner, user, positive, negatives, temperature, positive_ids, negative_ids, positive_log_q, negative_log_q
    )
    logits = torch.cat([s_pos, s_neg.masked_fill(~valid, float("-inf"))], dim=1)  # [B, 1 + C], positive first
    return (torch.logsumexp(logits, dim=1) - s_pos.squeeze(1)).mean()


def bpr_loss(
    user: Tensor,
    positive: Tensor,
    negatives: Tensor | None = None,
    *,
    temperature: float = 1.0,
    positive_ids: Tensor | None = None,
    negative_ids: Tensor | None = None,
    positive_log_q: Tensor | None = None,
    negative_log_q: Tensor | None = None,
) -> Tensor:
    """BPR: the mean over every (row, negative) pair of -log σ(s⁺ - s⁻) = softplus(s⁻ - s⁺).

    Args: as `sampled_softmax_loss` (layouts, accidental hits, log Q); a dropped accidental hit is no pair.

    Returns:
        The scalar mean over the valid pairs (0 with a gradient of 0 when no pair is valid).

    Example:
        >>> round(bpr_loss(torch.eye(2), torch.eye(2)).item(), 4)  # in-batch pairs: softplus(0 - 1) twice
        0.3133
    """
    s_pos, s_neg, valid = _candidate_logits(
        "bpr_loss", user, positive, negatives, temperature, positive_ids, negative_ids, positive_log_q, negative_log_q
    )
    pairs = F.softplus(s_neg - s_pos)  # [B, C], -log σ(s⁺ - s⁻)
    return torch.where(valid, pairs, 0.0).sum() / valid.sum().clamp(min=1)


def _kernel(name: str, x: Tensor) -> Tensor:
    """The smoothed step H(x) ≈ 1(x > 0) of a candidate scored x = s_j - s⁺ (temperature units) above the positive."""
    if name == "sigmoid":
        return torch.sigmoid(x)
    if name == "softplus":
        return F.softplus(x)
    if name == "exp":
        return torch.exp(x)
    return F.relu(1.0 + x)  # hinge: an upper bound of the step, 0 once the positive leads by a margin of 1


def _log_rank(name: str, x: Tensor, valid: Tensor, rank_scale: float) -> Tensor:
    """log r [B] of the smoothed rank r = 1 + R·Σ_j K(x_j) over the valid candidates; the exp kernel in log space
    (logsumexp), so a candidate far above the positive does not overflow."""
    if name == "exp":
        terms = x.masked_fill(~valid, float("-inf")) + math.log(rank_scale)  # [B, C]
        return torch.logsumexp(F.pad(terms, (1, 0), value=0.0), dim=1)  # [B], the leading 0 is the positive's 1
    return torch.log1p(rank_scale * torch.where(valid, _kernel(name, x), 0.0).sum(1))  # [B]


def _cumulative_weight(log_rank: Tensor, alpha: float) -> Tensor:
    """W(r) = ∫_1^r t^-α dt from log r: log r at α = 1, (r^(1-α) - 1) / (1 - α) otherwise; W(1) = 0, W'(r) = r^-α."""
    if alpha == 1.0:
        return log_rank
    return torch.expm1((1.0 - alpha) * log_rank) / (1.0 - alpha)


def croloss(
    user: Tensor,
    positive: Tensor,
    negatives: Tensor | None = None,
    *,
    alpha: float = 1.0,
    kernel: str = "softplus",
    temperature: float = 1.0,
    lambda_method: bool = False,
    lambda_kernel: str = "sigmoid",
    rank_scale: float = 1.0,
    positive_ids: Tensor | None = None,
    negative_ids: Tensor | None = None,
    positive_log_q: Tensor | None = None,
    negative_log_q: Tensor | None = None,
) -> Tensor:
    """CROLoss: a smoothed Σ_N w(N)·(1 - Recall@N) with w(N) ∝ N^-α, averaged over rows (Tang et al., CIKM 2022).

    **Derivation.** A positive p is recalled at N when its rank r = 1 + Σ_j 1(s_j > s_p) over the candidates j is
    <= N, so for any weights w(N) >= 0 over the retrieval sizes,
        Σ_{N>=1} w(N)·(1 - Recall@N) = Σ_{N<r} w(N) = W(r),   W the cumulative weight (W(1) = 0).
    We take w(N) = ∫_N^{N+1} t^-α dt (≈ N^-α), so that W(r) = ∫_1^r t^-α dt exactly at integer ranks:
        W(r) = log r (α = 1),   W(r) = (r^(1-α) - 1) / (1 - α) (α ≠ 1),   W'(r) = r^-α.
    α customizes N: a large α (> 1) puts the weight on small N (the head: a positive already near the top still gets
    most of the gradient, one ranked far down little), a small α (< 1) on large N (the tail: the gradient per rank
    decays slowly, so positives far down are pulled up, useful when the stage keeps many candidates), α = 0 weights
    every N alike. Training needs a differentiable rank, so the step is smoothed with a kernel K of
    x_j = (s_j - s_p) / temperature: r = 1 + R·Σ_j K(x_j), with K one of
        sigmoid σ(x) (bounded, the closest to the step), softplus log(1 + e^x), exp e^x, hinge max(0, 1 + x),
    and R = `rank_scale` the catalogue items each candidate stands for (the sampled count estimates the catalogue's).
    The rank is computed as log r (the exp kernel by logsumexp), so α >= 1 stays finite however far apart the scores
    are; exp with α < 1 (and its Lambda gradient) grows like e^x and leaves float range once a candidate leads the
    positive by about 88·temperature.

    **Special cases** (R = 1, s = <user, item> / temperature - log Q):
    - α = 1, exp kernel: W = log(1 + Σ_j e^(s_j - s_p)) = -log softmax(s)_p, the sampled softmax cross-entropy;
    - α = 0, softplus kernel: W = r - 1 = Σ_j -log σ(s_p - s_j), the sum of the row's BPR losses;
    - α = 0, hinge kernel: the sum of pairwise hinge (triplet) losses with margin 1.

    **Lambda method** (`lambda_method=True`, the paper's gradient-based variant, after LambdaRank): the gradient is
    defined, not derived: ∂loss/∂θ = W'(r̂)·∂r_K/∂θ with r_K the rank smoothed by `kernel` and r̂ the rank
    estimated by `lambda_kernel` (default sigmoid, the better rank estimate), detached. It decouples the two roles a
    kernel plays: how well it estimates the rank that sets a positive's weight, and how its gradient spreads over the
    candidates. The value returned is still W(r_K) (what is logged), only its gradient changes; with
    `lambda_kernel == kernel` the gradient is the plain one.

    Args:
        user, positive, negatives, positive_ids, negative_ids, positive_log_q, negative_log_q: as
            `sampled_softmax_loss` (three layouts; accidental hits and in-batch self-pairs never count in the rank).
        alpha: α >= 0 of the weighting w(N) ∝ N^-α: 1 = log (softmax-like), 0 = uniform (pairwise), > 1 small N,
            < 1 large N.
        kernel: the smoothed step K: sigmoid, softplus, exp or hinge.
        temperature: x = (s_j - s_p) / temperature, > 0 (the paper's boost ratio is 1 / temperature).
        lambda_method: use the Lambda gradient above.
        lambda_kernel: the kernel of the detached rank estimate r̂ under the Lambda method.
        rank_scale: R > 0, catalogue items per candidate (1: rank among the candidates themselves).

    Returns:
        The scalar mean over the B rows of W(r_b).

    Example:
        >>> u, p = torch.eye(2), torch.eye(2)
        >>> round(croloss(u, p, alpha=1.0, kernel="exp").item(), 4)  # = sampled_softmax_loss(u, p)
        0.3133
    """
    owner = "croloss"
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 <= alpha < math.inf:
        raise ValueError(
            f"{owner} alpha must be a float >= 0 (w(N) ∝ N^-alpha; 0 weights every N alike). Got {alpha!r} instead."
        )
    for name, value in (("kernel", kernel), ("lambda_kernel", lambda_kernel)):
        if value not in CROLOSS_KERNELS:
            raise ValueError(f"{owner} {name} must be one of {', '.join(CROLOSS_KERNELS)}. Got {value!r} instead.")
    if not isinstance(lambda_method, bool):
        raise ValueError(f"{owner} lambda_method must be a bool. Got {lambda_method!r} instead.")
    R = _positive_float(owner, "rank_scale", rank_scale)
    s_pos, s_neg, valid = _candidate_logits(
        owner, user, positive, negatives, temperature, positive_ids, negative_ids, positive_log_q, negative_log_q
    )
    x = s_neg - s_pos  # [B, C], how far each candidate scores above the positive
    log_r = _log_rank(kernel, x, valid, R)  # [B]
    loss = _cumulative_weight(log_r, float(alpha))  # [B], W(r_K)
    if lambda_method:
        with torch.no_grad():  # W'(r̂)·r_K = r̂^-α·r_K, the factor of ∂log r_K (∂r_K = r_K·∂log r_K), in log space
            factor = torch.exp(log_r - alpha * _log_rank(lambda_kernel, x, valid, R))  # [B]
        loss = loss.detach() + factor * (log_r - log_r.detach())  # [B]: the value W(r_K), the gradient W'(r̂)·∂r_K
    return loss.mean()
