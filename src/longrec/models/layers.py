"""Blocks that two or more models share unchanged: the behaviour embedding, the PReLU MLP and the output heads, table
lookup, attention scores and pooling (the config checks they share are in `longrec.models.checks`).

**Fast paths and their oracle.** `lookup`, `dot_scores`, `weighted_sum` and `PReLU` (and, in their own files, DIN's
decomposed scorer and the TWIN/DARE `forward_with_aux`) each have a fast CPU implementation and a plain one that reads
like the paper; the plain one is the test oracle (same outputs and gradients within fp32 tolerance:
tests/models/test_fast_paths.py, tests/train/test_train_step.py). `reference_paths()` switches every fast path off for
a block of code (a context variable: only the thread that entered the block sees it), which is how those tests and
`benchmarks/bench_throughput.py` run the plain path.

**Key collection** (`collect_keys()`, off by default; `train.key_collection`): `lookup` first collects the distinct ids
of each table (`unique_ids`), gathers each distinct row once and scatters the rows back to every position; the
backward sums each row's gradient over its positions in a small [U, D] buffer. Same outputs and gradients as the
plain lookup (tests/train/test_optimizations.py).

**External tables** (`longrec.models.external.ExternalTable`, inference only) stand in for an `nn.Embedding` whose
rows live outside the model (the serving embedding cache); `lookup` reads them on the plain path.

**Mixed precision.** Under `torch.autocast` (`train.precision = "bf16"`) the MLPs and DIN's scorer run in bf16; the fast
attention kernels (`dot_scores`, `weighted_sum`) compute in fp32 with autocast off, so the softmax sees fp32 scores
and the pooling accumulates in fp32 (on the CPU they are memory-bound mat-vecs over fp32 embeddings, where a cast to
bf16 would only add a pass), and the PReLU slope gradient is summed in fp32.

Shapes: B batch, L history length, M taxonomy levels, D embedding dim, E = D·(1 + M) behaviour width with categories
(E = D without them), N rows looked up, J looked-up columns per row, V rows of all tables together.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from typing import Any, cast

import torch
from torch import Tensor, nn

from longrec.data.batch import Batch
from longrec.models.external import ExternalTable

__all__ = [
    "BehaviourEmbedding",
    "PReLU",
    "collect_keys",
    "dot_scores",
    "fast_paths",
    "head_mlp",
    "init_weights",
    "key_collection",
    "lookup",
    "mlp",
    "reference_paths",
    "unique_ids",
    "weighted_sum",
]

# Execution options of the shared blocks, scoped: each is set only inside a `with` block (`reference_paths()`,
# `collect_keys()`) and only for the thread (or asyncio task) that entered it, never process-wide, so one caller's
# oracle run or key collection cannot change another's model.
_FAST_PATHS: ContextVar[bool] = ContextVar("longrec_fast_paths", default=True)
_KEY_COLLECTION: ContextVar[bool] = ContextVar("longrec_key_collection", default=False)


def fast_paths() -> bool:
    """Whether the fast paths are on (the default); `reference_paths()` turns them off inside its block."""
    return _FAST_PATHS.get()


@contextmanager
def reference_paths() -> Iterator[None]:
    """Run the block on the plain reference paths (the oracle of every fast path), in this thread only."""
    token = _FAST_PATHS.set(False)
    try:
        yield
    finally:
        _FAST_PATHS.reset(token)


def key_collection() -> bool:
    """Whether `lookup` collects the distinct ids first (off by default); `collect_keys()` turns it on in its block."""
    return _KEY_COLLECTION.get()


@contextmanager
def collect_keys(enabled: bool = True) -> Iterator[None]:
    """Run the block with key collection on (or off, `enabled=False`) in `lookup`, in this thread only."""
    token = _KEY_COLLECTION.set(enabled)
    try:
        yield
    finally:
        _KEY_COLLECTION.reset(token)


def _autocast_on(x: Tensor) -> bool:
    return torch.is_autocast_enabled(x.device.type)


def _without_autocast(x: Tensor) -> AbstractContextManager[Any]:
    """Autocast off for the block if it is on for `x`'s device (a custom backward may run inside an autocast block)."""
    return torch.autocast(x.device.type, enabled=False) if _autocast_on(x) else nullcontext()


def unique_ids(ids: Tensor, num_rows: int) -> tuple[Tensor, Tensor]:
    """The distinct ids of `ids` (ascending) and where each id sits among them: `unique[inverse] == ids`.

    Equals `torch.unique(ids, return_inverse=True)`. When the table is not much larger than the lookup, a presence
    mask over the table's `num_rows` ids and its running count replace the sort (O(N + V) instead of O(N log N)).

    Args:
        ids: [*S] int64 ids in [0, num_rows).
        num_rows: V, the number of rows of the table the ids index.

    Returns:
        unique [U] int64 ascending, inverse [*S] int64 in [0, U).
    """
    if num_rows > 4 * ids.numel():
        unique, inverse = torch.unique(ids, return_inverse=True)  # [U], [*S]
        return unique, inverse
    present = torch.zeros(num_rows, dtype=torch.bool, device=ids.device)  # [V]
    present[ids.reshape(-1)] = True
    unique = present.nonzero().squeeze(1)  # [U]
    rank = present.cumsum(0) - 1  # [V] position of each present id among the distinct ones
    return unique, rank[ids]  # [U], [*S]


def sparse_rows_grad(ids: Tensor, rows: Tensor, num_rows: int, padding_rows: list[int]) -> Tensor:
    """A table's gradient as a coalesced sparse [V, D] tensor: each distinct id of `ids` with the sum of its `rows`.

    What `nn.Embedding(sparse=True)` returns, for the fast lookups: no [V, D] buffer is zeroed and scattered into, and
    a row-wise optimizer (`longrec.train.optim.LazyAdam`) touches only these rows. Repeated ids are summed here
    (`unique_ids`), so the result is already coalesced. Rows in `padding_rows` get a zero gradient.

    Args:
        ids: [N] int64 row ids.
        rows: [N, D] gradient of each looked-up row.
        num_rows: V, the table's number of rows.
        padding_rows: row ids whose gradient is zeroed.

    Returns:
        A sparse COO [V, D] tensor with U distinct rows, marked coalesced.
    """
    unique, inverse = unique_ids(ids, num_rows)  # [U] ascending, [N]
    values = rows.new_zeros(unique.numel(), rows.shape[1]).index_add_(0, inverse, rows)  # [U, D]
    if padding_rows:
        pad = torch.isin(unique, unique.new_tensor(padding_rows))  # [U]
        values = values.masked_fill_(pad.unsqueeze(1), 0.0)
    size = (num_rows, rows.shape[1])
    return torch.sparse_coo_tensor(unique.unsqueeze(0), values, size, check_invariants=False, is_coalesced=True)


class _GatherRows(torch.autograd.Function):
    """`table[index]` whose backward scatters with `index_add_` (or returns the rows as a sparse gradient).

    `F.embedding`'s CPU backward adds one row at a time through a generic kernel (about 50-70 ns a row, measured
    ~2x slower than `index_add_` on 10^5-10^6 rows); every row of the history pays it on every step. Rows in
    `padding_rows` get no gradient, like `nn.Embedding(padding_idx=...)`. With `sparse`, the gradient is
    `sparse_rows_grad`, like `nn.Embedding(sparse=True)`.
    """

    @staticmethod
    def forward(ctx: Any, table: Tensor, index: Tensor, padding_rows: list[int], sparse: bool = False) -> Tensor:
        ctx.save_for_backward(index)
        ctx.num_rows, ctx.padding_rows, ctx.sparse = table.shape[0], padding_rows, sparse
        return table.index_select(0, index.reshape(-1)).view(*index.shape, table.shape[1])  # [..., J, D]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        (index,) = ctx.saved_tensors
        D = grad.shape[-1]
        if ctx.sparse:
            return (
                sparse_rows_grad(index.reshape(-1), grad.reshape(-1, D), ctx.num_rows, ctx.padding_rows),
                None,
                None,
                None,
            )
        grad_table = grad.new_zeros(ctx.num_rows, D).index_add_(0, index.reshape(-1), grad.reshape(-1, D))  # [V, D]
        if ctx.padding_rows:
            grad_table[ctx.padding_rows] = 0.0
        return grad_table, None, None, None


def lookup(tables: Sequence[nn.Embedding | ExternalTable], ids: Sequence[Tensor]) -> Tensor:
    """Rows of several tables of one width D side by side on the last axis: [tables[0][ids[0]], tables[1][ids[1]], ...].

    Args:
        tables: embedding tables, all of width D.
        ids: one id tensor per table, all with the same leading shape S; an id tensor may carry one more axis (a
            category path [..., M]), whose columns are looked up in the same table and laid side by side.

    Returns:
        [*S, J·D] where J counts the looked-up columns (1 per plain id tensor, M per path).

    Fast path (the plain per-table lookup and concat is its oracle): every gather's backward is one `index_add_`
    (`_GatherRows`). When the lookup is larger than the tables (training: B·L·J ids against a few 10^4 rows), the
    tables are concatenated (V·D floats) and all J columns are gathered in one `index_select` straight into the output
    layout, instead of J gathers of [*S, D] and a `torch.cat` that copies [*S, J·D] once more. A small lookup into big
    tables (serving one request, the K kept behaviours) gathers per table, each column written in place into its
    slice of the output (`_GatherTables`): copying the tables, or the parts into a `torch.cat`, would cost more.
    """
    lead = ids[0].dim()
    if not fast_paths() or any(isinstance(t, ExternalTable) for t in tables):  # external rows: plain path
        parts = [table(i) if i.dim() == lead else table(i).flatten(-2) for table, i in zip(tables, ids, strict=True)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)  # [*S, J·D]
    in_memory = cast(Sequence[nn.Embedding], tables)  # no ExternalTable past the plain path
    columns = [i if i.dim() > lead else i.unsqueeze(-1) for i in ids]  # [*S, 1] or [*S, M] each
    if key_collection():
        return _collected_lookup(in_memory, columns)
    sparse = [t.sparse for t in in_memory]
    if any(sparse) or sum(c.numel() for c in columns) < sum(t.num_embeddings for t in in_memory):
        return _GatherTables.apply(
            columns, [_padding(t) for t in in_memory], sparse, *(t.weight for t in in_memory)
        )  # [*S, J·D]
    padding_rows, start = [], 0
    for j, table in enumerate(in_memory):
        padding_rows += [start + row for row in _padding(table)]
        columns[j] = columns[j] + start
        start += table.num_embeddings
    weight = in_memory[0].weight if len(in_memory) == 1 else torch.cat([t.weight for t in in_memory])  # [V, D]
    index = columns[0] if len(columns) == 1 else torch.cat(columns, dim=-1)  # [*S, J]
    return _GatherRows.apply(weight, index, padding_rows).flatten(-2)  # [*S, J·D]


class _GatherTables(torch.autograd.Function):
    """`[t_0[ids_0], t_1[ids_1], ...]` side by side on the last axis, each column gathered straight into its slice.

    One [N, J, D] output and one `index_select(..., out=slice)` per looked-up column: no per-table [*S, D] parts and
    no `torch.cat` pass over [*S, J·D]. The backward is one `index_add_` per table, rows in that table's padding list
    getting no gradient, as in `_GatherRows`.
    """

    @staticmethod
    def forward(
        ctx: Any, columns: list[Tensor], padding: list[list[int]], sparse: list[bool], *weights: Tensor
    ) -> Tensor:
        lead, D = columns[0].shape[:-1], weights[0].shape[1]
        widths = [c.shape[-1] for c in columns]
        flat = [c.reshape(-1, w) for c, w in zip(columns, widths, strict=True)]  # [N, J_t] each
        out = weights[0].new_empty(flat[0].shape[0], sum(widths), D)  # [N, J, D]
        j = 0
        for weight, ids in zip(weights, flat, strict=True):
            for m in range(ids.shape[1]):
                torch.index_select(weight, 0, ids[:, m], out=out[:, j])  # [N, D] written in place
                j += 1
        ctx.save_for_backward(*flat)
        ctx.rows, ctx.padding, ctx.sparse, ctx.dim = [w.shape[0] for w in weights], padding, sparse, D
        return out.view(*lead, sum(widths) * D)  # [*S, J·D]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        flat = ctx.saved_tensors  # [N, J_t] each
        D = ctx.dim
        grad = grad.reshape(flat[0].shape[0], -1, D)  # [N, J, D]
        grads: list[Tensor | None] = []
        j = 0
        tables = zip(flat, ctx.rows, ctx.padding, ctx.sparse, ctx.needs_input_grad[3:], strict=True)
        for ids, rows, padding, sparse, needed in tables:
            width = ids.shape[1]
            if needed:
                # [N·J_t, D], rows in the order of ids.reshape(-1); contiguous: `index_add_` from a strided source
                # takes ~10x as long (measured 10.9 vs 1.2 ms for 38,400 rows of 16 on one thread)
                part = grad[:, j : j + width].reshape(-1, D).contiguous()
                if sparse:
                    grads.append(sparse_rows_grad(ids.reshape(-1), part, rows, padding))  # sparse [V_t, D]
                else:
                    table = grad.new_zeros(rows, D).index_add_(0, ids.reshape(-1), part)  # [V_t, D]
                    if padding:
                        table[padding] = 0.0
                    grads.append(table)
            else:
                grads.append(None)
            j += width
        return (None, None, None, *grads)


def _padding(table: nn.Embedding) -> list[int]:
    return [] if table.padding_idx is None else [table.padding_idx]


def _collected_lookup(tables: Sequence[nn.Embedding], columns: list[Tensor]) -> Tensor:
    """Key collection (a system optimisation of the Tencent paper): each table's distinct ids gathered once into
    [U, D], then scattered back to [*S, J·D].

    Long histories repeat ids heavily (U << N), so the scatter-back reads a small, cache-resident [U, D] block, and
    the backward sums the gradients of repeated ids there (one `index_add_` into [U, D]) before one write per distinct
    row into each table's gradient; the tables are never concatenated.
    """
    rows, inverses, start = [], [], 0
    for table, c in zip(tables, columns, strict=True):
        unique, inverse = unique_ids(c, table.num_embeddings)  # [U_j], [*S, J_j]
        rows.append(_GatherRows.apply(table.weight, unique, _padding(table), table.sparse))  # [U_j, D]
        inverses.append(inverse + start if start else inverse)
        start += unique.numel()
    compact = rows[0] if len(rows) == 1 else torch.cat(rows)  # [U, D]
    index = inverses[0] if len(inverses) == 1 else torch.cat(inverses, dim=-1)  # [*S, J]
    return _GatherRows.apply(compact, index, []).flatten(-2)  # [*S, J, D] -> [*S, J·D]


class _DotScores(torch.autograd.Function):
    """<query, key_i>; backward writes the key gradient g_i·query as one broadcast product, in the keys' layout."""

    @staticmethod
    def forward(ctx: Any, query: Tensor, keys: Tensor) -> Tensor:
        ctx.save_for_backward(query, keys)
        return torch.einsum("be,ble->bl", query, keys)  # [B, L]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        query, keys = ctx.saved_tensors
        with _without_autocast(grad):
            grad_query = torch.einsum("bl,ble->be", grad, keys) if ctx.needs_input_grad[0] else None  # [B, E]
            grad_keys = grad.unsqueeze(-1) * query.unsqueeze(1) if ctx.needs_input_grad[1] else None  # [B, L, E]
        return grad_query, grad_keys


class _WeightedSum(torch.autograd.Function):
    """Σ_i w_i v_i; backward writes the value gradient w_i·g as one broadcast product, in the values' layout."""

    @staticmethod
    def forward(ctx: Any, weights: Tensor, values: Tensor) -> Tensor:
        ctx.save_for_backward(weights, values)
        return torch.einsum("bl,ble->be", weights, values)  # [B, E]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        weights, values = ctx.saved_tensors
        with _without_autocast(grad):
            grad_weights = torch.einsum("be,ble->bl", grad, values) if ctx.needs_input_grad[0] else None  # [B, L]
            grad_values = weights.unsqueeze(-1) * grad.unsqueeze(1) if ctx.needs_input_grad[1] else None  # [B, L, E]
        return grad_weights, grad_values


def dot_scores(query: Tensor, keys: Tensor) -> Tensor:
    """<query, key_i> for every behaviour: query [B, E], keys [B, L, E] -> [B, L].

    Fast path (the plain einsum is its oracle): autograd differentiates the einsum through a bmm of rank-1 products
    that writes the [B, L, E] key gradient as a transposed view, which the table gradient then copies once more;
    `_DotScores` writes it directly (attention forward + backward measured ~2x faster on the CPU). `weighted_sum`
    likewise.
    """
    if not fast_paths():
        return torch.einsum("be,ble->bl", query, keys)  # [B, L]
    if _autocast_on(keys):
        with _without_autocast(keys):
            dtype = torch.promote_types(query.dtype, keys.dtype)
            return _DotScores.apply(query.to(dtype), keys.to(dtype))  # [B, L] fp32 from fp32 embeddings
    return _DotScores.apply(query, keys)


def weighted_sum(weights: Tensor, values: Tensor) -> Tensor:
    """Σ_i w_i v_i: weights [B, L], values [B, L, E] -> [B, E] (fast path as in `dot_scores`)."""
    if not fast_paths():
        return torch.einsum("bl,ble->be", weights, values)  # [B, E]
    if _autocast_on(values):
        with _without_autocast(values):
            dtype = torch.promote_types(weights.dtype, values.dtype)
            return _WeightedSum.apply(weights.to(dtype), values.to(dtype))  # [B, E]
    return _WeightedSum.apply(weights, values)


class _LeakyReLUWithSlopeGrad(torch.autograd.Function):
    """PReLU with one shared slope, computed as a leaky ReLU of that slope, plus the slope's gradient Σ g·min(x, 0).

    ATen's PReLU backward writes a per-element slope gradient and then sums it; on [B, L, 80] DIN scorer activations
    it took ~5x longer than this leaky-ReLU backward plus one dot product (measured on the CPU).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor) -> Tensor:
        ctx.slope = float(weight)  # one host read: fine on the CPU, a sync on a GPU (where PReLU stays as is)
        ctx.save_for_backward(x)
        return torch.nn.functional.leaky_relu(x, ctx.slope)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:
        (x,) = ctx.saved_tensors
        grad_x = torch.ops.aten.leaky_relu_backward(grad, x, ctx.slope, False)
        if x.dtype == torch.float32:
            grad_weight = torch.dot(grad.reshape(-1), x.clamp(max=0).reshape(-1)).reshape(1)  # [1]
        else:  # bf16 activations under autocast: sum the slope gradient in fp32
            grad_weight = torch.sum(grad * x.clamp(max=0), dtype=torch.float32).reshape(1)  # [1]
        return grad_x, grad_weight


class PReLU(nn.PReLU):
    """`nn.PReLU()` (one shared slope, same parameter and state dict) with a fast CPU path (`fast_paths()`).

    Under `torch.compile` the plain PReLU runs: the fast path's host read of the slope would break the graph, and the
    compiler fuses the plain one anyway.
    """

    def forward(self, x: Tensor) -> Tensor:
        if fast_paths() and x.is_cpu and self.weight.numel() == 1 and not torch.compiler.is_compiling():
            return _LeakyReLUWithSlopeGrad.apply(x, self.weight)
        return super().forward(x)


def head_mlp(in_dim: int, hidden: Sequence[int], norm: str = "none") -> nn.Sequential:
    """A model's output MLP on [B, F] features, optionally normalised at its input.

    `norm = "batch"` puts BatchNorm1d over the F input features first (the DARE reference code's heads; here it runs
    in eval mode at evaluation, with its running statistics, so a sample's logit never depends on its batch), and
    `"layer"` a LayerNorm. Both rescale features of very different magnitudes (pooled interest, target embedding,
    their product) before the first layer, which speeds up early learning at the reference's small init.
    """
    first: list[nn.Module] = []
    if norm == "batch":
        first.append(nn.BatchNorm1d(in_dim))
    elif norm == "layer":
        first.append(nn.LayerNorm(in_dim))
    return nn.Sequential(*first, *mlp(in_dim, hidden))


def init_weights(module: nn.Module, init: str, std: float) -> None:
    """`init = "normal"`: every weight of `module` outside its embedding tables drawn from N(0, std²) — the Linear
    weights, the PReLU slopes and the scale of a BatchNorm or LayerNorm — as the DARE reference code draws every
    parameter whose name is not `bias`; the biases keep PyTorch's initialisation, as there. `"default"` keeps
    PyTorch's initialisation. Embedding tables are initialised by their owners (`BehaviourEmbedding`, N(0, init_std²),
    padding rows 0) either way."""
    if init != "normal":
        return
    for layer in module.modules():
        if isinstance(layer, nn.Embedding):
            continue
        for name, parameter in layer.named_parameters(recurse=False):
            if name != "bias":
                nn.init.normal_(parameter, std=std)


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int = 1) -> nn.Sequential:
    """Linear → PReLU for each hidden width, then a final Linear; acts on the last axis of any shape.

    PReLU keeps one shared slope: a per-channel slope would read dim 1 as channels, which is L for [B, L, W] input.
    """
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), PReLU()]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class BehaviourEmbedding(nn.Module):
    """Item embedding, concatenated with one category embedding per taxonomy level when categories are on.

    One category table serves every level (the vocabulary is shared); a missing level (id 0) embeds to zeros. The
    target goes through the same tables, so behaviours and target live in one space of width `out_dim` = E.

    Args:
        num_items: item vocabulary size, id 0 = padding.
        dim: D, the width of each table.
        num_categories: category vocabulary size, id 0 = padding/missing; 0 turns the category feature off.
        taxonomy_levels: M, the depth of the taxonomy path.
        init_std: embeddings start at N(0, init_std²); padding rows stay 0. DARE's 0.01 trains well at Adam lr 1e-2
            but slowly at 1e-3 (the small product terms take hundreds of steps to grow); 0.05 works at both.
    """

    def __init__(
        self, num_items: int, dim: int, num_categories: int = 0, taxonomy_levels: int = 0, init_std: float = 0.05
    ) -> None:
        super().__init__()
        self.item_embedding = nn.Embedding(num_items, dim, padding_idx=0)
        self.category_embedding = nn.Embedding(num_categories, dim, padding_idx=0) if num_categories > 0 else None
        self.out_dim = dim * (1 + taxonomy_levels) if num_categories > 0 else dim
        for table in (self.item_embedding, self.category_embedding):
            if table is not None:
                nn.init.normal_(table.weight, std=init_std)
                with torch.no_grad():
                    table.weight[0].zero_()

    @property
    def reads(self) -> tuple[str, ...]:
        """Optional `Batch` fields this embedding needs (for `check_batch(batch, reads=...)`)."""
        return ("history_category", "target_category") if self.category_embedding is not None else ()

    @property
    def tables(self) -> list[nn.Embedding]:
        """The tables in output order (item, then category), for `lookup` with `history_ids`/`target_ids`."""
        return [self.item_embedding] + ([self.category_embedding] if self.category_embedding is not None else [])

    def history_ids(self, batch: Batch) -> list[Tensor]:
        """The ids that `tables` look up for the behaviours: item [B, L] (and the category path [B, L, M])."""
        if self.category_embedding is None:
            return [batch.history]
        assert batch.history_category is not None  # check_batch's job
        return [batch.history, batch.history_category]

    def target_ids(self, batch: Batch) -> list[Tensor]:
        """The ids that `tables` look up for the target: item [B] (and the category path [B, M])."""
        if self.category_embedding is None:
            return [batch.target]
        assert batch.target_category is not None  # check_batch's job
        return [batch.target, batch.target_category]

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Return the behaviour embeddings h [B, L, E] and the target embedding t [B, E]."""
        h = lookup(self.tables, self.history_ids(batch))  # [B, L, E]
        t = lookup(self.tables, self.target_ids(batch))  # [B, E]
        return h, t
