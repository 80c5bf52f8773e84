"""The embedding cache: tables served from the memory-mapped weights file through an LRU row cache give exactly the
in-memory model's logits (every model), and the cache evicts the least recently used rows and re-reads them
exactly, from any number of threads."""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from longrec.data.batch import Batch
from longrec.models import MODELS, build_model, data_params
from longrec.models.contract import SearchEmbedder
from longrec.models.external import ExternalTable
from longrec.search import one_user_request
from longrec.serve.artifact import load_artifact
from longrec.serve.embedding_cache import EmbeddingCacheConfig, RowCache, cache_counters, cache_embeddings
from tests.models.conftest import SIZES, make_batch
from tests.serve.conftest import logits


@pytest.mark.parametrize("name", sorted(MODELS))
def test_cached_tables_give_exactly_the_in_memory_logits(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(name, **data_params(MODELS[name][0], SIZES)).eval()
    weights = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    cached = copy.deepcopy(model)
    # capacity 7 < the rows a batch reads: every forward evicts, so cached, evicted and re-read rows all take part
    caches = cache_embeddings(cached, weights, EmbeddingCacheConfig(capacity=7, min_rows=20), SIZES["num_items"])
    assert any("item" in key for key in caches) and all(c.shape[0] >= 20 for c in caches.values())
    batch = make_batch()
    expected = logits(model, batch)
    for _ in range(2):  # cold, then warm
        assert torch.equal(logits(cached, batch), expected)
    # a serving request: one history as an expanded view over the candidates (read once by the external table)
    first = Batch(**{name: value[:1] for name, value in batch.fields().items()})  # [1, ...]
    request = one_user_request(first, {"target": batch.target})
    assert torch.equal(logits(cached, request), logits(model, request))
    if isinstance(model, SearchEmbedder):
        assert isinstance(cached, SearchEmbedder)
        with torch.no_grad():
            for a, b in zip(cached.search_embeddings(batch), model.search_embeddings(batch), strict=True):
                assert torch.equal(a, b)
    counters = cache_counters(caches)
    assert all(c["misses"] > 0 and c["rows"] <= 7 for c in counters.values())


def test_an_artifact_loaded_with_the_cache_scores_like_one_without(artifact_dir: Path, batch: Batch) -> None:
    cached = load_artifact(artifact_dir, EmbeddingCacheConfig(capacity=8))
    assert list(cached.caches) == ["embedding.item_embedding.weight"]  # the item table; the small category table stays
    assert isinstance(cached.model.embedding.item_embedding, ExternalTable)
    expected = logits(load_artifact(artifact_dir).model, batch)
    assert torch.equal(logits(cached.model, batch), expected) and torch.equal(logits(cached.model, batch), expected)
    with pytest.raises(ValueError, match=r"ExternalTable serves embedding rows from outside the model"):
        cached.model.train()


def test_evicting_and_re_reading_gives_the_same_rows() -> None:
    table = np.random.default_rng(0).standard_normal((20, 3)).astype(np.float32)
    cache = RowCache(table, capacity=4)
    first, second = torch.tensor([1, 2, 3, 4, 2]), torch.tensor([5, 6, 7, 8])
    for ids in (first, second, first):  # the second call evicts every row of the first
        np.testing.assert_array_equal(cache.rows(ids).numpy(), table[ids.numpy()])
    assert (cache.hits, cache.misses, cache.evictions) == (0, 12, 8)
    assert torch.equal(cache.rows(first), torch.from_numpy(table[first.numpy()]))
    assert (cache.hits, len(cache)) == (4, 4)
    filling = RowCache(table, capacity=4)  # one call fills the last free slots and evicts
    for ids in ([1, 2], [3, 4, 5], [1, 2, 3, 4, 5]):
        np.testing.assert_array_equal(filling.rows(torch.tensor(ids)).numpy(), table[ids])


def test_the_least_recently_used_row_goes_first() -> None:
    table = np.arange(30, dtype=np.float32).reshape(10, 3)
    cache = RowCache(table, capacity=3)
    for row in (1, 2, 3, 1, 4):  # 2 is now the least recently used
        cache.rows(torch.tensor([row]))
    assert [r in cache for r in range(1, 5)] == [True, False, True, True]
    assert (cache.hits, cache.misses, cache.evictions) == (1, 4, 1) and cache.hit_rate == pytest.approx(0.2)
    cache.rows(torch.tensor([[5, 6], [7, 5]]))  # more new rows than room: 3 cached, every one returned
    assert len(cache) == 3
    with pytest.raises(IndexError, match=r"embedding row 10 is out of range: the table has rows \[0, 10\)"):
        cache.rows(torch.tensor([0, 10]))


def test_concurrent_readers_get_exact_rows_and_consistent_counters() -> None:
    table = np.random.default_rng(1).standard_normal((500, 4)).astype(np.float32)
    cache = RowCache(table, capacity=50)
    failures: list[str] = []
    lookups = [0]
    lock = threading.Lock()

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(60):
            ids = np.minimum(rng.zipf(1.3, size=40), 500) - 1  # [40] Zipf-like ids
            if not np.array_equal(cache.rows(torch.from_numpy(ids)).numpy(), table[ids]):
                failures.append(f"reader {seed}")
            with lock:
                lookups[0] += np.unique(ids).size

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures and cache.hits + cache.misses == lookups[0] and len(cache) <= 50 and cache.hits > 0
