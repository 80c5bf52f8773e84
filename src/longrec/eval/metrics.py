"""Evaluation metrics as pure numpy functions: no torch, no I/O, no state.

CTR metrics: `auc` (global, tie-aware), `gauc` (impression-weighted mean of per-group AUC over the groups
that hold both classes; grouped by user it is the GAUC of the DIN/TIN papers, grouped by target category it is what
DARE's code calls GAUC), `logloss_from_logits` (pure BCE) and `compute_metrics`, which bundles them per split and per
advertising goal. Retrieval metrics for the search stage: `recall_at_k` and `ndcg_at_k`. Pre-ranking metrics (one
positive against a candidate pool, `longrec.eval.retrieval`): `pool_rank` (the tie rule) and `rank_metrics`
(Recall@N and NDCG@N from those ranks).

Conventions: N rows; labels are 0/1; an undefined metric (AUC of a single class, GAUC with no group holding both
classes) is `nan`, never an exception, so one degenerate goal or split cannot abort an evaluation. Malformed input
(length mismatch, non-binary labels, NaN scores, empty arrays) raises `ValueError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "auc",
    "compute_metrics",
    "gauc",
    "logloss",
    "logloss_from_logits",
    "ndcg_at_k",
    "pool_rank",
    "rank_metrics",
    "recall_at_k",
]


def _labels(labels: ArrayLike) -> NDArray[np.float64]:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be a 1-D array [N]. Got shape {list(y.shape)} instead.")
    if y.size == 0:
        raise ValueError("labels is empty; there is nothing to evaluate.")
    if y.dtype.kind not in "biuf":
        raise ValueError(f"labels must be numeric 0/1 values. Got dtype {y.dtype} instead.")
    bad = (y != 0) & (y != 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"labels must be 0 or 1. Got labels[{i}] = {y[i].item()!r} instead.")
    return y.astype(np.float64)


def _values(values: ArrayLike, name: str, n: int) -> NDArray[np.float64]:
    x = np.asarray(values, dtype=np.float64)
    if x.shape != (n,):
        raise ValueError(f"{name} must have the shape of labels [N] = [{n}]. Got {list(x.shape)} instead.")
    if np.isnan(x).any():
        i = int(np.flatnonzero(np.isnan(x))[0])
        raise ValueError(f"{name}[{i}] is NaN; did the model diverge? Every {name} value must be a number.")
    return x


def _groups(groups: ArrayLike, name: str, n: int) -> NDArray[Any]:
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"{name} must have the shape of labels [N] = [{n}]. Got {list(g.shape)} instead.")
    return g


def _auc_from_ranks(rank_sum_pos: Any, num_pos: Any, num: Any) -> Any:
    """Mann-Whitney U / (P·N): the share of (positive, negative) pairs ordered correctly, a tie counting one half."""
    num_neg = num - num_pos
    return (rank_sum_pos - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg)


def auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve, from average ranks (ties count 1/2), O(N log N).

    Args:
        labels: [N] 0/1.
        scores: [N] any monotone score (logits or probabilities give the same AUC).

    Returns:
        The AUC, or nan when labels hold a single class (no positive-negative pair to order).
    """
    y = _labels(labels)
    s = _values(scores, "scores", y.size)
    num_pos = y.sum()
    if num_pos == 0 or num_pos == y.size:
        return float("nan")
    # One group holding every row: the per-group machinery gives the global ranks.
    ranks = _ranks_within_groups(s, None)[1]  # [N], in input order
    return float(_auc_from_ranks((ranks * y).sum(), num_pos, y.size))


def _ranks_within_groups(scores: NDArray[np.float64], groups: NDArray[Any] | None) -> tuple[NDArray[np.int64], Any]:
    """Dense group index [N] and the 1-based average rank of each score within its group [N], in input order.

    `groups=None` is one group holding every row.
    """
    n = scores.size
    order = np.argsort(scores, kind="stable")  # [N] by score
    if groups is None:
        new_group = np.zeros(n, dtype=bool)
        new_group[0] = True
    else:
        order = order[np.argsort(groups[order], kind="stable")]  # [N] by group, then by score (= np.lexsort, faster)
        g = groups[order]
        new_group = np.r_[True, g[1:] != g[:-1]]  # [N] first row of each group
    s = scores[order]
    new_run = new_group | np.r_[True, s[1:] != s[:-1]]  # [N] first row of each run of tied scores
    group_id = np.cumsum(new_group) - 1  # [N] in sorted order
    rank = np.arange(n) - np.flatnonzero(new_group)[group_id] + 1  # [N] 1-based rank inside the group
    run_start = np.flatnonzero(new_run)  # [R]
    run_end = np.r_[run_start[1:], n] - 1  # [R] last row of each run (runs never cross groups)
    average = (rank[run_start] + rank[run_end]) / 2  # [R] tied scores share the mean of their ranks
    ranks = np.empty(n)
    ranks[order] = average[np.cumsum(new_run) - 1]
    group_index = np.empty(n, dtype=np.int64)
    group_index[order] = group_id
    return group_index, ranks


def gauc(labels: ArrayLike, scores: ArrayLike, groups: ArrayLike) -> float:
    """Group AUC: per-group AUC averaged with weights = impressions (rows) per group.

    Groups whose rows hold a single class have no AUC and are left out of both the sum and the weights. Vectorised
    (one sort, no Python loop over groups): 10^6 rows in 10^5 groups take well under a second.

    Args:
        labels: [N] 0/1.
        scores: [N] model scores.
        groups: [N] group keys (user ids for GAUC by user, target category ids for GAUC by category); any sortable
            dtype.

    Returns:
        Σ_g n_g·AUC_g / Σ_g n_g over groups g with both classes, or nan when no group has both.

    Example:
        >>> gauc([1, 0, 1, 0, 1, 1], [0.9, 0.1, 0.2, 0.8, 0.5, 0.4], [7, 7, 8, 8, 9, 9])
        0.5
    """
    y = _labels(labels)
    s = _values(scores, "scores", y.size)
    group_index, ranks = _ranks_within_groups(s, _groups(groups, "groups", y.size))
    num = np.bincount(group_index).astype(np.float64)  # [G] impressions per group
    num_pos = np.bincount(group_index, weights=y)  # [G]
    rank_sum_pos = np.bincount(group_index, weights=ranks * y)  # [G]
    both = (num_pos > 0) & (num_pos < num)  # [G] groups with an AUC
    if not both.any():
        return float("nan")
    per_group = _auc_from_ranks(rank_sum_pos[both], num_pos[both], num[both])  # [G']
    return float((num[both] * per_group).sum() / num[both].sum())


def logloss_from_logits(labels: ArrayLike, logits: ArrayLike) -> float:
    """Mean binary cross-entropy computed from logits, stable for any finite logit.

    Args:
        labels: [N] 0/1.
        logits: [N] finite real numbers (the model's raw outputs, before the sigmoid).

    Returns:
        mean(softplus(x) - y·x), i.e. -mean(y·log σ(x) + (1 - y)·log(1 - σ(x))).
    """
    y = _labels(labels)
    x = _values(logits, "logits", y.size)
    if not np.isfinite(x).all():
        i = int(np.flatnonzero(~np.isfinite(x))[0])
        raise ValueError(f"logits[{i}] = {x[i]} is not finite; logloss needs finite logits.")
    return float((np.logaddexp(0.0, x) - y * x).mean())


def logloss(labels: ArrayLike, probs: ArrayLike, eps: float = 1e-15) -> float:
    """Mean binary cross-entropy from probabilities clipped to [eps, 1 - eps] (prefer `logloss_from_logits`).

    Args:
        labels: [N] 0/1.
        probs: [N] predicted click probabilities in [0, 1].
        eps: clipping bound, so a confident mistake costs -log(eps) instead of infinity.

    Returns:
        -mean(y·log p + (1 - y)·log(1 - p)).
    """
    y = _labels(labels)
    p = _values(probs, "probs", y.size)
    outside = (p < 0) | (p > 1)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise ValueError(
            f"probs must lie in [0, 1]. Got probs[{i}] = {p[i]} instead; pass logits to logloss_from_logits."
        )
    if not 0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5). Got {eps} instead.")
    p = np.clip(p, eps, 1 - eps)
    return float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).mean())


def _summary(
    y: NDArray[np.float64], x: NDArray[np.float64], users: NDArray[Any], cats: NDArray[Any] | None
) -> dict[str, Any]:
    out: dict[str, float | int] = {
        "auc": auc(y, x),
        "gauc": gauc(y, x, users),
        "logloss": logloss_from_logits(y, x),
        "count": int(y.size),
        "positive_rate": float(y.mean()),
    }
    if cats is not None:
        out["gauc_category"] = gauc(y, x, cats)
    return out


def compute_metrics(
    labels: ArrayLike,
    logits: ArrayLike,
    users: ArrayLike,
    categories: ArrayLike | None = None,
    goals: ArrayLike | None = None,
    scenes: ArrayLike | None = None,
) -> dict[str, Any]:
    """All CTR metrics of one evaluation split, overall, per advertising goal and per scene (scenario).

    Args:
        labels: [N] 0/1, every evaluated sample (no dropped partial batch).
        logits: [N] raw model outputs.
        users: [N] user ids; `gauc` groups by them.
        categories: [N] target category ids at the level to group by (e.g. `target_category[:, -1]`), or None.
        goals: [N] advertising goal of each sample, or None.
        scenes: [N] scene (the request's app surface) of each sample, or None.

    Returns:
        {"auc", "gauc", "logloss", "count", "positive_rate"} plus "gauc_category" when categories are given, and
        "per_goal": {goal: {same keys}} when goals are given (goal keys are Python scalars, in sorted order), and
        "per_scene": {scene: {same keys}} likewise when scenes are given.
        Undefined AUC/GAUC values are nan (e.g. a goal whose samples are all negative).

    Example:
        >>> m = compute_metrics([1, 0, 1, 0], [2.0, -1.0, 0.5, 1.0], users=[1, 1, 2, 2], goals=[0, 0, 1, 1])
        >>> m["auc"], m["gauc"], m["per_goal"][1]["auc"]
        (0.75, 0.5, 0.0)
    """
    y = _labels(labels)
    x = _values(logits, "logits", y.size)
    u = _groups(users, "users", y.size)
    c = None if categories is None else _groups(categories, "categories", y.size)
    out: dict[str, Any] = _summary(y, x, u, c)
    if goals is not None:
        g = _groups(goals, "goals", y.size)
        out["per_goal"] = {
            goal.item(): _summary(y[m], x[m], u[m], None if c is None else c[m])
            for goal in np.unique(g)
            for m in [g == goal]
        }
    if scenes is not None:
        z = _groups(scenes, "scenes", y.size)
        out["per_scene"] = {
            scene.item(): _summary(y[m], x[m], u[m], None if c is None else c[m])
            for scene in np.unique(z)
            for m in [z == scene]
        }
    return out


def _padded_ids(ids: ArrayLike | Sequence[Iterable[int]], name: str) -> NDArray[np.int64]:
    """[N, R] int64 with -1 padding, from an array or from N iterables of ids (ragged sets)."""
    if isinstance(ids, Sequence) and not isinstance(ids, str) and all(isinstance(r, Iterable) for r in ids):
        rows = [list(r) for r in ids if isinstance(r, Iterable)]
        out = np.full((len(rows), max((len(r) for r in rows), default=0)), -1, dtype=np.int64)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r
    else:
        out = np.asarray(ids)
    if out.ndim != 2 or out.dtype.kind not in "iu":
        raise ValueError(
            f"{name} must be a 2-D int array [N, *] (negative = empty). Got {out.dtype} {list(out.shape)}."
        )
    return out.astype(np.int64)


def _retrieval_gains(
    retrieved: ArrayLike,
    relevant: ArrayLike | Sequence[Iterable[int]],
    k: int | None,
    gains: ArrayLike | None,
) -> tuple[NDArray[np.float64], NDArray[np.float64], int]:
    """Gain of each of the first k retrieved slots [N, k] (0 for a miss or a repeat) and relevant gains [N, R]."""
    got = _padded_ids(retrieved, "retrieved")
    rel = _padded_ids(relevant, "relevant")
    N, K = got.shape
    if rel.shape[0] != N:
        raise ValueError(f"relevant must have one row per retrieved row (N = {N}). Got {rel.shape[0]} rows instead.")
    k = K if k is None else k
    if not 1 <= k <= K:
        raise ValueError(f"k must be in [1, K] = [1, {K}]. Got k={k} instead.")
    real = rel >= 0  # [N, R]
    ordered = np.sort(np.where(real, rel, -1), axis=1)  # [N, R]
    repeated = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)  # [N, R-1]
    if repeated.any():
        i, j = np.argwhere(repeated)[0]
        raise ValueError(f"relevant[{i}] lists id {ordered[i, j]} twice; each row must be a set.")
    g = real.astype(np.float64) if gains is None else np.asarray(gains, dtype=np.float64)
    if g.shape != rel.shape:
        raise ValueError(f"gains must have the shape of relevant {list(rel.shape)}. Got {list(g.shape)} instead.")
    if (g < 0).any() or np.isnan(g).any():
        raise ValueError("gains must be non-negative numbers.")
    g = np.where(real, g, 0.0)  # [N, R]
    top = got[:, :k]  # [N, k]
    match = (top[:, :, None] == rel[:, None, :]) & real[:, None, :] & (top[:, :, None] >= 0)  # [N, k, R]
    # A retriever that returns the same id twice gets credit once: only its first slot counts.
    earlier = np.tril(np.ones((k, k), dtype=bool), -1)  # [k, k] j < i
    repeat = ((top[:, :, None] == top[:, None, :]) & earlier).any(-1)  # [N, k]
    slot_gain = (match * g[:, None, :]).sum(-1) * ~repeat  # [N, k]
    return slot_gain, g, k


def recall_at_k(
    retrieved: ArrayLike,
    relevant: ArrayLike | Sequence[Iterable[int]],
    k: int | None = None,
) -> float:
    """Mean over rows of |top-k retrieved ∩ relevant| / |relevant|.

    Args:
        retrieved: [N, K] int ids (search positions into L, or item ids), best first; a negative id marks an empty
            slot (fewer than K found).
        relevant: [N, R] int ids of the same kind with negative padding, or N iterables of ids (ragged sets).
        k: cut-off, 1 <= k <= K; default K.

    Returns:
        The mean recall over rows with at least one relevant id (rows without any are skipped), or nan if none has.

    Example:
        >>> recall_at_k([[3, 5, -1], [0, 1, 2]], [{5, 9}, {2}], k=2)
        0.25
    """
    slot_gain, g, _ = _retrieval_gains(retrieved, relevant, k, None)
    num_relevant = g.sum(1)  # [N]
    rows = num_relevant > 0
    if not rows.any():
        return float("nan")
    return float((slot_gain[rows].sum(1) / num_relevant[rows]).mean())


def ndcg_at_k(
    retrieved: ArrayLike,
    relevant: ArrayLike | Sequence[Iterable[int]],
    k: int | None = None,
    gains: ArrayLike | None = None,
) -> float:
    """Mean normalised discounted cumulative gain of the first k retrieved ids.

    DCG = Σ_{i<k} gain(retrieved_i) / log2(i + 2), divided by the DCG of the best possible order of the relevant ids.

    Args:
        retrieved: [N, K] int ids, best first, negative = empty slot.
        relevant: [N, R] int ids with negative padding, or N iterables of ids.
        k: cut-off, 1 <= k <= K; default K.
        gains: [N, R] non-negative gain of each relevant id (e.g. a mutual-information score, to grade a searcher
            against a reference ranking); default 1 for every relevant id (binary relevance).

    Returns:
        The mean NDCG@k over rows with a positive ideal DCG, or nan if no row has one.

    Example:
        >>> round(ndcg_at_k([[7, 3]], [[3, -1]]), 4)  # the one relevant id comes second: 1/log2(3)
        0.6309
    """
    slot_gain, g, k = _retrieval_gains(retrieved, relevant, k, gains)
    discount = 1.0 / np.log2(np.arange(k) + 2.0)  # [k]
    dcg = slot_gain @ discount  # [N]
    best = -np.sort(-g, axis=1)[:, :k]  # [N, min(k, R)] largest gains first
    ideal = best @ discount[: best.shape[1]]  # [N]
    rows = ideal > 0
    if not rows.any():
        return float("nan")
    return float((dcg[rows] / ideal[rows]).mean())


def pool_rank(positive: ArrayLike, pool: ArrayLike, valid: ArrayLike | None = None) -> NDArray[np.int64]:
    """0-based rank of each row's positive among its pool: the number of valid pool candidates scoring >= it.

    Ties are counted against the positive (pessimistic): a candidate with exactly the positive's score ranks ahead
    of it, so the rank does not depend on the candidates' order and a model that scores everything alike ranks every
    positive last (recall 0), never first.

    Args:
        positive: [N] score of each row's positive.
        pool: [N, C] scores of the row's pool candidates.
        valid: [N, C] bool, False for a slot that is not a candidate of that row (the positive's own item when the
            pool holds it, or padding); default all True.

    Returns:
        [N] int64 ranks in [0, C]: 0 = the positive beats every candidate.

    Example:
        >>> pool_rank([0.5, 0.2], [[0.9, 0.5, 0.1], [0.1, 0.0, -1.0]]).tolist()  # the tie 0.5 = 0.5 counts against
        [2, 0]
    """
    s = np.asarray(positive, dtype=np.float64)
    p = np.asarray(pool, dtype=np.float64)
    if s.ndim != 1 or p.ndim != 2 or p.shape[0] != s.shape[0]:
        raise ValueError(
            f"pool_rank needs positive [N] and pool [N, C] with the same N. Got {list(s.shape)} and {list(p.shape)}."
        )
    if np.isnan(s).any() or np.isnan(p).any():
        raise ValueError("pool_rank: a score is NaN; did the model diverge? Every score must be a number.")
    ahead = p >= s[:, None]  # [N, C]
    if valid is not None:
        v = np.asarray(valid, dtype=bool)
        if v.shape != p.shape:
            raise ValueError(f"pool_rank valid must have the shape of pool {list(p.shape)}. Got {list(v.shape)}.")
        ahead &= v
    return ahead.sum(1).astype(np.int64)  # [N]


def rank_metrics(ranks: ArrayLike, ns: Sequence[int]) -> dict[str, float]:
    """Recall@N and NDCG@N of one relevant item per row, from its 0-based rank among the candidates (`pool_rank`).

    With one relevant item, Recall@N is the share of rows whose positive ranks in the top N (rank < N), and NDCG@N
    is the mean of 1 / log2(rank + 2) over the rows where it does (0 elsewhere; the ideal DCG is 1).

    Args:
        ranks: [N] non-negative int ranks.
        ns: cut-offs, each >= 1.

    Returns:
        {"recall@N": ..., "ndcg@N": ...} for every N, in the order given; nan for both when `ranks` is empty.

    Example:
        >>> rank_metrics([0, 1, 5], [1, 2])  # doctest: +ELLIPSIS
        {'recall@1': 0.333..., 'ndcg@1': 0.333..., 'recall@2': 0.666..., 'ndcg@2': 0.543...}
    """
    r = np.asarray(ranks)
    if r.ndim != 1 or (r.size and (r.dtype.kind not in "iu" or r.min() < 0)):
        raise ValueError(f"ranks must be a 1-D array of non-negative ints [N]. Got {r.dtype} {list(r.shape)}.")
    out: dict[str, float] = {}
    for n in ns:
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
            raise ValueError(f"every cut-off N must be a positive int. Got {n!r} instead.")
        hit = r < n  # [N]
        out[f"recall@{n}"] = float(hit.mean()) if r.size else float("nan")
        out[f"ndcg@{n}"] = float(np.where(hit, 1.0 / np.log2(r + 2.0), 0.0).mean()) if r.size else float("nan")
    return out
