"""The training loop: run directory, best checkpoint, early stopping, and exact resume after a crash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from longrec.config import load_config
from longrec.data.prepare import prepare
from longrec.data.protocols import ProtocolConfig
from longrec.models import build_model
from longrec.run import train
from longrec.train.checkpoint import load_checkpoint
from longrec.train.step import l2_penalty
from tests.conftest import make_log


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("store") / "s"
    prepare(make_log(num_users=30, events=20, seed=9), out, ProtocolConfig.for_protocol("T"))
    return str(out)


def _config(store_path: str, *extra: str):  # type: ignore[no-untyped-def]
    base = [
        "model.name=din",
        "model.dim=4",
        "model.attention_hidden=[8]",
        "model.head_hidden=[8]",
        f"data.path={store_path!r}",
        "data.max_history=10",
        "train.batch_size=16",
        "train.epochs=3",
        "train.eval_every=7",
        "train.lr=0.01",
        "train.progress=false",
        "train.l2=1e-4",
    ]
    return load_config(None, [*base, *extra])


def test_run_directory_holds_config_checkpoint_and_metrics(tmp_path: Path, store_path: str) -> None:
    result = train(_config(store_path), tmp_path / "run")
    for name in ("config.json", "checkpoint.pt", "last.pt", "metrics.json", "metrics.jsonl", "log.txt"):
        assert (tmp_path / "run" / name).is_file(), name
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for split in ("valid", "test"):
        assert {"auc", "gauc", "logloss", "count"} <= set(saved[split])
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    best = max(lines, key=lambda x: x["auc"])
    assert result["best_step"] == best["step"] == load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"]
    assert result["valid"]["auc"] == pytest.approx(best["auc"]), "the reported model is the best checkpoint"


def test_killed_and_resumed_run_matches_uninterrupted_run(tmp_path: Path, store_path: str) -> None:
    config = _config(store_path)
    full = train(config, tmp_path / "full")

    class Killed(Exception):
        pass

    def crash(step: int) -> None:
        if step == 17:  # after the step-14 checkpoint, mid-epoch: steps 15-17 must be redone identically
            raise Killed

    with pytest.raises(Killed):
        train(config, tmp_path / "resumed", on_step=crash)
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["state"]["step"] == 14
    resumed = train(config, tmp_path / "resumed", resume=True)
    for split in ("valid", "test"):
        assert resumed[split] == full[split]
    assert (resumed["steps"], resumed["best_step"]) == (full["steps"], full["best_step"])


def test_early_stopping_stops_after_patience(tmp_path: Path, store_path: str) -> None:
    config = _config(store_path, "train.patience=1", "train.lr=1.0", "train.epochs=20", "train.divergence=0")
    result = train(config, tmp_path / "run")
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert result["steps"] < 20 * 7, "early stopping never triggered"
    assert len(lines) >= 2


def test_max_steps_limits_training(tmp_path: Path, store_path: str) -> None:
    assert train(_config(store_path, "train.max_steps=5"), tmp_path / "run")["steps"] == 5


def test_l2_penalty_skips_embeddings_and_biases() -> None:
    model = build_model("din", num_items=10, dim=4, attention_hidden=(8,), head_hidden=(8,))
    expected = sum(p.pow(2).sum() for n, p in model.named_parameters() if p.dim() > 1 and "embedding" not in n)
    torch.testing.assert_close(l2_penalty(model), expected)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Embedding):
                m.weight.mul_(100)
    torch.testing.assert_close(l2_penalty(model), expected)
