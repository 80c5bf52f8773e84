"""Category (SIM hard) search: same category as the target at one taxonomy column, most recent first."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from longrec.data.batch import Batch, check_batch
from longrec.search import search_stage
from longrec.search.category import CategoryOptions, category
from longrec.search.combined import HardSoftOptions
from longrec.search.config import SearchConfig
from longrec.settings import ConfigError


def _hand_batch() -> Batch:
    """4 rows, L = 6, M = 2 (coarse, fine); row 2 is empty, row 3's target has no fine category."""
    cats = [
        [[1, 5], [1, 6], [1, 5], [2, 5], [1, 5], [1, 0]],  # fine 5 at columns 0, 2, 3 (coarse differs), 4
        [[0, 0], [0, 0], [0, 0], [1, 5], [1, 7], [1, 6]],  # 3 real, one match (column 3)
        [[0, 0]] * 6,  # empty history
        [[1, 5], [1, 0], [1, 0], [1, 5], [1, 0], [1, 0]],  # target fine level missing: matches nothing
    ]
    mask = torch.tensor([[1] * 6, [0, 0, 0, 1, 1, 1], [0] * 6, [1] * 6], dtype=torch.bool)
    return Batch(
        history=torch.arange(1, 25).view(4, 6) * mask,
        history_mask=mask,
        target=torch.tensor([30, 31, 32, 33]),
        history_category=torch.tensor(cats) * mask.unsqueeze(-1),
        target_category=torch.tensor([[1, 5], [1, 5], [1, 5], [1, 0]]),
    )


def _kept_lists(positions: torch.Tensor, kept: torch.Tensor) -> list[list[int]]:
    return [p[m].tolist() for p, m in zip(positions, kept, strict=True)]


def test_finest_level_keeps_matches_most_recent_first() -> None:
    positions, kept = category(_hand_batch(), 3, None, None, CategoryOptions())
    # Row 0: four fine matches tie on category; recency decides (4, 3, 2), column 0 drops out at K = 3.
    assert _kept_lists(positions, kept) == [[4, 3, 2], [3], [], []]


def test_k_equal_l_keeps_every_match_and_nothing_else() -> None:
    positions, kept = category(_hand_batch(), 6, None, None, CategoryOptions())
    assert _kept_lists(positions, kept) == [[4, 3, 2, 0], [3], [], []]
    assert kept.sum(1).tolist() == [4, 1, 0, 0], "fewer than K matches -> the rest is not kept"


def test_coarse_level_matches_on_the_first_column() -> None:
    positions, kept = category(_hand_batch(), 6, None, None, CategoryOptions(level=0))
    assert _kept_lists(positions, kept) == [[5, 4, 2, 1, 0], [5, 4, 3], [], [5, 4, 3, 2, 1, 0]]


def test_level_outside_the_taxonomy_and_missing_categories_are_explained() -> None:
    batch = _hand_batch()
    with pytest.raises(ValueError, match=r"search\.level = 2 is not a taxonomy column: the data has M = 2 level"):
        category(batch, 3, None, None, CategoryOptions(level=2))
    with pytest.raises(ValueError, match=r"category search reads batch\.history_category"):
        category(batch.replace(history_category=None), 3, None, None, CategoryOptions())


def test_search_config_rejects_bad_hard_search_keys_all_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        SearchConfig.from_table({"method": "hard+soft", "k": 4, "hard_k": 5, "hard_method": "categroy"})
    assert info.value.problems == [
        "search.hard_method must be one of category, hierarchical. Got 'categroy' instead.",
        "search.hard_k (5) must be <= search.k (4): the hard block is part of the K kept.",
    ]
    with pytest.raises(ConfigError, match=r"search.hard_k must be >= 0. Got -1 instead."):
        HardSoftOptions(hard_k=-1)
    SearchConfig(method="category", k=4)  # hard_k only matters for hard+soft


def random_batch(data: st.DataObject, max_levels: int = 3, max_id: int = 3) -> Batch:
    """A left-padded batch with small category ids (many ties, matches and missing levels)."""
    B = data.draw(st.integers(1, 4))
    L = data.draw(st.integers(1, 10))
    M = data.draw(st.integers(1, max_levels))
    seed = data.draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, L + 1, (B,), generator=g)
    mask = torch.arange(L)[None, :] >= (L - lengths)[:, None]  # [B, L]
    return Batch(
        history=torch.randint(1, 50, (B, L), generator=g) * mask,
        history_mask=mask,
        target=torch.randint(1, 50, (B,), generator=g),
        history_category=torch.randint(0, max_id + 1, (B, L, M), generator=g) * mask.unsqueeze(-1),
        target_category=torch.randint(0, max_id + 1, (B, M), generator=g),
    )


def naive_category(batch: Batch, k: int, level: int) -> list[list[int]]:
    """Python-loop reference: per row, matching real behaviours from the most recent back, the first K."""
    assert batch.history_category is not None and batch.target_category is not None
    out = []
    for b in range(len(batch)):
        t = int(batch.target_category[b, level])
        L = batch.history.shape[1]
        hits = [
            i
            for i in reversed(range(L))
            if batch.history_mask[b, i] and t != 0 and int(batch.history_category[b, i, level]) == t
        ]
        out.append(hits[:k])
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_vectorised_category_equals_the_python_loop_and_never_selects_padding(data: st.DataObject) -> None:
    batch = random_batch(data)
    assert batch.history_category is not None
    L, M = batch.history.shape[1], batch.history_category.shape[2]
    k = data.draw(st.integers(1, L))
    level = data.draw(st.integers(-M, M - 1))
    positions, kept = category(batch, k, None, None, CategoryOptions(level=level))
    assert positions.shape == kept.shape == (len(batch), k)
    assert _kept_lists(positions, kept) == naive_category(batch, k, level)
    assert batch.history_mask.gather(1, positions)[kept].all(), "padding selected"


def test_category_through_the_search_stage_gives_a_left_padded_chronological_batch() -> None:
    batch = _hand_batch()
    out = search_stage(batch, None, SearchConfig(method="category", k=3))
    check_batch(out)
    assert out.history.shape == (4, 3)
    assert out.history.tolist() == [[3, 4, 5], [0, 0, 10], [0, 0, 0], [0, 0, 0]]  # columns 2, 3, 4 | 3 of row 1
    assert out.history_category is not None
    assert (out.history_category[out.history_mask][:, -1] == 5).all(), "side fields move with the behaviour"


def test_fill_latest_tops_up_with_the_most_recent_non_matching_behaviours() -> None:
    batch = _hand_batch()
    positions, kept = category(batch, 4, None, None, CategoryOptions(fill="latest"))
    # row 0: matches 4, 3, 2, 0 (most recent first) fill K = 4; row 1: match 3, then 5, 4; row 2: empty history;
    # row 3: no match at all (target's fine level missing), so the 4 most recent behaviours: 5, 4, 3, 2.
    assert _kept_lists(positions, kept) == [[4, 3, 2, 0], [3, 5, 4], [], [5, 4, 3, 2]]
    plain = _kept_lists(*category(batch, 4, None, None, CategoryOptions()))
    assert plain == [[4, 3, 2, 0], [3], [], []]
    with pytest.raises(ConfigError, match=r"search.fill must be one of none, latest .* Got 'oldest'"):
        CategoryOptions(fill="oldest")
