"""DARE: Decoupled Attention and Representation Embeddings (Feng et al., ICLR 2025, https://arxiv.org/abs/2410.02604).

TWIN (`twin.py`) with **two tables per field**: attention tables of width d_a (`attention_dim`) and representation
tables of width d_r (`dim`). Scores and soft search use only the attention embeddings,
`<e_i^att,sem, v_t^att,sem>/sqrt(d_sem) + <e_i^att,time, v_t^att,time>/sqrt(d_a)`; the pooled interest uses only the
representation embeddings, u = Σ_i w_i e_i^repr with w = softmax over the kept behaviours, and the head reads
[v_t^repr, u, u ⊙ v_t^repr] (target-aware representation, as in the authors' code). So the gradient of the
representation path never reaches the attention tables and vice versa, which is the paper's fix for the gradient
domination and conflict of shared embeddings. d_a is independent of d_r: d_a = d_r / 2 halves the search cost.

Time is a relative-position table per role (attention, representation) indexed by `history_position` (most recent =
1, clamped to `max_position`; the target's own time id is 0); see `twin.py` for the fallback when a batch has no
positions. Head without BatchNorm, and the auxiliary loss (`aux_loss`, off by default like the authors' script; on in
`configs/dare_taobao.toml`): `aux_logits(full_batch)` attends over all L behaviours with the attention tables, pools
the representation tables and feeds a second head; `forward_with_aux` is the train loop's one-lookup fast path for
both heads (see `twin.py`).

`separate_target_tables = true` is the **TWIN-4E** ablation: four table sets (attention/representation ×
target/history), so a target item and the same item in the history no longer share an embedding. Keep
`attention_dim` unset (= `dim`) to match the paper's TWIN-4E. How to select every variant: `twin.py`'s docstring.

Shapes: B batch, L history length (K after search), M taxonomy levels, D_a / D_r attention / representation widths,
A = D_a·(1 + M) + D_a and R = D_r·(1 + M) + D_r behaviour widths (semantic ⊕ time; no M term without categories),
P = max_position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from longrec.data.batch import Batch
from longrec.models.checks import check_behaviour_config, check_bool, check_head_options, check_int, check_sizes
from longrec.models.layers import BehaviourEmbedding, dot_scores, head_mlp, init_weights, lookup, weighted_sum
from longrec.models.target_attention import masked_softmax, pool_full_and_kept, scaled_query, time_ids
from longrec.search.config import SearchConfig

__all__ = ["DARE", "DAREConfig"]


@dataclass(frozen=True)
class DAREConfig:
    num_items: int  # item vocabulary size, id 0 = padding
    num_categories: int = 0  # category vocabulary shared by every taxonomy level, id 0 = missing; 0 = no categories
    taxonomy_levels: int = 0  # M, depth of history_category [B, L, M]
    dim: int = 16  # D_r, width of each representation table (item, category per level, time)
    attention_dim: int | None = None  # D_a, width of each attention table; None = dim
    max_position: int = 200  # P: time ids 1..P (older behaviours share P); DARE's Protocol A has L = 200
    separate_target_tables: bool = False  # TWIN-4E: separate target-side and history-side tables
    head_hidden: tuple[int, ...] = (200, 80)  # widths of the output MLP (the paper's 200, 80)
    aux_loss: bool = False  # second head on full-sequence attention (aux_logits); Protocol A turns it on
    aux_hidden: tuple[int, ...] = (200,)  # widths of the auxiliary head (the authors' 200)
    init_std: float = 0.05  # embeddings start at N(0, init_std²); DARE's protocol uses 0.01 with lr 1e-2
    head_norm: str = "none"  # none | batch | layer: normalise the heads' input (layers.head_mlp)
    init: str = (
        "default"  # default (PyTorch's) | normal: every non-bias weight from N(0, init_std²) (layers.init_weights)
    )

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_behaviour_config(
            owner, self.num_items, self.num_categories, self.taxonomy_levels, self.dim, self.init_std
        )
        check_head_options(owner, self.head_norm, self.init)
        if self.attention_dim is not None:
            check_int(owner, "attention_dim", self.attention_dim)
        check_int(owner, "max_position", self.max_position)
        check_bool(owner, "separate_target_tables", self.separate_target_tables)
        check_bool(owner, "aux_loss", self.aux_loss)
        # Lists come back from config.json; store tuples so the config stays hashable and compares equal.
        object.__setattr__(self, "head_hidden", check_sizes(owner, "head_hidden", self.head_hidden))
        object.__setattr__(self, "aux_hidden", check_sizes(owner, "aux_hidden", self.aux_hidden))


class _Tables(nn.Module):
    """One role's tables (attention or representation): item ⊕ category per level, and a time table."""

    def __init__(self, config: DAREConfig, dim: int) -> None:
        super().__init__()
        self.embedding = BehaviourEmbedding(
            config.num_items, dim, config.num_categories, config.taxonomy_levels, config.init_std
        )
        # No padding row: row 0 is the target's own time (padding behaviours also map there, with weight 0).
        self.time_embedding = nn.Embedding(config.max_position + 1, dim)
        nn.init.normal_(self.time_embedding.weight, std=config.init_std)

    def history(self, batch: Batch, max_position: int) -> Tensor:
        """Behaviour embeddings [B, L, D·(1+M) + D]: semantic (item ⊕ category per level) ⊕ time."""
        ids = [*self.embedding.history_ids(batch), time_ids(batch, max_position)]
        return lookup([*self.embedding.tables, self.time_embedding], ids)  # [B, L, D·(1+M) + D]

    def target(self, batch: Batch) -> Tensor:
        """Target embedding [B, D·(1+M) + D]: semantic ⊕ time, where the target's time id is 0."""
        ids = [*self.embedding.target_ids(batch), torch.zeros_like(batch.target)]
        return lookup([*self.embedding.tables, self.time_embedding], ids)  # [B, D·(1+M) + D]


def _head_logit(v: Tensor, u: Tensor, head: nn.Module) -> Tensor:
    """The head on [v_t, u, u ⊙ v_t] -> [B]; TR: Σ w_i (e_i ⊙ v_t) = u ⊙ v_t."""
    return head(torch.cat([v, u, u * v], dim=-1)).squeeze(-1)  # [B]


class DARE(nn.Module):
    """TWIN with decoupled attention and representation tables (and TWIN-4E with target tables decoupled too)."""

    def __init__(self, config: DAREConfig) -> None:
        super().__init__()
        self.config = config
        D_a = config.attention_dim or config.dim
        self.attention = _Tables(config, D_a)
        self.representation = _Tables(config, config.dim)
        # TWIN-4E: the target side gets its own attention and representation tables.
        self.target_attention = _Tables(config, D_a) if config.separate_target_tables else None
        self.target_representation = _Tables(config, config.dim) if config.separate_target_tables else None
        R = self.representation.embedding.out_dim + config.dim
        self.head = head_mlp(3 * R, config.head_hidden, config.head_norm)
        self.aux_head = head_mlp(3 * R, config.aux_hidden, config.head_norm) if config.aux_loss else None
        self.reads: tuple[str, ...] = self.attention.embedding.reads
        init_weights(self, config.init, config.init_std)

    def search_embeddings(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Query [B, A] and keys [B, L, A] from the attention tables only; <query, key_i> is the attention score."""
        keys = self.attention.history(batch, self.config.max_position)  # [B, L, A]
        target = (self.target_attention or self.attention).target(batch)  # [B, A]
        return scaled_query(target, self.config.attention_dim or self.config.dim), keys  # [B, A], [B, L, A]

    def attention_weights(self, batch: Batch) -> Tensor:
        """Softmax attention weights [B, L] over the real behaviours of `batch` (0 on padding)."""
        query, keys = self.search_embeddings(batch)  # [B, A], [B, L, A]
        return masked_softmax(dot_scores(query, keys), batch.history_mask)  # [B, L]

    def representations(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Target v [B, R] and behaviours e [B, L, R] from the representation tables only."""
        e = self.representation.history(batch, self.config.max_position)  # [B, L, R]
        v = (self.target_representation or self.representation).target(batch)  # [B, R]
        return v, e

    def _logit(self, batch: Batch, head: nn.Module) -> Tensor:
        weights = self.attention_weights(batch)  # [B, L]
        v, e = self.representations(batch)  # [B, R], [B, L, R]
        return _head_logit(v, weighted_sum(weights, e), head)  # [B]

    def forward_with_aux(self, batch: Batch, search: SearchConfig) -> tuple[Tensor, Tensor] | None:
        """Fast path of a training step: `(forward(search_stage(batch, self, search)), aux_logits(batch))`, [B] each,
        from one lookup per table set (`pool_full_and_kept`); None unless the aux loss is on and search is `soft`."""
        if self.aux_head is None or search.method != "soft":
            return None
        query, keys = self.search_embeddings(batch)  # [B, A], [B, L, A]
        v, e = self.representations(batch)  # [B, R], [B, L, R]
        full, kept = pool_full_and_kept(batch, query, keys, e, search.k)  # [B, R] each
        return _head_logit(v, kept, self.head), _head_logit(v, full, self.aux_head)

    def forward(self, batch: Batch) -> Tensor:
        """Return one click logit per example, shape [B] (attention over the behaviours search kept)."""
        return self._logit(batch, self.head)

    def aux_logits(self, batch: Batch) -> Tensor | None:
        """Auxiliary logits [B] from softmax attention over all L behaviours and the second head; None when off."""
        if self.aux_head is None:
            return None
        return self._logit(batch, self.aux_head)
