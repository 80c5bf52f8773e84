"""ETA: multi-head softmax target attention over the behaviours the simhash searcher keeps."""

from __future__ import annotations

import pytest
import torch

from longrec.models import ETAConfig
from longrec.search import search_stage
from longrec.search.config import SearchConfig
from longrec.search.simhash import SimHashOptions, simhash


@pytest.fixture
def eta(make_model):
    return make_model("eta")


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"num_heads": 0}, r"ETAConfig\.num_heads must be a positive int\. Got 0 instead\."),
        ({"dim": -1}, r"ETAConfig\.dim must be a positive int\. Got -1 instead\."),
        ({"head_hidden": "200"}, r"ETAConfig\.head_hidden must be a tuple of positive ints"),
    ],
)
def test_config_rejects_bad_values(params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ETAConfig(**{"num_items": 50, **params})


def test_each_head_is_a_softmax_over_the_real_behaviours(make_model, batch) -> None:
    eta = make_model("eta", num_heads=3)
    alpha = eta.attention_weights(batch)  # [B, H, L]
    assert alpha.shape == (len(batch), 3, batch.history.shape[1])
    mask = batch.history_mask.unsqueeze(1).expand_as(alpha)
    assert (alpha[~mask] == 0).all() and (alpha[mask] > 0).all()
    expected = batch.history_mask.any(1).float().unsqueeze(1).expand(-1, 3)  # 1 per head, 0 for the empty history
    torch.testing.assert_close(alpha.sum(-1), expected)
    real = batch.history_mask.sum(1) > 1
    assert not torch.allclose(alpha[real, 0], alpha[real, 1]), "heads must attend differently"


def test_search_embeddings_are_the_behaviour_embeddings(eta, batch) -> None:
    query, keys = eta.search_embeddings(batch)
    h, t = eta.embedding(batch)
    assert torch.equal(query, t) and torch.equal(keys, h)


def test_simhash_search_with_k_equal_l_is_the_unsearched_model(eta, batch) -> None:
    searched = search_stage(batch, eta, SearchConfig(method="simhash", k=batch.history.shape[1]))
    torch.testing.assert_close(eta(searched), eta(batch))


@pytest.mark.parametrize("k", [1, 3, 6])
def test_eta_on_the_top_k_is_attention_restricted_to_the_k(eta, batch, k: int) -> None:
    config = SearchConfig(method="simhash", k=k, options=SimHashOptions(hash_bits=32))
    searched = search_stage(batch, eta, config)
    query, keys = eta.search_embeddings(batch)
    positions, kept = simhash(batch, k, query, keys, config.options)
    keep = torch.zeros_like(batch.history_mask).scatter(1, positions, kept)  # [B, L]
    masked = batch.replace(history_mask=keep, history=batch.history * keep)
    torch.testing.assert_close(eta(searched), eta(masked))
    assert searched.history_mask.sum(1).tolist() == batch.history_mask.sum(1).clamp(max=k).tolist()
