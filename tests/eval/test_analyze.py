"""`longrec analyze`: attention profiles per goal, retrieval example, PNGs written from a real run directory."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from longrec.cli import main
from longrec.config import load_config
from longrec.data.dataset import collate
from longrec.data.prepare import prepare
from longrec.data.protocols import ProtocolConfig
from longrec.data.store import TrajectoryStore
from longrec.eval.analyze import attention_profile, key_names, retrieval_example
from longrec.models import build_model
from longrec.models.tdpe import TDPEKey
from longrec.run import train
from longrec.search.config import SearchConfig
from tests.conftest import make_log

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("analyze")
    log = make_log(num_users=20, events=20, seed=4, impressions=6, goals=("click", "buy"))
    prepare(log, root / "data", ProtocolConfig.for_protocol("T", min_history=0))
    overrides = [
        "model.name='tin'",
        "model.dim=4",
        "model.head_hidden=[8]",
        f"data.path={str(root / 'data')!r}",
        "data.max_history=12",
        "train.epochs=1",
        "train.batch_size=32",
        "train.progress=false",
        "search.method='hierarchical'",
        "search.k=5",
    ]
    train(load_config(None, overrides), root / "run")
    return root / "run"


def test_analyze_writes_every_plot_and_the_numbers_behind_them(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--quiet", "analyze", str(run_dir), "--samples", "64"]) == 0
    printed = capsys.readouterr().out.split()
    names = {Path(p).name for p in printed}
    assert {"attention_by_position.png", "attention_by_time_gap.png", "search_retrieval.png"} <= names
    assert "validation_curve.png" in names
    for path in printed:
        assert Path(path).stat().st_size > 5_000, f"{path} looks empty"
    numbers = json.loads((run_dir / "plots" / "analysis.json").read_text())
    assert len(numbers["attention"]["position_mean"]) == 3  # goals: unknown, buy, click
    assert set(numbers["retrieval_example"]["kept"]) == {"latest", "category", "hierarchical"}


def test_attention_profile_averages_weights_by_goal_and_position(tmp_path: Path) -> None:
    prepare(make_log(num_users=8, events=10, seed=1), tmp_path / "d", ProtocolConfig.for_protocol("T"))
    store = TrajectoryStore.open(tmp_path / "d")
    samples = store.samples("train")
    batch = collate(store, samples, np.arange(len(samples)), 6)
    model = build_model("tin", num_items=store.sizes["num_items"], dim=4)
    profile = attention_profile(model, [batch], num_goals=1)
    assert profile is not None
    with torch.no_grad():
        w = model.attention_weights(batch)
    pos = batch.history_position
    expected = float(w[(pos == 1) & batch.history_mask].mean())  # most recent behaviour
    assert profile["position_mean"][0][1] == pytest.approx(expected, rel=1e-5)
    assert profile["position_count"][0][1] == float(((pos == 1) & batch.history_mask).sum())


def test_retrieval_example_marks_what_each_searcher_kept(run_dir: Path) -> None:
    store = TrajectoryStore.open(json.loads((run_dir / "config.json").read_text())["data"]["path"])
    samples = store.samples("valid")
    batch = collate(store, samples, np.arange(min(8, len(samples))), 12)
    row = int(batch.history_mask.sum(1).argmax())
    example = retrieval_example(torch.nn.Identity(), batch, row, SearchConfig(method="latest", k=3))
    n = int(batch.history_mask[row].sum())
    assert example["kept"]["latest"] == [False] * (n - min(3, n)) + [True] * min(3, n)
    assert all(d >= 1 for d, kept in zip(example["depth"], example["kept"]["hierarchical"], strict=True) if kept)


class GoalDecay(torch.nn.Module):
    """Attention exp(-Δt / τ_goal) normalised over the history: goal 0 decays fast, goal 1 slowly."""

    def __init__(self, tau_days: tuple[float, ...]) -> None:
        super().__init__()
        self.tau = torch.tensor(tau_days) * 86_400

    def attention_weights(self, batch):
        scores = -batch.history_time_delta / self.tau[batch.goal][:, None]  # [B, L]
        return scores.masked_fill(~batch.history_mask, float("-inf")).softmax(-1).nan_to_num(0.0)  # [B, L]


def test_mean_gap_days_orders_goals_by_how_fast_their_attention_decays(tmp_path: Path) -> None:
    prepare(make_log(num_users=8, events=30, seed=2), tmp_path / "d", ProtocolConfig.for_protocol("T"))
    store = TrajectoryStore.open(tmp_path / "d")
    samples = store.samples("train")
    batch = collate(store, samples, np.arange(len(samples)), 30)
    batches = [dataclasses.replace(batch, goal=torch.full_like(batch.target, goal)) for goal in (0, 1)]
    profile = attention_profile(GoalDecay((0.5, 50.0)), batches, num_goals=2)
    assert profile is not None
    fast, slow = profile["mean_gap_days"]
    assert 0 < fast < slow
    mask = batch.history_mask
    w = GoalDecay((50.0, 50.0)).attention_weights(dataclasses.replace(batch, goal=torch.zeros_like(batch.target)))
    rows = mask.any(1)
    expected = ((w * batch.history_time_delta).sum(1)[rows] / 86_400).mean()
    assert slow == pytest.approx(float(expected), rel=1e-5)


def train_small(root: Path, model: list[str], seed: int, goals: tuple[str, ...] = ("click",)) -> Path:
    """A one-epoch run of the model table `model` (overrides) on a small labelled log, in root / "run"."""
    log = make_log(num_users=20, events=20, seed=seed, impressions=6, goals=goals)
    prepare(log, root / "data", ProtocolConfig.for_protocol("T", min_history=0))
    overrides = [*model, "model.dim=4", "model.head_hidden=[8]", f"data.path={str(root / 'data')!r}"]
    overrides += ["data.max_history=12", "train.epochs=1", "train.batch_size=32", "train.progress=false"]
    train(load_config(None, overrides), root / "run")
    return root / "run"


def test_analyze_draws_dsi_tins_field_groups_and_what_drives_each(tmp_path: Path) -> None:
    train_small(tmp_path, ["model.name='dsi_tin'", "model.temporal='both'"], seed=5)
    assert main(["--quiet", "analyze", str(tmp_path / "run"), "--samples", "64"]) == 0
    plots = tmp_path / "run" / "plots"
    for name in ("attention_by_field_group.png", "attention_by_field.png"):
        assert (plots / name).stat().st_size > 5_000, name
    numbers = json.loads((plots / "analysis.json").read_text())
    assert numbers["attention"]["group_names"] == ["item", "category"]
    shares = numbers["field_shares"]
    assert shares["modules"] == ["item", "category"]
    assert [set(module) for module in shares["shares"]] == [{"item", "temporal"}, {"category", "temporal"}]
    for module in shares["shares"]:
        assert sum(module.values()) == pytest.approx(1.0)


class CategoryDecay(torch.nn.Module):
    """Attention exp(-Δt / τ_c) over the history, τ by the target's fine category (TDPE keyed by category): category
    ids below `split` decay fast (10 minutes), the others not at all (uniform attention)."""

    def __init__(self, num_categories: int, split: int) -> None:
        super().__init__()
        self.key, self.split = TDPEKey("category", num_categories, column=1), split

    @property
    def temporal_key(self) -> TDPEKey:
        return self.key

    def attention_weights(self, batch):
        ids = self.key.ids(batch)  # [B]
        tau = torch.where(ids < self.split, 600.0, float("inf"))  # [B] seconds
        scores = -batch.history_time_delta / tau[:, None]  # [B, L]
        return scores.masked_fill(~batch.history_mask, float("-inf")).softmax(-1).nan_to_num(0.0)  # [B, L]


def test_a_model_keyed_by_category_gets_one_curve_per_frequent_category(tmp_path: Path) -> None:
    prepare(make_log(num_users=10, events=30, seed=3), tmp_path / "d", ProtocolConfig.for_protocol("T"))
    store = TrajectoryStore.open(tmp_path / "d")
    samples = store.samples("train")
    batch = collate(store, samples, np.arange(len(samples)), 30)
    assert batch.target_category is not None
    fine = batch.target_category[:, 1]  # [B]
    values, counts = fine.unique(return_counts=True)
    split = int(values[len(values) // 2])  # half the categories decay fast
    profile = attention_profile(CategoryDecay(store.sizes["num_categories"], split), [batch], num_goals=1, top_keys=4)
    assert profile is not None and len(profile["position_mean"]) == 1  # the per-goal curves stay
    by_key = profile["by_key"]
    order = sorted(zip((-counts).tolist(), values.tolist(), strict=True))[:4]  # most frequent first, then smaller id
    assert by_key["key"] == "category (level 2)" and by_key["ids"] == [v for _, v in order]
    assert by_key["samples"] == [float(-c) for c, _ in order]
    for value, gap in zip(by_key["ids"], by_key["mean_gap_days"], strict=True):  # fast: well below the mean gap
        rows = (fine == value) & batch.history_mask.any(1)
        mask, delta = batch.history_mask[rows], batch.history_time_delta[rows]
        uniform = float(((delta * mask).sum(1) / mask.sum(1)).mean()) / 86_400  # [B'] -> days
        assert gap < uniform / 2 if value < split else gap == pytest.approx(uniform, rel=1e-5), (value, gap, uniform)
    names = key_names(store, TDPEKey("category", store.sizes["num_categories"], column=1), by_key["ids"])
    assert all(name.startswith("cat_2=10") for name in names)  # make_log's fine categories are 1000..1012


def test_analyze_draws_per_category_curves_for_tdpe_keyed_by_category(tmp_path: Path) -> None:
    keyed = ["model.name='tin'", "model.temporal='time_gap'", "model.tdpe='separate'", "model.tdpe_key='category'"]
    train_small(tmp_path, [*keyed, "model.tdpe_level=1"], seed=4, goals=("click", "buy"))
    assert main(["--quiet", "analyze", str(tmp_path / "run"), "--samples", "64"]) == 0
    plots = tmp_path / "run" / "plots"
    for name in ("attention_by_time_gap.png", "attention_by_time_gap_per_category.png"):
        assert (plots / name).stat().st_size > 5_000, name
    numbers = json.loads((plots / "analysis.json").read_text())
    by_key = numbers["attention"]["by_key"]
    assert by_key["key"] == "category (level 1)" and 1 <= len(by_key["ids"]) <= 8
    assert all(name.startswith("cat_1=") for name in by_key["names"])
    assert len(numbers["attention"]["position_mean"]) == 3  # the per-goal curves stay: unknown, buy, click
