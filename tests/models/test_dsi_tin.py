"""DSI-TIN: a module's attention reads only its field group, every module pools all fields, one group over every
field is TIN over the fused fields, and field groups are validated against the known fields."""

from __future__ import annotations

import dataclasses
import json
import logging
import math

import pytest
import torch
import torch.nn.functional as F

from longrec.data.batch import Batch, check_batch
from longrec.models import DSITINConfig, build_model
from longrec.search import search_stage
from longrec.search.config import SearchConfig

# Side fields beyond the shared fixture: 3 domains, 3 scenes, and two extra id columns (brand and a noise tag).
SIDE = {"num_domains": 3, "num_scenes": 3, "num_extra": (10, 7), "extra_fields": ("brand", "noise_tag")}
ALL_FIELDS = ["item", "category", "action", "domain", "scene", "brand", "noise_tag"]
PAPER_GROUPS = [["item", "category"], ["category", "action"], ["scene", "action"], ["brand", "noise_tag"]]


@pytest.fixture
def side_batch(batch) -> Batch:
    """The shared fixture batch plus the history scene and the extra id columns (0 under padding)."""
    g = torch.Generator().manual_seed(1)
    B, L = batch.history.shape
    mask = batch.history_mask
    extra = torch.stack([torch.randint(1, 10, (B, L), generator=g), torch.randint(1, 7, (B, L), generator=g)], -1)
    return batch.replace(
        history_scene=torch.randint(1, 3, (B, L), generator=g) * mask,
        history_extra=extra * mask.unsqueeze(-1),  # [B, L, 2]
        target_extra=torch.stack([torch.randint(1, 10, (B,), generator=g), torch.randint(1, 7, (B,), generator=g)], -1),
    )


def model_with(make_model, groups, **params):
    return make_model("dsi_tin", groups=groups, **SIDE, **params)


# --- config -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "match"),
    [
        (
            {"groups": [["item", "categroy"]]},
            r"groups\[0\]\[1\] = 'categroy' is not a known field \(did you mean 'category'\?\)",
        ),
        (
            {"groups": [["item"], ["noise"]]},
            r"'noise' is not a known field\. Known fields: item, category, action, domain, scene \(",
        ),
        ({"groups": [["item"], []]}, r"groups\[1\] must be a non-empty list of distinct fields"),
        ({"groups": [["item", "item"]]}, r"groups\[0\] must be a non-empty list of distinct fields"),
        ({"groups": []}, r"groups must be a non-empty list of field groups"),
        ({"groups": "item"}, r"groups must be a non-empty list of field groups"),
        ({"groups": [["scene"]]}, r"groups uses 'scene', which needs num_scenes.*Got num_scenes = 0\."),
        ({"extra_fields": ["brand", "brand"]}, r"extra_fields must hold distinct identifiers"),
        ({"extra_fields": ["item"]}, r"extra_fields must hold distinct identifiers other than item, category"),
        ({"num_actions": -1}, r"DSITINConfig\.num_actions must be a non-negative int\. Got -1 instead\."),
        ({"num_extra": [8, 0]}, r"DSITINConfig\.num_extra\[1\] must be a positive int\. Got 0 instead\."),
    ],
)
def test_config_rejects_bad_values(params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DSITINConfig(num_items=50, **params)


def test_extra_field_names_must_match_the_data_at_build_time() -> None:
    with pytest.raises(ValueError, match=r"extra_fields names 2 extra columns .* but the data has 3 \(num_extra"):
        build_model("dsi_tin", num_items=50, num_extra=[4, 4, 4], extra_fields=["brand", "noise_tag"])


def test_groups_from_config_json_are_tuples_again() -> None:
    config = DSITINConfig(num_items=50, groups=[["item", "category"], ["category"]], **SIDE)
    saved = json.loads(json.dumps(dataclasses.asdict(config)))
    assert DSITINConfig(**saved) == config and config.groups == (("item", "category"), ("category",))


def test_fields_the_data_lacks_are_dropped_with_a_warning(make_model, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="longrec.models.dsi_tin"):
        model = make_model("dsi_tin", groups=[["item", "domain"], ["domain"], ["action"]])  # no num_domains
    assert model.groups == (("item",), ("action",))
    assert "no domain field" in caplog.text
    with pytest.raises(ValueError, match=r"the data has none of these fields"):
        make_model("dsi_tin", groups=[["domain"]])


def test_reads_every_field_its_groups_need(make_model, side_batch) -> None:
    default = make_model("dsi_tin")
    assert default.groups == (("item",), ("category",)) and default.reads == ("history_category", "target_category")
    model = model_with(make_model, PAPER_GROUPS, temporal="time_gap")
    assert set(model.reads) == {
        "history_category",
        "target_category",
        "history_action",
        "history_scene",
        "scene",
        "history_extra",
        "target_extra",
        "history_time_delta",
    }
    assert "history_domain" not in model.reads  # no group names the domain
    check_batch(side_batch, reads=model.reads)
    for name in model.reads:
        with pytest.raises(ValueError, match=rf"reads batch\.{name}, but it is None"):
            check_batch(side_batch.replace(**{name: None}), reads=model.reads)


# --- the decoupling -----------------------------------------------------------------------------------------------


def test_one_item_and_category_group_is_tin(make_model, batch) -> None:
    tin = make_model("tin", temporal="both")
    dsi = make_model("dsi_tin", groups=[["item", "category"]], temporal="both", seed=3)
    with torch.no_grad():
        dsi.tables["item"].weight.copy_(tin.embedding.item_embedding.weight)
        dsi.tables["category"].weight.copy_(tin.embedding.category_embedding.weight)
        dsi.position_embeddings[0].weight.copy_(tin.position_embedding.weight)
        dsi.gap_embeddings[0].weight.copy_(tin.gap_embedding.weight)
    dsi.head.load_state_dict(tin.head.state_dict())
    torch.testing.assert_close(dsi(batch), tin(batch))
    torch.testing.assert_close(dsi.attention_weights(batch)[:, 0], tin.attention_weights(batch))


def test_one_group_of_every_field_is_tin_over_the_fused_fields(make_model, side_batch) -> None:
    model = model_with(make_model, [ALL_FIELDS])
    assert model.value_fields == tuple(ALL_FIELDS)
    h, v = model._embed(side_batch)  # the fused representation [B, L, E], [B, E]
    assert h.shape[-1] == 8 * (1 + 2 + 5) and model.width == h.shape[-1]  # D per field, M·D for the category path
    table = model.position_embeddings[0].weight
    e = h + table[side_batch.history_position]  # ẽ_i
    t = v + table[0]  # ṽ_t
    scores = torch.einsum("ble,be->bl", e, t) / math.sqrt(e.shape[-1])
    alpha = scores.masked_fill(~side_batch.history_mask, -math.inf).softmax(-1).nan_to_num(0.0)
    u = torch.einsum("bl,ble->be", alpha, e) * t  # Σ_i α_i (ẽ_i ⊙ ṽ_t)
    expected = model.head(torch.cat([u, v], dim=-1)).squeeze(-1)
    torch.testing.assert_close(model(side_batch), expected)


def test_a_modules_attention_ignores_fields_outside_its_group(make_model, side_batch) -> None:
    model = model_with(make_model, PAPER_GROUPS, temporal="both")
    noise = side_batch.history_extra.clone()
    noise[..., 1] = (noise[..., 1] % 6 + 1) * side_batch.history_mask  # a new noise tag on every real behaviour
    noisy = side_batch.replace(history_extra=noise)
    alpha, alpha_noisy = model.attention_weights(side_batch), model.attention_weights(noisy)  # [B, G, L]
    real = side_batch.history_mask.sum(1) > 1  # a single behaviour gets α = 1 whatever its fields
    torch.testing.assert_close(alpha_noisy[:, :3], alpha[:, :3], rtol=0, atol=0)  # groups without noise_tag
    assert (alpha_noisy[real, 3] != alpha[real, 3]).any(-1).all()  # the group with noise_tag
    any_real = side_batch.history_mask.any(1)
    assert (model(noisy)[any_real] != model(side_batch)[any_real]).all()  # but every module pools the noise field
    action = side_batch.replace(history_action=(side_batch.history_action % 3 + 1) * side_batch.history_mask)
    changed = (model.attention_weights(action) != alpha)[real].any(-1)  # [b, G]
    assert changed[:, [1, 2]].all() and not changed[:, [0, 3]].any()  # only the groups holding the action


def test_field_scores_split_each_modules_attention_logit_by_field(make_model, side_batch) -> None:
    model = model_with(make_model, PAPER_GROUPS, temporal="both")
    terms = model.field_scores(side_batch)  # field -> [B, G, L]
    assert set(terms) == {*model.value_fields, "temporal"}
    logits = sum(terms.values())  # [B, G, L]
    mask = side_batch.history_mask.unsqueeze(1).expand_as(logits)
    expected = logits.masked_fill(~mask, -math.inf).softmax(-1).nan_to_num(0.0)
    torch.testing.assert_close(model.attention_weights(side_batch), expected)
    for g, group in enumerate(model.groups):
        for field, term in terms.items():
            if field not in (*group, "temporal"):
                assert (term[:, g] == 0).all(), (field, g)  # a field outside the group adds nothing
    assert (terms["noise_tag"][:, 3][side_batch.history_mask] != 0).all()


def test_the_target_gets_a_learned_action_token_and_the_request_scene(make_model, side_batch) -> None:
    model = model_with(make_model, [["item", "action"], ["scene"]])
    _, v = model._embed(side_batch)
    torch.testing.assert_close(v[:, 8:16], model.tables["action"].weight[-1].expand(len(side_batch), -1))
    torch.testing.assert_close(v[:, 16:24], model.tables["scene"](side_batch.scene))
    model.train()
    F.binary_cross_entropy_with_logits(model(side_batch), side_batch.label).backward()
    assert model.tables["action"].weight.grad[-1].abs().sum() > 0


def test_attention_is_a_softmax_over_the_real_behaviours_in_every_module(make_model, side_batch) -> None:
    model = model_with(make_model, PAPER_GROUPS)
    alpha = model.attention_weights(side_batch)  # [B, G, L]
    mask = side_batch.history_mask.unsqueeze(1).expand_as(alpha)
    assert alpha.shape[1] == 4 and (alpha[~mask] == 0).all() and (alpha[mask] > 0).all()
    torch.testing.assert_close(alpha.sum(-1), side_batch.history_mask.any(1, keepdim=True).float().expand(-1, 4))


def test_the_paper_groups_keep_the_model_contract(make_model, side_batch, pad_history) -> None:
    model = model_with(make_model, PAPER_GROUPS, temporal="both")
    logits = model(side_batch)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(model(pad_history(side_batch, 3)), logits)
    one = Batch(**{k: v[3:4] for k, v in side_batch.fields().items()})
    torch.testing.assert_close(model(one), logits[3:4])
    model.train()
    F.binary_cross_entropy_with_logits(model(side_batch), side_batch.label).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reached: {missing}"


def test_soft_search_with_k_equal_l_is_the_unsearched_model(make_model, side_batch) -> None:
    model = model_with(make_model, PAPER_GROUPS)
    searched = search_stage(side_batch, model, SearchConfig(method="soft", k=side_batch.history.shape[1]))
    torch.testing.assert_close(model(searched), model(side_batch))
    k = 3
    searched = search_stage(side_batch, model, SearchConfig(method="soft", k=k))
    top = model.attention_weights(side_batch)[:, 0].topk(k, dim=1).indices  # module 0 steers the search
    keep = torch.zeros_like(side_batch.history_mask).scatter(1, top, True) & side_batch.history_mask
    masked = side_batch.replace(history_mask=keep, history=side_batch.history * keep)
    torch.testing.assert_close(model(searched), model(masked))
