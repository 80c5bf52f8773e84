"""The retrieval → pre-ranking → ranking cascade: the prefix-count ranks against a brute-force cut, the whole
evaluation against a reference that scores every candidate on its own and ranks only the M survivors, its limits
(M >= the pool is the ranker alone; M = 1 behind a perfect pre-ranker finds every positive), refused vocabularies,
and `longrec cascade`."""

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
from longrec.eval.cascade import MISS, CascadeConfig, cascade_ranks, check_vocabulary, evaluate_cascade
from longrec.eval.metrics import rank_metrics
from longrec.eval.retrieval import PoolConfig, candidate_pool, evaluate_retrieval
from longrec.models import build_model_for_sizes
from longrec.run import Run, load_run, train
from longrec.run.cascade import cascade_runs, check_same_vocabulary
from longrec.search import search_stage
from longrec.search.config import SearchConfig
from tests.conftest import make_log

POOL = PoolConfig("uniform", size=25, seed=1)


def make_store(root: Path, seed: int = 3, num_items: int = 40) -> TrajectoryStore:
    log = make_log(num_users=24, events=12, num_items=num_items, seed=seed, impressions=16, goals=("click", "buy"))
    prepare(log, root, ProtocolConfig.for_protocol("T", min_history=1))
    return TrajectoryStore.open(root)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> TrajectoryStore:
    return make_store(tmp_path_factory.mktemp("cascade") / "store")


def model_for(store: TrajectoryStore, name: str, seed: int = 0, **params: object) -> nn.Module:
    torch.manual_seed(seed)
    return build_model_for_sizes(name, {"dim": 4, **params}, store.sizes).eval()


class Constant(nn.Module):
    """Scores every candidate alike."""

    def forward(self, batch: Batch) -> torch.Tensor:
        return torch.zeros(len(batch))


class Oracle(nn.Module):
    """A perfect pre-ranker: 1 for the item of a positive sample of the request's (user, cutoff), 0 for any other."""

    def __init__(self, store: TrajectoryStore, split: str) -> None:
        super().__init__()
        s = store.samples(split)
        self.positive = {
            (int(u), int(t), int(i))
            for u, t, i, y in zip(s.user, s.target_time, s.target_item, s.label, strict=True)
            if y > 0.5
        }

    def forward(self, batch: Batch) -> torch.Tensor:
        assert batch.user is not None and batch.target_time is not None
        keys = zip(batch.user.tolist(), batch.target_time.tolist(), batch.target.tolist(), strict=True)
        return torch.tensor([float(key in self.positive) for key in keys])


def brute_force_cascade(
    preranker: nn.Module, ranker: nn.Module, store: TrajectoryStore, pool: np.ndarray, ms: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Every candidate scored on its own by each model (1-row batches); the pre-ranker's sorted list cut at M (ties:
    pool items above the positive, pool items among themselves by id); then only the M survivors scored again by the
    ranker, and the positive's rank among them counted in Python. Returns pre-ranks [N] and end-to-end ranks [J, N]
    (MISS when cut)."""
    samples = store.samples("test")
    pre_ranks, ends = [], []
    for i in np.flatnonzero(samples.label > 0.5):
        one = collate(store, samples, np.array([i]), 200)  # [1, L]

        def score(model: nn.Module, item: int | None, row: Batch = one) -> float:
            candidate = row
            if item is not None:
                candidate = row.replace(
                    target=torch.tensor([item]),
                    target_category=torch.as_tensor(store.item_category[[item]].astype(np.int64)),
                    target_extra=torch.as_tensor(store.item_extra[[item]].astype(np.int64)),
                )
            with torch.no_grad():
                return float(model(search_stage(candidate, model, SearchConfig()))[0])

        positive = int(one.target[0])
        others = [int(c) for c in pool if c != positive]
        pre = {c: score(preranker, c) for c in others}
        s = score(preranker, None)
        above = sorted((c for c in others if pre[c] >= s), key=lambda c: (-pre[c], c))
        below = sorted((c for c in others if pre[c] < s), key=lambda c: (-pre[c], c))
        ranked = [*above, None, *below]  # None = the positive
        pre_ranks.append(len(above))
        row = []
        for m in ms:
            survivors = ranked[:m]
            if None not in survivors:
                row.append(MISS)
                continue
            r = score(ranker, None)
            row.append(sum(1 for c in survivors if c is not None and score(ranker, c) >= r))
        ends.append(row)
    return np.array(pre_ranks), np.array(ends).T


# --- the ranks ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cascade_ranks_equal_a_cut_and_a_recount(seed: int) -> None:
    rng = np.random.default_rng(seed)
    N, C, ms = 60, 12, [1, 2, 5, 12, 13, 40]
    pre = np.round(rng.normal(size=(N, 1 + C)), 1)  # rounding makes ties, in both models
    rank = np.round(rng.normal(size=(N, 1 + C)), 1)
    valid = rng.random((N, C)) > 0.1
    pre_rank, alone, end = cascade_ranks(pre, rank, valid, ms)
    for n in range(N):
        pool = [c for c in range(C) if valid[n, c]]
        ahead = [c for c in pool if pre[n, 1 + c] >= pre[n, 0]]
        below = [c for c in pool if c not in ahead]
        ordered = [
            *sorted(ahead, key=lambda c: (-pre[n, 1 + c], c)),
            None,
            *sorted(below, key=lambda c: (-pre[n, 1 + c], c)),
        ]
        assert pre_rank[n] == len(ahead)
        assert alone[n] == sum(rank[n, 1 + c] >= rank[n, 0] for c in pool)
        for j, m in enumerate(ms):
            kept = ordered[:m]
            expected = sum(rank[n, 1 + c] >= rank[n, 0] for c in kept if c is not None) if None in kept else MISS
            assert end[j, n] == expected, (n, m)
    assert (end[ms.index(13)] == alone).all()  # M = C + 1 keeps every candidate


def test_cascade_ranks_refuse_malformed_input() -> None:
    with pytest.raises(ValueError, match=r"prerank_scores and rank_scores \[N, 1 \+ C\] and valid \[N, C\]"):
        cascade_ranks(np.zeros((2, 4)), np.zeros((2, 4)), np.ones((2, 4), bool), [1])
    with pytest.raises(ValueError, match=r"every cut-off M must be a positive int\. Got 0 instead\."):
        cascade_ranks(np.zeros((2, 4)), np.zeros((2, 4)), np.ones((2, 3), bool), [0])
    with pytest.raises(ValueError, match=r"CascadeConfig\.ms must hold positive ints only\. Got 0"):
        CascadeConfig(ms=(0, 5))
    with pytest.raises(ValueError, match=r"CascadeConfig\.split must be one of train, valid, test"):
        CascadeConfig(split="dev")


# --- the evaluation -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pre_name", "rank_name"),
    [("td_sasrec", "din"), ("din", "td_sasrec")],  # batched pre-ranker / one-user ranker, and the other way round
)
def test_end_to_end_metrics_equal_a_brute_force_cascade(store: TrajectoryStore, pre_name, rank_name) -> None:
    pre = model_for(store, pre_name, seed=0, **({"num_blocks": 1} if pre_name == "td_sasrec" else {}))
    ranker = model_for(store, rank_name, seed=1, **({"num_blocks": 1} if rank_name == "td_sasrec" else {}))
    ms, ks = [1, 3, 8, 30], [1, 2, 5]
    report = evaluate_cascade(pre, ranker, store, CascadeConfig(ms=tuple(ms), ks=tuple(ks), pool=POOL))
    pre_ranks, ends = brute_force_cascade(pre, ranker, store, candidate_pool(store, POOL), ms)
    assert report["positives"] == len(pre_ranks) > 5
    assert report["prerank_alone"] == pytest.approx(rank_metrics(pre_ranks, ks) | {"mean_rank": pre_ranks.mean()})
    survived_somewhere = False
    for j, (m, row) in enumerate(zip(ms, report["cascade"], strict=True)):
        assert row["m"] == m and row["survival"] == pytest.approx((ends[j] != MISS).mean())
        assert row["survival"] == pytest.approx((pre_ranks < m).mean())  # survival is the pre-ranker's Recall@M
        expected = rank_metrics(ends[j], ks)
        for k in ks:
            assert row[f"recall@{k}"] == pytest.approx(expected[f"recall@{k}"], abs=1e-12), (m, k)
            assert row[f"ndcg@{k}"] == pytest.approx(expected[f"ndcg@{k}"], abs=1e-12), (m, k)
        survived_somewhere |= 0 < row["survival"] < 1
    assert survived_somewhere  # some M cuts some positives and not others: the cut is exercised


def test_m_at_least_the_pool_is_the_ranker_alone_and_survival_is_the_pre_rankers_recall(
    store: TrajectoryStore,
) -> None:
    pre, ranker = model_for(store, "td_sasrec", num_blocks=1), model_for(store, "din", seed=1)
    ks = (1, 3, 10)
    report = evaluate_cascade(pre, ranker, store, CascadeConfig(ms=(5, 26), ks=ks, pool=POOL))
    alone = evaluate_retrieval(ranker, store, "test", ks, POOL)
    recall = evaluate_retrieval(pre, store, "test", (5,), POOL)
    full = report["cascade"][1]  # M = 26 >= 1 + 25: every candidate reaches the ranker
    for k in ks:
        assert full[f"recall@{k}"] == report["ranker_alone"][f"recall@{k}"] == pytest.approx(alone[f"recall@{k}"])
        assert full[f"ndcg@{k}"] == report["ranker_alone"][f"ndcg@{k}"] == pytest.approx(alone[f"ndcg@{k}"])
        assert full[f"ranker_recall@{k}"] == full[f"recall@{k}"]
    assert full["survival"] == 1 and report["cascade"][0]["survival"] == pytest.approx(recall["recall@5"])
    assert full["auc"] == pytest.approx(report["ranker_alone"]["auc"]) and full["samples"] == len(store.samples("test"))
    assert report["cascade"][0]["candidates"] == 5 and 25 <= full["candidates"] <= 26
    assert report["paths"] == {"prerank": "score_candidates", "rank": "one_user_request"}


def test_m_one_behind_a_perfect_pre_ranker_finds_every_positive_whatever_the_ranker(store: TrajectoryStore) -> None:
    test = store.samples("test")
    keys = [(u, t) for u, t, y in zip(test.user, test.target_time, test.label, strict=True) if y > 0.5]
    assert len(keys) == len(set(keys))  # one positive per request: the oracle's top 1 is exactly the positive
    report = evaluate_cascade(Oracle(store, "test"), Constant(), store, CascadeConfig(ms=(1, 10), ks=(1,), pool=POOL))
    top1 = report["cascade"][0]
    assert top1["survival"] == 1 and top1["recall@1"] == 1 and top1["ndcg@1"] == 1 and top1["candidates"] == 1
    assert report["ranker_alone"]["recall@1"] == 0  # alone, the constant ranker puts every positive last
    assert report["cascade"][1]["recall@1"] == 0  # at M = 10 the constant ranker decides again
    assert top1["samples"] == report["positives"]  # only positives reach the ranker: the negatives scored 0
    assert report["prerank_alone"]["recall@1"] == 1


def test_a_constant_pre_ranker_cuts_every_positive_below_the_whole_request(store: TrajectoryStore) -> None:
    config = CascadeConfig(ms=(24, 26), ks=(5,), pool=POOL)  # a request holds 25 or 26 candidates
    report = evaluate_cascade(Constant(), model_for(store, "din"), store, config)
    assert report["cascade"][0]["survival"] == 0 and report["cascade"][0]["recall@5"] == 0  # ties: the positive last
    assert report["cascade"][1]["recall@5"] == report["ranker_alone"]["recall@5"] > 0


# --- vocabularies -------------------------------------------------------------------------------------------------


def test_models_and_runs_of_another_vocabulary_are_refused(store: TrajectoryStore, tmp_path: Path) -> None:
    other = make_store(tmp_path / "other", seed=5, num_items=70)
    stranger = build_model_for_sizes("din", {"dim": 4}, other.sizes)
    with pytest.raises(ValueError, match=r"the ranker was built for another vocabulary than .*num_items"):
        evaluate_cascade(model_for(store, "din"), stranger, store, CascadeConfig(pool=POOL))
    check_vocabulary(model_for(store, "din"), store, "ranker")  # the store's own sizes pass
    config = load_config(None, ["model.name='din'", "model.dim=4"])
    ours = Run(tmp_path / "ours", config, store, model_for(store, "din"), 0)
    theirs = Run(tmp_path / "theirs", config, other, stranger, 0)
    with pytest.raises(ValueError, match=r"the pre-ranking run .*ours was trained on a store with vocabulary sha"):
        cascade_runs(ours, theirs, CascadeConfig(pool=POOL))
    check_same_vocabulary(ours, Run(tmp_path / "again", config, store, model_for(store, "din"), 0))


# --- the command line ---------------------------------------------------------------------------------------------


def train_tiny(store: TrajectoryStore, out: Path, name: str) -> Path:
    overrides = [f"model.name={name!r}", "model.dim=4", f"data.path={str(store.root)!r}", "data.max_history=8"]
    overrides += ["train.epochs=1", "train.batch_size=64", "train.progress=false"]
    train(load_config(None, overrides + (["model.num_blocks=1"] if name == "td_sasrec" else [])), out)
    return out


def test_longrec_cascade_writes_a_report_and_refuses_what_it_must_not_touch(
    store: TrajectoryStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pre, rank = train_tiny(store, tmp_path / "pre", "td_sasrec"), train_tiny(store, tmp_path / "rank", "din")
    out = tmp_path / "report"
    argv = ["--quiet", "cascade", str(pre), str(rank), "--m", "5,20", "--k", "3,10", "--pool", "uniform"]
    argv += ["--pool-size", "30", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "cascade.json").read_text())
    assert "cascade" in printed and "ranker only" in printed and "report:" in printed
    assert report["ms"] == [5, 20] and report["ks"] == [3, 10] and report["pool"]["size"] == 30
    assert report["prerank_run"]["model"] == "td_sasrec" and report["rank_run"]["model"] == "din"
    again = cascade_runs(load_run(pre), load_run(rank), CascadeConfig((5, 20), (3, 10), PoolConfig("uniform", 30)))
    assert json.loads(json.dumps(again, default=str)) | {"store": ""} == report | {"store": ""}
    assert main(argv) == 2  # a previous report is replaced only with --force
    assert "already holds a cascade report" in capsys.readouterr().err
    assert main([*argv, "--force"]) == 0
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    assert main([*argv[:-1], str(tmp_path / "mine")]) == 2 and (tmp_path / "mine" / "notes.txt").exists()
    assert main([*argv, "--force", "--m", "5,x"]) == 2
    assert "--m must be comma-separated positive ints" in capsys.readouterr().err
    assert main([*argv[:3], str(tmp_path / "nowhere"), *argv[4:], "--force"]) == 2
    assert "is not a run directory" in capsys.readouterr().err
