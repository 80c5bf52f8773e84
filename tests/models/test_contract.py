"""The model contract: every entry of `MODELS` must pass these (fixtures in conftest.py)."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from longrec.data.batch import Batch, check_batch
from longrec.models import MODELS, build_model, data_params, model_config
from longrec.models.contract import CAPABILITIES, AuxiliaryHead, capabilities, check_contract


def select(batch: Batch, rows: slice) -> Batch:
    return Batch(**{name: value[rows] for name, value in batch.fields().items()})


def test_fixture_batch_is_valid_and_has_full_partial_and_empty_histories(batch, model) -> None:
    check_batch(batch, reads=model.reads, num_items=50)
    lengths = batch.history_mask.sum(1)
    assert lengths.min() == 0 and 0 < lengths.median() < batch.history.shape[1] and lengths.max() == 12


def test_forward_returns_one_finite_logit_per_example(model, batch) -> None:
    logits = model(batch)  # includes the empty history
    assert logits.shape == batch.target.shape and torch.isfinite(logits).all()


def test_padding_does_not_change_the_output(model, batch, pad_history) -> None:
    torch.testing.assert_close(model(pad_history(batch, 5)), model(batch))


def test_ids_under_padding_are_ignored(model, batch) -> None:
    # The mask decides what is padding, not the id: garbage under a False mask must not leak into the logit.
    noisy = batch.replace(history=torch.where(batch.history_mask, batch.history, 7))
    torch.testing.assert_close(model(noisy), model(batch))


def test_every_parameter_gets_a_gradient(model, batch) -> None:
    model.train()
    loss = F.binary_cross_entropy_with_logits(model(batch), batch.label)
    # the train loop adds the auxiliary head's BCE the same way
    aux_logits = model.aux_logits(batch) if isinstance(model, AuxiliaryHead) else None
    if aux_logits is not None:
        loss = loss + F.binary_cross_entropy_with_logits(aux_logits, batch.label)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reached: {missing}"


def test_same_seed_builds_the_same_model(model_name, make_model, batch) -> None:
    a, b = make_model(model_name, seed=3), make_model(model_name, seed=3)
    torch.testing.assert_close(a(batch), b(batch), rtol=0, atol=0)
    assert not torch.equal(make_model(model_name, seed=4)(batch), a(batch))


def test_state_dict_round_trip_into_a_fresh_model(model_name, model, make_model, batch) -> None:
    fresh = make_model(model_name, seed=1)
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh(batch), model(batch), rtol=0, atol=0)


def test_rebuild_from_the_saved_config(model_name, model, batch) -> None:
    saved = json.loads(json.dumps(dataclasses.asdict(model.config)))  # what config.json holds (tuples -> lists)
    rebuilt = build_model(model_name, **saved).eval()
    assert rebuilt.config == model.config
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt(batch), model(batch), rtol=0, atol=0)


def test_a_batch_of_one_gives_the_same_logit_as_in_a_batch(model, batch) -> None:
    full = model(batch)
    for i in range(len(batch)):
        torch.testing.assert_close(model(select(batch, slice(i, i + 1))), full[i : i + 1])


def test_a_missing_field_the_model_reads_is_reported_at_the_edge(model, batch) -> None:
    assert model.reads, "the test sizes turn categories on, so the model must read them"
    for name in model.reads:
        with pytest.raises(ValueError, match=rf"reads batch\.{name}, but it is None"):
            check_batch(batch.replace(**{name: None}), reads=model.reads)


def test_without_categories_the_model_reads_nothing_optional(model_name, make_model, batch) -> None:
    model = make_model(model_name, num_categories=0)
    assert model.reads == ()
    bare = Batch(history=batch.history, history_mask=batch.history_mask, target=batch.target)
    check_batch(bare, reads=model.reads)
    assert torch.isfinite(model(bare)).all()


def test_config_is_frozen_and_validated_early(model_name) -> None:
    config = model_config(model_name, num_items=50)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.dim = 4
    with pytest.raises(ValueError, match=rf"{type(config).__name__}\.dim must be a positive int\. Got 0 instead\."):
        model_config(model_name, num_items=50, dim=0)


def test_data_params_keeps_only_the_sizes_a_config_declares(model_name) -> None:
    sizes = {"num_items": 50, "num_categories": 20, "taxonomy_levels": 2, "num_unused_size": 3, "num_users": 9}
    assert data_params(MODELS[model_name][0], sizes) == {"num_items": 50, "num_categories": 20, "taxonomy_levels": 2}


def test_unknown_model_name_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match=r"Unknown model 'dinn'\. Known models: (\w+, )*din, (\w+, )*mean_pool"):
        build_model("dinn", num_items=10)


def test_unknown_or_missing_config_fields_are_named() -> None:
    with pytest.raises(TypeError, match=r"DINConfig has no field 'dimm' \(did you mean 'dim'\?\)"):
        build_model("din", num_items=10, dimm=8)
    with pytest.raises(TypeError, match=r"DINConfig needs num_items"):
        model_config("din", dim=8)


@pytest.mark.slow
def test_torch_compile_matches_eager(model, batch) -> None:
    compiled = torch.compile(model)
    torch.testing.assert_close(compiled(batch), model(batch), rtol=1e-5, atol=1e-5)


# Capabilities a model declares by implementing them; the loop, analysis and serving ask for them by type.
EXPECTED_CAPABILITIES = {
    "dare": {"search_embeddings", "attention_weights", "auxiliary_head"},
    "din": {"search_embeddings", "attention_weights"},
    "din_topk": {"attention_weights", "auxiliary_head"},
    "dsi_tin": {"search_embeddings", "attention_weights", "field_attribution", "keyed_temporal"},
    "eta": {"search_embeddings", "attention_weights"},
    "mean_pool": set(),
    "sdim": {"search_embeddings"},
    "sfpnet": {"search_embeddings", "attention_weights"},
    "stacked_tin": {"search_embeddings", "attention_weights", "keyed_temporal"},
    "td_sasrec": {"own_loss", "candidate_scorer"},
    "tin": {"search_embeddings", "attention_weights", "keyed_temporal"},
    "twin": {"search_embeddings", "attention_weights", "auxiliary_head"},
    "vista": {"extra_loss", "cached_user_state"},
    "vql": {"extra_loss", "cached_user_state"},
}


def test_every_model_has_exactly_the_capabilities_it_is_known_for(model_name, model) -> None:
    assert set(MODELS) == set(EXPECTED_CAPABILITIES), "a new model: add its capabilities here"
    assert capabilities(type(model)) == EXPECTED_CAPABILITIES[model_name]
    for name, protocol in CAPABILITIES.items():
        assert isinstance(model, protocol) == (name in EXPECTED_CAPABILITIES[model_name]), name


def test_a_model_that_half_implements_or_mis_signs_a_capability_is_refused_at_registration() -> None:
    class HalfAux(torch.nn.Module):
        def aux_logits(self, batch):  # type: ignore[no-untyped-def]
            return None

    class WrongLoss(torch.nn.Module):
        def loss(self, batch, extra):  # type: ignore[no-untyped-def]
            return None

    with pytest.raises(TypeError, match=r"'half' \(HalfAux\) defines \['aux_logits'\] of capability AuxiliaryHead"):
        check_contract("half", HalfAux)
    with pytest.raises(
        TypeError, match=r"WrongLoss\)\.loss takes \(batch, extra\); capability OwnLoss expects \(batch\)"
    ):
        check_contract("wrong", WrongLoss)
