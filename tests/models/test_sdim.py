"""SDIM: hash-collision pooling against a naive per-round loop, fixed planes, and the head input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longrec.data.batch import Batch
from longrec.models import SDIMConfig


def naive_interest(model, batch: Batch) -> torch.Tensor:
    """Per-round interest [B, R, E] with Python loops over examples, rounds and behaviours."""
    h, t = model.embedding(batch)
    R, tau = model.config.hash_rounds, model.config.round_bits
    sign_t = (t @ model.planes) > 0  # [B, R·τ]
    sign_h = (h @ model.planes) > 0  # [B, L, R·τ]
    B, L, E = h.shape
    out = torch.zeros(B, R, E)
    for b in range(B):
        for r in range(R):
            bits = slice(r * tau, (r + 1) * tau)
            total = torch.zeros(E)
            for i in range(L):
                if batch.history_mask[b, i] and torch.equal(sign_h[b, i, bits], sign_t[b, bits]):
                    total = total + h[b, i]
            out[b, r] = F.normalize(total, dim=0) if model.config.normalize else total
    return out


@pytest.mark.parametrize("normalize", [True, False])
def test_pooled_interest_equals_a_per_round_loop(make_model, batch, normalize: bool) -> None:
    model = make_model("sdim", hash_rounds=6, round_bits=2, normalize=normalize)
    interest = model.interest(batch)  # [B, R, E]
    torch.testing.assert_close(interest, naive_interest(model, batch))
    assert (interest.abs().sum(-1) > 0).any(), "some behaviour must collide, or the test checks only zeros"


def test_logit_is_the_head_on_the_round_average_and_the_target(make_model, batch) -> None:
    model = make_model("sdim", hash_rounds=4, round_bits=2)
    t = model.embedding(batch)[1]
    expected = model.head(torch.cat([naive_interest(model, batch).mean(1), t], dim=-1)).squeeze(-1)
    torch.testing.assert_close(model(batch), expected)


def test_a_copy_of_the_target_collides_in_every_round_and_an_empty_history_pools_to_zero(make_model, batch) -> None:
    model = make_model("sdim", normalize=False)
    copy = batch.replace(
        history=torch.where(batch.history_mask, batch.target.unsqueeze(1), 0),
        history_category=batch.target_category.unsqueeze(1) * batch.history_mask.unsqueeze(-1),
    )  # every real behaviour is the target itself
    interest = model.interest(copy)  # [B, R, E]
    t = model.embedding(copy)[1]
    n = batch.history_mask.sum(1, keepdim=True).float()  # [B, 1]
    torch.testing.assert_close(interest, (n * t).unsqueeze(1).expand_as(interest))  # n copies of t in every round
    assert (interest[n.squeeze(1) == 0] == 0).all()


def test_planes_are_fixed_by_the_hash_seed_and_saved(make_model) -> None:
    a, b = make_model("sdim", seed=0), make_model("sdim", seed=1)  # different weights, same hash_seed
    assert torch.equal(a.planes, b.planes) and "planes" in a.state_dict()
    assert a.planes.shape == (a.embedding.out_dim, a.config.hash_rounds * a.config.round_bits)
    assert not torch.equal(make_model("sdim", hash_seed=1).planes, a.planes)
    assert not a.planes.requires_grad


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"hash_rounds": 0}, r"SDIMConfig\.hash_rounds must be a positive int\. Got 0 instead\."),
        ({"round_bits": 0}, r"SDIMConfig\.round_bits must be a positive int\. Got 0 instead\."),
        ({"hash_seed": -1}, r"SDIMConfig\.hash_seed must be a non-negative int\. Got -1 instead\."),
        ({"normalize": 1}, r"SDIMConfig\.normalize must be a bool\. Got 1 instead\."),
    ],
)
def test_config_rejects_bad_values(params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SDIMConfig(**{"num_items": 50, **params})
