"""Embedding tables as a TorchRec `EmbeddingCollection` (optional extra: `make install-torchrec`), shardable by
`DistributedModelParallel` with FBGEMM's fused row-wise optimizer.

`CollectionLookup` holds several `nn.Embedding` tables (item, category, time, ...) as one `EmbeddingCollection` and
serves exactly what `longrec.models.layers.lookup` serves on them: the rows of each table side by side, [*S, J·D],
an id tensor with one more axis (a category path [*S, M]) looked up column by column in the same table. Each column
is one TorchRec feature (`"category_0"`, `"category_1"`, ... share the table `"category"`), every position a sequence
of length 1 (sequence lookups, no pooling). A table with `padding_idx=0` sends no id 0 to TorchRec (length 0 there)
and its positions embed to zeros, so padding rows are never read and get no gradient, as with `nn.Embedding`.

`TorchRecBehaviourEmbedding` is `BehaviourEmbedding` (item ⊕ category path) on a `CollectionLookup`;
`use_torchrec_tables(model)` swaps it into the models that read their embeddings only through `self.embedding(batch)`
(`TORCHREC_MODELS`). The models with a time table (TWIN, DARE, DIN-TopK) or their own tables (VISTA, VQL, TD-SASRec,
DSI-TIN) call `lookup` on the tables directly and are not converted yet; `CollectionLookup` serves their lookups too.

`shard(module, sharding, ...)` wraps a module holding `CollectionLookup`s in `DistributedModelParallel`: every table
sharded table-wise or row-wise over the ranks of the default process group, trained by the fused optimizer inside the
backward (no `.grad`, no dense optimizer step for the tables): every call to the collection is one optimizer step on
the rows it read, so one training step looks everything up in one call (`CollectionLookup.many`). On the CPU,
FBGEMM 1.8 offers exact row-wise Adagrad (and Adagrad, SGD), not Adam: `"adam"` fails in FBGEMM with
`AssertionError: Optimizer adam is not supported in CPU mode.` (docs/scale_out.md).

torchrec and fbgemm_gpu are imported inside the functions that need them: the rest of longrec never requires them.
Tests: tests/models/test_torchrec_tables.py (marker `torchrec`, `make test-torchrec`).

Shapes: B batch, L history length, M taxonomy levels, D embedding dim, E = D·(1 + M), S leading shape of a lookup,
N positions (the product of S), J looked-up columns, U ids sent to TorchRec (N minus padding).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from longrec.data.batch import Batch
from longrec.models.din import DIN
from longrec.models.eta import ETA
from longrec.models.layers import BehaviourEmbedding
from longrec.models.mean_pool import MeanPool
from longrec.models.sdim import SDIM
from longrec.models.stacked_tin import StackedTIN
from longrec.models.tin import TIN

__all__ = [
    "OPTIMIZERS",
    "SHARDINGS",
    "TORCHREC_MODELS",
    "CollectionLookup",
    "TorchRecBehaviourEmbedding",
    "require_torchrec",
    "shard",
    "use_torchrec_tables",
]

INSTALL_HINT = "Install the extra with 'make install-torchrec' (docs/scale_out.md)."
SHARDINGS = ("table_wise", "row_wise")
OPTIMIZERS = ("rowwise_adagrad", "adagrad", "sgd")  # what FBGEMM's CPU kernels train; Adam is CUDA-only there
# Models that read their tables only through `self.embedding(batch)`: swapping the embedding converts all of them.
TORCHREC_MODELS: dict[str, type[nn.Module]] = {
    "din": DIN,
    "eta": ETA,
    "mean_pool": MeanPool,
    "sdim": SDIM,
    "stacked_tin": StackedTIN,
    "tin": TIN,
}


def require_torchrec() -> Any:
    """Import and return `torchrec`; raise ImportError saying how to install it when it cannot be imported."""
    try:
        import fbgemm_gpu  # noqa: F401  # registers the FBGEMM operators torchrec calls
        import torchrec
    except (ImportError, OSError) as error:  # OSError: an fbgemm_gpu built against another torch
        raise ImportError(
            f"longrec's TorchRec tables need torchrec and fbgemm-gpu-cpu: {error}. {INSTALL_HINT}"
        ) from error
    return torchrec


class CollectionLookup(nn.Module):
    """`lookup(tables, ids)` served by one TorchRec `EmbeddingCollection` holding copies of `tables`.

    Args:
        tables: the tables, all of width D; a `padding_idx` must be None or 0.
        names: one name per table ("item", "category", "time"); the collection's table names.
        columns: J_t per table: 1 for an id tensor [*S], M for a path [*S, M]; the first table takes plain ids.
    """

    def __init__(self, tables: Sequence[nn.Embedding], names: Sequence[str], columns: Sequence[int]) -> None:
        super().__init__()
        torchrec = require_torchrec()
        if not len(tables) == len(names) == len(columns) > 0:
            raise ValueError(
                f"CollectionLookup needs one name and one column count per table. Got {len(tables)} table(s), "
                f"names {list(names)} and columns {list(columns)} instead."
            )
        dims = sorted({t.embedding_dim for t in tables})
        if len(dims) != 1:
            raise ValueError(f"CollectionLookup's tables must share one width D. Got widths {dims} instead.")
        if columns[0] != 1:
            raise ValueError(
                f"the first table ({names[0]!r}) takes plain ids [*S]: columns[0] must be 1. Got {columns[0]}."
            )
        for name, table, width in zip(names, tables, columns, strict=True):
            if table.padding_idx not in (None, 0):
                raise ValueError(f"table {name!r}: padding_idx must be None or 0. Got {table.padding_idx} instead.")
            if width < 1:
                raise ValueError(f"table {name!r}: columns must be >= 1. Got {width} instead.")
        self.names, self.columns = list(names), list(columns)
        self.padded = [t.padding_idx == 0 for t in tables]
        self.features = [[f"{name}_{m}" for m in range(width)] for name, width in zip(names, columns, strict=True)]
        self.dim = dims[0]
        configs = [
            torchrec.EmbeddingConfig(
                name=name, embedding_dim=self.dim, num_embeddings=t.num_embeddings, feature_names=f
            )
            for name, t, f in zip(names, tables, self.features, strict=True)
        ]
        self.collection: nn.Module = torchrec.EmbeddingCollection(tables=configs, device=torch.device("cpu"))
        with torch.no_grad():
            for name, table in zip(names, tables, strict=True):
                self.collection.embeddings[name].weight.copy_(table.weight)

    def forward(self, ids: Sequence[Tensor]) -> Tensor:
        """ids: one tensor per table, [*S] or [*S, M], int64 -> [*S, J·D], as `layers.lookup(tables, ids)`."""
        return self.many([ids])[0]

    def many(self, groups: Sequence[Sequence[Tensor]]) -> list[Tensor]:
        """Several lookups (e.g. history [B, L] and target [B]) in one call to the collection: [*S_g, J·D] each.

        Sharded with a fused optimizer, each call to the collection is one optimizer step on the rows it read, so
        everything one training step reads must go through one call: a row read by the history and by the target
        then gets one update from its summed gradient, as with a plain optimizer, not two.
        """
        from torchrec import KeyedJaggedTensor

        leads = [g[0].shape for g in groups]  # S_g: the first table's ids are plain, as in `lookup`
        sizes = [lead.numel() for lead in leads]  # N_g
        N = sum(sizes)
        keys: list[str] = []
        values: list[Tensor] = []
        lengths: list[Tensor] = []
        masks: list[Tensor | None] = []
        for t, (features, padded) in enumerate(zip(self.features, self.padded, strict=True)):
            flat = torch.cat([g[t].reshape(n, len(features)) for g, n in zip(groups, sizes, strict=True)])  # [N, J_t]
            for m, feature in enumerate(features):
                column = flat[:, m]  # [N]
                mask = column != 0 if padded else None  # [N], False = padding: not sent, embeds to 0
                keys.append(feature)
                values.append(column if mask is None else column[mask])  # [U_f]
                lengths.append(torch.ones_like(column, dtype=torch.int32) if mask is None else mask.int())  # [N]
                masks.append(mask)
        features_in = KeyedJaggedTensor.from_lengths_sync(
            keys=keys, values=torch.cat(values), lengths=torch.cat(lengths)
        )
        rows = self.collection(features_in)  # {feature: JaggedTensor with values [U_f, D]}
        parts = []
        for key, mask in zip(keys, masks, strict=True):
            found = rows[key].values()  # [U_f, D]
            if mask is None:
                parts.append(found)
            else:
                parts.append(found.new_zeros(N, self.dim).index_put((mask.nonzero().squeeze(1),), found))  # [N, D]
        out = torch.stack(parts, dim=1).view(N, len(keys) * self.dim)  # [N, J·D]
        return [o.view(*lead, -1) for o, lead in zip(out.split(sizes), leads, strict=True)]  # [*S_g, J·D] each


class TorchRecBehaviourEmbedding(nn.Module):
    """`BehaviourEmbedding` (item ⊕ category path, same `reads`, `out_dim` and outputs) on a `CollectionLookup`."""

    def __init__(self, embedding: BehaviourEmbedding) -> None:
        super().__init__()
        tables = embedding.tables
        D = tables[0].embedding_dim
        levels = embedding.out_dim // D - 1  # M, 0 without categories
        self.out_dim = embedding.out_dim
        self.reads = embedding.reads
        self.lookup = CollectionLookup(tables, ["item", "category"][: len(tables)], [1, levels][: len(tables)])

    def history_ids(self, batch: Batch) -> list[Tensor]:
        """item [B, L] (and the category path [B, L, M])."""
        if len(self.lookup.names) == 1:
            return [batch.history]
        assert batch.history_category is not None  # check_batch's job
        return [batch.history, batch.history_category]

    def target_ids(self, batch: Batch) -> list[Tensor]:
        """item [B] (and the category path [B, M])."""
        if len(self.lookup.names) == 1:
            return [batch.target]
        assert batch.target_category is not None  # check_batch's job
        return [batch.target, batch.target_category]

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Return the behaviour embeddings h [B, L, E] and the target embedding t [B, E]."""
        h, t = self.lookup.many([self.history_ids(batch), self.target_ids(batch)])  # [B, L, E], [B, E]: one step
        return h, t


def use_torchrec_tables(model: nn.Module) -> nn.Module:
    """Replace `model.embedding` by its TorchRec copy (same weights) in place; return the model.

    Raises:
        TypeError: the model is not one of `TORCHREC_MODELS` (it reads its tables outside `self.embedding(batch)`).
    """
    if type(model) not in TORCHREC_MODELS.values():
        raise TypeError(
            f"use_torchrec_tables converts the models {sorted(TORCHREC_MODELS)}. Got {type(model).__name__} instead, "
            "which looks its tables up directly; train it with DDP (longrec train --nproc N)."
        )
    assert isinstance(model.embedding, BehaviourEmbedding)  # every model in TORCHREC_MODELS builds one
    model.embedding = TorchRecBehaviourEmbedding(model.embedding)
    return model


def shard(
    module: nn.Module, sharding: str, optimizer: str = "rowwise_adagrad", lr: float = 0.01, eps: float = 1e-8
) -> nn.Module:
    """`DistributedModelParallel(module)`: its `EmbeddingCollection`s sharded `sharding`-wise over the default process
    group's ranks, trained by FBGEMM's fused `optimizer` inside the backward; the rest of the module data-parallel.

    Needs an initialised default process group (gloo on the CPU). Every rank passes its own part of the batch.
    TorchRec divides the table gradients summed over the W ranks by W (gradient division, on by default), as DDP
    averages the dense ones: scale each rank's loss as `longrec.train.distributed` does (n_r·W/N for a mean over the
    global batch of N) and both parts take the single-process step on the whole batch.

    Raises:
        ValueError: an unknown `sharding` or `optimizer`.
    """
    if sharding not in SHARDINGS:
        raise ValueError(f"sharding must be one of {list(SHARDINGS)}. Got {sharding!r} instead.")
    if optimizer not in OPTIMIZERS:
        raise ValueError(
            f"optimizer must be one of {list(OPTIMIZERS)} (FBGEMM's CPU kernels; Adam runs only on CUDA). "
            f"Got {optimizer!r} instead."
        )
    require_torchrec()
    import torch.distributed as dist
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from torchrec.distributed import DistributedModelParallel
    from torchrec.distributed.embedding import EmbeddingCollectionSharder
    from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology

    kind = {"rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD, "adagrad": EmbOptimType.EXACT_ADAGRAD}
    fused = {"optimizer": kind.get(optimizer, EmbOptimType.EXACT_SGD), "learning_rate": lr, "eps": eps}
    sharder = EmbeddingCollectionSharder(fused_params=fused)
    names = [n for m in module.modules() if isinstance(m, CollectionLookup) for n in m.names]
    constraints = {name: ParameterConstraints(sharding_types=[sharding]) for name in names}
    topology = Topology(world_size=dist.get_world_size(), compute_device="cpu")
    plan = EmbeddingShardingPlanner(topology=topology, constraints=constraints).collective_plan(module, [sharder])
    return DistributedModelParallel(module, device=torch.device("cpu"), plan=plan, sharders=[sharder])
