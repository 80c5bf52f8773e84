"""Losses beyond the loop's BCE: the sampled softmax that trains two-tower (pre-ranking) models.

`sampled_softmax_loss` is a softmax cross-entropy over one positive and a sample of negative candidates per user:
    loss_b = -log( exp(s_b⁺) / (exp(s_b⁺) + Σ_n exp(s_bn)) ),   s = <user, item> / temperature - log Q(item),
averaged over rows. We chose it over BPR and sampled BCE because a pre-ranker's job is to order thousands of
candidates per request: the softmax trains the score of the positive against all sampled negatives at once (it is the
sampled approximation of the full softmax over the catalogue, Jean et al., ACL 2015; Yi et al., RecSys 2019), where BPR
sees one pair and BCE treats every candidate as an independent coin.

Negatives come in three layouts: per row [B, N, D], shared by every row [N, D] (e.g. all targets of a batch), or
None = in-batch (row b's negatives are the other rows' positives). Two standard corrections are optional:
- accidental hits: a negative with the row's own positive id is dropped (a popular item is often sampled as a
  negative for a user who clicked it; scoring it as a negative would push the positive down);
- logQ (Yi et al., RecSys 2019): candidates drawn with probability Q (e.g. by popularity) get log Q subtracted from
  their logit, so popular items are not over-penalised; in-batch negatives are drawn with the positives' frequency.

Shapes: B users (rows), N negatives per row, D embedding dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["sampled_softmax_loss"]


def _check_shape(name: str, value: Tensor | None, allowed: list[list[int]]) -> None:
    if value is not None and list(value.shape) not in allowed:
        expected = " or ".join(str(a) for a in allowed)
        raise ValueError(f"sampled_softmax_loss {name} must have shape {expected}. Got {list(value.shape)} instead.")


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
    if user.dim() != 2 or list(positive.shape) != list(user.shape):
        raise ValueError(
            f"sampled_softmax_loss needs user [B, D] and positive of the same shape. "
            f"Got user {list(user.shape)}, positive {list(positive.shape)} instead."
        )
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not temperature > 0:
        raise ValueError(f"sampled_softmax_loss temperature must be a positive float. Got {temperature!r} instead.")
    B, D = user.shape
    _check_shape("positive_ids", positive_ids, [[B]])
    _check_shape("positive_log_q", positive_log_q, [[B]])
    rows = torch.arange(B, device=user.device)  # [B]
    if negatives is None:
        if negative_ids is not None or negative_log_q is not None:
            raise ValueError(
                "sampled_softmax_loss with in-batch negatives (negatives=None) takes positive_ids and positive_log_q "
                "only: the negatives are the other rows' positives. Got negative_ids or negative_log_q."
            )
        logits = user @ positive.T / temperature  # [B, B], column j scores row j's positive
        if positive_log_q is not None:
            logits = logits - positive_log_q  # [B, B], every column corrected by its item's log Q
        if positive_ids is not None:
            hit = (positive_ids.unsqueeze(1) == positive_ids.unsqueeze(0)) & (rows.unsqueeze(1) != rows)  # [B, B]
            logits = logits.masked_fill(hit, float("-inf"))  # [B, B]
        return F.cross_entropy(logits, rows)
    if negatives.dim() == 2:
        _check_shape("negatives", negatives, [[negatives.shape[0], D]])
        negative_logits = user @ negatives.T  # [B, N], shared negatives
    else:
        _check_shape("negatives", negatives, [[B, negatives.shape[1], D]])
        negative_logits = torch.einsum("bd,bnd->bn", user, negatives)  # [B, N]
    N = negative_logits.shape[1]
    _check_shape("negative_ids", negative_ids, [[B, N], [N]])
    _check_shape("negative_log_q", negative_log_q, [[B, N], [N]])
    positive_logits = (user * positive).sum(-1, keepdim=True) / temperature  # [B, 1]
    negative_logits = negative_logits / temperature  # [B, N]
    if positive_log_q is not None:
        positive_logits = positive_logits - positive_log_q.unsqueeze(1)  # [B, 1]
    if negative_log_q is not None:
        negative_logits = negative_logits - negative_log_q  # [B, N]
    if negative_ids is not None:
        if positive_ids is None:
            raise ValueError("sampled_softmax_loss needs positive_ids with negative_ids, to find accidental hits.")
        negative_logits = negative_logits.masked_fill(negative_ids == positive_ids.unsqueeze(1), float("-inf"))
    logits = torch.cat([positive_logits, negative_logits], dim=1)  # [B, 1 + N], the positive in column 0
    return F.cross_entropy(logits, torch.zeros_like(rows))
