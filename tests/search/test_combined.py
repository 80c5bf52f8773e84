"""hard+soft search: K_hard behaviours by hard search, K - K_hard by soft search over the rest, as two blocks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from longrec.data.batch import Batch, check_batch
from longrec.search import search_stage
from longrec.search.combined import HardSoftOptions, hard_and_soft, split_blocks
from longrec.search.config import SearchConfig


def _hand_batch() -> tuple[Batch, Tensor, Tensor]:
    """2 rows, L = 6, M = 2, target path (1, 5); soft scores are the keys themselves (D = 1, query = 1)."""
    cats = [
        [[1, 5], [1, 6], [1, 5], [2, 5], [1, 7], [1, 5]],  # depth 2 at 0, 2, 5; depth 1 at 1, 4; 0 at 3
        [[0, 0], [0, 0], [0, 0], [9, 9], [1, 6], [9, 9]],  # one depth-1 match (column 4), 3 real
    ]
    mask = torch.tensor([[1] * 6, [0, 0, 0, 1, 1, 1]], dtype=torch.bool)
    batch = Batch(
        history=torch.arange(1, 13).view(2, 6) * mask,
        history_mask=mask,
        target=torch.tensor([20, 21]),
        history_category=torch.tensor(cats) * mask.unsqueeze(-1),
        target_category=torch.tensor([[1, 5], [1, 5]]),
        history_position=(6 - torch.arange(6)).expand(2, 6) * mask,
    )
    scores = torch.tensor([[0.9, 0.1, 0.8, 0.7, 0.2, 0.95], [0.0, 0.0, 0.0, 0.3, 0.9, 0.6]])
    return batch, torch.ones(2, 1), scores.unsqueeze(-1)


def test_hard_block_then_soft_block_over_the_remaining_behaviours() -> None:
    batch, query, keys = _hand_batch()
    positions, kept = hard_and_soft(batch, 4, query, keys, HardSoftOptions(hard_k=2))
    # Row 0: hierarchical keeps 5, 2 (depth 2, most recent); soft's best are 5, 0, 2, 3 -> without 5 and 2: 0, 3.
    # Row 1: hierarchical keeps 4 only (hard block left-padded); soft takes 5, 3 from the rest, not the hard slot.
    assert positions[kept].tolist() == [2, 5, 0, 3, 4, 3, 5]
    assert kept.tolist() == [[True, True, True, True], [False, True, True, True]]
    assert positions[0].tolist() == [2, 5, 0, 3], "each block oldest first"


def test_category_as_the_hard_method_and_the_degenerate_widths() -> None:
    batch, query, keys = _hand_batch()
    positions, kept = hard_and_soft(batch, 3, query, keys, HardSoftOptions(hard_method="category", hard_k=2))
    # Row 0: fine-level 5 at 0, 2, 3, 5 -> 3, 5; soft over the rest -> 0. Row 1: no fine match -> soft takes 4.
    assert positions[kept].tolist() == [3, 5, 0, 4]
    only_soft, kept_soft = hard_and_soft(batch, 3, query, keys, HardSoftOptions(hard_k=0))
    assert only_soft[kept_soft].tolist() == [0, 2, 5, 3, 4, 5]
    only_hard, kept_hard = hard_and_soft(batch, 3, query, keys, HardSoftOptions(hard_k=3))
    assert only_hard[kept_hard].tolist() == [0, 2, 5, 4]


def test_blocks_keep_their_width_when_the_history_is_shorter_than_k() -> None:
    batch, query, keys = _hand_batch()
    positions, kept = hard_and_soft(batch, 9, query, keys, HardSoftOptions(hard_k=4))  # L = 6 < K = 9
    assert positions.shape == (2, 9)
    # Row 0: depth 2 at 0, 2, 5 and the more recent depth-1 (4) fill the hard block; soft gets 1 and 3.
    assert kept.tolist()[0] == [True, True, True, True, False, False, False, True, True]
    assert kept.tolist()[1] == [False, False, False, True, False, False, False, True, True]
    taken = torch.zeros(2, 6, dtype=torch.long).scatter_add(1, positions, kept.long())  # [B, L]
    assert torch.equal(taken, batch.history_mask.long()), "K > L: every behaviour kept exactly once"


def test_errors_say_what_is_missing() -> None:
    batch, query, keys = _hand_batch()
    with pytest.raises(ValueError, match=r"search.hard_k must be in \[0, search.k\] = \[0, 3\]. Got 4 instead."):
        hard_and_soft(batch, 3, query, keys, HardSoftOptions(hard_k=4))
    with pytest.raises(ValueError, match="hard\\+soft search needs the model's search embeddings"):
        hard_and_soft(batch, 3, None, None, HardSoftOptions(hard_k=1))
    with pytest.raises(ValueError, match=r"hierarchical search reads batch\.history_category"):
        hard_and_soft(batch.replace(history_category=None), 3, query, keys, HardSoftOptions(hard_k=1))


def random_case(data: st.DataObject) -> tuple[Batch, Tensor, Tensor]:
    B = data.draw(st.integers(1, 4))
    L = data.draw(st.integers(1, 10))
    M = data.draw(st.integers(1, 3))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    lengths = torch.randint(0, L + 1, (B,), generator=g)
    mask = torch.arange(L)[None, :] >= (L - lengths)[:, None]  # [B, L]
    batch = Batch(
        history=torch.randint(1, 50, (B, L), generator=g) * mask,
        history_mask=mask,
        target=torch.randint(1, 50, (B,), generator=g),
        history_category=torch.randint(0, 3, (B, L, M), generator=g) * mask.unsqueeze(-1),
        target_category=torch.randint(0, 3, (B, M), generator=g),
    )
    return batch, torch.randn(B, 3, generator=g), torch.randn(B, L, 3, generator=g)


def naive_blocks(batch: Batch, k: int, query: Tensor, keys: Tensor, options: HardSoftOptions) -> list[list[int]]:
    """Python-loop reference; each row: hard block then soft block, each oldest first, -1 = empty slot."""
    assert batch.history_category is not None and batch.target_category is not None
    out = []
    for b in range(len(batch)):
        path, target = batch.history_category[b].tolist(), batch.target_category[b].tolist()
        real = [i for i in range(batch.history.shape[1]) if batch.history_mask[b, i]]
        if options.hard_method == "category":
            rank = {
                i: 1 for i in real if target[options.level] != 0 and path[i][options.level] == target[options.level]
            }
        else:
            rank = {}
            for i in real:
                depth = 0
                while depth < len(target) and target[depth] != 0 and path[i][depth] == target[depth]:
                    depth += 1
                if depth:
                    rank[i] = depth
        hard = sorted(rank, key=lambda i: (rank[i], i), reverse=True)[: options.hard_k]
        rest = [i for i in real if i not in hard]
        soft = sorted(rest, key=lambda i: float(keys[b, i] @ query[b]), reverse=True)[: k - options.hard_k]
        row = []
        for block, width in ((hard, options.hard_k), (soft, k - options.hard_k)):
            row += [-1] * (width - len(block)) + sorted(block)
        out.append(row)
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_vectorised_hard_and_soft_equals_the_python_loop(data: st.DataObject) -> None:
    batch, query, keys = random_case(data)
    B, L = keys.shape[0], batch.history.shape[1]
    k = data.draw(st.integers(1, L + 3))  # K > L is allowed: the blocks keep their widths
    hard_k = data.draw(st.integers(0, k))
    method = data.draw(st.sampled_from(["category", "hierarchical"]))
    assert batch.history_category is not None
    level = data.draw(st.integers(-batch.history_category.shape[2], batch.history_category.shape[2] - 1))
    options = HardSoftOptions(hard_k=hard_k, hard_method=method, level=level)
    positions, kept = hard_and_soft(batch, k, query, keys, options)
    assert positions.shape == kept.shape == (B, k)
    assert torch.where(kept, positions, -1).tolist() == naive_blocks(batch, k, query, keys, options)
    assert batch.history_mask.gather(1, positions)[kept].all(), "padding selected"
    taken = torch.zeros(B, L, dtype=torch.long).scatter_add(1, positions, kept.long())  # [B, L]
    assert taken.max() <= 1, "a behaviour was kept twice"


class Recorder(nn.Module):
    """A stand-in sequence module: mean-pools its block and remembers the batch it was given."""

    def __init__(self, table: nn.Embedding) -> None:
        super().__init__()
        self.table = table
        self.seen: list[Batch] = []

    def forward(self, batch: Batch) -> Tensor:
        self.seen.append(batch)
        h = self.table(batch.history) * batch.history_mask.unsqueeze(-1)  # [B, K', D]
        return h.sum(dim=(1, 2)) / batch.history_mask.sum(1).clamp(min=1)  # [B]


class TwoModuleToy(nn.Module):
    """A toy hard+soft model: one module reads the hard block, another the soft block, logits are summed."""

    def __init__(self, hard_k: int, num_items: int = 50, dim: int = 4) -> None:
        super().__init__()
        self.hard_k = hard_k  # must equal search.hard_k
        self.table = nn.Embedding(num_items, dim, padding_idx=0)
        self.hard_module = Recorder(self.table)
        self.soft_module = Recorder(self.table)

    def search_embeddings(self, batch: Batch) -> tuple[Tensor, Tensor]:
        return self.table(batch.target), self.table(batch.history)  # [B, D], [B, L, D]

    def forward(self, batch: Batch) -> Tensor:
        hard, soft = split_blocks(batch, self.hard_k)
        return self.hard_module(hard) + self.soft_module(soft)  # [B]


def test_each_sequence_module_receives_exactly_its_block() -> None:
    B, L, K, hard_k = 3, 12, 6, 2
    g = torch.Generator().manual_seed(3)
    mask = torch.arange(L)[None, :] >= torch.tensor([0, 5, 9])[:, None]  # [B, L]: 12, 7 and 3 behaviours
    batch = Batch(
        history=(torch.arange(B * L).view(B, L) + 1) * mask,  # distinct ids: an id names its behaviour
        history_mask=mask,
        target=torch.tensor([47, 48, 49]),
        label=torch.ones(B),
        history_category=torch.randint(1, 3, (B, L, 2), generator=g) * mask.unsqueeze(-1),
        target_category=torch.randint(1, 3, (B, 2), generator=g),
        history_position=(L - torch.arange(L)).expand(B, L) * mask,
    )
    model = TwoModuleToy(hard_k)
    config = SearchConfig(method="hard+soft", k=K, options=HardSoftOptions(hard_k=hard_k))
    searched = search_stage(batch, model, config)
    check_batch(searched)
    logits = model(searched)
    assert logits.shape == (B,) and torch.isfinite(logits).all()

    with torch.no_grad():
        query, keys = model.search_embeddings(batch)
    expected = naive_blocks(batch, K, query, keys, HardSoftOptions(hard_k=hard_k))
    (hard,), (soft,) = model.hard_module.seen, model.soft_module.seen
    assert hard.history.shape == (B, hard_k) and soft.history.shape == (B, K - hard_k)
    for block, columns in ((hard, slice(0, hard_k)), (soft, slice(hard_k, K))):
        for b in range(B):
            want = [batch.history[b, i].item() if i >= 0 else 0 for i in expected[b][columns]]
            assert block.history[b].tolist() == want, "the module got another block's behaviours"
            real = block.history_position[b][block.history_mask[b]]  # type: ignore[index]
            assert (real.diff() < 0).all(), "oldest first within the block"
            n = int(block.history_mask[b].sum())
            assert block.history_mask[b, block.history.shape[1] - n :].all(), "left-padded within the block"
        assert block.history_category is not None
        assert torch.equal(block.history_category[..., 0] == 0, ~block.history_mask), "side fields move together"
    assert (hard.history_mask.sum(1) + soft.history_mask.sum(1)).tolist() == [6, 6, 3]
