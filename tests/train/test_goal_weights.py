"""Per-goal loss weights (`train.goal_weights`): validated at load, mapped to goal ids by the store's goal vocabulary,
and applied to the BCE of every training step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from longrec.config import ConfigError, load_config
from longrec.data.prepare import prepare
from longrec.data.protocols import ProtocolConfig
from longrec.data.store import TrajectoryStore
from longrec.models import build_model_for_sizes
from longrec.run import train
from longrec.train.checkpoint import load_checkpoint
from longrec.train.step import goal_loss_weights
from tests.conftest import make_log

MODEL = {"dim": 4, "head_hidden": (8,), "goal_heads": True}  # TIN with one head per goal


def test_weights_are_indexed_by_goal_id_and_default_to_one() -> None:
    weights = goal_loss_weights({"buy": 2.0, "cart": 0.5}, ["click", "cart", "buy"])
    assert weights is not None and weights.tolist() == [1.0, 1.0, 0.5, 2.0]  # id 0 = unknown goal
    assert goal_loss_weights({}, ["click", "buy"]) is None


def test_an_unknown_goal_name_is_reported_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"'by' is not a goal of the data \(did you mean 'buy'\?\)\. Its goals: click"):
        goal_loss_weights({"by": 2.0}, ["click", "buy"])
    with pytest.raises(ValueError, match=r"Its goals: none: the data has no goal column"):
        goal_loss_weights({"buy": 2.0}, [])


@pytest.mark.parametrize("value", ["-1.0", "1e999", "true", "'heavy'"])
def test_goal_weights_are_validated_at_load(value: str) -> None:
    with pytest.raises(ConfigError, match=r"train\.goal_weights\['buy'\] must be a finite float >= 0"):
        load_config(None, [f"train.goal_weights={{buy = {value}}}"])
    assert load_config(None, ["train.goal_weights={buy = 2}"]).train.goal_weights == {"buy": 2}


@pytest.fixture(scope="module")
def goal_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("goals") / "s"
    log = make_log(num_users=20, events=20, seed=4, impressions=6, goals=("click", "buy"))
    prepare(log, out, ProtocolConfig.for_protocol("T"))
    return str(out)


def _train(store: str, out: Path, *extra: str) -> dict:
    config = load_config(
        None,
        [
            "model.name=tin",
            "model.dim=4",
            "model.head_hidden=[8]",
            "model.goal_heads=true",
            f"data.path={store!r}",
            "data.max_history=8",
            "train.batch_size=32",
            "train.epochs=1",
            "train.lr=0.05",
            "train.progress=false",
            *extra,
        ],
    )
    return train(config, out)


def test_weights_scale_each_goals_loss(tmp_path: Path, goal_store: str) -> None:
    # Weight 0 for every goal of the data: no gradient reaches the model, which stays at its seeded initialisation.
    _train(goal_store, tmp_path / "off", "train.goal_weights={click = 0.0, buy = 0.0}", "train.max_steps=2")
    _train(goal_store, tmp_path / "on", "train.goal_weights={click = 1.0}", "train.max_steps=2")
    off, on = (load_checkpoint(tmp_path / run / "last.pt")["model"] for run in ("off", "on"))
    torch.manual_seed(0)  # the loop seeds with train.seed = 0 before building the model
    fresh = build_model_for_sizes("tin", MODEL, TrajectoryStore.open(goal_store).sizes).state_dict()
    for name, value in fresh.items():
        torch.testing.assert_close(off[name], value, rtol=0, atol=0, msg=name)
    assert any(not torch.equal(on[name], value) for name, value in fresh.items())
    with pytest.raises(ValueError, match=r"'like' is not a goal of the data"):
        _train(goal_store, tmp_path / "bad", "train.goal_weights={like = 1.0}")
