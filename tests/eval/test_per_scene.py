"""Per-scene (per-scenario) metrics: `compute_metrics(scenes=...)`, and what `evaluate` reports for a store with
scenes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from longrec.data.dataset import make_loader
from longrec.data.prepare import prepare
from longrec.data.protocols import ProtocolConfig
from longrec.data.store import TrajectoryStore
from longrec.eval.evaluate import evaluate, predict
from longrec.eval.metrics import auc, compute_metrics, gauc
from longrec.ingest import load_log
from longrec.ingest.synthetic import SyntheticConfig, generate
from longrec.models import build_model_for_sizes


def test_compute_metrics_reports_every_metric_per_scene() -> None:
    rng = np.random.default_rng(0)
    labels, logits = rng.integers(0, 2, 300), rng.normal(size=300)
    users, scenes = rng.integers(0, 20, 300), rng.integers(1, 4, 300)
    out = compute_metrics(labels, logits, users, scenes=scenes)
    assert sorted(out["per_scene"]) == [1, 2, 3] and "per_goal" not in out
    assert sum(v["count"] for v in out["per_scene"].values()) == 300
    m = scenes == 2
    assert out["per_scene"][2]["auc"] == pytest.approx(auc(labels[m], logits[m]))
    assert out["per_scene"][2]["gauc"] == pytest.approx(gauc(labels[m], logits[m], users[m]))
    assert "per_scene" not in compute_metrics(labels, logits, users)


@pytest.fixture(scope="module")
def scene_store(tmp_path_factory: pytest.TempPathFactory) -> TrajectoryStore:
    root = tmp_path_factory.mktemp("scenes")
    config = SyntheticConfig(num_users=60, events_per_user=40, impressions_per_user=10, mechanisms=("a", "h"))
    generate(config).write(root / "raw")
    log = load_log(root / "raw", "synthetic")
    prepare(log.frame, root / "store", ProtocolConfig.for_protocol("T"), source="synthetic", load_report=log.report)
    return TrajectoryStore.open(root / "store")


def test_evaluate_reports_metrics_per_scene_by_name(scene_store: TrajectoryStore) -> None:
    torch.manual_seed(0)
    model = build_model_for_sizes("sfpnet", {"dim": 4, "head_hidden": [8]}, scene_store.sizes)
    metrics = evaluate(model, scene_store, "test", batch_size=64, max_history=20)
    assert set(metrics["per_scene"]) == {"feed", "search"}  # impressions come in the feed and in search only
    assert sum(v["count"] for v in metrics["per_scene"].values()) == metrics["count"]
    out = predict(model, make_loader(scene_store, "test", 64, 20))
    names = ["unknown", *map(str, scene_store.vocab("scene").to_list())]
    search = np.asarray([names[int(z)] == "search" for z in out["scenes"]])
    expected = auc(out["labels"][search], out["logits"][search])
    assert metrics["per_scene"]["search"]["auc"] == pytest.approx(expected)


def test_a_store_without_scenes_has_no_per_scene_metrics(tmp_path: Path) -> None:
    from tests.conftest import make_log

    prepare(make_log(num_users=20, events=20, impressions=5), tmp_path / "s", ProtocolConfig.for_protocol("T"))
    store = TrajectoryStore.open(tmp_path / "s")
    torch.manual_seed(0)
    model = build_model_for_sizes("din", {"dim": 4}, store.sizes)
    assert "per_scene" not in evaluate(model, store, "test", batch_size=64, max_history=10)
