"""DIN with a learned top-K: the "DIN" of the DARE paper's experiments (Feng et al., ICLR 2025,
https://arxiv.org/abs/2410.02604, Table 1), as its released code builds it.

It differs from longrec's DIN (`din.py`, the original Deep Interest Network: unnormalised MLP weights over the
history, searched, if at all, by embedding dot products):
- behaviours and the target are embedded as [item ⊕ category per level], one shared table per field; `use_time`
  appends a time embedding as TWIN's (time = relative position, the target's own time id 0). Off by default: the
  reference's DIN row runs without one (its `-use_time` flag, a store_false, turns it off);
- the attention score is a learned MLP on [v_t, e_i, v_t − e_i, v_t ⊙ e_i] (4E → 36 → PReLU → 1), divided by E, the
  behaviour width (the reference divides by its query width, the same E: 32 at D = 16 without time), and it also
  **selects**: the K behaviours with the highest scores are kept (no search stage: `search.method = "none"`), the
  softmax is recomputed over them, and u = Σ_k w_k e_k;
- the head reads [v_t, u, v_t ⊙ u] (the reference's cross feature); `aux_loss` adds a second head on the softmax
  over all L behaviours, trained with the same labels, so behaviours outside the top K still teach the scorer.

Our choices where the reference differs or is silent: padding is never selected (the reference's top-K can pick
padding when a history has fewer than K behaviours; here those slots stay empty); `head_norm` and `init` follow
`models/checks.py` (the reference uses BatchNorm at the head inputs, left in training mode at evaluation, and
N(0, 0.01²) weights).

Shapes: B batch, L history length, K kept behaviours, M taxonomy levels, D embedding dim, E = D·(1 + M) behaviour
width (item, M categories), D·(2 + M) with `use_time`, P = max_position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from longrec.data.batch import Batch
from longrec.models.checks import check_behaviour_config, check_bool, check_head_options, check_int, check_sizes
from longrec.models.layers import BehaviourEmbedding, head_mlp, init_weights, lookup, mlp, weighted_sum
from longrec.models.target_attention import masked_softmax, time_ids
from longrec.search.config import SearchConfig

__all__ = ["DINTopK", "DINTopKConfig"]


@dataclass(frozen=True)
class DINTopKConfig:
    num_items: int  # item vocabulary size, id 0 = padding
    num_categories: int = 0  # category vocabulary shared by every taxonomy level, id 0 = missing; 0 = no categories
    taxonomy_levels: int = 0  # M, depth of history_category [B, L, M]
    dim: int = 16  # D, width of each table: item, category (per level) and time
    use_time: bool = False  # append a relative-position time embedding (the reference's DIN row has none)
    max_position: int = 200  # P: time ids 1..P (older behaviours share P); read only with use_time
    k: int = 20  # behaviours the learned score keeps
    scorer_hidden: tuple[int, ...] = (36,)  # widths of the attention scorer MLP (the reference's 36)
    head_hidden: tuple[int, ...] = (200, 80)  # widths of the output MLP
    aux_loss: bool = False  # second head on the softmax over all L behaviours (aux_logits)
    aux_hidden: tuple[int, ...] = (200,)  # widths of the auxiliary head
    init_std: float = 0.05  # embeddings start at N(0, init_std²); the reference uses 0.01 with lr 1e-2
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
        check_int(owner, "max_position", self.max_position)
        check_int(owner, "k", self.k)
        check_bool(owner, "aux_loss", self.aux_loss)
        check_bool(owner, "use_time", self.use_time)
        # Lists come back from config.json; store tuples so the config stays hashable and compares equal.
        for name in ("scorer_hidden", "head_hidden", "aux_hidden"):
            object.__setattr__(self, name, check_sizes(owner, name, getattr(self, name)))


class DINTopK(nn.Module):
    """Learned-MLP attention that selects its own top-K behaviours, softmax over them, and an auxiliary full head."""

    def __init__(self, config: DINTopKConfig) -> None:
        super().__init__()
        self.config = config
        D = config.dim
        self.embedding = BehaviourEmbedding(
            config.num_items, D, config.num_categories, config.taxonomy_levels, config.init_std
        )
        self.time_embedding: nn.Embedding | None = None
        if config.use_time:
            # No padding row: row 0 is the target's own time (padding behaviours also map there, with weight 0).
            self.time_embedding = nn.Embedding(config.max_position + 1, D)
            nn.init.normal_(self.time_embedding.weight, std=config.init_std)
        E = self.embedding.out_dim + (D if config.use_time else 0)
        self.scorer = mlp(4 * E, config.scorer_hidden)
        self.head = head_mlp(3 * E, config.head_hidden, config.head_norm)
        self.aux_head = head_mlp(3 * E, config.aux_hidden, config.head_norm) if config.aux_loss else None
        self.reads: tuple[str, ...] = self.embedding.reads
        init_weights(self, config.init, config.init_std)

    def _embed(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Target v [B, E] and behaviours e [B, L, E]: the semantic fields, ⊕ time with `use_time` (target id 0)."""
        if self.time_embedding is None:
            e, v = self.embedding(batch)
            return v, e  # [B, E], [B, L, E]
        tables = [*self.embedding.tables, self.time_embedding]
        e = lookup(tables, [*self.embedding.history_ids(batch), time_ids(batch, self.config.max_position)])
        v = lookup(tables, [*self.embedding.target_ids(batch), torch.zeros_like(batch.target)])
        return v, e  # [B, E], [B, L, E]

    def _scores(self, v: Tensor, e: Tensor) -> Tensor:
        """The learned scores [B, L]: MLP([v, e_i, v − e_i, v ⊙ e_i]) / E."""
        v_l = v.unsqueeze(1).expand_as(e)  # [B, L, E]
        return self.scorer(torch.cat([v_l, e, v_l - e, v_l * e], dim=-1)).squeeze(-1) / e.shape[-1]  # [B, L]

    def _pooled(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Target v [B, E], the top-K pooled interest [B, E], the full-softmax pooled interest [B, E], scores [B, L]."""
        v, e = self._embed(batch)
        mask = batch.history_mask  # [B, L]
        scores = self._scores(v, e)  # [B, L]
        k = min(self.config.k, scores.shape[1])
        with torch.no_grad():  # selection is not differentiable; padding ranks below every real behaviour
            positions = scores.masked_fill(~mask, float("-inf")).topk(k, dim=1).indices  # [B, K]
        kept = mask.gather(1, positions)  # [B, K] False where the history has fewer than K behaviours
        kept_values = e.gather(1, positions.unsqueeze(-1).expand(-1, -1, e.shape[-1]))  # [B, K, E]
        top = weighted_sum(masked_softmax(scores.gather(1, positions), kept), kept_values)  # [B, E]
        full = weighted_sum(masked_softmax(scores, mask), e)  # [B, E]
        return v, top, full, scores

    @staticmethod
    def _logit(v: Tensor, u: Tensor, head: nn.Module) -> Tensor:
        return head(torch.cat([v, u, v * u], dim=-1)).squeeze(-1)  # [B]

    def forward(self, batch: Batch) -> Tensor:
        """Return one click logit per example, shape [B] (softmax attention over the K best-scored behaviours)."""
        v, top, _, _ = self._pooled(batch)
        return self._logit(v, top, self.head)

    def aux_logits(self, batch: Batch) -> Tensor | None:
        """Auxiliary logits [B] from the softmax over all L behaviours and the second head; None when off."""
        if self.aux_head is None:
            return None
        v, _, full, _ = self._pooled(batch)
        return self._logit(v, full, self.aux_head)

    def forward_with_aux(self, batch: Batch, search: SearchConfig) -> tuple[Tensor, Tensor] | None:
        """The training step's fast path: main and auxiliary logits from one lookup and one scoring; None unless the
        aux loss is on and no search stage runs before the model (it selects its own K)."""
        if self.aux_head is None or search.method != "none":
            return None
        v, top, full, _ = self._pooled(batch)
        return self._logit(v, top, self.head), self._logit(v, full, self.aux_head)

    def attention_weights(self, batch: Batch) -> Tensor:
        """The weight of each behaviour in the pooled interest [B, L]: softmax over the top K, 0 elsewhere."""
        v, e = self._embed(batch)
        scores = self._scores(v, e)  # [B, L]
        k = min(self.config.k, scores.shape[1])
        top = scores.masked_fill(~batch.history_mask, float("-inf")).topk(k, dim=1).indices  # [B, K]
        keep = torch.zeros_like(batch.history_mask).scatter(1, top, True) & batch.history_mask  # [B, L]
        return masked_softmax(scores, keep)  # [B, L]
