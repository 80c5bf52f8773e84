"""Day-by-day training: `train(..., continue_from=RUN)` on a store grown from the run's vocabulary starts from the
run's last weights and Adam state (tables grown), records the growth, and scores the new window before training."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from longrec.config import Config
from longrec.data.prepare import prepare
from longrec.data.protocols import ProtocolConfig
from longrec.data.store import TrajectoryStore
from longrec.eval.evaluate import evaluate
from longrec.models import build_model_for_sizes
from longrec.run import train
from longrec.run.incremental import continuation
from longrec.settings import ConfigError
from longrec.train.checkpoint import load_checkpoint
from tests.conftest import make_log, prepare_two_days


def _config(store: Path, **model: Any) -> Config:
    return Config.from_dict(
        {
            "model": {"name": "din", "dim": 4, "attention_hidden": [8], "head_hidden": [8], **model},
            "data": {"path": str(store), "max_history": 10},
            "train": {"batch_size": 16, "epochs": 1, "lr": 0.01, "progress": False},
        }
    )


@pytest.fixture(scope="module")
def days(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two day stores from one log cut in thirds: day 1 trains on the first, validates on the second; day 2 (ids
    grown from day 1's, a new user and new items added) trains on the second and validates on the third."""
    root = tmp_path_factory.mktemp("days")
    prepare_two_days(root)
    run = root / "run1"
    train(_config(root / "day1"), run)
    return {"day1": root / "day1", "day2": root / "day2", "run1": run, "root": root}


def test_a_continued_run_starts_from_the_grown_last_state_and_records_the_growth(days: dict[str, Path]) -> None:
    day1, day2 = TrajectoryStore.open(days["day1"]), TrajectoryStore.open(days["day2"])
    assert day2.sizes["num_items"] > day1.sizes["num_items"] and len(day2.samples("test")) == 0
    out = days["root"] / "run2"
    result = train(_config(days["day2"]), out, continue_from=days["run1"])
    record = json.loads((out / "config.json").read_text())["run"]["continued_from"]
    table = "embedding.item_embedding.weight"
    assert record["grown"][table] == [day1.sizes["num_items"], day2.sizes["num_items"]]
    assert record["vocabulary_added"]["item_id"] == day2.sizes["num_items"] - day1.sizes["num_items"]
    assert record["vocab_sha"] == day1.manifest["vocab_sha"] and record["step"] > 0
    assert result["continued_from"] == record

    # progressive validation: the incoming model (run 1's last weights, grown) scored on day 2's train samples
    start = continuation(days["run1"], _config(days["day2"]), day2, out)
    assert start.model is not None
    model = build_model_for_sizes("din", _config(days["day2"]).model.params, day2.sizes)
    model.load_state_dict(start.model)
    expected = evaluate(model, day2, "train", max_history=10, batch_size=4096)
    assert result["before_training"]["split"] == "train"
    assert result["before_training"]["auc"] == pytest.approx(expected["auc"])
    last = load_checkpoint(days["run1"] / "last.pt")["model"]
    V = day1.sizes["num_items"]
    torch.testing.assert_close(start.model[table][:V], last[table], rtol=0, atol=0)


def test_a_store_not_grown_from_the_run_is_refused(days: dict[str, Path], tmp_path: Path) -> None:
    prepare(make_log(num_users=30, events=20, seed=3), tmp_path / "other", ProtocolConfig.for_protocol("T"))
    with pytest.raises(ValueError, match=r"did not grow from it \(its ancestors: none.*--vocab-from"):
        train(_config(tmp_path / "other"), tmp_path / "run", continue_from=days["run1"])
    assert not (tmp_path / "run").exists(), "nothing is written"


def test_another_model_config_is_refused(days: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model\.dim was 4, now 8"):
        train(_config(days["day2"], dim=8), tmp_path / "run", continue_from=days["run1"])


def test_the_commands_continue_a_run_day_by_day(
    days: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from longrec.cli import main

    log = make_log(num_users=30, events=20, seed=9)
    log.write_csv(tmp_path / "log.csv")
    t = int(log["timestamp"].max()) + 1
    # --vocab-from a run directory: its store's ids
    argv = ["prepare", str(tmp_path / "log.csv"), "--format", "csv", "--vocab-from", str(days["run1"]),
            "--set", f"split_times=[0, {t - 5000}, {t}]", "--out", str(tmp_path / "day2")]  # fmt: skip
    assert main(argv) == 0
    day1, day2 = TrajectoryStore.open(days["day1"]), TrajectoryStore.open(tmp_path / "day2")
    assert day2.vocab("item_id").head(day1.sizes["num_items"] - 1).to_list() == day1.vocab("item_id").to_list()
    config = tmp_path / "din.toml"
    config.write_text(
        'model = { name = "din", dim = 4, attention_hidden = [8], head_hidden = [8] }\n'
        f'data = {{ path = "{tmp_path / "day2"}", max_history = 10 }}\n'
        "train = { batch_size = 16, epochs = 1, lr = 0.01 }\n"
    )
    argv = ["train", str(config), "--out", str(tmp_path / "run2"), "--continue-from", str(days["run1"]), "--quiet"]
    assert main(argv) == 0
    assert re.search(r"continued from .*run1 \(step \d+; .*\); on the new train split before training: AUC 0\.\d{4}",
                     capsys.readouterr().out)  # fmt: skip
    assert main([*argv[:4], "--quiet"]) == 2, "the same folder again without --force or --resume is refused"


class Crash(Exception):
    pass


def test_a_killed_continued_run_resumes_to_the_same_weights(days: dict[str, Path], tmp_path: Path) -> None:
    whole = train(_config(days["day2"]), tmp_path / "whole", continue_from=days["run1"])

    def crash(step: int) -> None:
        if step == 2:
            raise Crash

    with pytest.raises(Crash):  # killed before its first last.pt: the resume starts the continuation again
        train(_config(days["day2"]), tmp_path / "killed", continue_from=days["run1"], on_step=crash)
    assert not (tmp_path / "killed" / "last.pt").exists()
    resumed = train(_config(days["day2"]), tmp_path / "killed", resume=True)
    assert resumed["continued_from"] == whole["continued_from"]
    assert resumed["valid"]["auc"] == pytest.approx(whole["valid"]["auc"], abs=1e-6)
    assert resumed["before_training"]["auc"] == pytest.approx(whole["before_training"]["auc"], abs=1e-6)
    with pytest.raises(ValueError, match=r"differs from the run .* continued"):
        train(_config(days["day2"]), tmp_path / "killed", resume=True, continue_from=days["day1"])
