"""Stacked TIN: one layer with identity projections is TIN, each layer's query carries the layer before it (and
`query_chain` cuts exactly the part it names), the attention is a softmax per layer, soft search steers by the first
layer, and the chain learns a two-hop rule that the same stack without it cannot express."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from longrec.models import StackedTINConfig, build_model
from longrec.search import search_stage
from longrec.search.config import SearchConfig
from longrec.train.probes import TwoHopTask
from tests.models.conftest import fit_and_auc


@pytest.fixture
def stacked(make_model):
    return make_model("stacked_tin", num_layers=3)


def test_config_rejects_a_stack_without_layers() -> None:
    with pytest.raises(ValueError, match=r"StackedTINConfig\.num_layers must be a positive int\. Got 0 instead\."):
        StackedTINConfig(num_items=50, num_layers=0)
    with pytest.raises(ValueError, match=r"StackedTINConfig\.temporal must be one of position, time_gap, both"):
        StackedTINConfig(num_items=50, temporal="clock")
    with pytest.raises(ValueError, match=r"query_chain must be one of full, attention, cross, none\. Got 'both'"):
        StackedTINConfig(num_items=50, query_chain="both")


@pytest.mark.parametrize(
    "params",
    [
        {"temporal": "position"},
        {"temporal": "both"},
        {"temporal": "time_gap", "tdpe": "separate", "goal_heads": True},
    ],
)
def test_one_layer_with_identity_projections_is_tin(make_model, batch, params: dict) -> None:
    tin = make_model("tin", **params)
    stacked = make_model("stacked_tin", num_layers=1, seed=5, **params)
    with torch.no_grad():
        for name, p in stacked.named_parameters():
            if "projections" in name:
                p.normal_()  # prove the test sets them, not the initialisation
    missing, unexpected = stacked.load_state_dict(tin.state_dict(), strict=False)  # embeddings, temporal, head
    assert not unexpected and all("projections" in k for k in missing)
    with torch.no_grad():
        for name, p in stacked.named_parameters():
            if "projections" in name:
                nn.init.eye_(p)
    torch.testing.assert_close(stacked(batch), tin(batch))
    torch.testing.assert_close(stacked.attention_weights(batch)[:, 0], tin.attention_weights(batch))


def test_a_fresh_stack_starts_from_identity_projections(stacked) -> None:
    projections = [p for n, p in stacked.named_parameters() if "projections" in n]
    assert len(projections) == 3 * 3
    for p in projections:
        torch.testing.assert_close(p, torch.eye(p.shape[0]))
    assert len(stacked.norms) == 2  # the last layer's query is never read


def test_each_layer_reads_the_query_of_the_layer_before(stacked, batch) -> None:
    u1, u2, u3 = stacked.layer_outputs(batch)
    real = batch.history_mask.any(1)
    with torch.no_grad():
        stacked.value_projections[0].weight.mul_(2.0)  # changes u^(1), hence q^(1), and nothing before it
    v1, v2, v3 = stacked.layer_outputs(batch)
    assert (v1[real] != u1[real]).any(-1).all() and (v2[real] != u2[real]).any(-1).all()
    assert (v3[real] != u3[real]).any(-1).all()
    with torch.no_grad():
        stacked.query_projections[2].weight.add_(0.1)  # layer 3 only: layers 1 and 2 cannot see it
    w1, w2, w3 = stacked.layer_outputs(batch)
    torch.testing.assert_close(w1, v1, rtol=0, atol=0)
    torch.testing.assert_close(w2, v2, rtol=0, atol=0)
    assert (w3[real] != v3[real]).any(-1).all()


def test_the_second_layer_attends_with_the_updated_query(stacked, batch) -> None:
    e, t, _ = stacked._encode(batch)
    u1 = stacked.layer_outputs(batch)[0]
    q1 = stacked.norms[0](t + u1)  # q^(1) = LayerNorm(q^(0) + u^(1)); W_Q^(2) = W_K^(2) = I at init
    scores = torch.einsum("ble,be->bl", e, q1) / math.sqrt(e.shape[-1])
    expected = scores.masked_fill(~batch.history_mask, -math.inf).softmax(-1).nan_to_num(0.0) * batch.history_mask
    torch.testing.assert_close(stacked.attention_weights(batch)[:, 1], expected)


def _perturb_first_layer(model: nn.Module) -> None:
    with torch.no_grad():
        model.value_projections[0].weight.mul_(2.0)  # changes u^(1), hence q^(1)


def test_without_the_chain_every_layer_is_a_tin_head_on_the_target(make_model, batch) -> None:
    cut = make_model("stacked_tin", num_layers=3, query_chain="none")
    assert len(cut.norms) == 0  # no q^(l) is ever formed
    before = cut.layer_outputs(batch)
    _perturb_first_layer(cut)
    after = cut.layer_outputs(batch)
    real = batch.history_mask.any(1)
    assert (after[0][real] != before[0][real]).any(-1).all()
    for u, v in zip(before[1:], after[1:], strict=True):
        torch.testing.assert_close(v, u, rtol=0, atol=0)  # layers 2 and 3 cannot see layer 1


@pytest.mark.parametrize("chain", ["attention", "cross"])
def test_a_half_chain_updates_only_the_part_it_names(make_model, batch, chain: str) -> None:
    half = make_model("stacked_tin", num_layers=2, query_chain=chain)
    alpha, u2 = half.attention_weights(batch)[:, 1], half.layer_outputs(batch)[1]
    _perturb_first_layer(half)
    new_alpha, new_u2 = half.attention_weights(batch)[:, 1], half.layer_outputs(batch)[1]
    real = batch.history_mask.any(1)
    if chain == "cross":  # layer 2 attends with q^(0) and crosses with q^(1)
        torch.testing.assert_close(new_alpha, alpha, rtol=0, atol=0)
        assert (new_u2[real] != u2[real]).any(-1).all()
    else:  # layer 2 attends with q^(1) and crosses with q^(0)
        several = batch.history_mask.sum(1) > 1  # a single behaviour gets α = 1 whatever the query
        assert (new_alpha != alpha)[several].any(-1).all()
        e, t, _ = half._encode(batch)
        pooled = torch.einsum("bl,ble->be", new_alpha, e)  # [B, E]
        torch.testing.assert_close(new_u2, half.value_projections[1](pooled) * half.query_projections[1](t))


def test_the_query_chain_learns_a_two_hop_rule_a_linear_read_out_cannot_express_without_it() -> None:
    """The label: "the history holds the partner of one of the target's bridges it holds" (train/probes.py), with
    hard negatives that hold the partner of an *absent* bridge. With a linear head a stack without the chain is
    linear in [u^(1), u^(2), v_t], each a product of the target with one pooled behaviour, so it has no product of a
    bridge with a partner; the chain puts q^(1) (bridge evidence) into layer 2's cross. At 1,000 steps over 5 seeds,
    benchmarks/bench_stacked_chain.py measured chained 0.837 ± 0.033, cut 0.555 ± 0.023 (more steps, MLP head there)."""
    task = TwoHopTask()
    train, test = task.sample(8192, seed=1), task.sample(2048, seed=2)

    def fit(chain: str) -> float:
        torch.manual_seed(0)
        model = build_model(
            "stacked_tin", num_items=task.num_items, dim=8, head_hidden=(), num_layers=2,
            num_positions=task.length + 1, query_chain=chain,
        )  # fmt: skip
        return fit_and_auc(model, train, test, steps=1000)

    chained, cut = fit("full"), fit("none")
    assert chained > 0.8 and cut < 0.7, (chained, cut)


def test_attention_is_a_softmax_over_the_real_behaviours_in_every_layer(stacked, batch) -> None:
    alpha = stacked.attention_weights(batch)  # [B, L_s, L]
    assert alpha.shape == (len(batch), 3, batch.history.shape[1])
    mask = batch.history_mask.unsqueeze(1).expand_as(alpha)
    assert (alpha[~mask] == 0).all() and (alpha[mask] > 0).all()
    torch.testing.assert_close(alpha.sum(-1), batch.history_mask.any(1, keepdim=True).float().expand(-1, 3))


def test_reads_the_time_delta_only_with_time_gaps(make_model) -> None:
    assert "history_time_delta" not in make_model("stacked_tin").reads
    assert "history_time_delta" in make_model("stacked_tin", temporal="both").reads


def test_soft_search_with_k_equal_l_is_the_unsearched_model(stacked, batch) -> None:
    searched = search_stage(batch, stacked, SearchConfig(method="soft", k=batch.history.shape[1]))
    torch.testing.assert_close(stacked(searched), stacked(batch))


def test_soft_search_keeps_the_first_layers_largest_attention_weights(stacked, batch) -> None:
    with torch.no_grad():
        for p in stacked.key_projections.parameters():
            p.add_(0.1 * torch.randn_like(p))  # the search query must go through W_K, not only W_Q
    k = 4
    searched = search_stage(batch, stacked, SearchConfig(method="soft", k=k))
    top = stacked.attention_weights(batch)[:, 0].topk(k, dim=1).indices  # [B, K]
    keep = torch.zeros_like(batch.history_mask).scatter(1, top, True) & batch.history_mask  # [B, L]
    torch.testing.assert_close(
        stacked(searched), stacked(batch.replace(history_mask=keep, history=batch.history * keep))
    )


# --- self-attention blocks before the target attention ------------------------------------------------------------


def with_blocks(make_model, blocks: int = 2, **params: object) -> nn.Module:
    return make_model("stacked_tin", temporal="both", self_attention_blocks=blocks, self_attention_heads=2, **params)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"self_attention_blocks": -1}, r"StackedTINConfig\.self_attention_blocks must be a non-negative int"),
        ({"self_attention_heads": 5}, r"self_attention_heads must divide the behaviour width E = .* = 24\. Got 5"),
        ({"self_attention_dropout": 1.0}, r"self_attention_dropout must be a float in \[0, 1\)\. Got 1\.0 instead\."),
    ],
)
def test_config_rejects_bad_self_attention_options(params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        StackedTINConfig(num_items=50, num_categories=20, taxonomy_levels=2, dim=8, **params)


def test_no_blocks_is_the_stack_without_self_attention(make_model, batch) -> None:
    plain = make_model("stacked_tin", temporal="both")
    assert len(plain.blocks) == 0 and not any(k.startswith("blocks.") for k in plain.state_dict())
    # The blocks are built last: a model with blocks draws the other parameters exactly as one without.
    deep = with_blocks(make_model, 3)
    shared = {k: v for k, v in deep.state_dict().items() if not k.startswith("blocks.")}
    assert shared.keys() == plain.state_dict().keys()
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in shared.items())
    # Residual blocks: with their attention and FFN branches at zero they are the identity, bit for bit.
    with torch.no_grad():
        for block in deep.blocks:
            for layer in (block.out, block.ffn[-1]):
                layer.weight.zero_()
                layer.bias.zero_()
    torch.testing.assert_close(deep(batch), plain(batch), rtol=0, atol=0)


def test_blocks_contextualise_each_behaviour_with_the_others(make_model, batch) -> None:
    history = batch.history.clone()
    history[0, -1] = history[0, -1] % 49 + 1  # another most recent item in row 0 (a full history)
    changed = batch.replace(history=history)

    def log_ratios(model: nn.Module, b) -> torch.Tensor:  # log α_i - log α_0 over the other behaviours of row 0
        log_alpha = model.attention_weights(b)[0, 0, :-1].log()  # [L - 1], first layer
        return log_alpha - log_alpha[0]

    plain, model = make_model("stacked_tin", temporal="both"), with_blocks(make_model, 1)
    # Without blocks the other behaviours' scores do not move (only the softmax's normaliser does) ...
    torch.testing.assert_close(log_ratios(plain, changed), log_ratios(plain, batch))
    # ... with one block every one of them reads the changed behaviour, so their scores move relative to each other.
    assert ((log_ratios(model, changed) - log_ratios(model, batch))[1:].abs() > 1e-6).all()


def test_bidirectional_blocks_do_not_depend_on_the_order_of_the_rows_they_read(make_model, batch, shuffle_history):
    # Every field moves with its behaviour (relative position and time gap included): a set, seen bidirectionally.
    model = with_blocks(make_model, 2)
    torch.testing.assert_close(model(shuffle_history(batch)), model(batch))


def test_blocks_keep_padding_out(make_model, batch, pad_history) -> None:
    model = with_blocks(make_model, 2)
    torch.testing.assert_close(model(pad_history(batch, 5)), model(batch))
    noisy = batch.replace(history=torch.where(batch.history_mask, batch.history, 7))
    torch.testing.assert_close(model(noisy), model(batch))
    assert torch.isfinite(model(batch)).all()  # the empty history included


def test_every_block_parameter_gets_a_gradient(make_model, batch) -> None:
    model = with_blocks(make_model, 2, self_attention_dropout=0.1)
    model.train()
    torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch.label).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reached: {missing}"
