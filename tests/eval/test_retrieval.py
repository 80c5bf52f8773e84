"""Recall@N on a candidate pool: the tie rule, the pool samplers, both scoring paths against a brute-force reference
(every candidate scored on its own, one row at a time), and `longrec eval --retrieval`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from longrec.cli import main
from longrec.config import load_config
from longrec.data.batch import Batch
from longrec.data.dataset import collate
from longrec.data.prepare import prepare
from longrec.data.protocols import ProtocolConfig
from longrec.data.store import TrajectoryStore
from longrec.eval.metrics import ndcg_at_k, pool_rank, rank_metrics, recall_at_k
from longrec.eval.retrieval import PoolConfig, candidate_pool, evaluate_retrieval, pool_ranks
from longrec.models import build_model_for_sizes
from longrec.models.contract import CandidateScorer
from longrec.run import train
from longrec.search import search_stage
from longrec.search.config import SearchConfig
from tests.conftest import make_log

NS = (1, 3, 10, 40)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> TrajectoryStore:
    out = tmp_path_factory.mktemp("retrieval") / "store"
    log = make_log(num_users=24, events=12, num_items=40, seed=3, impressions=16, goals=("click", "buy"))
    prepare(log, out, ProtocolConfig.for_protocol("T", min_history=1))
    return TrajectoryStore.open(out)


def model_for(store: TrajectoryStore, name: str, **params: object) -> nn.Module:
    torch.manual_seed(0)
    return build_model_for_sizes(name, {"dim": 4, **params}, store.sizes).eval()


class Forward(nn.Module):
    """A model seen through `forward` only (it hides any `score_candidates`)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.inner(batch)


class Constant(nn.Module):
    """Scores every candidate alike: the tie rule decides every rank."""

    def forward(self, batch: Batch) -> torch.Tensor:
        return torch.zeros(len(batch))


def brute_force_ranks(model: nn.Module, store: TrajectoryStore, split: str, pool: np.ndarray, search: SearchConfig):
    """Each positive and each pool item scored on its own, as a 1-row batch; ranks by a Python count."""
    samples = store.samples(split)
    ranks, ranked_lists = [], []
    for i in np.flatnonzero(samples.label > 0.5):
        one = collate(store, samples, np.array([i]), 200)  # [1, L]

        def score(item: int | None, row: Batch = one) -> float:
            """A pool item (its fields from the store's item tables), or None: the positive, as the sample has it."""
            candidate = row
            if item is not None:
                candidate = row.replace(
                    target=torch.tensor([item]),
                    target_category=torch.as_tensor(store.item_category[[item]].astype(np.int64)),
                    target_extra=torch.as_tensor(store.item_extra[[item]].astype(np.int64)),
                )
            with torch.no_grad():
                return float(model(search_stage(candidate, model, search))[0])

        positive = int(one.target[0])
        s = score(None)
        others = [(score(int(c)), int(c)) for c in pool if c != positive]
        ranks.append(sum(1 for value, _ in others if value >= s))
        # the ranked list, ties against the positive: candidates at or above it, then it, then the rest
        above = [c for value, c in sorted(others, key=lambda x: -x[0]) if value >= s]
        below = [c for value, c in sorted(others, key=lambda x: -x[0]) if value < s]
        ranked_lists.append([*above, positive, *below])
    return np.array(ranks), ranked_lists


# --- metrics ------------------------------------------------------------------------------------------------------


def test_pool_rank_counts_ties_against_the_positive_and_skips_invalid_slots() -> None:
    ranks = pool_rank(
        [0.5, 0.5, 0.5], [[0.9, 0.5, 0.1], [0.5, 0.5, 0.5], [0.9, 0.9, 0.1]], [[1, 1, 1], [1, 1, 1], [0, 1, 1]]
    )
    assert ranks.tolist() == [2, 3, 1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rank_metrics_equal_recall_and_ndcg_of_the_ranked_lists(seed: int) -> None:
    rng = np.random.default_rng(seed)
    N, C = 200, 30
    positive = np.round(rng.normal(size=N), 1)  # rounding makes ties
    pool = np.round(rng.normal(size=(N, C)), 1)
    ranks = pool_rank(positive, pool)
    # the ranked list with the tie rule: pool items (ids 1..C) at or above the positive (id 0), then it, then the rest
    order = np.argsort(-pool, axis=1, kind="stable")  # [N, C]
    lists = [
        [c + 1 for c in row if pool[n, c] >= positive[n]] + [0] + [c + 1 for c in row if pool[n, c] < positive[n]]
        for n, row in enumerate(order)
    ]
    got = rank_metrics(ranks, NS)
    for n in NS:
        k = min(n, C + 1)  # the lists hold C + 1 ids
        assert got[f"recall@{n}"] == pytest.approx(recall_at_k(lists, [[0]] * N, k=k), abs=1e-12)
        assert got[f"ndcg@{n}"] == pytest.approx(ndcg_at_k(lists, [[0]] * N, k=k), abs=1e-12)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: pool_rank([0.1], [[0.2], [0.3]]), r"positive \[N\] and pool \[N, C\] with the same N"),
        (lambda: pool_rank([float("nan")], [[0.2]]), r"a score is NaN"),
        (lambda: pool_rank([0.1], [[0.2, 0.3]], [[True]]), r"valid must have the shape of pool \[1, 2\]"),
        (lambda: rank_metrics([1, -1], [5]), r"ranks must be a 1-D array of non-negative ints"),
        (lambda: rank_metrics([1, 2], [0]), r"every cut-off N must be a positive int\. Got 0 instead\."),
    ],
)
def test_rank_metrics_reject_malformed_input(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


# --- the pool -----------------------------------------------------------------------------------------------------


def test_pools_are_seeded_sorted_distinct_and_drawn_from_their_items(store: TrajectoryStore) -> None:
    V = store.item_count.shape[0]
    assert candidate_pool(store, PoolConfig("all")).tolist() == list(range(1, V))
    for sampler in ("uniform", "popularity"):
        pool = candidate_pool(store, PoolConfig(sampler, size=15, seed=4))
        assert len(np.unique(pool)) == 15 and (np.diff(pool) > 0).all() and pool.min() >= 1
        assert np.array_equal(pool, candidate_pool(store, PoolConfig(sampler, size=15, seed=4)))
        assert not np.array_equal(pool, candidate_pool(store, PoolConfig(sampler, size=15, seed=5)))
    targets = set(store.samples("train").target_item.tolist())
    assert set(candidate_pool(store, PoolConfig("uniform", size=10, items="train_targets")).tolist()) <= targets
    assert set(candidate_pool(store, PoolConfig("all", items="train_targets")).tolist()) == targets - {0}


def test_the_popularity_sampler_follows_the_behaviour_counts(store: TrajectoryStore) -> None:
    drawn = np.concatenate([candidate_pool(store, PoolConfig("popularity", size=1, seed=s)) for s in range(3000)])
    counts = np.asarray(store.item_count, dtype=np.float64)
    share = np.bincount(drawn, minlength=counts.size) / drawn.size
    assert share[counts == 0].sum() == 0  # an item without behaviours is never drawn
    np.testing.assert_allclose(share[1:], counts[1:] / counts[1:].sum(), atol=0.02)


def test_a_pool_larger_than_its_items_or_a_bad_setting_is_refused(store: TrajectoryStore) -> None:
    with pytest.raises(ValueError, match=r"PoolConfig\.size \(100,000\) is more than the \d+ items the uniform"):
        candidate_pool(store, PoolConfig("uniform", size=100_000))
    with pytest.raises(ValueError, match=r"PoolConfig\.sampler must be one of all, uniform, popularity\. Got 'zipf'"):
        PoolConfig("zipf")
    with pytest.raises(ValueError, match=r"PoolConfig\.size must be a positive int\. Got 0 instead\."):
        PoolConfig(size=0)


# --- both scoring paths against brute force -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params", "search"),
    [
        ("td_sasrec", {"num_blocks": 1, "num_heads": 1}, SearchConfig()),  # CandidateScorer, batched
        ("din", {}, SearchConfig()),  # one user at a time
        ("tin", {}, SearchConfig.from_table({"method": "category", "k": 4})),  # a searcher per candidate
    ],
)
def test_recall_and_ndcg_equal_a_brute_force_reference(store: TrajectoryStore, name, params, search) -> None:
    model = model_for(store, name, **params)
    pool = candidate_pool(store, PoolConfig("uniform", size=25, seed=1))
    ranks, _, path = pool_ranks(model, store, "test", pool, search)
    assert path == ("score_candidates" if isinstance(model, CandidateScorer) else "one_user_request")
    expected, lists = brute_force_ranks(model, store, "test", pool, search)
    assert len(ranks) == int(store.samples("test").label.sum()) > 5
    np.testing.assert_array_equal(ranks, expected)
    metrics = evaluate_retrieval(model, store, "test", NS, PoolConfig("uniform", size=25, seed=1), search)
    positives = [[lst[r]] for lst, r in zip(lists, expected, strict=True)]  # the positive sits at its rank
    width = min(len(lst) for lst in lists)  # 25 or 26: the positive's item may be one of the pool's
    for n in NS:
        if n <= width:
            assert metrics[f"recall@{n}"] == pytest.approx(recall_at_k(lists, positives, k=n), abs=1e-12)
            assert metrics[f"ndcg@{n}"] == pytest.approx(ndcg_at_k(lists, positives, k=n), abs=1e-12)
        else:  # past the end of the pool every positive is found
            assert metrics[f"recall@{n}"] == 1


def test_a_candidate_scorer_ranks_exactly_as_its_forward_one_user_at_a_time(store: TrajectoryStore) -> None:
    model = model_for(store, "td_sasrec", num_blocks=2, num_heads=2)
    pool = candidate_pool(store, PoolConfig("all"))
    fast = pool_ranks(model, store, "test", pool)
    slow = pool_ranks(Forward(model), store, "test", pool)
    assert (fast[2], slow[2]) == ("score_candidates", "one_user_request")
    np.testing.assert_array_equal(fast[0], slow[0])


def test_equal_scores_rank_every_positive_last_and_its_own_item_is_no_competitor(store: TrajectoryStore) -> None:
    pool = candidate_pool(store, PoolConfig("all"))
    ranks, _, _ = pool_ranks(Constant(), store, "test", pool)
    assert (ranks == len(pool) - 1).all()  # every positive's item is in the "all" pool and is left out
    metrics = evaluate_retrieval(Constant(), store, "test", (1, len(pool) - 1, len(pool)), PoolConfig("all"))
    assert metrics["recall@1"] == 0 and metrics[f"recall@{len(pool) - 1}"] == 0 and metrics[f"recall@{len(pool)}"] == 1


def test_evaluate_retrieval_reports_the_pool_and_per_goal_metrics(store: TrajectoryStore) -> None:
    metrics = evaluate_retrieval(model_for(store, "din"), store, "test", (5,), PoolConfig("popularity", size=20))
    assert metrics["pool"] | {"line": ""} == {
        "sampler": "popularity",
        "size": 20,
        "seed": 0,
        "items": "all",
        "drawn": 20,
        "line": "",
    }
    assert metrics["pool"]["line"].startswith("20 items drawn by popularity")
    assert set(metrics["per_goal"]) <= {"click", "buy", "unknown"} and metrics["positives"] > 0
    assert 0 <= metrics["recall@5"] <= 1 and metrics["ndcg@5"] <= metrics["recall@5"]


# --- the command line ---------------------------------------------------------------------------------------------


def test_longrec_eval_retrieval_writes_and_prints_recall_at_n(
    store: TrajectoryStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    overrides = [
        "model.name='td_sasrec'",
        "model.dim=4",
        "model.num_blocks=1",
        f"data.path={str(store.root)!r}",
        "data.max_history=8",
        "train.epochs=1",
        "train.batch_size=64",
        "train.progress=false",
    ]
    train(load_config(None, overrides), tmp_path / "run")
    argv = ["--quiet", "eval", str(tmp_path / "run"), "--retrieval", "--n", "5,20", "--pool", "uniform"]
    assert main([*argv, "--pool-size", "30", "--pool-seed", "2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads((tmp_path / "run" / "eval_test_retrieval.json").read_text()) == printed
    assert {"recall@5", "ndcg@5", "recall@20", "ndcg@20"} <= set(printed)
    assert printed["pool"]["size"] == 30 and printed["pool"]["seed"] == 2 and printed["path"] == "score_candidates"
    assert main([*argv, "--n", "5,x"]) != 0
    assert "--n must be comma-separated positive ints" in capsys.readouterr().err
