"""The retrieval → pre-ranking → ranking cascade, end to end: a cheap pre-ranker cuts a candidate pool to its top M,
an expensive ranker orders the M that reach it, and the metric is what the user would see after the ranker.

For each positive sample (label 1) of the split, as `longrec.eval.retrieval` ranks it:

1. **The pool** (`PoolConfig`, the retrieval stage's stand-in): one set of items shared by every positive, the
   positive's own item left out of it when drawn (it is no competitor of itself). A request holds the positive and
   the pool: C' = 1 + |pool \\ {positive}| candidates.
2. **Pre-ranking.** The pre-ranker scores every candidate (its scoring path: `score_candidates` for a
   `CandidateScorer` such as TD-SASRec or its mean-pooled tower, one user at a time through search and `forward` for
   any other model). It keeps its top M. The order is pre-score descending; a pool item with exactly the positive's
   score ranks ahead of the positive (ties against the positive, as `metrics.pool_rank`), and pool items with equal
   scores keep their pool order (ascending id). So the positive survives iff its pre-rank r_pre (pool items scoring
   >= it) is < M, i.e. survival = the pre-ranker's Recall@M, and, when it survives, the pool items that reach the
   ranker with it are the first M - 1 of the pool in that order (the r_pre ahead of it and the M - 1 - r_pre best
   below it).
3. **Ranking.** The ranker scores the M survivors; the positive's end-to-end rank is the number of survivors with a
   ranker score >= its own (ties against it again). A positive the pre-ranker cut is a miss at every K.

Metrics (`cascade_ranks` gives the ranks, `evaluate_cascade` the report):
- end-to-end Recall@K and NDCG@K per M (one relevant item: hit = survived and rank < K, gain 1 / log2(rank + 2));
  the final list holds M items, so Recall@K for K >= M equals the survival rate;
- survival per M (the pre-ranker's Recall@M on this pool);
- the ranker's quality on what reaches it: its Recall@K among the survivors (end-to-end hits / survivors), and,
  with `sample_auc`, its AUC and GAUC (by user) on the split's samples, positive or negative, whose target survives
  the pre-ranker (each sample's target pre-ranked against the pool exactly as a positive is): the samples a ranker
  behind this pre-ranker is actually asked about, with the negatives the pre-ranker found hard;
- the references: the ranker alone on the whole pool (no pre-ranker; the rank `longrec eval --retrieval` gives it,
  and what every M >= C' equals) and the pre-ranker alone as the final ranker, and the ranker's AUC/GAUC on every
  sample of the split;
- compute: candidates the ranker scores per request, min(M, C') with the cascade and C' alone.

**How it is computed.** A candidate's score depends only on (user, candidate): `forward` scores rows independently
and the model contract keeps it pure (no batch statistics in eval mode). So the ranker is scored once on the whole
pool of each positive, which the ranker-alone reference needs anyway, and the result of every M is read off those
scores: sort the pool by pre-score (stable, ties by pool order), count the pool items whose ranker score is >= the
positive's in each prefix (a cumulative sum), and take the prefix of length M - 1. That is the rank a ranker scoring
only the M survivors gives (tests/eval/test_cascade.py checks it against scoring exactly those M), for every M at the
cost of one pass. The scores come from `retrieval.score_pool`, the scoring code of `longrec eval --retrieval`, so the
pre-ranker's survival at M is its Recall@M there. When a pool is wider than one scoring call (more than 65,535 items
batched, 1,023 one user at a time) the positive's score is taken from the call of the first block.

Shapes: N positives (or samples), C pool items, R requests scored together, J cut-offs M.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import track
from torch import nn

from longrec.data.dataset import collate
from longrec.data.store import TrajectoryStore
from longrec.eval.evaluate import predict
from longrec.eval.metrics import compute_metrics, pool_rank, rank_metrics
from longrec.eval.retrieval import PoolConfig, candidate_pool, score_pool, scoring_path
from longrec.models import DATA_SIZE_FIELDS
from longrec.search.config import SearchConfig

__all__ = ["MISS", "CascadeConfig", "cascade_ranks", "check_vocabulary", "evaluate_cascade", "parse_cutoffs"]

MISS = np.iinfo(np.int64).max  # the end-to-end rank of a positive the pre-ranker cut: past every K
CELLS = 2**21  # scores held per model and chunk of requests: R x (1 + C)
SPLITS = ("train", "valid", "test")


def _cutoffs(name: str, values: Any) -> tuple[int, ...]:
    """Distinct positive ints, sorted, or a ValueError naming the field."""
    if not isinstance(values, list | tuple) or not values:
        raise ValueError(f"CascadeConfig.{name} must be a non-empty list of positive ints. Got {values!r} instead.")
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1]
    if bad:
        raise ValueError(f"CascadeConfig.{name} must hold positive ints only. Got {bad[0]!r} in {list(values)}.")
    return tuple(sorted({int(v) for v in values}))


@dataclass(frozen=True)
class CascadeConfig:
    """What one cascade evaluation measures."""

    ms: tuple[int, ...] = (50, 200)  # M: candidates the pre-ranker passes to the ranker, one row of the report each
    ks: tuple[int, ...] = (10, 50)  # K: end-to-end cut-offs (Recall@K, NDCG@K after the ranker)
    pool: PoolConfig = field(default_factory=PoolConfig)  # the candidate pool, as `longrec eval --retrieval` draws it
    split: str = "test"
    sample_auc: bool = True  # the ranker's AUC/GAUC on the samples whose target survives (pre-ranks every sample)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ms", _cutoffs("ms", self.ms))
        object.__setattr__(self, "ks", _cutoffs("ks", self.ks))
        if not isinstance(self.pool, PoolConfig):
            raise ValueError(f"CascadeConfig.pool must be a PoolConfig. Got {type(self.pool).__name__} instead.")
        if self.split not in SPLITS:
            raise ValueError(f"CascadeConfig.split must be one of {', '.join(SPLITS)}. Got {self.split!r} instead.")


def parse_cutoffs(text: str, flag: str) -> list[int]:
    """ "50,200" -> [50, 200] (a command-line list), or a ValueError naming `flag`."""
    words = [w.strip() for w in text.split(",") if w.strip()]
    if not words or not all(w.isdigit() and int(w) > 0 for w in words):
        raise ValueError(f"{flag} must be comma-separated positive ints, e.g. {flag} 50,200. Got {text!r} instead.")
    return [int(w) for w in words]


def check_vocabulary(model: nn.Module, store: TrajectoryStore, role: str) -> None:
    """Refuse a model whose data-derived sizes (num_items, num_categories, ...) are not the store's.

    A model built for another store would read the pool's ids as other items (or fail deep in an embedding lookup);
    this catches it at the edge. A model without a config dataclass (a wrapper) is not checked here.

    Raises:
        ValueError: names the role, the first sizes that differ, and the store.
    """
    config = getattr(model, "config", None)
    if config is None:
        return
    sizes = store.sizes
    differ = [
        f"{name} {getattr(config, name)} vs {sizes[name]}"
        for name in sorted(DATA_SIZE_FIELDS)
        if hasattr(config, name) and name in sizes and getattr(config, name) != sizes[name]
    ]
    if differ:
        raise ValueError(
            f"the {role} was built for another vocabulary than {store.root} ({'; '.join(differ[:3])}, model vs "
            "store): both models of a cascade must be trained on the same store (the same item ids)."
        )


def cascade_ranks(
    prerank_scores: np.ndarray, rank_scores: np.ndarray, valid: np.ndarray, ms: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The positives' ranks through a cascade, from both models' scores of each request (the module docstring).

    Args:
        prerank_scores: [N, 1 + C] the pre-ranker's scores, column 0 the positive, then the pool items.
        rank_scores: [N, 1 + C] the ranker's scores of the same candidates.
        valid: [N, C] bool, False for a pool slot that is not a candidate (the positive's own item).
        ms: the cut-offs M, each >= 1.

    Returns:
        pre_rank [N] (the positive's rank under the pre-ranker alone), rank_alone [N] (under the ranker alone, on
        the whole pool), and end_to_end [J, N]: its rank among the M survivors after the ranker, or `MISS` when the
        pre-ranker cut it. All 0-based, ties against the positive.

    Example:
        >>> pre = np.array([[0.5, 0.9, 0.1, 0.7]])  # the positive is 3rd by pre-score, behind items 1 and 3
        >>> rank = np.array([[0.8, 0.2, 0.9, 0.1]])  # the ranker puts it 2nd, behind item 2 (cut at M <= 3)
        >>> [r.tolist() for r in cascade_ranks(pre, rank, np.ones((1, 3), bool), [2, 3, 4])]
        [[2], [1], [[9223372036854775807], [0], [1]]]
    """
    pre = np.asarray(prerank_scores, dtype=np.float64)
    rank = np.asarray(rank_scores, dtype=np.float64)
    v = np.asarray(valid, dtype=bool)
    if pre.ndim != 2 or pre.shape != rank.shape or v.shape != (pre.shape[0], pre.shape[1] - 1):
        raise ValueError(
            "cascade_ranks needs prerank_scores and rank_scores [N, 1 + C] and valid [N, C]. Got "
            f"{list(pre.shape)}, {list(rank.shape)} and {list(v.shape)}."
        )
    N, C = v.shape
    pre_rank = pool_rank(pre[:, 0], pre[:, 1:], v)  # [N]
    rank_alone = pool_rank(rank[:, 0], rank[:, 1:], v)  # [N]
    # The pre-ranker's order of the pool: best first, ties by pool position (stable), non-candidates last.
    order = np.argsort(np.where(v, -pre[:, 1:], np.inf), axis=1, kind="stable")  # [N, C]
    ahead = np.take_along_axis((rank[:, 1:] >= rank[:, :1]) & v, order, axis=1)  # [N, C], in that order
    counted = np.zeros((N, C + 1), dtype=np.int64)  # [N, 1 + C]: column j = ranker-ahead items among the first j
    np.cumsum(ahead, axis=1, out=counted[:, 1:])
    end_to_end = np.empty((len(ms), N), dtype=np.int64)  # [J, N]
    for j, m in enumerate(ms):
        if isinstance(m, bool) or not isinstance(m, int | np.integer) or m < 1:
            raise ValueError(f"every cut-off M must be a positive int. Got {m!r} instead.")
        # survived (r_pre < M): the pool items that reach the ranker are the first M - 1 in the pre-ranker's order
        end_to_end[j] = np.where(pre_rank < m, counted[:, min(m - 1, C)], MISS)
    return pre_rank, rank_alone, end_to_end


def _full_scores(
    model: nn.Module,
    store: TrajectoryStore,
    split: str,
    rows: np.ndarray,
    pool: np.ndarray,
    search: SearchConfig | None,
    max_history: int,
) -> tuple[np.ndarray, np.ndarray]:
    """scores [R, 1 + C] and valid [R, C] of `rows` against `pool`, assembled from `score_pool`'s blocks."""
    R, C = len(rows), len(pool)
    scores = np.empty((R, 1 + C), dtype=np.float64)  # [R, 1 + C]
    valid = np.empty((R, C), dtype=bool)  # [R, C]
    for part in score_pool(model, store, split, rows, pool, search, max_history):
        if part.block.start == 0:
            scores[part.rows, 0] = part.scores[:, 0]  # the positive as the first block's call scored it
        scores[part.rows, 1 + part.block.start : 1 + part.block.stop] = part.scores[:, 1:]
        valid[part.rows, part.block] = part.valid
    return scores, valid


def _sample_ranks(
    model: nn.Module,
    store: TrajectoryStore,
    split: str,
    rows: np.ndarray,
    pool: np.ndarray,
    search: SearchConfig | None,
    max_history: int,
) -> np.ndarray:
    """The pre-rank [N] of each listed sample's target against the pool (`retrieval.pool_ranks` for any label)."""
    ranks = np.zeros(len(rows), dtype=np.int64)  # [N]
    for part in score_pool(model, store, split, rows, pool, search, max_history):
        ranks[part.rows] += pool_rank(part.scores[:, 0], part.scores[:, 1:], part.valid)
    return ranks


@torch.no_grad()
def _sample_logits(
    model: nn.Module, store: TrajectoryStore, split: str, search: SearchConfig | None, max_history: int
) -> dict[str, np.ndarray]:
    """The ranker's logits, labels and users [N] of every sample of the split, in sample order."""
    samples = store.samples(split)
    batches = (
        collate(store, samples, np.arange(start, min(start + 1024, len(samples))), max_history)
        for start in range(0, len(samples), 1024)
    )
    return predict(model, batches, search=search)


def evaluate_cascade(
    preranker: nn.Module,
    ranker: nn.Module,
    store: TrajectoryStore,
    config: CascadeConfig | None = None,
    prerank_search: SearchConfig | None = None,
    rank_search: SearchConfig | None = None,
    prerank_history: int = 200,
    rank_history: int = 200,
    progress: bool = False,
) -> dict[str, Any]:
    """Pre-rank each positive's pool to its top M, rank the survivors, report end to end (the module docstring).

    Args:
        preranker: any registered model (a `CandidateScorer` behind a target-free search is scored in batches).
        ranker: any registered model, trained on the same store (the same item ids).
        store: the prepared store the split, the pool and the item tables come from.
        config: the cut-offs M and K, the pool, the split (default `CascadeConfig()`).
        prerank_search, rank_search: each model's search stage (default: none).
        prerank_history, rank_history: behaviours collated per history for each model (their runs' max_history).
        progress: a progress bar on stderr.

    Returns:
        {"split", "positives", "ms", "ks", "pool", "paths": {"prerank", "rank"},
         "prerank_alone": {"recall@K", "ndcg@K", "mean_rank"},
         "ranker_alone": {"recall@K", "ndcg@K", "candidates", plus "auc", "gauc", "samples" with sample_auc},
         "cascade": [{"m", "survival", "recall@K", "ndcg@K", "ranker_recall@K", "candidates", plus "auc", "gauc",
         "samples", "positive_rate" of the surviving samples with sample_auc} for each M]}.

    Raises:
        ValueError: a model built for another vocabulary than the store's (`check_vocabulary`).

    Example:
        >>> evaluate_cascade(pre.model, rank.model, rank.store, CascadeConfig(ms=(50, 200)))  # doctest: +SKIP
    """
    config = config or CascadeConfig()
    check_vocabulary(preranker, store, "pre-ranker")
    check_vocabulary(ranker, store, "ranker")
    preranker.eval()
    ranker.eval()
    split, ms, ks = config.split, config.ms, config.ks
    pool = candidate_pool(store, config.pool)
    C = len(pool)
    samples = store.samples(split)
    labels = np.asarray(samples.label) > 0.5  # [S]
    positives = np.flatnonzero(labels)  # [N]
    chunk = max(1, CELLS // (1 + C))  # requests whose [R, 1 + C] scores are held at once
    parts: list[tuple[np.ndarray, ...]] = []
    steps = range(0, len(positives), chunk)
    for start in track(steps, "cascade", console=Console(stderr=True), disable=not progress, transient=True):
        rows = positives[start : start + chunk]  # [R]
        pre, valid = _full_scores(preranker, store, split, rows, pool, prerank_search, prerank_history)
        rank, valid_rank = _full_scores(ranker, store, split, rows, pool, rank_search, rank_history)
        assert np.array_equal(valid, valid_rank)  # the same rows against the same pool
        parts.append((*cascade_ranks(pre, rank, valid, ms), 1 + valid.sum(1)))
    N = len(positives)
    pre_rank = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)  # [N]
    rank_alone = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)  # [N]
    end_to_end = np.concatenate([p[2] for p in parts], 1) if parts else np.zeros((len(ms), 0), np.int64)  # [J, N]
    candidates = np.concatenate([p[3] for p in parts]) if parts else np.zeros(0, np.int64)  # [N], C' per request
    out: dict[str, Any] = {
        "split": split,
        "positives": N,
        "ms": list(ms),
        "ks": list(ks),
        "pool": asdict(config.pool) | {"drawn": C, "line": config.pool.line(C)},
        "paths": {"prerank": scoring_path(preranker, prerank_search), "rank": scoring_path(ranker, rank_search)},
        "prerank_alone": rank_metrics(pre_rank, ks) | {"mean_rank": _mean(pre_rank)},
        "ranker_alone": rank_metrics(rank_alone, ks) | {"candidates": _mean(candidates)},
    }
    rows_out = []
    for j, m in enumerate(ms):
        survived = pre_rank < m  # [N]
        row: dict[str, Any] = {"m": m, "survival": _mean(survived)}
        row |= rank_metrics(end_to_end[j], ks)
        among = rank_metrics(end_to_end[j][survived], ks)  # the ranker on what reaches it
        row |= {f"ranker_recall@{k}": among[f"recall@{k}"] for k in ks}
        row["candidates"] = _mean(np.minimum(candidates, m))
        rows_out.append(row)
    if config.sample_auc:
        others = np.flatnonzero(~labels)  # [S - N]
        sample_rank = np.empty(len(samples), dtype=np.int64)  # [S], every sample's target pre-ranked on the pool
        sample_rank[positives] = pre_rank
        sample_rank[others] = _sample_ranks(preranker, store, split, others, pool, prerank_search, prerank_history)
        scored = _sample_logits(ranker, store, split, rank_search, rank_history)
        y, logits, users = scored["labels"], scored["logits"], scored["users"]
        everything = compute_metrics(y, logits, users)
        out["ranker_alone"] |= {"auc": everything["auc"], "gauc": everything["gauc"], "samples": len(y)}
        for row in rows_out:
            kept = sample_rank < row["m"]  # [S]
            if kept.any():
                got = compute_metrics(y[kept], logits[kept], users[kept])
                row |= {"auc": got["auc"], "gauc": got["gauc"], "positive_rate": got["positive_rate"]}
            else:
                row |= {"auc": float("nan"), "gauc": float("nan"), "positive_rate": float("nan")}
            row["samples"] = int(kept.sum())
    out["cascade"] = rows_out
    return out


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if values.size else float("nan")
