"""Integration: synth -> prepare -> train -> eval through the CLI, asserting that the planted signal is learned."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from longrec.cli import main

pytestmark = pytest.mark.integration


def test_synth_prepare_train_eval_learns_the_planted_signal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw, data, run = tmp_path / "raw", tmp_path / "data", tmp_path / "run"
    sizes = ["num_users=400", "events_per_user=120", "impressions_per_user=30", "seed=1"]
    assert main(["--quiet", "synth", "--out", str(raw), *[a for s in sizes for a in ("--set", s)]]) == 0
    assert main(["--quiet", "prepare", str(raw), "--format", "synthetic", "--out", str(data)]) == 0
    assert "labelled impressions" in capsys.readouterr().out
    args = ["--set", f"data.path={str(data)!r}", "--set", "train.epochs=4", "--set", "train.batch_size=256"]
    assert main(["--quiet", "train", "configs/din_synthetic.toml", "--out", str(run), *args]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["valid"]["auc"] > 0.6, metrics["valid"]
    assert set(metrics["test"]["per_goal"]) == {"buy", "cart", "click"}
    capsys.readouterr()
    assert main(["--quiet", "eval", str(run), "--split", "test"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["auc"] == pytest.approx(metrics["test"]["auc"])
    assert (run / "eval_test.json").is_file()
