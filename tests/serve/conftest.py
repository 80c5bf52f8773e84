"""Fixtures of the serving tests: a small store, a trained DIN run, its exported artifact, and a run whose weights
differ from it in known places (the "next day" of a delta)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from longrec.config import Config
from longrec.data.batch import Batch
from longrec.data.dataset import collate
from longrec.data.prepare import prepare
from longrec.data.protocols import ProtocolConfig
from longrec.data.store import TrajectoryStore
from longrec.run import train
from longrec.serve.artifact import export_run
from longrec.train.checkpoint import load_checkpoint, save_checkpoint
from tests.conftest import make_log

CHANGED_ITEMS = (3, 5, 17)  # item rows the "next day" run changes


def run_config(store: Path, **train: object) -> Config:
    return Config.from_dict(
        {
            "model": {"name": "din", "dim": 4, "attention_hidden": [8], "head_hidden": [8]},
            "data": {"path": str(store), "max_history": 10},
            "train": {"batch_size": 16, "epochs": 1, "lr": 0.01, "progress": False, **train},
        }
    )


@pytest.fixture(scope="session")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("serve-store") / "s"
    prepare(make_log(num_users=30, events=20, seed=9), out, ProtocolConfig.for_protocol("T"))
    return out


@pytest.fixture(scope="session")
def run_dir(store_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("serve-runs") / "din"
    train(run_config(store_path), out)
    return out


@pytest.fixture(scope="session")
def artifact_dir(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_run(run_dir, tmp_path_factory.mktemp("serve-models") / "din")


def next_day(run: Path, out: Path, items: tuple[int, ...] = CHANGED_ITEMS) -> Path:
    """A copy of `run` whose best model differs in the item rows `items` and in every dense tensor."""
    shutil.copytree(run, out)
    checkpoint = load_checkpoint(out / "checkpoint.pt")
    state = checkpoint["model"]
    for name, tensor in state.items():
        if name.endswith("item_embedding.weight"):
            tensor[list(items)] += 0.5
        elif "embedding" not in name and tensor.is_floating_point():
            tensor += 0.01
    checkpoint["step"] += 10
    save_checkpoint(out / "checkpoint.pt", checkpoint)
    return out


@pytest.fixture(scope="session")
def next_run_dir(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return next_day(run_dir, tmp_path_factory.mktemp("serve-next") / "din-day2")


@pytest.fixture(scope="session")
def batch(store_path: Path) -> Batch:
    store = TrajectoryStore.open(store_path)
    samples = store.samples("test")
    return collate(store, samples, np.arange(min(16, len(samples))), 10)


def logits(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    with torch.no_grad():
        return model(batch)


def read_meta(folder: Path, name: str = "model.json") -> dict[str, object]:
    return dict(json.loads((folder / name).read_text()))
