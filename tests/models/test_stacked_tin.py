"""Stacked TIN: one layer with identity projections is TIN, each layer's query carries the layer before it, the
attention is a softmax per layer, and soft search steers by the first layer."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from longrec.config import SearchConfig
from longrec.models import StackedTINConfig
from longrec.search import search_stage


@pytest.fixture
def stacked(make_model):
    return make_model("stacked_tin", num_layers=3)


def test_config_rejects_a_stack_without_layers() -> None:
    with pytest.raises(ValueError, match=r"StackedTINConfig\.num_layers must be a positive int\. Got 0 instead\."):
        StackedTINConfig(num_items=50, num_layers=0)
    with pytest.raises(ValueError, match=r"StackedTINConfig\.temporal must be one of position, time_gap, both"):
        StackedTINConfig(num_items=50, temporal="clock")


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
