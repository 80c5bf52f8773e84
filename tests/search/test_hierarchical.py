"""Hierarchical hard search: deepest taxonomy-prefix match first, recency within a depth, never below min_depth."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from longrec.data.batch import Batch, check_batch
from longrec.search import search_stage
from longrec.search.category import CategoryOptions, category
from longrec.search.config import SearchConfig
from longrec.search.hierarchical import HierarchicalOptions, hierarchical, match_depth


def _hand_batch() -> Batch:
    """3 rows, L = 7, M = 3; target path (1, 2, 3); row 1 has 2 real behaviours, row 2 none."""
    cats = [
        [[1, 2, 3], [1, 2, 9], [1, 8, 3], [4, 2, 3], [1, 2, 3], [0, 2, 3], [1, 0, 3]],
        [[0, 0, 0]] * 5 + [[1, 2, 0], [7, 7, 7]],
        [[0, 0, 0]] * 7,
    ]
    mask = torch.tensor([[1] * 7, [0] * 5 + [1, 1], [0] * 7], dtype=torch.bool)
    return Batch(
        history=torch.arange(1, 22).view(3, 7) * mask,
        history_mask=mask,
        target=torch.tensor([40, 41, 42]),
        history_category=torch.tensor(cats) * mask.unsqueeze(-1),
        target_category=torch.tensor([[1, 2, 3]] * 3),
    )


def _kept_lists(positions: torch.Tensor, kept: torch.Tensor) -> list[list[int]]:
    return [p[m].tolist() for p, m in zip(positions, kept, strict=True)]


def test_match_depth_is_the_matching_prefix_and_a_missing_level_stops_it() -> None:
    batch = _hand_batch()
    assert batch.history_category is not None and batch.target_category is not None
    depth = match_depth(batch.history_category, batch.target_category)
    # (1,2,3)=3, (1,2,9)=2, (1,8,3)=1, (4,2,3)=0 despite the fine match, (0,2,3)=0, (1,0,3)=1 (missing level stops).
    assert depth.tolist() == [[3, 2, 1, 0, 3, 0, 1], [0, 0, 0, 0, 0, 2, 0], [0] * 7]
    target_missing_fine = torch.tensor([[1, 2, 0]])
    assert match_depth(torch.tensor([[[1, 2, 0], [1, 2, 3]]]), target_missing_fine).tolist() == [[2, 2]]


def test_finest_level_first_recency_inside_a_level_then_coarser_levels() -> None:
    positions, kept = hierarchical(_hand_batch(), 4, None, None, HierarchicalOptions())
    # depth 3: columns 4, 0 (most recent first); depth 2: column 1; depth 1: columns 6, 2 -> column 6 (more recent).
    assert _kept_lists(positions, kept) == [[4, 0, 1, 6], [5], []]


def test_k_equal_l_keeps_every_behaviour_with_depth_at_least_one_and_no_other() -> None:
    positions, kept = hierarchical(_hand_batch(), 7, None, None, HierarchicalOptions())
    assert _kept_lists(positions, kept) == [[4, 0, 1, 6, 2], [5], []]
    assert kept.sum(1).tolist() == [5, 1, 0]


def test_min_depth_stops_the_fallback_at_that_level() -> None:
    positions, kept = hierarchical(_hand_batch(), 7, None, None, HierarchicalOptions(min_depth=2))
    assert _kept_lists(positions, kept) == [[4, 0, 1], [5], []]  # the depth-1 columns 6 and 2 are left out
    positions, kept = hierarchical(_hand_batch(), 7, None, None, HierarchicalOptions(min_depth=3))
    assert _kept_lists(positions, kept) == [[4, 0], [], []]


def test_min_depth_must_be_a_level_the_taxonomy_has() -> None:
    with pytest.raises(ValueError, match=r"search\.min_depth = 4 is deeper than the taxonomy: .*M = 3 levels"):
        hierarchical(_hand_batch(), 3, None, None, HierarchicalOptions(min_depth=4))
    with pytest.raises(ValueError, match=r"search\.min_depth must be >= 1"):
        HierarchicalOptions(min_depth=0)


def test_missing_categories_are_explained() -> None:
    with pytest.raises(ValueError, match=r"hierarchical search reads batch\.history_category"):
        hierarchical(_hand_batch().replace(target_category=None), 3, None, None, HierarchicalOptions())


def random_batch(data: st.DataObject, tree: bool = False) -> Batch:
    """Left-padded batch with small category ids. `tree`: complete paths where the finest id determines its
    ancestors (a real taxonomy), ids of each level in their own range of the shared id space."""
    B = data.draw(st.integers(1, 4))
    L = data.draw(st.integers(1, 10))
    M = data.draw(st.integers(1, 3))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    lengths = torch.randint(0, L + 1, (B,), generator=g)
    mask = torch.arange(L)[None, :] >= (L - lengths)[:, None]  # [B, L]
    if tree:
        leaf = torch.randint(0, 8, (B, L + 1), generator=g)  # [B, L + 1]; the last column is the target
        path = torch.stack([100 * (m + 1) + leaf // 2 ** (M - 1 - m) for m in range(M)], dim=-1)  # [B, L + 1, M]
        history_category, target_category = path[:, :L], path[:, L]
    else:
        history_category = torch.randint(0, 3, (B, L, M), generator=g)
        target_category = torch.randint(0, 3, (B, M), generator=g)
    return Batch(
        history=torch.randint(1, 50, (B, L), generator=g) * mask,
        history_mask=mask,
        target=torch.randint(1, 50, (B,), generator=g),
        history_category=history_category * mask.unsqueeze(-1),
        target_category=target_category,
    )


def naive_hierarchical(batch: Batch, k: int, min_depth: int = 1) -> list[list[int]]:
    """Python-loop reference: depth by walking the path coarse to fine, then sort by (depth, recency)."""
    assert batch.history_category is not None and batch.target_category is not None
    out = []
    for b in range(len(batch)):
        target = batch.target_category[b].tolist()
        ranked = []
        for i in range(batch.history.shape[1]):
            if not batch.history_mask[b, i]:
                continue
            depth = 0
            for level, value in enumerate(batch.history_category[b, i].tolist()):
                if value == 0 or value != target[level]:
                    break
                depth += 1
            if depth >= min_depth:
                ranked.append((depth, i))
        out.append([i for _, i in sorted(ranked, reverse=True)][:k])
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_vectorised_hierarchical_equals_the_python_loop_and_never_selects_padding(data: st.DataObject) -> None:
    batch = random_batch(data)
    k = data.draw(st.integers(1, batch.history.shape[1]))
    assert batch.history_category is not None
    min_depth = data.draw(st.integers(1, batch.history_category.shape[2]))
    positions, kept = hierarchical(batch, k, None, None, HierarchicalOptions(min_depth=min_depth))
    assert positions.shape == kept.shape == (len(batch), k)
    assert _kept_lists(positions, kept) == naive_hierarchical(batch, k, min_depth)
    assert batch.history_mask.gather(1, positions)[kept].all(), "padding selected"


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_category_at_level_m_is_hierarchical_restricted_to_depth_at_least_m_on_a_tree(data: st.DataObject) -> None:
    # On a real tree (the fine id fixes the coarse ones, no missing levels), sharing the level-m category is the
    # same as sharing the whole prefix 1..m. Without that (content mapped with gaps) category search can keep more.
    batch = random_batch(data, tree=True)
    assert batch.history_category is not None and batch.target_category is not None
    L, M = batch.history.shape[1], batch.history_category.shape[2]
    depth = match_depth(batch.history_category, batch.target_category) * batch.history_mask  # [B, L]
    for column in range(M):
        positions, kept = category(batch, L, None, None, CategoryOptions(level=column))
        selected = torch.zeros_like(batch.history_mask).scatter(1, positions, kept)  # [B, L]
        assert torch.equal(selected, depth >= column + 1)
        deep_positions, deep_kept = hierarchical(batch, L, None, None, HierarchicalOptions(min_depth=column + 1))
        assert torch.equal(torch.zeros_like(selected).scatter(1, deep_positions, deep_kept), selected)
        if column == M - 1:  # the finest level: same behaviours in the same (recency) order
            assert torch.equal(positions[kept], hierarchical(batch, L, None, None, HierarchicalOptions())[0][kept])


def test_hierarchical_through_the_search_stage_gives_a_left_padded_chronological_batch() -> None:
    out = search_stage(_hand_batch(), None, SearchConfig(method="hierarchical", k=4))
    check_batch(out)
    assert out.history.tolist() == [[1, 2, 5, 7], [0, 0, 0, 13], [0, 0, 0, 0]]  # columns 0, 1, 4, 6 | 5 of row 1


def test_fill_latest_rolls_back_to_the_most_recent_behaviours_below_min_depth() -> None:
    batch = _hand_batch()
    # row 0 depths [3, 2, 1, 0, 3, 0, 1]: min_depth 2 keeps 4, 0 (depth 3), 1 (depth 2); fill then takes the most
    # recent of the rest: 6, 5, 3. Row 1: column 5 (depth 2), then column 6 (depth 0). Row 2: no history.
    options = HierarchicalOptions(min_depth=2, fill="latest")
    assert _kept_lists(*hierarchical(batch, 6, None, None, options)) == [[4, 0, 1, 6, 5, 3], [5, 6], []]
    assert _kept_lists(*hierarchical(batch, 6, None, None, HierarchicalOptions(min_depth=2))) == [[4, 0, 1], [5], []]
