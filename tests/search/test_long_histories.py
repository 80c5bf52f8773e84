"""Long histories: the one tie rule, chunked top-K = one top-K, chunked search_stage = unchunked, bounded keys.

The unit tests use L of a few thousand (search scores blocks of SCORE_BLOCK = 1024 columns, so chunks are multiples
of it) with B <= 4 and D <= 16; the `slow` test searches L = 10^5 and measures the peak RSS.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import longrec.search as search
import longrec.search.exact as exact
from longrec.data.batch import Batch
from longrec.models import MODELS, build_model, data_params
from longrec.models.contract import capabilities
from longrec.search import SEARCHERS, chunk_size, history_columns, search_stage, topk_positions
from longrec.search.combined import HardSoftOptions
from longrec.search.config import SearchConfig, SearchOptions
from longrec.search.exact import SCORE_BLOCK, chunked_topk, exact_topk, rank_keys, soft_scores
from longrec.search.sdim import SDIMOptions
from longrec.search.simhash import SimHashOptions
from longrec.settings import ConfigError

SIZES = {"num_items": 40, "num_categories": 12, "taxonomy_levels": 2, "num_actions": 4, "num_goals": 2, "num_users": 3}


def long_batch(B: int = 3, L: int = 2500, seed: int = 0) -> Batch:
    """A left-padded batch of long histories over few items (many exact duplicate keys: ties), every side field."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([L, L - 700, 37, 0])[:B]
    mask = torch.arange(L) >= L - lengths.unsqueeze(1)  # [B, L]
    position = (L - torch.arange(L)).expand(B, L) * mask  # [B, L] most recent = 1
    coarse = torch.randint(1, 4, (B, L), generator=g)  # [B, L]
    fine = torch.randint(4, SIZES["num_categories"], (B, L), generator=g)  # [B, L]
    return Batch(
        history=torch.randint(1, 8, (B, L), generator=g) * mask,
        history_mask=mask,
        target=torch.randint(1, 8, (B,), generator=g),
        label=torch.ones(B),
        history_category=torch.stack([coarse, fine], -1) * mask.unsqueeze(-1),
        target_category=torch.stack([torch.randint(1, 4, (B,), generator=g), torch.full((B,), 5)], -1),
        history_action=torch.randint(1, 4, (B, L), generator=g) * mask,
        history_domain=torch.randint(1, 3, (B, L), generator=g) * mask,
        history_time_delta=(position * 60.0) * mask,
        history_position=position,
        goal=torch.ones(B, dtype=torch.long),
    )


def make_model(name: str, **overrides: object) -> nn.Module:
    torch.manual_seed(0)
    params = {**data_params(MODELS[name][0], SIZES), "dim": 4, **overrides}
    return build_model(name, **params).eval()


class RecordingModel(nn.Module):
    """Wraps a model and records the widest keys its search_embeddings returned."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.widest = 0

    def search_embeddings(self, batch: Batch) -> tuple[Tensor, Tensor]:
        query, keys = self.model.search_embeddings(batch)
        self.widest = max(self.widest, keys.shape[1])
        return query, keys


# --- the tie rule and the keys ---------------------------------------------------------------------------------------


def test_rank_keys_order_like_the_scores_then_recency_with_padding_last() -> None:
    scores = torch.tensor([[-float("inf"), -2.5, -0.0, 0.0, 1e-30, 3.0, 3.0, float("inf"), 7.0]])
    mask = torch.tensor([[True] * 8 + [False]])
    order = rank_keys(scores, mask).argsort(descending=True)[0].tolist()
    assert order == [7, 6, 5, 4, 3, 2, 1, 0, 8], "by score, -0.0 == 0.0 -> more recent first, padding last"


def test_topk_breaks_ties_by_recency_and_takes_the_most_recent_padding_last() -> None:
    scores = torch.tensor([[1.0, 2.0, 1.0, 2.0, 1.0, 0.0]])
    mask = torch.tensor([[True, True, True, True, False, False]])
    positions, kept = topk_positions(scores, mask, 6)
    assert positions.tolist() == [[3, 1, 2, 0, 5, 4]]
    assert kept.tolist() == [[True, True, True, True, False, False]]


def test_float64_and_wide_integer_scores_follow_the_same_rule_through_the_sort() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(-3, 3, (4, 50), generator=g)  # many ties
    mask = torch.rand(4, 50, generator=g) > 0.3
    expected = topk_positions(scores.float(), mask, 20)
    for wide in (scores.double(), scores * 2**40):  # no int32 rank: the stable-sort path
        got = topk_positions(wide, mask, 20)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    with pytest.raises(TypeError, match="float32, bool or int32-range scores"):
        rank_keys(scores.double(), mask)


@settings(max_examples=25, deadline=None)
@given(
    L=st.integers(1, 60),
    k=st.integers(1, 60),
    sizes=st.lists(st.integers(1, 17), min_size=1, max_size=8),
    seed=st.integers(0, 2**16),
)
def test_chunked_topk_equals_one_topk_for_any_chunking(L: int, k: int, sizes: list[int], seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    k = min(k, L)
    scores = torch.randint(0, 4, (3, L), generator=g).float()  # coarse scores: ties everywhere
    mask = torch.rand(3, L, generator=g) > 0.3
    bounds, start = [], 0
    while start < L:  # chunk sizes that do not divide L, the last one cut short
        stop = min(L, start + sizes[len(bounds) % len(sizes)])
        bounds.append((start, stop))
        start = stop
    got = chunked_topk(((a, scores[:, a:b]) for a, b in bounds), mask, k)
    expected = topk_positions(scores, mask, k)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


@settings(max_examples=40, deadline=None)
@given(
    L=st.integers(1, 400),
    k=st.integers(1, 60),
    levels=st.sampled_from([2, 8, 64, 0]),
    density=st.floats(0.05, 1.0),
    seed=st.integers(0, 2**16),
)
def test_float32_prefilter_ranks_like_the_sort_oracle(L: int, k: int, levels: int, density: float, seed: int) -> None:
    # float32 scores take the float top-2K prefilter; float64 scores the stable sort: independent code, one rule.
    g = torch.Generator().manual_seed(seed)
    k = min(k, L)
    scores = torch.randn(5, L, generator=g)  # levels = 0: distinct scores; else that many values (wide tie groups)
    if levels:
        scores = torch.randint(0, levels, (5, L), generator=g).float()
    mask = torch.rand(5, L, generator=g) < density
    expected = topk_positions(scores.double(), mask, k)
    for chunk in (L, 64, 7):
        got = chunked_topk(((a, scores[:, a : a + chunk]) for a in range(0, L, chunk)), mask, k)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1]), f"chunk {chunk}"


@settings(max_examples=40, deadline=None)
@given(
    L=st.integers(2 * exact.BLOCKS_PER_K, 3000),
    k=st.integers(1, 40),
    levels=st.sampled_from([0, 3, 50]),
    repeats=st.integers(0, 8),
    density=st.floats(0.02, 1.0),
    seed=st.integers(0, 2**16),
)
def test_block_maximum_prefilter_ranks_like_the_sort_oracle(
    L: int, k: int, levels: int, repeats: int, density: float, seed: int
) -> None:
    # Wide float32 chunks (c >= 2·BLOCKS_PER_K·K) take the block-maximum step; ties at the K-th value (an item twice
    # in a history), tie groups wider than BLOCK_TIES, sparse rows and leftover columns must all rank like the sort.
    g = torch.Generator().manual_seed(seed)
    k = max(1, min(k, L // (2 * exact.BLOCKS_PER_K)))
    scores = torch.randn(6, L, generator=g)  # levels = 0: distinct scores; else that many values
    if levels:
        scores = torch.randint(0, levels, (6, L), generator=g).float()
    copies = torch.randint(0, L, (6, repeats), generator=g)  # the K-th best value repeated `repeats` more times
    kth = scores.topk(k, dim=1).values[:, -1:]  # [6, 1]
    scores.scatter_(1, copies, kth.expand(6, repeats))
    scores[0] = 1.0  # one tie group over the whole row
    mask = torch.rand(6, L, generator=g) < density
    mask[1] = True
    mask[2, : L - max(1, k // 2)] = False  # fewer real behaviours than K
    calls: list[int] = []
    blocks = exact._best_blocks
    expected = topk_positions(scores.double(), mask, k)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(exact, "_best_blocks", lambda *a: calls.append(1) or blocks(*a))
        got = chunked_topk([(0, scores)], mask, k)
    assert calls, "a chunk this wide takes the block step"
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_block_maximum_prefilter_on_one_user_request_shape_keeps_the_exact_top_k() -> None:
    # The serving shape: C rows against one history that repeats items (equal scores), mask shared by every row.
    g = torch.Generator().manual_seed(0)
    C, L, K = 50, 6000, 100
    item_scores = torch.randn(C, 400, generator=g)  # 400 distinct items
    items = torch.randint(0, 400, (L,), generator=g)
    scores = item_scores[:, items]  # [C, L]: every item about 15 times
    mask = torch.ones(1, L, dtype=torch.bool).expand(C, L)  # stride 0 along C
    expected = topk_positions(scores.double(), mask, K)
    got = chunked_topk([(0, scores)], mask, K)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


@pytest.mark.parametrize("chunk", [5000, 1024, 300])
def test_chunked_topk_not_best_first_keeps_the_same_k(chunk: int) -> None:
    g = torch.Generator().manual_seed(1)
    scores, mask = torch.randn(4, 5000, generator=g), torch.rand(4, 5000, generator=g) > 0.2
    chunks = [(a, scores[:, a : a + chunk]) for a in range(0, 5000, chunk)]
    ordered, kept = chunked_topk(chunks, mask, 40)
    loose, loose_kept = chunked_topk(chunks, mask, 40, best_first=False)
    assert torch.equal(ordered.sort(dim=1).values, loose.sort(dim=1).values), "the same K behaviours"
    assert kept.all() and loose_kept.all(), "80% of 5000 real: every slot holds a real behaviour"


def test_chunked_topk_says_when_the_chunks_do_not_cover_k_columns() -> None:
    with pytest.raises(ValueError, match="covered fewer than k = 5"):
        chunked_topk([(0, torch.zeros(1, 3))], torch.ones(1, 10, dtype=torch.bool), 5)


def test_soft_scores_of_a_block_aligned_chunk_are_bit_identical_to_the_whole_history() -> None:
    g = torch.Generator().manual_seed(0)
    B, L, D = 3, 3 * SCORE_BLOCK + 100, 16
    query, keys = torch.randn(B, D, generator=g), torch.randn(B, L, D, generator=g)
    full = soft_scores(query, keys)  # [B, L]
    for chunk in (SCORE_BLOCK, 2 * SCORE_BLOCK):
        parts = [soft_scores(query, keys[:, s : s + chunk].clone()) for s in range(0, L, chunk)]
        assert torch.equal(torch.cat(parts, dim=1), full), f"chunk {chunk}"
    assert (full - torch.einsum("bd,bld->bl", query, keys)).abs().max() < 1e-5, "blocks change only the rounding"


# --- search_stage: chunked = unchunked ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def batch() -> Batch:
    return long_batch()


@pytest.mark.parametrize("model_name", ["twin", "dare"])
@pytest.mark.parametrize("method", sorted(name for name, entry in SEARCHERS.items() if entry.chunked is not None))
def test_chunked_search_stage_returns_the_unchunked_batch(batch: Batch, method: str, model_name: str) -> None:
    model = RecordingModel(make_model(model_name, max_position=3000))
    options: dict[str, SearchOptions] = {
        "hard+soft": HardSoftOptions(hard_k=100),
        "simhash": SimHashOptions(hash_bits=16),
        "sdim": SDIMOptions(hash_rounds=8),
    }
    config = SearchConfig(method=method, k=300, options=options.get(method))
    whole = search_stage(batch, model, dataclasses.replace(config, chunk=-1))
    assert model.widest == batch.history.shape[1]
    model.widest = 0
    for chunk in (SCORE_BLOCK, 2 * SCORE_BLOCK):  # 3 and 2 chunks of L = 2500, the last one short
        chunked = search_stage(batch, model, dataclasses.replace(config, chunk=chunk))
        assert model.widest == chunk, "keys were never wider than one chunk"
        for name, value in whole.fields().items():
            assert torch.equal(getattr(chunked, name), value), f"{method}, chunk {chunk}: {name} differs"


def test_soft_search_ties_go_to_the_more_recent_behaviour(batch: Batch) -> None:
    # Item ids repeat (8 items over 2500 columns) and the time table clamps at 8: the older duplicates tie exactly.
    model = make_model("twin", max_position=8)
    query, keys = model.search_embeddings(batch)
    positions, kept = exact_topk(query, keys, batch.history_mask, 50)
    scores = soft_scores(query, keys).gather(1, positions)  # [B, K]
    ties = (scores[:, 1:] == scores[:, :-1]) & kept[:, 1:]  # [B, K - 1] neighbours with equal scores
    assert ties.any(), "the batch must produce ties for this test to mean anything"
    assert (positions[:, 1:] < positions[:, :-1])[ties].all(), "among equal scores, the more recent comes first"


@pytest.mark.parametrize(
    "name", sorted(n for n, (_, cls) in MODELS.items() if "search_embeddings" in capabilities(cls))
)
def test_every_models_search_keys_are_per_behaviour(name: str) -> None:
    """The contract chunked search relies on: the keys of a column range = those columns of the whole keys."""
    batch = long_batch(L=300)
    model = make_model(name)
    with torch.no_grad():
        query, keys = model.search_embeddings(batch)  # [B, L, D]
        part_query, part = model.search_embeddings(history_columns(batch, 100, 220))  # [B, 120, D]
    assert torch.equal(part_query, query), "the query depends on the target only"
    assert torch.equal(part, keys[:, 100:220]), "keys of a column range differ from those columns of the keys"


# --- when to chunk --------------------------------------------------------------------------------------------------


def test_auto_chunks_only_when_the_keys_would_exceed_the_budget(batch: Batch, monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_model("twin")
    embed = model.search_embeddings
    soft = SearchConfig(method="soft", k=10)
    assert chunk_size(batch, embed, soft) == 0, "3 x 2500 keys of 16 floats fit the 16 MB budget"
    monkeypatch.setattr(search, "AUTO_CHUNK_BYTES", 3 * 16 * 4 * 1500)  # room for 1500 columns
    assert chunk_size(batch, embed, soft) == SCORE_BLOCK
    assert chunk_size(batch, embed, SearchConfig(method="soft", k=10, chunk=-1)) == 0
    assert chunk_size(batch, embed, SearchConfig(method="category", k=10)) == 0, "hard search has no keys"
    assert chunk_size(batch.replace(history_position=None), embed, soft) == 0, "positions would restart per chunk"
    assert chunk_size(batch, embed, SearchConfig(method="soft", k=10, chunk=2048)) == 2048
    assert chunk_size(batch, embed, SearchConfig(method="soft", k=10, chunk=3072)) == 0, "one chunk = no chunking"


def test_chunk_must_be_auto_off_or_a_multiple_of_the_score_block() -> None:
    with pytest.raises(ConfigError, match=r"search.chunk must be 0 \(auto\), -1 .* Got 1000 instead."):
        SearchConfig(method="soft", chunk=1000)
    assert SearchConfig(method="soft", chunk=4096).chunk == 4096


def test_every_chunked_searcher_is_an_embedding_searcher() -> None:
    chunked = {name for name, entry in SEARCHERS.items() if entry.chunked is not None}
    assert chunked and all(SEARCHERS[name].needs_embeddings for name in chunked)


# --- L = 10^5 (slow) ------------------------------------------------------------------------------------------------

_PEAK_CHILD = textwrap.dedent(
    """
    import json, sys, time
    import torch
    from longrec.search.config import SearchConfig
    from longrec.data.batch import Batch
    from longrec.models import build_model
    from longrec.search import search_stage

    def rss(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024

    B, L, chunk = 8, 100_000, int(sys.argv[1])
    g = torch.Generator().manual_seed(0)
    batch = Batch(
        history=torch.randint(1, 100_000, (B, L), generator=g),
        history_mask=torch.ones(B, L, dtype=torch.bool),
        target=torch.randint(1, 100_000, (B,), generator=g),
        history_category=torch.randint(1, 1000, (B, L, 3), generator=g),
        target_category=torch.randint(1, 1000, (B, 3), generator=g),
        history_position=torch.arange(L, 0, -1).expand(B, L).contiguous(),
    )
    model = build_model("twin", num_items=100_000, num_categories=1000, taxonomy_levels=3, dim=16).eval()
    open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
    before, started = rss("VmRSS"), time.perf_counter()
    out = search_stage(batch, model, SearchConfig(method="soft", k=100, chunk=chunk))
    print(json.dumps({"peak_mb": rss("VmHWM") - before, "seconds": time.perf_counter() - started,
                      "kept": int(out.history_mask.sum())}))
    """
)


def _search_peak(chunk: int) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_CHILD, str(chunk)], capture_output=True, text=True, check=True, env=env
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to reset the peak RSS")
def test_soft_search_over_ten_to_the_five_behaviours_stays_within_a_chunk_of_memory() -> None:
    keys_mb = 8 * 100_000 * 80 * 4 / 2**20  # [B, L, E] float32 TWIN keys with M = 3: E = 16 * (1 + 3) + 16 = 80
    chunked = _search_peak(4096)
    whole = _search_peak(-1)
    assert chunked["kept"] == whole["kept"] == 8 * 100
    assert whole["peak_mb"] > 0.9 * keys_mb, f"the unchunked path should hold the keys: {whole}"
    assert chunked["peak_mb"] < 0.25 * keys_mb, f"chunked search holds about one chunk: {chunked} vs {keys_mb:.0f} MB"
