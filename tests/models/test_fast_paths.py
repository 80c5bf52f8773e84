"""Every fast path against its plain oracle (`reference_paths()`): same outputs and gradients within fp32 tolerance."""

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from longrec.data.batch import Batch
from longrec.models.contract import AuxiliaryHead
from longrec.models.layers import PReLU, dot_scores, fast_paths, lookup, reference_paths, weighted_sum
from longrec.search import search_stage
from longrec.search.config import SearchConfig


def loss_and_grads(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """BCE (+ the auxiliary head's BCE, as the train loop adds it) and the gradient of every parameter."""
    model.zero_grad(set_to_none=True)
    loss = F.binary_cross_entropy_with_logits(model(batch), batch.label)
    aux_logits = model.aux_logits(batch) if isinstance(model, AuxiliaryHead) else None
    if aux_logits is not None:
        loss = loss + F.binary_cross_entropy_with_logits(aux_logits, batch.label)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_reference_paths_switches_the_fast_paths_off_and_restores_them() -> None:
    assert fast_paths()
    with pytest.raises(RuntimeError), reference_paths():
        assert not fast_paths()
        raise RuntimeError
    assert fast_paths()


@pytest.mark.parametrize("num_items", [9, 100], ids=["one fused gather", "a gather per table"])
def test_lookup_equals_per_table_lookups_side_by_side(num_items: int) -> None:
    # 24 ids: fewer rows than that concatenates the tables, more gathers from each table separately.
    torch.manual_seed(0)
    items, categories = nn.Embedding(num_items, 4, padding_idx=0), nn.Embedding(6, 4, padding_idx=0)
    times = nn.Embedding(5, 4)
    tables = [items, categories, times]
    ids = [torch.tensor([[0, 3, 8], [2, 2, 0]]), torch.tensor([[[0, 0], [1, 5], [2, 3]], [[4, 1], [4, 1], [0, 0]]])]
    ids.append(torch.tensor([[0, 2, 1], [4, 3, 0]]))
    grad = torch.randn(2, 3, 16)
    out = lookup(tables, ids)  # [2, 3, (1 + 2 + 1)·4]
    (out * grad).sum().backward()
    fast = [t.weight.grad.clone() for t in tables]
    for t in tables:
        t.weight.grad = None
    by_hand = torch.cat([items(ids[0]), categories(ids[1]).flatten(2), times(ids[2])], dim=-1)
    (by_hand * grad).sum().backward()
    assert torch.equal(out, by_hand)
    for got, table in zip(fast, tables, strict=True):
        torch.testing.assert_close(got, table.weight.grad)
    assert (fast[0][0] == 0).all() and (fast[1][0] == 0).all(), "padding rows must get no gradient"
    assert fast[2][0].abs().sum() > 0, "a table without padding_idx trains its row 0"


def test_every_model_matches_its_reference_path_in_logits_and_gradients(model_name, make_model, batch) -> None:
    model = make_model(model_name, aux_loss=True) if model_name in ("twin", "dare") else make_model(model_name)
    model.train()
    loss, grads = loss_and_grads(model, batch)
    with reference_paths():
        ref_loss, ref_grads = loss_and_grads(model, batch)
    torch.testing.assert_close(loss, ref_loss)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("attention_hidden", [(), (8,), (16, 8)])
def test_din_decomposed_scorer_equals_the_scorer_on_the_concat(make_model, batch, attention_hidden) -> None:
    # W [t; h; t - h; t ⊙ h] = (W_t + W_d) t + (W_h - W_d + W_p diag(t)) h: checked with large weights too.
    din = make_model("din", attention_hidden=attention_hidden, init_std=1.0)
    weights = din.attention_weights(batch)
    with reference_paths():
        torch.testing.assert_close(weights, din.attention_weights(batch))


@pytest.mark.parametrize("slope", [0.25, -0.5, 0.0])
def test_prelu_fast_path_matches_nn_prelu_in_output_and_both_gradients(slope: float) -> None:
    torch.manual_seed(0)
    prelu = PReLU()
    with torch.no_grad():
        prelu.weight.fill_(slope)
    x = torch.randn(3, 5, 7, requires_grad=True)
    grad = torch.randn(3, 5, 7)
    outputs = []
    for reference in (False, True):
        with reference_paths() if reference else contextlib.nullcontext():
            y = prelu(x)
            outputs.append((y, *torch.autograd.grad(y, [x, prelu.weight], grad)))
    for fast, plain in zip(*outputs, strict=True):
        torch.testing.assert_close(fast, plain)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("twin", {}),
        ("twin", {"attention": "projection"}),
        ("twin", {"target_aware": False}),
        ("dare", {"attention_dim": 4}),
        ("dare", {"separate_target_tables": True}),
    ],
)
def test_forward_with_aux_equals_search_stage_then_forward_plus_aux_logits(make_model, batch, name, params) -> None:
    model = make_model(name, aux_loss=True, **params).train()
    search = SearchConfig(method="soft", k=5)
    logits, aux_logits = model.forward_with_aux(batch, search)
    (logits.square().sum() + aux_logits.square().sum()).backward()
    fast = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    expected, expected_aux = model(search_stage(batch, model, search)), model.aux_logits(batch)
    (expected.square().sum() + expected_aux.square().sum()).backward()
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(aux_logits, expected_aux)
    for n, p in model.named_parameters():
        torch.testing.assert_close(fast[n], p.grad, msg=lambda m, n=n: f"{n}: {m}")


def test_forward_with_aux_declines_without_the_aux_head_or_soft_search(make_model, batch) -> None:
    assert make_model("dare").forward_with_aux(batch, SearchConfig(method="soft", k=5)) is None
    assert make_model("twin", aux_loss=True).forward_with_aux(batch, SearchConfig(method="category", k=5)) is None


def test_dot_scores_and_weighted_sum_match_their_einsums_in_values_and_gradients() -> None:
    torch.manual_seed(0)
    query, keys, weights = torch.randn(3, 5), torch.randn(3, 7, 5), torch.rand(3, 7)
    grad_scores, grad_pooled = torch.randn(3, 7), torch.randn(3, 5)
    results = []
    for reference in (False, True):
        inputs = [t.clone().requires_grad_() for t in (query, keys, weights)]
        q, k, w = inputs
        with reference_paths() if reference else contextlib.nullcontext():
            scores, pooled = dot_scores(q, k), weighted_sum(w, k)
        grads = torch.autograd.grad([scores, pooled], inputs, [grad_scores, grad_pooled])
        results.append((scores, pooled, *grads))
    for fast, plain in zip(*results, strict=True):
        torch.testing.assert_close(fast, plain)


def test_fast_attention_gradients_come_in_the_layout_of_the_keys_and_values() -> None:
    # The point of the fast path: the einsum's key gradient is a transposed view, which the table gradient would copy.
    query, keys, weights = torch.randn(3, 5), torch.randn(3, 7, 5, requires_grad=True), torch.rand(3, 7)
    (from_scores,) = torch.autograd.grad(dot_scores(query, keys), keys, torch.ones(3, 7))
    (from_pooling,) = torch.autograd.grad(weighted_sum(weights, keys), keys, torch.ones(3, 5))
    assert from_scores.is_contiguous() and from_pooling.is_contiguous()


def test_reference_paths_and_key_collection_are_scoped_to_the_thread_that_enters_them() -> None:
    import threading

    from longrec.models.layers import collect_keys, fast_paths, key_collection, reference_paths

    seen: dict[str, tuple[bool, bool]] = {}
    inside, done = threading.Event(), threading.Event()

    def other() -> None:
        inside.wait(timeout=10)
        seen["other"] = (fast_paths(), key_collection())
        done.set()

    thread = threading.Thread(target=other)
    thread.start()
    with reference_paths(), collect_keys():
        seen["inside"] = (fast_paths(), key_collection())
        inside.set()
        done.wait(timeout=10)
    thread.join(timeout=10)
    assert seen == {"inside": (False, True), "other": (True, False)}
    assert (fast_paths(), key_collection()) == (True, False), "restored after the block"
