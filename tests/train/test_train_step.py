"""`train_step`, the one training step: the fast path gives the reference path's loss, gradients and update."""

import contextlib

import pytest
import torch

from longrec.data.batch import Batch
from longrec.models import MODELS, build_model, data_params
from longrec.models.layers import reference_paths
from longrec.search.config import SearchConfig
from longrec.train.step import make_optimizer, reuse_freed_memory, train_step
from tests.models.conftest import SIZES, make_batch

pytestmark = pytest.mark.usefixtures("one_thread")


class KeepGradients:
    """Stands in for the optimizer: zero_grad clears, step does nothing, so `.grad` holds the step's gradient.

    (The first `torch.optim` optimizer of a process imports torch._dynamo, 2-3 s; this test needs no update rule.)
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.model.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        pass


@pytest.mark.parametrize(
    ("name", "search", "params"),
    [
        ("din", SearchConfig(), {}),
        ("twin", SearchConfig(method="soft", k=4), {"aux_loss": True}),
        ("dare", SearchConfig(method="soft", k=4), {"aux_loss": True, "attention_dim": 4}),
    ],
)
def test_fast_train_step_equals_the_reference_step(name, search, params) -> None:
    batch = make_batch()
    goal_weight = torch.tensor([1.0, 2.0, 0.5, 1.0])  # [T] per goal id

    def one_step(reference: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        model = build_model(name, **data_params(MODELS[name][0], SIZES), dim=8, **params)
        optimizer = KeepGradients(model)
        if reference:
            with reference_paths():
                loss = train_step(model, batch, search, optimizer, l2=1e-3, goal_weight=goal_weight)
        else:
            loss = train_step(model, batch, search, optimizer, l2=1e-3, goal_weight=goal_weight)
        return loss, {n: p.grad for n, p in model.named_parameters()}

    loss, grads = one_step(reference=False)
    ref_loss, ref_grads = one_step(reference=True)
    torch.testing.assert_close(loss, ref_loss)
    for n, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[n], msg=lambda m, n=n: f"gradient of {n}: {m}")


def test_a_step_moves_the_parameters_and_returns_the_batch_loss() -> None:
    batch: Batch = make_batch()
    torch.manual_seed(0)
    model = build_model("din", **data_params(MODELS["din"][0], SIZES), dim=8)
    before = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        expected = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch.label)
    loss = train_step(model, batch, SearchConfig(), torch.optim.SGD(model.parameters(), lr=1e-2))
    torch.testing.assert_close(loss, expected)
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def test_reuse_freed_memory_is_safe_to_call_twice() -> None:
    assert reuse_freed_memory() == reuse_freed_memory()


def test_fused_adam_of_the_fast_path_makes_the_reference_update() -> None:
    # (The first optimizer of a process imports torch._dynamo, 2-3 s, shared with the other train tests.)
    batch = make_batch()
    params = []
    for reference in (False, True):
        torch.manual_seed(0)
        model = build_model("dare", **data_params(MODELS["dare"][0], SIZES), dim=8, aux_loss=True)
        with reference_paths() if reference else contextlib.nullcontext():
            optimizer = make_optimizer(model, lr=1e-2)
            assert optimizer.defaults["fused"] == (not reference)
            for _ in range(3):
                train_step(model, batch, SearchConfig(method="soft", k=4), optimizer)
        params.append(dict(model.named_parameters()))
    for name, value in params[0].items():
        torch.testing.assert_close(value, params[1][name], msg=lambda m, n=name: f"{n} after 3 steps: {m}")


def test_a_model_with_its_own_loss_trains_on_it_instead_of_bce() -> None:
    torch.manual_seed(0)
    B, L = 16, 6
    mask = torch.ones(B, L, dtype=torch.bool)
    batch = Batch(
        history=torch.randint(1, 30, (B, L)),
        history_mask=mask,
        target=torch.randint(1, 30, (B,)),
        label=(torch.arange(B) % 2).float(),
        history_position=torch.arange(L, 0, -1).expand(B, L),
    )
    model = build_model("td_sasrec", num_items=30, dim=8, num_heads=1, loss="sampled_softmax")
    expected = model.loss(batch)
    assert expected is not None
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    got = train_step(model, batch, SearchConfig(), optimizer)
    torch.testing.assert_close(got, expected.detach())


class WithExtraLoss(torch.nn.Module):
    """DIN whose forward also returns a regulariser (the hook VISTA's reconstruction and VQL's codebook use)."""

    def __init__(self) -> None:
        super().__init__()
        self.din = build_model("din", **data_params(MODELS["din"][0], SIZES), dim=8)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.din(batch)

    def forward_with_extra_loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        return self.din(batch), 3.0 + 0.0 * self.din.embedding.item_embedding.weight.sum()


def test_a_models_extra_loss_is_added_to_the_training_loss() -> None:
    batch = make_batch()
    torch.manual_seed(0)
    model = WithExtraLoss()
    with torch.no_grad():
        bce = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch.label)
    got = train_step(model, batch, SearchConfig(), KeepGradients(model))
    torch.testing.assert_close(got, bce + 3.0)
