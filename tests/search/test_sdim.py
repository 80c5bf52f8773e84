"""SDIM-style search: collisions against a loop, SimHash collision probability, ranking and recall."""

from __future__ import annotations

import math

import pytest
import torch

from longrec.data.batch import Batch
from longrec.search import exact_topk
from longrec.search.sdim import SDIMOptions, collisions, sdim
from longrec.search.simhash import simhash_bits, simhash_planes


def _batch(mask: torch.Tensor) -> Batch:
    return Batch(history=mask.long(), history_mask=mask, target=torch.ones(mask.shape[0], dtype=torch.long))


def test_collisions_equal_a_per_round_loop() -> None:
    g = torch.Generator().manual_seed(0)
    R, tau = 5, 3
    q, h = torch.rand(2, R * tau, generator=g) > 0.3, torch.rand(2, 7, R * tau, generator=g) > 0.3
    h[0, 0] = q[0]  # one behaviour collides in every round
    hits = collisions(q, h, R)  # [2, 7, R]
    for b in range(2):
        for i in range(7):
            for r in range(R):
                same = bool((q[b, r * tau : (r + 1) * tau] == h[b, i, r * tau : (r + 1) * tau]).all())
                assert bool(hits[b, i, r]) == same
    assert hits[0, 0].all()


@pytest.mark.parametrize("angle", [0.3, 1.0, 2.0])
def test_collision_probability_is_one_minus_angle_over_pi(angle: float) -> None:
    # Two unit vectors at `angle` in a random 2-plane of R^16; 20000 random hyperplanes.
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(16, 2, generator=g))[0]  # [16, 2] orthonormal
    a = basis[:, 0]
    b = math.cos(angle) * basis[:, 0] + math.sin(angle) * basis[:, 1]
    planes = simhash_planes(16, 20_000, seed=1)
    same = simhash_bits(a, planes) == simhash_bits(b, planes)  # [20000]
    assert abs(same.float().mean().item() - (1 - angle / math.pi)) < 0.02  # binomial std <= 0.0036
    rounds = collisions(simhash_bits(a, planes)[None], simhash_bits(b, planes)[None, None], 5000)  # τ = 4
    assert abs(rounds.float().mean().item() - (1 - angle / math.pi) ** 4) < 0.03


def test_score_is_the_number_of_colliding_rounds_with_ties_to_the_more_recent() -> None:
    q = torch.randn(1, 8)
    keys = torch.randn(1, 6, 8)
    keys[0, 0] = keys[0, 3] = q[0]  # collide in every round: a tie broken by recency
    keys[0, 5] = -q[0]  # never collides, but is the most recent
    config = SDIMOptions(hash_rounds=16, round_bits=2, seed=0)
    positions, kept = sdim(_batch(torch.ones(1, 6, dtype=torch.bool)), 6, q, keys, config)
    assert positions[0, :2].tolist() == [3, 0] and kept.all()
    planes = simhash_planes(8, 32, seed=0)
    count = collisions(simhash_bits(q, planes), simhash_bits(keys, planes), 16).sum(-1)[0]  # [6]
    assert count[positions[0]].tolist() == sorted(count.tolist(), reverse=True)


def test_padding_is_never_kept() -> None:
    mask = torch.tensor([[False, True, True]])
    q = torch.randn(1, 8)
    keys = q.unsqueeze(1).repeat(1, 3, 1)  # [1, 3, 8], padding collides everywhere too
    positions, kept = sdim(_batch(mask), 3, q, keys, SDIMOptions())
    assert kept.tolist() == [[True, True, False]] and sorted(positions[0, :2].tolist()) == [1, 2]


def test_without_search_embeddings_the_error_says_so() -> None:
    with pytest.raises(ValueError, match="sdim search needs the model's search embeddings"):
        sdim(_batch(torch.ones(1, 3, dtype=torch.bool)), 2, None, None, SDIMOptions())


# Measured on Gaussian queries and unit-norm keys (B=64, L=200, D=16, K=20), 48 rounds x 3 bits (the defaults):
# 0.58-0.61 over 5 plane seeds (random choice: 0.10; 64-bit simhash: 0.56).
RECALL_FLOOR = 0.48


def test_recall_at_20_of_200_clears_the_floor() -> None:
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(64, 200, 16, generator=g)
    q, keys = torch.randn(64, 16, generator=g), keys / keys.norm(dim=-1, keepdim=True)
    batch = _batch(torch.ones(64, 200, dtype=torch.bool))
    positions, _ = sdim(batch, 20, q, keys, SDIMOptions(hash_rounds=48, round_bits=3, seed=0))
    reference, _ = exact_topk(q, keys, batch.history_mask, 20)
    recall = (positions.unsqueeze(-1) == reference.unsqueeze(1)).any(-1).float().mean().item()
    assert recall >= RECALL_FLOOR, f"sdim recall@20 of 200 = {recall:.3f}"
