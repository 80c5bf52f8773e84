"""`train.optimizer = "lazy_adam"`: sparse table gradients from every lookup path, and `LazyAdam`'s row-wise update
against `torch.optim.SparseAdam` (the well-kept lazy Adam) and `torch.optim.Adam` (where both must agree)."""

import contextlib

import pytest
import torch
from torch import nn

from longrec.models import MODELS
from longrec.models.layers import collect_keys, lookup, reference_paths
from longrec.search.config import SearchConfig
from longrec.settings import ConfigError
from longrec.train.config import TrainConfig
from longrec.train.optim import LazyAdam, sparse_tables
from longrec.train.step import make_optimizer, train_step
from tests.models.conftest import _make_model, make_batch

pytestmark = pytest.mark.usefixtures("one_thread")


def sparse_grad(rows: list[int], V: int, D: int, seed: int) -> torch.Tensor:
    """A sparse [V, D] gradient with (possibly repeated, uncoalesced) `rows`."""
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(len(rows), D, generator=g)
    return torch.sparse_coo_tensor(torch.tensor([rows]), values, (V, D), check_invariants=True)


def test_lazy_adam_makes_the_sparse_adam_update() -> None:
    V, D = 12, 4
    steps = [[1, 3, 3, 7], [2, 3], [1, 11, 11, 0], [7]]  # repeated ids, rows seen in some steps only
    params = []
    for kind in ("lazy", "sparse_adam"):
        torch.manual_seed(0)
        weight = nn.Parameter(torch.randn(V, D))
        opt = LazyAdam([weight], lr=0.05) if kind == "lazy" else torch.optim.SparseAdam([weight], lr=0.05)
        for i, rows in enumerate(steps):
            weight.grad = sparse_grad(rows, V, D, seed=i)
            opt.step()
        params.append(weight.detach())
    # SparseAdam adds eps to sqrt(v) before the bias correction, Adam (and LazyAdam) after it: equal up to ~eps.
    torch.testing.assert_close(params[0], params[1], rtol=1e-5, atol=1e-6)


def test_rows_touched_every_step_get_adams_update_and_untouched_rows_stay() -> None:
    V, D = 10, 3
    touched = [2, 5, 5, 9]
    torch.manual_seed(0)
    start = torch.randn(V, D)
    lazy, dense = nn.Parameter(start.clone()), nn.Parameter(start.clone())
    lazy_opt, dense_opt = LazyAdam([lazy], lr=0.1), torch.optim.Adam([dense], lr=0.1)
    for i in range(5):
        g = sparse_grad(touched, V, D, seed=i)
        lazy.grad, dense.grad = g, g.to_dense()
        lazy_opt.step()
        dense_opt.step()
    torch.testing.assert_close(lazy.detach(), dense.detach())
    untouched = [r for r in range(V) if r not in touched]
    assert torch.equal(lazy.detach()[untouched], start[untouched])


def test_a_row_left_out_of_a_step_keeps_still_where_adam_moves_it_by_momentum() -> None:
    # The mechanism: dense Adam keeps moving a row it saw once; the lazy update does not touch it again.
    V, D = 6, 2
    lazy, dense = nn.Parameter(torch.zeros(V, D)), nn.Parameter(torch.zeros(V, D))
    lazy_opt, dense_opt = LazyAdam([lazy], lr=0.1), torch.optim.Adam([dense], lr=0.1)
    for rows in ([1, 4], [4], [4]):
        g = sparse_grad(rows, V, D, seed=len(rows))
        lazy.grad, dense.grad = g, g.to_dense()
        lazy_opt.step()
        dense_opt.step()
    after_first = lazy.detach()[1].clone()
    g = sparse_grad([4], V, D, seed=9)
    lazy.grad, dense.grad = g, g.to_dense()
    before_dense = dense.detach()[1].clone()
    lazy_opt.step()
    dense_opt.step()
    assert torch.equal(lazy.detach()[1], after_first)
    assert not torch.equal(dense.detach()[1], before_dense)


def test_dense_gradients_get_the_plain_adam_update() -> None:
    torch.manual_seed(0)
    a, b = nn.Parameter(torch.randn(5, 3)), nn.Parameter(torch.randn(5, 3))
    b.data.copy_(a.data)
    lazy, adam = LazyAdam([a], lr=0.1), torch.optim.Adam([b], lr=0.1)
    for i in range(3):
        g = torch.randn(5, 3, generator=torch.Generator().manual_seed(i))
        a.grad, b.grad = g.clone(), g.clone()
        lazy.step()
        adam.step()
    torch.testing.assert_close(a.detach(), b.detach())


def test_the_state_loads_into_adam_and_back() -> None:
    weight = nn.Parameter(torch.randn(8, 2))
    lazy = LazyAdam([weight], lr=0.1)
    weight.grad = sparse_grad([1, 2], 8, 2, seed=0)
    lazy.step()
    adam = torch.optim.Adam([weight], lr=0.1)
    adam.load_state_dict(lazy.state_dict())
    assert torch.equal(adam.state[weight]["exp_avg"], lazy.state[weight]["exp_avg"])
    back = LazyAdam([weight], lr=0.1)
    back.load_state_dict(adam.state_dict())
    assert float(back.state[weight]["step"]) == 1.0


@pytest.mark.parametrize("path", ["reference", "concat", "per_table", "key_collection"])
def test_every_lookup_path_gives_the_dense_gradient_as_a_sparse_one(path: str) -> None:
    torch.manual_seed(0)
    tables = [nn.Embedding(7, 3, padding_idx=0), nn.Embedding(5, 3, padding_idx=0), nn.Embedding(4, 3)]
    big = path == "concat"  # more ids than table rows: the concatenated-tables path
    shape = (6, 20) if big else (2, 2)
    ids = [torch.randint(0, 7, shape), torch.randint(0, 5, (*shape, 2)), torch.randint(0, 4, shape)]
    weights = torch.randn(*shape, 3 * 4)
    grads = {}
    for sparse in (False, True):
        for t in tables:
            t.sparse = sparse
            t.weight.grad = None
        context = {"reference": reference_paths, "key_collection": collect_keys}.get(path, contextlib.nullcontext)
        with context():
            (lookup(tables, ids) * weights).sum().backward()
        grads[sparse] = [t.weight.grad for t in tables]
    for dense, sparse in zip(grads[False], grads[True], strict=True):
        assert sparse.is_sparse and not dense.is_sparse
        torch.testing.assert_close(sparse.to_dense(), dense)


@pytest.mark.parametrize(
    ("name", "params"),
    [(name, {}) for name in sorted(MODELS)] + [("dsi_tin", {"groups": (("item",), ("category", "action"))})],
)
def test_the_first_lazy_step_equals_the_first_adam_step(name: str, params: dict) -> None:
    # Adam's first step leaves rows without gradient where they are (m = v = 0), so both must agree on step 1,
    # whatever lookup path and extra losses the model uses; every table gradient that can be sparse is.
    batch = make_batch()
    search = SearchConfig(method="soft", k=4) if name in ("twin", "dare") else SearchConfig()
    after = {}
    for optimizer in ("adam", "lazy_adam"):
        model = _make_model(name, **params).train()
        opt = make_optimizer(model, 1e-2, optimizer)
        train_step(model, batch, search, opt)
        if optimizer == "lazy_adam":
            # every table's gradient sparse: DistributedDataParallel expects one for each `sparse` nn.Embedding
            dense = [n for n, m in model.named_modules() if isinstance(m, nn.Embedding) and m.weight.grad is not None
                     and not m.weight.grad.is_sparse]  # fmt: skip
            assert not dense, f"{name}: tables with a dense gradient under lazy Adam: {dense}"
        after[optimizer] = {n: p.detach().clone() for n, p in model.named_parameters()}
    for n, value in after["adam"].items():
        torch.testing.assert_close(after["lazy_adam"][n], value, msg=lambda m, n=n: f"{name}.{n}: {m}")


def test_sparse_tables_switches_every_embedding() -> None:
    model = _make_model("din")
    names = sparse_tables(model)
    assert names and all(m.sparse for m in model.modules() if isinstance(m, nn.Embedding))


def test_bad_optimizer_names_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"train\.optimizer must be one of adam, lazy_adam"):
        TrainConfig(optimizer="sgd")
    with pytest.raises(ValueError, match=r"train\.optimizer must be one of"):
        make_optimizer(nn.Linear(2, 2), 0.1, "adagrad")
