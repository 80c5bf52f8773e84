"""Head options of DIN, TWIN and DARE: a normalised head input (BatchNorm in proper eval mode, or LayerNorm) and the
reference code's N(0, std²) initialisation of every weight."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from longrec.data.batch import Batch

NAMES = ("din", "twin", "dare")


def _rows(batch: Batch, rows: slice) -> Batch:
    return Batch(**{name: value[rows] for name, value in batch.fields().items()})


@pytest.mark.parametrize("name", NAMES)
def test_batchnorm_heads_learn_batch_statistics_and_evaluate_each_sample_on_its_own(
    name: str, make_model: Callable[..., nn.Module], batch: Batch
) -> None:
    model = make_model(name, head_norm="batch", **({} if name == "din" else {"aux_loss": True}))
    norm = model.head[0]
    assert isinstance(norm, nn.BatchNorm1d)
    model.train()
    logits = model(batch)
    F.binary_cross_entropy_with_logits(logits, batch.label).backward()
    assert int(norm.num_batches_tracked) == 1 and not torch.equal(
        norm.running_mean, torch.zeros_like(norm.running_mean)
    )
    assert norm.weight.grad is not None and norm.weight.grad.abs().sum() > 0
    model.eval()  # running statistics: a sample's logit no longer depends on the rest of its batch
    with torch.no_grad():
        torch.testing.assert_close(model(_rows(batch, slice(0, 1))), model(batch)[:1])
        torch.testing.assert_close(model(_rows(batch, slice(2, 5))), model(batch)[2:5])


@pytest.mark.parametrize("name", NAMES)
def test_layernorm_heads_normalise_each_rows_input(
    name: str, make_model: Callable[..., nn.Module], batch: Batch
) -> None:
    model = make_model(name, head_norm="layer").eval()
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    model.head[0].register_forward_hook(lambda module, args, out: seen.append((args[0], out)))
    with torch.no_grad():
        model(batch)
    x, out = seen[0]  # [B, F] before and after LayerNorm (its affine part starts as the identity)
    variance = x.var(-1, unbiased=False)
    torch.testing.assert_close(out.mean(-1), torch.zeros(len(batch)), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(-1, unbiased=False), variance / (variance + 1e-5), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_normal_init_draws_every_weight_but_the_biases_from_n0_std(
    name: str, make_model: Callable[..., nn.Module]
) -> None:
    """As the reference code: every parameter not named `bias` (Linear weights, PReLU slopes, BatchNorm scales) from
    N(0, std²); the biases keep PyTorch's initialisation; embedding tables stay their owners' (padding rows 0)."""
    torch.manual_seed(0)
    model = make_model(name, init="normal", init_std=0.01, head_hidden=(400, 80), head_norm="batch")
    torch.manual_seed(0)
    default = make_model(name, head_hidden=(400, 80), head_norm="batch")
    drawn = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.PReLU, nn.BatchNorm1d))]
    assert {type(m) for m in drawn} >= {nn.Linear, nn.BatchNorm1d} and any(isinstance(m, nn.PReLU) for m in drawn)
    weights = torch.cat([m.weight.detach().flatten() for m in drawn])
    assert abs(float(weights.std()) - 0.01) < 0.0005 and abs(float(weights.mean())) < 0.0005
    for m in model.modules():
        if isinstance(m, nn.PReLU | nn.BatchNorm1d):
            assert float(m.weight.detach().abs().max()) < 0.1, "slopes (0.25) and BN scales (1) are drawn too"
    linear_biases = [m.bias for m in model.modules() if isinstance(m, nn.Linear) and m.bias is not None]
    assert any(torch.count_nonzero(b) > 0 for b in linear_biases), "Linear biases keep PyTorch's uniform init"
    for m in model.modules():
        if isinstance(m, nn.Embedding) and m.padding_idx is not None:
            assert torch.count_nonzero(m.weight[m.padding_idx]) == 0
    first = next(m for m in default.modules() if isinstance(m, nn.Linear))
    assert float(first.weight.detach().std()) > 0.02, "PyTorch's default init is wider"


@pytest.mark.parametrize(("field", "value"), [("head_norm", "group"), ("init", "xavier")])
def test_unknown_head_options_are_refused(make_model: Callable[..., nn.Module], field: str, value: str) -> None:
    with pytest.raises(ValueError, match=rf"{field} must be one of .* Got '{value}' instead"):
        make_model("twin", **{field: value})
