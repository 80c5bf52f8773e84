"""The search stage contract: registry, signature, exact oracle, chronological left-padded output."""

from __future__ import annotations

import pytest
import torch

from longrec.data.batch import Batch, check_batch
from longrec.search import SEARCHERS, exact_topk, search_stage, topk_positions
from longrec.search.combined import HardSoftOptions
from longrec.search.config import SearchConfig


def _batch(B: int = 4, L: int = 9, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([L, L // 2, 0, 1])[:B]
    mask = torch.arange(L)[None, :] >= (L - lengths)[:, None]  # [B, L] left-padded
    history = torch.randint(1, 50, (B, L), generator=g) * mask
    return Batch(
        history=history,
        history_mask=mask,
        target=torch.randint(1, 50, (B,), generator=g),
        history_position=(L - torch.arange(L))[None, :].expand(B, L) * mask,
        history_time_delta=torch.rand(B, L, generator=g) * mask,
        # every behaviour shares the target's path, so hard searchers keep min(K, real) like the others
        history_category=torch.tensor([1, 2]).expand(B, L, 2) * mask.unsqueeze(-1),
        target_category=torch.tensor([[1, 2]]).expand(B, 2).clone(),
    )


class Embeds(torch.nn.Module):
    def search_embeddings(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(1)
        table = torch.randn(60, 5, generator=g)
        return table[batch.target], table[batch.history]


def test_exact_topk_equals_a_full_argsort() -> None:
    g = torch.Generator().manual_seed(2)
    q, keys = torch.randn(3, 4, generator=g), torch.randn(3, 12, 4, generator=g)
    mask = torch.ones(3, 12, dtype=torch.bool)
    positions, kept = exact_topk(q, keys, mask, 5)
    expected = torch.einsum("bd,bld->bl", q, keys).argsort(dim=1, descending=True)[:, :5]
    assert torch.equal(positions, expected) and kept.all()


def test_padding_is_never_selected_and_short_histories_are_masked() -> None:
    batch = _batch()
    positions, kept = topk_positions(torch.randn(4, 9), batch.history_mask, 6)
    assert batch.history_mask.gather(1, positions)[kept].all()
    assert kept.sum(1).tolist() == [6, 4, 0, 1]
    with pytest.raises(ValueError, match=r"k must be in \[1, L\] = \[1, 9\]. Got k=10 instead."):
        topk_positions(torch.randn(4, 9), batch.history_mask, 10)


@pytest.mark.parametrize("method", sorted(SEARCHERS))
def test_every_searcher_returns_a_valid_left_padded_chronological_batch(method: str) -> None:
    batch = _batch()
    options = HardSoftOptions(hard_k=1) if method == "hard+soft" else None
    out = search_stage(batch, Embeds(), SearchConfig(method=method, k=3, options=options))
    check_batch(out)
    assert out.history.shape == (4, 3)
    assert out.history_mask.sum(1).tolist() == [3, 3, 0, 1]
    # hard+soft returns [hard block | soft block]: each block follows the convention on its own
    blocks = [slice(0, 1), slice(1, 3)] if SEARCHERS[method].blocks else [slice(0, 3)]
    for b in range(4):
        for columns in blocks:
            mask, position = out.history_mask[b, columns], out.history_position[b, columns]
            assert (position[mask].diff() < 0).all(), "oldest first: relative positions decrease"
            n = int(mask.sum())
            assert mask[len(mask) - n :].all(), "left-padded"


def test_soft_search_with_k_equal_l_keeps_the_whole_history() -> None:
    batch = _batch()
    out = search_stage(batch, Embeds(), SearchConfig(method="soft", k=9))
    assert torch.equal(out.history, batch.history) and torch.equal(out.history_mask, batch.history_mask)


def test_latest_keeps_the_most_recent() -> None:
    batch = _batch()
    out = search_stage(batch, None, SearchConfig(method="latest", k=3))
    assert torch.equal(out.history[0], batch.history[0, -3:])


def test_embedding_searcher_without_model_embeddings_says_what_to_do() -> None:
    with pytest.raises(ValueError, match="needs a model with search_embeddings"):
        search_stage(_batch(), torch.nn.Linear(1, 1), SearchConfig(method="soft", k=3))
