"""The system options of the train loop against the plain path: key collection, bf16 autocast, torch.compile, the
device paths (CUDA ones under `-m gpu`). Bucketing is in tests/data/test_bucketing.py; background workers in
tests/data/test_dataset.py."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from longrec.config import load_config
from longrec.data.batch import Batch
from longrec.data.device import DevicePrefetcher, autocast, resolve_device
from longrec.data.prepare import prepare
from longrec.data.protocols import ProtocolConfig
from longrec.data.store import TrajectoryStore
from longrec.eval.evaluate import evaluate
from longrec.eval.metrics import auc
from longrec.models import MODELS, build_model, build_model_for_sizes, data_params
from longrec.models.layers import PReLU, collect_keys, dot_scores, key_collection, lookup, unique_ids, weighted_sum
from longrec.run import train
from longrec.search.config import SearchConfig
from longrec.train.step import compile_model, train_step
from tests.conftest import make_log
from tests.models.conftest import SIZES, make_batch

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
SEARCH = {"din": SearchConfig(), "twin": SearchConfig(method="soft", k=4), "dare": SearchConfig(method="soft", k=4)}


pytestmark = pytest.mark.usefixtures("one_thread")


class KeepGradients:
    """Stands in for the optimizer: `.grad` keeps the step's gradient (as in test_train_step.py)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.model.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        pass


def make(name: str, seed: int = 0, **params: object) -> nn.Module:
    torch.manual_seed(seed)
    extra = {"aux_loss": True} if name in ("twin", "dare") else {}
    return build_model(name, **data_params(MODELS[name][0], SIZES), dim=8, **extra, **params)


def step_gradients(model: nn.Module, batch: Batch, search: SearchConfig, **options: object):  # type: ignore[no-untyped-def]
    loss = train_step(model, batch, search, KeepGradients(model), **options)  # type: ignore[arg-type]
    return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# ------------------------------------------------------------------------------------------------ key collection
@pytest.mark.parametrize("num_rows", [7, 10_000], ids=["presence mask", "sort"])
def test_unique_ids_equals_torch_unique(num_rows: int) -> None:
    ids = torch.randint(0, 7, (5, 9, 2)) * (num_rows // 7)  # [5, 9, 2] heavy repeats
    unique, inverse = unique_ids(ids, num_rows)
    expected, expected_inverse = torch.unique(ids, return_inverse=True)
    assert torch.equal(unique, expected) and torch.equal(inverse, expected_inverse)
    assert torch.equal(unique[inverse], ids)


@pytest.mark.parametrize("num_items", [9, 100], ids=["small tables", "big tables"])
def test_collected_lookup_equals_the_plain_lookup_in_output_and_gradients(num_items: int) -> None:
    torch.manual_seed(0)
    items, categories = nn.Embedding(num_items, 4, padding_idx=0), nn.Embedding(6, 4, padding_idx=0)
    times = nn.Embedding(5, 4)  # no padding row: its row 0 trains
    tables = [items, categories, times]
    ids = [
        torch.tensor([[0, 3, 8, 3], [2, 2, 0, 3]]),  # [2, 4] repeated ids and padding
        torch.tensor([[[0, 0], [1, 5], [2, 3], [1, 5]], [[4, 1], [4, 1], [0, 0], [1, 1]]]),  # [2, 4, M = 2]
        torch.tensor([[0, 2, 1, 0], [4, 3, 0, 0]]),  # [2, 4]
    ]
    grad = torch.randn(2, 4, 16)
    outputs = []
    for collect in (False, True):
        for t in tables:
            t.weight.grad = None
        with collect_keys(collect):
            assert key_collection() is collect
            out = lookup(tables, ids)  # [2, 4, 16]
        (out * grad).sum().backward()
        outputs.append((out, [t.weight.grad.clone() for t in tables]))
    assert not key_collection(), "collect_keys restores the setting"
    (plain, plain_grads), (collected, collected_grads) = outputs
    assert torch.equal(collected, plain)
    for got, expected in zip(collected_grads, plain_grads, strict=True):
        torch.testing.assert_close(got, expected)
    assert (collected_grads[0][0] == 0).all() and (collected_grads[1][0] == 0).all(), "padding rows get no gradient"
    assert collected_grads[2][0].abs().sum() > 0


@pytest.mark.parametrize("name", ["din", "twin", "dare", "tin"])
def test_key_collection_gives_the_same_training_step(name: str) -> None:
    batch, search = make_batch(), SEARCH.get(name, SearchConfig())
    loss, grads = step_gradients(make(name), batch, search)
    with collect_keys():
        collected_loss, collected_grads = step_gradients(make(name), batch, search)
    torch.testing.assert_close(collected_loss, loss)
    assert collected_grads.keys() == grads.keys()
    for n, grad in grads.items():
        torch.testing.assert_close(collected_grads[n], grad, msg=lambda m, n=n: f"gradient of {n}: {m}")


# ------------------------------------------------------------------------------------------------ bf16 autocast
@pytest.mark.parametrize("name", ["din", "twin", "dare"])
@pytest.mark.parametrize("reference", [False, True], ids=["fast", "reference"])
def test_bf16_logits_are_within_2e2_of_fp32(name: str, reference: bool) -> None:
    from longrec.models.layers import reference_paths

    model = make(name, init_std=0.5).eval()
    last = [m for m in model.head.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(30.0)  # logits of order 1, so the tolerance means something
    batch = make_batch()
    with torch.no_grad(), reference_paths() if reference else contextlib.nullcontext():
        fp32 = model(batch)  # [B]
        with autocast("bf16", torch.device("cpu")):
            bf16 = model(batch)  # [B]
    assert bf16.dtype == torch.bfloat16, "the head ran in bf16"
    assert fp32.abs().max() > 0.5
    torch.testing.assert_close(bf16.float(), fp32, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("name", ["din", "twin", "dare"])
def test_bf16_training_step_gradient_points_the_fp32_way(name: str) -> None:
    batch, search = make_batch(), SEARCH[name]
    loss, grads = step_gradients(make(name), batch, search)
    bf16_loss, bf16_grads = step_gradients(make(name), batch, search, precision="bf16")
    assert bf16_loss.dtype == torch.float32, "the loss is computed in fp32"
    torch.testing.assert_close(bf16_loss, loss, atol=1e-2, rtol=1e-2)
    assert all(g.dtype == torch.float32 for g in bf16_grads.values()), "weights and gradients stay fp32"
    flat, bf16_flat = (torch.cat([g[n].flatten() for n in sorted(grads)]) for g in (grads, bf16_grads))
    assert F.cosine_similarity(flat, bf16_flat, dim=0) > 0.99


def test_fast_attention_kernels_run_in_fp32_under_autocast_and_backward_inside_it() -> None:
    torch.manual_seed(0)
    query, keys = torch.randn(3, 8, requires_grad=True), torch.randn(3, 5, 8, requires_grad=True)
    weights = torch.randn(3, 5).to(torch.bfloat16).requires_grad_()  # e.g. DIN's bf16 scorer output
    with autocast("bf16", torch.device("cpu")):
        scores = dot_scores(query, keys)  # [3, 5]
        pooled = weighted_sum(weights, keys)  # [3, 8]
        assert scores.dtype == pooled.dtype == torch.float32, "softmax input and pooling stay fp32"
        (scores.sum() + pooled.sum()).backward()  # a backward run inside the autocast block
    expected = torch.einsum("be,ble->bl", query, keys).sum() + torch.einsum("bl,ble->be", weights.float(), keys).sum()
    grads = torch.autograd.grad(expected, [query, keys])
    torch.testing.assert_close(query.grad, grads[0])
    torch.testing.assert_close(keys.grad, grads[1])
    assert weights.grad is not None and weights.grad.dtype == torch.bfloat16


def test_prelu_fast_path_sums_its_bf16_slope_gradient_in_fp32() -> None:
    torch.manual_seed(0)
    prelu, plain = PReLU(), nn.PReLU()
    x = torch.randn(64, 300)
    (prelu(x.to(torch.bfloat16)).float().sum()).backward()
    (plain(x.to(torch.bfloat16).float()).sum()).backward()
    assert prelu.weight.grad is not None and plain.weight.grad is not None
    torch.testing.assert_close(prelu.weight.grad, plain.weight.grad, rtol=1e-3, atol=1e-3)


def test_din_still_learns_in_bf16() -> None:
    # Label = "the target is in the history": DIN's attention finds it; bf16 must not stop it learning.
    g = torch.Generator().manual_seed(0)

    def task(n: int) -> Batch:
        history = torch.randint(1, SIZES["num_items"], (n, 8), generator=g)  # [n, 8]
        coin = torch.rand(n, generator=g) < 0.5  # [n]
        other = torch.randint(1, SIZES["num_items"], (n,), generator=g)  # [n]
        target = torch.where(coin, history[:, 5], other)  # [n] half the targets repeat a behaviour
        label = (history == target.unsqueeze(1)).any(1).float()  # [n]
        mask = torch.ones_like(history, dtype=torch.bool)  # [n, 8]
        return Batch(history=history, history_mask=mask, target=target, label=label)

    torch.manual_seed(0)
    model = build_model("din", num_items=SIZES["num_items"], dim=8, attention_hidden=(16,), head_hidden=(16,))
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-2)
    for _ in range(80):
        train_step(model, task(32), SearchConfig(), optimizer, precision="bf16")
    test = task(512)
    with torch.no_grad(), autocast("bf16", torch.device("cpu")):
        logits = model.eval()(test).float()  # [512]
    assert auc(test.label.numpy(), logits.numpy()) > 0.8  # 0.91 in bf16, 0.84 in fp32


# ------------------------------------------------------------------------------------------------ the loop
@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("store") / "s"
    prepare(make_log(num_users=30, events=20, seed=9), out, ProtocolConfig.for_protocol("T"))
    return str(out)


def test_loop_runs_with_every_cpu_option_and_bucketed_eval_keeps_the_metrics(tmp_path: Path, store_path: str) -> None:
    base = [
        "model.name=din",
        "model.dim=4",
        "model.attention_hidden=[8]",
        "model.head_hidden=[8]",
        f"data.path={store_path!r}",
        "data.max_history=10",
        "train.batch_size=16",
        "train.epochs=1",
        "train.progress=false",
    ]
    options = [
        "train.precision='bf16'",
        "train.key_collection=true",
        "data.bucket_by_length=true",
        "train.device='auto'",
    ]
    result = train(load_config(None, [*base, *options]), tmp_path / "run")
    assert 0.0 <= result["test"]["auc"] <= 1.0 and result["steps"] > 0
    store = TrajectoryStore.open(store_path)
    torch.manual_seed(0)
    model = build_model_for_sizes("din", {"dim": 4}, store.sizes)
    plain = evaluate(model, store, "test", batch_size=8, max_history=10)
    bucketed = evaluate(model, store, "test", batch_size=8, max_history=10, bucket_by_length=True)
    for name in ("auc", "gauc", "logloss", "count"):
        assert bucketed[name] == pytest.approx(plain[name], rel=1e-5), name


# ------------------------------------------------------------------------------------------------ torch.compile
def test_compile_names_a_missing_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="needs a C\\+\\+ compiler"):
        compile_model(make("din"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["din", "dare"])
def test_compiled_model_matches_eager_in_logits_and_gradients(name: str) -> None:
    # Slow: inductor compiles forward and backward in C++ (10-60 s on 2 cores).
    batch, search = make_batch(), SEARCH[name]
    loss, grads = step_gradients(make(name), batch, search)
    model = make(name)
    keys = list(model.state_dict())
    compiled_loss, compiled_grads = step_gradients(compile_model(model), batch, search)
    assert list(model.state_dict()) == keys, "checkpoints of a compiled model load into an eager one"
    torch.testing.assert_close(compiled_loss, loss, atol=1e-5, rtol=1e-5)
    for n, grad in grads.items():
        torch.testing.assert_close(compiled_grads[n], grad, atol=1e-5, rtol=1e-4, msg=lambda m, n=n: f"{n}: {m}")


# ------------------------------------------------------------------------------------------------ devices
def test_cpu_device_passes_batches_through_and_auto_picks_what_torch_sees() -> None:
    batches = [make_batch(0), make_batch(1)]
    assert all(a is b for a, b in zip(DevicePrefetcher(batches, torch.device("cpu")), batches, strict=True))
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert isinstance(autocast("fp32", torch.device("cpu")), contextlib.nullcontext)
    with pytest.raises(ValueError, match="precision must be"):
        autocast("fp16", torch.device("cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_a_gpu_says_so() -> None:
    with pytest.raises(ValueError, match=r"torch sees no CUDA device.*train.device='cpu' or 'auto'"):
        resolve_device("cuda")


@pytest.mark.gpu
@CUDA
def test_prefetcher_moves_every_batch_to_the_gpu_unchanged() -> None:
    batches = [make_batch(seed) for seed in range(4)]
    moved = list(DevicePrefetcher(batches, torch.device("cuda")))
    assert len(moved) == len(batches)
    for cpu, gpu in zip(batches, moved, strict=True):
        for name, value in cpu.fields().items():
            on_gpu = getattr(gpu, name)
            assert on_gpu.is_cuda
            assert torch.equal(on_gpu.cpu(), value), name


@pytest.mark.gpu
@CUDA
@pytest.mark.parametrize("name", ["din", "dare"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_gpu_training_step_matches_the_cpu_step(name: str, precision: str) -> None:
    batch, search = make_batch(), SEARCH[name]
    loss, grads = step_gradients(make(name), batch, search)
    gpu_model = make(name).cuda()
    (gpu_batch,) = DevicePrefetcher([batch.pin_memory()], torch.device("cuda"))
    gpu_loss, gpu_grads = step_gradients(gpu_model, gpu_batch, search, precision=precision)
    tolerance = {"atol": 1e-4, "rtol": 1e-4} if precision == "fp32" else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(gpu_loss.cpu(), loss, **tolerance)
    flat = torch.cat([grads[n].flatten() for n in sorted(grads)])
    gpu_flat = torch.cat([gpu_grads[n].cpu().flatten() for n in sorted(grads)])
    assert F.cosine_similarity(flat, gpu_flat, dim=0) > (0.9999 if precision == "fp32" else 0.99)


@pytest.mark.gpu
@CUDA
def test_loop_trains_on_the_gpu_with_workers_pinning_batches(tmp_path: Path, store_path: str) -> None:
    overrides = [
        "model.name=dare",
        "model.dim=4",
        "model.aux_loss=true",
        "search.method='soft'",
        "search.k=4",
        f"data.path={store_path!r}",
        "data.max_history=10",
        "data.num_workers=1",
        "train.batch_size=16",
        "train.epochs=1",
        "train.progress=false",
        "train.device='cuda'",
        "train.precision='bf16'",
    ]
    result = train(load_config(None, overrides), tmp_path / "run")
    assert 0.0 <= result["test"]["auc"] <= 1.0
