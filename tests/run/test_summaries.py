"""VISTA's two-stage training: stored summaries (`longrec summarise`) and stage 2 on them (`data.summaries`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from longrec.config import Config
from longrec.data.dataset import collate, make_loader
from longrec.data.prepare import prepare
from longrec.data.protocols import ProtocolConfig
from longrec.data.store import SPLITS, TrajectoryStore
from longrec.data.summaries import SummaryStore
from longrec.eval.evaluate import evaluate, predict
from longrec.models import build_model_for_sizes
from longrec.run import load_run, summarise, train
from longrec.run.summaries import compute_summaries
from longrec.train.step import make_optimizer, train_step
from tests.conftest import make_log

PARAMS: dict[str, Any] = {"dim": 4, "num_summaries": 3, "head_hidden": [8], "temporal": "both"}
WINDOW = 12


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("store") / "s"
    prepare(make_log(num_users=24, events=20, seed=5), out, ProtocolConfig.for_protocol("T"))
    return out


def _model(store: TrajectoryStore, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model_for_sizes("vista", PARAMS, store.sizes).eval()


@pytest.fixture(scope="module")
def summaries(store_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = TrajectoryStore.open(store_path)
    out = tmp_path_factory.mktemp("summaries") / "z"
    compute_summaries(_model(store), store, out, "vista", PARAMS, WINDOW, batch_size=5, dtype="float32")
    return out


def test_stored_summaries_equal_user_state_recomputed(store_path: Path, summaries: Path) -> None:
    store = TrajectoryStore.open(store_path)
    model = _model(store)
    stored = SummaryStore.open(summaries, store)
    assert stored.meta["max_history"] == WINDOW and stored.shape == (3, 12)  # E = dim x (1 + M = 2)
    for split in SPLITS:
        samples = store.samples(split)
        rows = np.arange(min(len(samples), 40))  # spans several compute batches of 5
        with torch.no_grad():
            expected = model.user_state(collate(store, samples, rows, WINDOW))  # [N, S, E]
        torch.testing.assert_close(stored.state(split, rows), expected, rtol=0, atol=1e-6)


def test_stage_two_on_stored_summaries_equals_forward_on_the_same_weights(store_path: Path, summaries: Path) -> None:
    store = TrajectoryStore.open(store_path)
    model = _model(store)
    stored = SummaryStore.open(summaries, store)
    from_state = predict(model, make_loader(store, "test", 7, WINDOW, summaries=stored))["logits"]
    from_history = predict(model, make_loader(store, "test", 7, WINDOW))["logits"]
    np.testing.assert_allclose(from_state, from_history, rtol=0, atol=1e-5)
    batch = next(iter(make_loader(store, "train", 4, WINDOW, summaries=stored)))
    assert batch.history.shape == (4, 1) and not batch.history_mask.any(), "stage-2 batches carry no history"
    metrics = evaluate(model, store, "test", 7, WINDOW, summaries=stored)
    assert metrics["count"] == len(store.samples("test"))


def test_a_summary_reads_only_behaviours_before_its_samples_cutoff(
    store_path: Path, summaries: Path, tmp_path: Path
) -> None:
    """Rewrite one user's behaviours from trajectory row p on: only samples whose history reaches p may change."""
    copy = tmp_path / "store"
    shutil.copytree(store_path, copy)
    store = TrajectoryStore.open(copy)
    samples = store.samples("train")
    ends = np.asarray(samples.end)
    row = int(np.flatnonzero(ends >= 4)[0])  # a sample with a history
    user, cut = int(samples.user[row]), int(ends[row]) - 2  # rewrite from 2 behaviours before its cutoff
    lo, hi = int(store.offsets[user]), int(store.offsets[user + 1])
    items = np.load(copy / "trajectories" / "item.npy")
    items[lo + cut : hi] = 1 + (items[lo + cut : hi] % (store.sizes["num_items"] - 1))  # other real items
    np.save(copy / "trajectories" / "item.npy", items)
    store = TrajectoryStore.open(copy)
    changed_path = tmp_path / "changed"
    compute_summaries(_model(store), store, changed_path, "vista", PARAMS, WINDOW, batch_size=5, dtype="float32")
    before = SummaryStore.open(summaries).split("train")
    after = SummaryStore.open(changed_path).split("train")
    same_user = np.asarray(samples.user) == user
    untouched = ~same_user | (ends <= cut)  # histories that end before the rewritten rows
    np.testing.assert_array_equal(after[untouched], before[untouched])
    reached = same_user & (ends > cut)
    assert reached[row] and not np.allclose(after[row], before[row]), "the test must be able to fail"


def test_a_bad_or_missing_summary_store_is_refused_clearly(store_path: Path, summaries: Path, tmp_path: Path) -> None:
    store = TrajectoryStore.open(store_path)
    with pytest.raises(FileNotFoundError, match=r"summaries.json not found: .* is not a summary store.*summarise"):
        SummaryStore.open(tmp_path / "nothing")
    broken = tmp_path / "broken"
    shutil.copytree(summaries, broken)
    (broken / "valid.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"valid.npy is missing: the summary store is incomplete"):
        SummaryStore.open(broken)
    np.save(broken / "valid.npy", np.zeros((2, 3, 12), np.float32))
    with pytest.raises(ValueError, match=r"valid.npy must hold float32 \[\d+, 3, 12\].*Got float32 \[2, 3, 12\]"):
        SummaryStore.open(broken)
    np.save(broken / "valid.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"valid.npy is damaged"):
        SummaryStore.open(broken)
    shutil.copy(summaries / "valid.npy", broken / "valid.npy")
    meta = json.loads((broken / "summaries.json").read_text())
    (broken / "summaries.json").write_text(json.dumps(meta | {"vocab_sha": "0" * 16}))
    with pytest.raises(ValueError, match=r"vocabulary sha 0{16}, but .* has [0-9a-f]{16}"):
        SummaryStore.open(broken, store)
    (broken / "summaries.json").write_text(json.dumps(meta))
    (broken / "model.safetensors").write_bytes(b"not the weights")
    with pytest.raises(ValueError, match=r"model.safetensors does not match the sha256"):
        SummaryStore.open(broken).weights()


def _config(store: Path, summaries: Path | None = None, **params: Any) -> Config:
    data: dict[str, Any] = {"path": str(store), "max_history": WINDOW}
    if summaries is not None:
        data["summaries"] = str(summaries)
    return Config.from_dict(
        {
            "model": {"name": "vista", **PARAMS, **params},
            "data": data,
            "train": {"batch_size": 32, "epochs": 1, "max_steps": 6, "lr": 0.01, "progress": False},
        }
    )


def test_two_stage_training_trains_only_the_candidate_side(store_path: Path, tmp_path: Path) -> None:
    stage_one = tmp_path / "stage1"
    train(_config(store_path), stage_one)
    summary_path = tmp_path / "z"
    meta = summarise(stage_one, summary_path, max_history=WINDOW, dtype="float32")
    assert meta["source"]["run"] == "stage1" and set(meta["splits"]) == set(SPLITS)
    stage_two = tmp_path / "stage2"
    result = train(_config(store_path, summary_path), stage_two)
    assert result["test"]["count"] == len(TrajectoryStore.open(store_path).samples("test"))
    first, second = load_run(stage_one), load_run(stage_two)
    before, after = first.model.state_dict(), second.model.state_dict()
    assert torch.equal(before["summary_tokens"], after["summary_tokens"]), "the summariser is frozen"
    assert torch.equal(before["embedding.item_embedding.weight"], after["embedding.item_embedding.weight"]), (
        "shared tables too"
    )
    assert not torch.equal(before["target_query.weight"], after["target_query.weight"]), "the candidate side trains"
    # The frozen user side still computes exactly the stored summaries, so the stage-2 model serves from a cache.
    store = second.store
    rows = np.arange(len(store.samples("test")))
    with torch.no_grad():
        state = second.model.user_state(collate(store, store.samples("test"), rows, WINDOW))
    torch.testing.assert_close(SummaryStore.open(summary_path).state("test", rows), state, rtol=0, atol=1e-6)
    assert second.evaluate("test")["auc"] == pytest.approx(result["test"]["auc"])
    with pytest.raises(ValueError, match=r"was computed by model 'vista' with params .* but the config builds"):
        train(_config(store_path, summary_path, num_summaries=2), tmp_path / "other")


def test_stage_two_step_reads_no_history_and_rejects_other_models(store_path: Path, summaries: Path) -> None:
    store = TrajectoryStore.open(store_path)
    stored = SummaryStore.open(summaries, store)
    batch = next(iter(make_loader(store, "train", 4, WINDOW, summaries=stored)))
    from longrec.search.config import SearchConfig

    model = _model(store)
    assert torch.isfinite(train_step(model, batch, SearchConfig(), make_optimizer(model, 0.01)))
    din = build_model_for_sizes("din", {"dim": 4}, store.sizes)
    with pytest.raises(TypeError, match=r"stored user states .* DIN has no user_state"):
        train_step(din, batch, SearchConfig(), make_optimizer(din, 0.01))


def test_check_batch_refuses_a_user_state_of_another_batch_size(store_path: Path, summaries: Path) -> None:
    from longrec.data.batch import check_batch

    store = TrajectoryStore.open(store_path)
    batch = next(iter(make_loader(store, "train", 4, WINDOW, summaries=SummaryStore.open(summaries))))
    check_batch(batch)
    assert batch.user_state is not None
    with pytest.raises(
        ValueError, match=r"batch.user_state must be a float tensor \[B, ...\] with B = 4. Got .*\[3, 3, 12\]"
    ):
        check_batch(batch.replace(user_state=batch.user_state[:3]))
