"""Embedding tables whose rows live outside the model, for serving: the mechanism of the embedding cache.

A big id table (10^8 items × D floats) may not fit a server's RAM. `ExternalTable` stands in for its `nn.Embedding`:
the same call (`table(ids) -> [*S, D]`) and the same rows, read from a `RowSource` (the serving layer's
`longrec.serve.embedding_cache.RowCache`: a memory-mapped weights file with an LRU cache of hot rows in front).
`longrec.models.layers.lookup` reads external tables on its plain path (a gather per table, then a concat), so a
model's outputs are bit for bit those of the in-memory model (tests/serve/test_embedding_cache.py). Which tables go
external, and how many rows stay in memory, is serving policy, decided in `longrec.serve`.

Shapes: N ids, S any leading shape, V table rows, D embedding width.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor, nn

__all__ = ["ExternalTable", "RowSource"]


class RowSource(Protocol):
    """Rows of an embedding table kept outside the model (inference only)."""

    @property
    def shape(self) -> tuple[int, int]:
        """[V, D]: rows and width of the table."""
        ...

    def rows(self, ids: Tensor) -> Tensor:
        """ids [N] int64 in [0, V) -> their rows [N, D] float32, a new tensor without gradient."""
        ...


class ExternalTable(nn.Module):
    """An `nn.Embedding` stand-in whose rows come from a `RowSource`: same call (`table(ids) -> [*S, D]`), same rows,
    no parameter. Inference only: it has no gradient, and `train()` refuses it.

    Args:
        source: where the rows are.
        padding_idx: the padding row of the table it replaces (documentation: the source holds its zero row).
    """

    def __init__(self, source: RowSource, padding_idx: int | None = None) -> None:
        super().__init__()
        self.source = source
        self.num_embeddings, self.embedding_dim = (int(n) for n in source.shape)
        self.padding_idx = padding_idx
        self.training = False

    def forward(self, ids: Tensor) -> Tensor:
        # A one-user request repeats one history over its C candidates as an expanded view (stride 0 on the C axis):
        # the source reads the one copy, and the rows are laid out [*S, D] contiguous, as nn.Embedding returns them.
        compact = ids
        for axis, (size, stride) in enumerate(zip(ids.shape, ids.stride(), strict=True)):
            if stride == 0 and size > 1:
                compact = compact.narrow(axis, 0, 1)
        rows = self.source.rows(compact.reshape(-1)).view(*compact.shape, self.embedding_dim)  # [*S', D]
        return rows if compact is ids else rows.expand(*ids.shape, self.embedding_dim).contiguous()  # [*S, D]

    def train(self, mode: bool = True) -> ExternalTable:
        if mode:
            raise ValueError(
                "ExternalTable serves embedding rows from outside the model, for inference only: it cannot train. "
                "Train the model loaded without the embedding cache."
            )
        return super().train(False)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, source={type(self.source).__name__}"
