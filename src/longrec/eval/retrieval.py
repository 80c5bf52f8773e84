"""Recall@N on a candidate pool: every positive of a split ranked against a pool of items, as a pre-ranker is used.

For each positive sample (label 1) of the split, the model scores the positive's item and every item of a candidate
pool for that sample's user (its history, its goal), and the positive's rank among the pool gives Recall@N and
NDCG@N (`longrec.eval.metrics.rank_metrics`; one relevant item per row, so Recall@N is the hit rate at N).

- **The pool** (`PoolConfig`) is one set of items shared by every positive, so two models evaluated with the same
  settings rank against the same candidates: every item of the vocabulary (`sampler = "all"`), or `size` items drawn
  without replacement, uniformly (`"uniform"`) or with probability proportional to the item's number of behaviours
  in the store's log (`"popularity"`), from a numpy generator seeded with `seed`. `items = "train_targets"` draws
  from the items that occur as a target of the train split instead of the whole vocabulary (a CTR log's
  candidates: on the synthetic data, the ads, not the content items). The pool is returned sorted by id.
- **A positive's own item** is never its own competitor: when the pool holds it, that slot is left out of its rank.
  Other positives of the same user count as pool items like any other.
- **Ties** count against the positive (`metrics.pool_rank`): a candidate with exactly the positive's score ranks
  ahead of it, so the rank does not depend on the pool's order, and a model that scores everything alike gets
  recall 0, not 1.
- **Two scoring paths, one answer.** A `CandidateScorer` (TD-SASRec) scores the positive and a block of the pool
  for a batch of users in one `score_candidates` call: the user side once per request, candidates as item vectors.
  Every other model is scored one user at a time through `longrec.search.one_user_request` (the positive and a
  block of the pool as C rows viewing one history), through the run's search stage and `forward`, as serving scores
  it: slower, same metric. A `CandidateScorer` behind a target-dependent searcher (anything but `none` and
  `latest`) takes the one-user path too, since its user side then depends on the candidate. In both paths the
  positive is scored in the same call as each block of the pool it is compared with. `score_pool` is that scoring
  (any samples, any labels, block by block); `pool_ranks` and the cascade (`longrec.eval.cascade`) both read it.

Shapes: B rows (positives) per call, C pool items (per block), L history length, M taxonomy levels, E extra fields.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import track
from torch import Tensor, nn

from longrec.data.batch import Batch
from longrec.data.dataset import collate
from longrec.data.store import TrajectoryStore
from longrec.eval.metrics import pool_rank, rank_metrics
from longrec.models.contract import CandidateScorer
from longrec.search import one_user_request, search_stage
from longrec.search.config import SearchConfig

__all__ = [
    "POOL_ITEMS",
    "POOL_SAMPLERS",
    "PoolConfig",
    "ScoredBlock",
    "candidate_pool",
    "evaluate_retrieval",
    "pool_ranks",
    "score_pool",
    "scoring_path",
]

POOL_SAMPLERS = ("all", "uniform", "popularity")
POOL_ITEMS = ("all", "train_targets")
CELLS = 2**16  # scores per call: rows x (1 + pool block), bounds the [B, C, D] candidate tensors
TARGET_FREE_SEARCH = ("none", "latest")  # searchers whose kept behaviours do not depend on the target


@dataclass(frozen=True)
class PoolConfig:
    """The candidate pool every positive is ranked against."""

    sampler: str = "popularity"  # all | uniform | popularity (P ∝ the item's behaviours in the log)
    size: int = 1000  # items drawn (ignored by "all"); at most the number of items that can be drawn
    seed: int = 0  # numpy generator seed of the draw
    items: str = "all"  # the items drawn from: all (the vocabulary) | train_targets (targets of the train split)

    def __post_init__(self) -> None:
        if self.sampler not in POOL_SAMPLERS:
            raise ValueError(f"PoolConfig.sampler must be one of {', '.join(POOL_SAMPLERS)}. Got {self.sampler!r}.")
        if self.items not in POOL_ITEMS:
            raise ValueError(f"PoolConfig.items must be one of {', '.join(POOL_ITEMS)}. Got {self.items!r}.")
        for name in ("size", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "size" else 0):
                kind = "a positive" if name == "size" else "a non-negative"
                raise ValueError(f"PoolConfig.{name} must be {kind} int. Got {value!r} instead.")

    def line(self, actual: int) -> str:
        """The pool in words, as reports state it."""
        source = "every item" if self.items == "all" else "the items that are train targets"
        if self.sampler == "all":
            return f"all {actual:,} items" + ("" if self.items == "all" else " that are train targets")
        how = "uniformly" if self.sampler == "uniform" else "by popularity (P ∝ behaviours in the log)"
        return f"{actual:,} items drawn {how} without replacement from {source}, seed {self.seed}"


def candidate_pool(store: TrajectoryStore, config: PoolConfig) -> np.ndarray:
    """The pool's item ids [C] int64, sorted; the same store and config always give the same pool.

    Raises:
        ValueError: fewer items can be drawn than `config.size` (under "popularity": items with a behaviour).
    """
    V = int(store.item_count.shape[0])
    if config.items == "all":
        universe = np.arange(1, V, dtype=np.int64)  # [V - 1], id 0 is padding
    else:
        universe = np.unique(np.asarray(store.samples("train").target_item, dtype=np.int64))
        universe = universe[universe > 0]  # [U]
    if config.sampler == "all":
        return universe
    weights = np.asarray(store.item_count, dtype=np.float64)[universe] if config.sampler == "popularity" else None
    drawable = int((weights > 0).sum()) if weights is not None else int(universe.size)
    if config.size > drawable:
        raise ValueError(
            f"PoolConfig.size ({config.size:,}) is more than the {drawable:,} items the {config.sampler} sampler can "
            f"draw from {config.items} items of {store.root}. Use a smaller size or sampler = 'all'."
        )
    rng = np.random.default_rng(config.seed)
    p = None if weights is None else weights / weights.sum()
    return np.sort(rng.choice(universe, size=config.size, replace=False, p=p))  # [C]


def _row(batch: Batch, i: int) -> Batch:
    """Row i of a batch, as a 1-row batch."""
    return batch.replace(**{name: value[i : i + 1] for name, value in batch.fields().items()})


def _blocks(C: int, width: int) -> Iterator[slice]:
    """Consecutive blocks of at most `width` pool columns."""
    for start in range(0, C, width):
        yield slice(start, min(start + width, C))


@dataclass(frozen=True)
class ScoredBlock:
    """One call's scores: rows `rows` of the requested samples against the pool columns `block`."""

    rows: slice  # into the `rows` argument of `score_pool`
    block: slice  # into the pool
    scores: np.ndarray  # [b, 1 + c] float64: column 0 the sample's own target, then the block's pool items
    valid: np.ndarray  # [b, c] bool, False where the pool item is the sample's own target (no competitor)
    goal: np.ndarray  # [b] int64 goal of each sample (0 without goals)


def scoring_path(model: nn.Module, search: SearchConfig | None = None) -> str:
    """How `score_pool` scores `model` behind `search`: "score_candidates" (batched) or "one_user_request"."""
    fast = isinstance(model, CandidateScorer) and (search or SearchConfig()).method in TARGET_FREE_SEARCH
    return "score_candidates" if fast else "one_user_request"


@torch.no_grad()
def score_pool(
    model: nn.Module,
    store: TrajectoryStore,
    split: str,
    rows: np.ndarray,
    pool: np.ndarray,
    search: SearchConfig | None = None,
    max_history: int = 200,
    progress: bool = False,
) -> Iterator[ScoredBlock]:
    """Score the target of each requested sample of `split` and every `pool` item for that sample's user (the module
    docstring: two paths, the target scored in the same call as each block of the pool it is compared with).

    Args:
        rows: [N] indices of the split's samples (any labels), scored in this order.

    Yields:
        `ScoredBlock`s: row chunks in order and, within a chunk, pool blocks in order, together covering
        [N, 1 + C]; `len(pool)` columns fit in one block up to 65,535 (batched) or 1,023 (one user at a time).
    """
    model.eval()
    samples = store.samples(split)
    search = search or SearchConfig()
    fast = scoring_path(model, search) == "score_candidates"
    ids = torch.as_tensor(pool, dtype=torch.long)  # [C]
    category = torch.as_tensor(np.asarray(store.item_category)[pool].astype(np.int64))  # [C, M]
    extra = torch.as_tensor(np.asarray(store.item_extra)[pool].astype(np.int64))  # [C, E]
    C, M, E = len(pool), category.shape[1], extra.shape[1]
    width = max(1, min(C, CELLS - 1))  # pool columns per call
    chunk = max(1, CELLS // (1 + width)) if fast else 256  # samples collated together
    chunks = range(0, len(rows), chunk)
    for start in track(chunks, "ranking", console=Console(stderr=True), disable=not progress, transient=True):
        batch = collate(store, samples, rows[start : start + chunk], max_history)  # [B, L]
        B = len(batch)
        goal = batch.goal if batch.goal is not None else torch.zeros_like(batch.target)  # [B]
        if fast:
            assert isinstance(model, CandidateScorer)
            searched = search_stage(batch, model, search)  # target-free: the same for every candidate
            for block in _blocks(C, width):
                c = block.stop - block.start
                items = torch.cat([batch.target[:, None], ids[block].expand(B, c)], 1)  # [B, 1 + c]
                paths = None
                if M:
                    assert batch.target_category is not None  # collated from a store with categories
                    paths = torch.cat([batch.target_category[:, None], category[block].expand(B, c, M)], 1)
                scores = model.score_candidates(searched, items, goal[:, None].expand_as(items), paths)  # [B, 1 + c]
                valid = (ids[block][None, :] != batch.target[:, None]).numpy()  # [B, c]
                yield ScoredBlock(slice(start, start + B), block, scores.double().numpy(), valid, goal.numpy())
        else:
            for i in range(B):
                one = _row(batch, i)  # [1, L]
                for block in _blocks(C, min(width, 1023)):
                    c = block.stop - block.start
                    fields: dict[str, Tensor] = {
                        "target": torch.cat([one.target, ids[block]]),  # [1 + c]
                        "goal": goal[i].expand(1 + c),  # [1 + c]
                    }
                    if M:
                        assert one.target_category is not None
                        fields["target_category"] = torch.cat([one.target_category, category[block]])  # [1 + c, M]
                    if E:
                        assert one.target_extra is not None
                        fields["target_extra"] = torch.cat([one.target_extra, extra[block]])  # [1 + c, E]
                    request = one_user_request(one, fields)  # [1 + c, L], the rows view one history
                    s = model(search_stage(request, model, search)).double().numpy()  # [1 + c]
                    valid = (ids[block] != one.target).numpy()[None]  # [1, c]
                    yield ScoredBlock(slice(start + i, start + i + 1), block, s[None], valid, goal[i : i + 1].numpy())


def pool_ranks(
    model: nn.Module,
    store: TrajectoryStore,
    split: str,
    pool: np.ndarray,
    search: SearchConfig | None = None,
    max_history: int = 200,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Each positive's 0-based rank among `pool` (ties against it), in the order of the split's positives.

    Returns:
        ranks [N] int64 and goals [N] int64 of the split's N positives, and the scoring path that ran
        ("score_candidates" or "one_user_request").
    """
    positives = np.flatnonzero(np.asarray(store.samples(split).label) > 0.5)  # [N]
    rank = np.zeros(len(positives), dtype=np.int64)  # [N]
    goals = np.zeros(len(positives), dtype=np.int64)  # [N]
    for part in score_pool(model, store, split, positives, pool, search, max_history, progress):
        rank[part.rows] += pool_rank(part.scores[:, 0], part.scores[:, 1:], part.valid)
        goals[part.rows] = part.goal
    return rank, goals, scoring_path(model, search)


def evaluate_retrieval(
    model: nn.Module,
    store: TrajectoryStore,
    split: str = "test",
    ns: Sequence[int] = (50, 200),
    pool: PoolConfig | None = None,
    search: SearchConfig | None = None,
    max_history: int = 200,
    progress: bool = False,
) -> dict[str, Any]:
    """Recall@N and NDCG@N of every positive of `split` ranked against a candidate pool (the module docstring).

    Args:
        model: any registered model; a `CandidateScorer` is scored in batches, any other one user at a time.
        store: the prepared store (samples, item categories and counts).
        split: "train", "valid" or "test".
        ns: the cut-offs N.
        pool: the candidate pool (default: 1,000 items drawn by popularity, seed 0).
        search: the run's search stage (default: none).
        max_history: behaviours collated per history.
        progress: a progress bar on stderr.

    Returns:
        {"recall@N", "ndcg@N" for each N, "mean_rank", "positives", "pool": {sampler, size, seed, items, drawn,
        line}, "path"}, plus "per_goal" {goal name: the same metrics} when the store has several goals.

    Example:
        >>> evaluate_retrieval(run.model, run.store, "test", ns=(50, 200), search=run.config.search)  # doctest: +SKIP
    """
    pool = pool or PoolConfig()
    items = candidate_pool(store, pool)
    rank, goal, path = pool_ranks(model, store, split, items, search, max_history, progress)
    out: dict[str, Any] = rank_metrics(rank, list(ns))
    out["mean_rank"] = float(rank.mean()) if rank.size else float("nan")
    out["positives"] = int(rank.size)
    out["pool"] = asdict(pool) | {"drawn": len(items), "line": pool.line(len(items))}
    out["path"] = path
    if store.sizes.get("num_goals", 1) > 1:
        names = ["unknown", *map(str, store.vocab("goal").to_list())]
        out["per_goal"] = {names[int(g)]: rank_metrics(rank[goal == g], list(ns)) for g in np.unique(goal)}
    return out
