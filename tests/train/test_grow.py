"""Growing a trained model and its Adam state onto appended ids: old rows and their moments are kept, new rows are
initialised as the model initialises them with zero moments, and training goes on."""

from __future__ import annotations

import pytest
import torch

from longrec.models import MODELS, build_model, data_params
from longrec.search.config import SearchConfig
from longrec.train.grow import grow_optimizer_state, grow_weights
from longrec.train.step import make_optimizer, train_step
from tests.models.conftest import SIZES, make_batch

ADDED = 7  # new item ids


def _din(sizes: dict[str, int], seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("din", **data_params(MODELS["din"][0], sizes), dim=8)


@pytest.fixture
def trained() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = _din(SIZES)
    optimizer = make_optimizer(model, 1e-2)
    for seed in range(2):
        train_step(model, make_batch(seed), SearchConfig(), optimizer)
    return model, optimizer


def test_old_rows_and_their_adam_moments_are_kept_and_new_rows_start_as_initialised(trained) -> None:
    model, optimizer = trained
    grown_sizes = {**SIZES, "num_items": SIZES["num_items"] + ADDED}
    fresh = _din(grown_sizes, seed=1)
    initial = {k: v.clone() for k, v in fresh.state_dict().items()}
    state, rows = grow_weights(model.state_dict(), fresh.state_dict())
    table = "embedding.item_embedding.weight"
    assert rows == {table: [SIZES["num_items"], SIZES["num_items"] + ADDED]}, "only the item table grew"
    fresh.load_state_dict(state)
    old, new = model.state_dict(), fresh.state_dict()
    V = SIZES["num_items"]
    torch.testing.assert_close(new[table][:V], old[table], rtol=0, atol=0)
    torch.testing.assert_close(new[table][V:], initial[table][V:], rtol=0, atol=0)
    for name in old:
        if name != table:
            torch.testing.assert_close(new[name], old[name], rtol=0, atol=0)

    adam = make_optimizer(fresh, 1e-2)
    adam.load_state_dict(grow_optimizer_state(optimizer.state_dict(), fresh, rows))
    index = [n for n, _ in fresh.named_parameters()].index(table)
    saved = optimizer.state_dict()["state"][index]
    loaded = adam.state_dict()["state"][index]
    for key in ("exp_avg", "exp_avg_sq"):
        assert loaded[key].shape == (V + ADDED, 8)
        torch.testing.assert_close(loaded[key][:V], saved[key], rtol=0, atol=0)
        assert not loaded[key][V:].any(), f"{key} of a new row starts at zero"
    assert float(loaded["step"]) == float(saved["step"]) == 2

    batch = make_batch(5)
    batch = type(batch)(**{**batch.__dict__, "target": batch.target.clone()})
    batch.target[0] = V + 3  # a new id as a target
    before = fresh.state_dict()[table].clone()
    loss = train_step(fresh, batch, SearchConfig(), adam)
    assert torch.isfinite(loss)
    after = fresh.state_dict()[table]
    assert not torch.equal(after[V + 3], before[V + 3]), "the new row trains"
    assert torch.equal(after[V + 4], before[V + 4]), "a new row no batch touched stays (zero moments, no gradient)"


def test_a_tensor_that_shrinks_or_changes_width_is_refused(trained) -> None:
    model, _ = trained
    smaller = _din({**SIZES, "num_items": SIZES["num_items"] - 1})
    with pytest.raises(ValueError, match=r"embedding\.item_embedding\.weight \[\d+, 8\] -> \[\d+, 8\].*Only rows"):
        grow_weights(model.state_dict(), smaller.state_dict())
    wider = build_model("din", **data_params(MODELS["din"][0], SIZES), dim=4)
    with pytest.raises(ValueError, match=r"cannot grow into the new store's model"):
        grow_weights(model.state_dict(), wider.state_dict())
