"""SimHash search (ETA): packed Hamming distance against a naive count, tie-breaks, and recall against exact top-K."""

from __future__ import annotations

import pytest
import torch

from longrec.data.batch import Batch
from longrec.search import exact_topk, search_stage
from longrec.search.config import SearchConfig
from longrec.search.simhash import SimHashOptions, hamming, pack_bits, popcount, simhash, simhash_bits, simhash_planes


def _batch(mask: torch.Tensor) -> Batch:
    return Batch(history=mask.long(), history_mask=mask, target=torch.ones(mask.shape[0], dtype=torch.long))


def random_search_data(B: int = 64, L: int = 200, D: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian queries and unit-norm keys: cosine order = inner-product order, so exact top-K is SimHash's target."""
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(B, L, D, generator=g)
    return torch.randn(B, D, generator=g), keys / keys.norm(dim=-1, keepdim=True)


def recall_at_k(positions: torch.Tensor, reference: torch.Tensor) -> float:
    """Fraction of the reference top-K that the searcher kept (both [B, K])."""
    return (positions.unsqueeze(-1) == reference.unsqueeze(1)).any(-1).float().mean().item()


@pytest.mark.parametrize("bits", [1, 31, 32, 33, 70])
def test_packed_hamming_distance_equals_a_naive_bit_count(bits: int) -> None:
    g = torch.Generator().manual_seed(bits)
    a, b = torch.rand(5, bits, generator=g) > 0.5, torch.rand(5, 7, bits, generator=g) > 0.5
    packed = hamming(pack_bits(a).unsqueeze(1), pack_bits(b))  # [5, 7]
    assert packed.dtype == torch.int64
    assert torch.equal(packed, (a.unsqueeze(1) != b).sum(-1))


def test_popcount_of_extreme_words() -> None:
    words = torch.tensor([0, 1, 2**31, 2**32 - 1, 0x0F0F0F0F])
    assert popcount(words).tolist() == [0, 1, 1, 32, 16]


def test_planes_are_a_function_of_the_seed() -> None:
    assert torch.equal(simhash_planes(8, 16, seed=3), simhash_planes(8, 16, seed=3))
    assert not torch.equal(simhash_planes(8, 16, seed=3), simhash_planes(8, 16, seed=4))
    assert simhash_planes(8, 16, seed=3).shape == (8, 16)


def test_signatures_ignore_the_norm() -> None:
    x, planes = torch.randn(4, 8), simhash_planes(8, 64, seed=0)
    assert torch.equal(simhash_bits(x, planes), simhash_bits(3.0 * x, planes))
    assert torch.equal(simhash_bits(-x, planes), ~simhash_bits(x, planes))


def test_the_query_itself_comes_first_and_ties_go_to_the_more_recent() -> None:
    q = torch.randn(1, 8)
    keys = torch.randn(1, 6, 8)
    keys[0, 1] = keys[0, 4] = q[0]  # two exact copies: distance 0, a tie
    keys[0, 2] = -q[0]  # the farthest possible
    positions, kept = simhash(_batch(torch.ones(1, 6, dtype=torch.bool)), 3, q, keys, SimHashOptions(hash_bits=64))
    assert positions[0, :2].tolist() == [4, 1] and kept.all()
    assert 2 not in positions[0].tolist()


def test_padding_is_never_kept_and_short_histories_are_masked() -> None:
    mask = torch.tensor([[False, False, True, True], [False, False, False, False]])
    q, keys = torch.randn(2, 8), torch.randn(2, 4, 8)
    keys[:, :2] = q.unsqueeze(1)  # padding that would hash closest
    positions, kept = simhash(_batch(mask), 3, q, keys, SimHashOptions())
    assert kept.tolist() == [[True, True, False], [False, False, False]]
    assert sorted(positions[0, :2].tolist()) == [2, 3]


def test_without_search_embeddings_the_error_says_so() -> None:
    with pytest.raises(ValueError, match="simhash search needs the model's search embeddings"):
        simhash(_batch(torch.ones(1, 3, dtype=torch.bool)), 2, None, None, SimHashOptions())


def test_k_equal_l_keeps_the_whole_history_through_the_search_stage() -> None:
    class Embeds(torch.nn.Module):
        def search_embeddings(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
            g = torch.Generator().manual_seed(0)
            table = torch.randn(10, 4, generator=g)
            return table[batch.target], table[batch.history]

    mask = torch.arange(5) >= torch.tensor([[0], [2]])  # [2, 5], left-padded
    batch = Batch(history=torch.randint(1, 10, (2, 5)) * mask, history_mask=mask, target=torch.tensor([1, 2]))
    out = search_stage(batch, Embeds(), SearchConfig(method="simhash", k=5))
    assert torch.equal(out.history, batch.history) and torch.equal(out.history_mask, batch.history_mask)


# Measured on this data (B=64, L=200, D=16, K=20; mean of 5 plane seeds): 8 bits 0.28, 16 0.35, 32 0.45,
# 64 0.56, 128 0.66, 256 0.74; random choice gets 0.10. Isotropic keys are the hard case: real embeddings cluster.
RECALL_FLOOR_64_BITS = 0.45


def test_recall_at_20_of_200_with_64_bits_clears_the_floor() -> None:
    q, keys = random_search_data()
    batch = _batch(torch.ones(keys.shape[:2], dtype=torch.bool))
    positions, _ = simhash(batch, 20, q, keys, SimHashOptions(hash_bits=64, seed=0))
    reference, _ = exact_topk(q, keys, batch.history_mask, 20)
    recall = recall_at_k(positions, reference)
    assert recall >= RECALL_FLOOR_64_BITS, f"simhash recall@20 of 200 with 64 bits = {recall:.3f}"


def test_recall_increases_with_the_signature_length() -> None:
    q, keys = random_search_data()
    batch = _batch(torch.ones(keys.shape[:2], dtype=torch.bool))
    reference, _ = exact_topk(q, keys, batch.history_mask, 20)
    recalls = [
        recall_at_k(simhash(batch, 20, q, keys, SimHashOptions(hash_bits=bits, seed=0))[0], reference)
        for bits in (8, 32, 128)
    ]
    assert recalls == sorted(recalls) and recalls[-1] > recalls[0] + 0.2, f"recall by bits: {recalls}"
