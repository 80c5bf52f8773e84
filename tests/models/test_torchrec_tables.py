"""TorchRec tables (`longrec.models.torchrec_tables`) against the plain `nn.Embedding` path: the same lookups and
gradients, FBGEMM's fused exact row-wise Adagrad against the same update written plainly, and a 2-rank sharded run
(gloo over 127.0.0.1) against the single-process TorchRec run. Skipped unless torchrec imports (`make test-torchrec`).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from longrec.models.layers import lookup, reference_paths
from longrec.models.torchrec_tables import (
    TORCHREC_MODELS,
    CollectionLookup,
    require_torchrec,
    shard,
    use_torchrec_tables,
)
from tests.models import torchrec_ranks as ranks
from tests.models.conftest import make_batch

try:
    require_torchrec()
except ImportError as error:
    pytest.skip(f"torchrec is not importable here ({error})", allow_module_level=True)

pytestmark = pytest.mark.torchrec
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def one_process_group(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A gloo group of one rank on an in-memory store (no socket), as `shard` needs one."""
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_lookups_and_gradients_equal_the_plain_embedding_path() -> None:
    tables = ranks.tables()
    collection = CollectionLookup(tables, ["item", "category", "time"], [1, ranks.M, 1])
    history = ranks.batch_ids(0)  # [B, L], [B, L, M], [B, L] with padding
    target = [history[0][:, 0], history[1][:, 0], history[2][:, 0]]  # [B], [B, M], [B]
    for ids in (history, target):
        with reference_paths():
            expected = lookup(tables, ids)  # [*S, J·D]
        got = collection(ids)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    weights = ranks.weights(0)  # [B, L, J·D]
    (lookup(tables, history) * weights).sum().backward()
    (collection(history) * weights).sum().backward()
    for name, table in zip(["item", "category", "time"], tables, strict=True):
        grad = collection.collection.embeddings[name].weight.grad
        torch.testing.assert_close(grad, table.weight.grad)
    assert collection.collection.embeddings["item"].weight.grad[0].abs().sum() == 0  # padding: no gradient


@pytest.mark.parametrize("name", sorted(TORCHREC_MODELS))
def test_models_score_the_same_on_torchrec_tables(make_model, name: str) -> None:
    model = make_model(name)
    converted = use_torchrec_tables(copy.deepcopy(model))
    batch = make_batch()
    with torch.no_grad():
        torch.testing.assert_close(converted(batch), model(batch))


def test_a_model_without_categories_scores_the_same_on_its_one_torchrec_table(make_model) -> None:
    model = make_model("din", num_categories=0, taxonomy_levels=0)
    converted = use_torchrec_tables(copy.deepcopy(model))
    assert converted.embedding.lookup.names == ["item"]
    batch = make_batch()
    with torch.no_grad():
        torch.testing.assert_close(converted(batch), model(batch))


def test_models_that_look_tables_up_directly_are_refused(make_model) -> None:
    with pytest.raises(TypeError, match=r"use_torchrec_tables converts the models \[.*'din'.*\]\. Got TWIN instead"):
        use_torchrec_tables(make_model("twin"))


def test_tables_of_different_widths_are_refused() -> None:
    with pytest.raises(ValueError, match=r"must share one width D\. Got widths \[4, 8\] instead"):
        CollectionLookup([nn.Embedding(5, 4), nn.Embedding(5, 8)], ["a", "b"], [1, 1])


def test_adam_and_unknown_shardings_are_refused_with_what_the_cpu_offers() -> None:
    module = CollectionLookup([nn.Embedding(5, 4)], ["item"], [1])
    with pytest.raises(
        ValueError, match=r"optimizer must be one of \['rowwise_adagrad'.*Adam runs only on CUDA.*'adam'"
    ):
        shard(module, "row_wise", "adam")
    with pytest.raises(ValueError, match=r"sharding must be one of \['table_wise', 'row_wise'\]\. Got 'column_wise'"):
        shard(module, "column_wise")


def rowwise_adagrad_(table: nn.Embedding, ids: torch.Tensor, state: torch.Tensor, eps: float = 1e-8) -> None:
    """Exact row-wise Adagrad written out on the rows `ids` touched, from `table.weight.grad` (g_r summed over every
    position that reads row r): s_r += mean(g_r²), w_r -= lr · g_r / (sqrt(s_r) + eps). Padding is never read."""
    rows = ids.unique()
    rows = rows[rows != 0] if table.padding_idx == 0 else rows
    with torch.no_grad():
        g = table.weight.grad[rows]  # [R, D]
        state[rows] += g.square().mean(dim=1)
        table.weight[rows] -= ranks.LR * g / (state[rows].sqrt() + eps).unsqueeze(1)


def plain_rowwise_adagrad() -> dict[str, torch.Tensor]:
    """The steps of `ranks.run` on plain `nn.Embedding`s, each followed by `rowwise_adagrad_`."""
    tables = ranks.tables()
    state = [torch.zeros(t.num_embeddings) for t in tables]
    for step in range(ranks.STEPS):
        ids = ranks.batch_ids(step)
        for t in tables:
            t.zero_grad()
        with reference_paths():
            (lookup(tables, ids) * ranks.weights(step)).sum().backward()
        for t, s, i in zip(tables, state, ids, strict=True):
            rowwise_adagrad_(t, i, s)
    return {name: t.weight.detach() for name, t in zip(["item", "category", "time"], tables, strict=True)}


@pytest.mark.parametrize("sharding", ["table_wise", "row_wise"])
def test_a_sharded_din_step_equals_din_with_the_update_written_plainly(one_process_group, make_model, sharding) -> None:
    model = make_model("din")
    sharded = shard(use_torchrec_tables(copy.deepcopy(model)), sharding, lr=ranks.LR)
    batch = make_batch()
    logits = sharded(batch)
    torch.testing.assert_close(logits, model(batch))
    logits.sum().backward()  # the tables take their fused step here; the dense part gets .grad (DDP)
    model(batch).sum().backward()
    dense = dict(sharded.named_parameters())
    for name, parameter in model.named_parameters():
        if not name.startswith("embedding."):
            torch.testing.assert_close(dense[name].grad, parameter.grad, msg=f"gradient of {name}")
    item, category = model.embedding.item_embedding, model.embedding.category_embedding
    rowwise_adagrad_(item, torch.cat([batch.history.flatten(), batch.target]), torch.zeros(item.num_embeddings))
    ids = torch.cat([batch.history_category.flatten(), batch.target_category.flatten()])
    rowwise_adagrad_(category, ids, torch.zeros(category.num_embeddings))
    tables = ranks.gathered_tables(sharded, 0)
    torch.testing.assert_close(tables["item"], item.weight.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tables["category"], category.weight.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sharding", ["table_wise", "row_wise"])
def test_fused_rowwise_adagrad_equals_the_update_written_plainly(one_process_group, sharding: str) -> None:
    got = ranks.run(0, 1, sharding)
    expected = plain_rowwise_adagrad()
    assert sorted(got) == sorted(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6, msg=f"table {name}")
    assert not torch.equal(got["item"], ranks.tables()[0].weight.detach())  # the steps did move the table


@pytest.mark.parametrize("mode", ["lookup", "din"])
@pytest.mark.parametrize("sharding", ["table_wise", "row_wise"])
def test_two_sharded_ranks_equal_the_single_process_run(tmp_path: Path, sharding: str, mode: str) -> None:
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH", "")])
    out, port_file = tmp_path / "tables.pt", tmp_path / "port"
    command = [sys.executable, "-m", "tests.models.torchrec_ranks"]
    workers = [
        subprocess.Popen([*command, str(r), "2", str(port_file), sharding, mode, str(out)], cwd=ROOT, env=env)
        for r in range(2)
    ]
    deadline = time.monotonic() + 180
    try:
        while any(w.poll() is None for w in workers) and time.monotonic() < deadline:
            if any(w.poll() not in (None, 0) for w in workers):
                break  # one rank failed: the other would only wait for it
            time.sleep(0.1)
        codes = [w.poll() for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    assert codes == [0, 0]
    two_ranks = torch.load(out, weights_only=True)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        one = ranks.run(0, 1, sharding, "sgd") if mode == "lookup" else ranks.run_din(0, 1, sharding)
    finally:
        dist.destroy_process_group()
    assert sorted(two_ranks) == sorted(one)
    # DIN: fp32 sums in another order on each rank's half batch, through 3 steps in which row-wise Adagrad divides
    # every row's gradient by its own norm (measured differences ~1e-6; a missing x W moved rows by ~1e-3)
    atol = 1e-6 if mode == "lookup" else 1e-5
    for name in one:
        torch.testing.assert_close(two_ranks[name], one[name], rtol=1e-5, atol=atol, msg=f"{name} of 2 ranks vs 1")
