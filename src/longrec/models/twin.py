"""TWIN: two-stage interest network with consistency-preserved soft search (Chang et al., KDD 2023,
https://arxiv.org/abs/2302.02352), as specified and ablated by DARE (Feng et al., ICLR 2025,
https://arxiv.org/abs/2410.02604, §3-§4 and Table 1).

Each behaviour is e_i = [item ⊕ category per taxonomy level ⊕ time], the target v_t = [item ⊕ category ⊕ time of the
target], where "time" is a relative-position embedding (`history_position`: most recent = 1, clamped to
`max_position`; the target's own time id is 0). One table per field serves attention *and* representation. The
attention score is `<e_i^sem, v_t^sem>/sqrt(d_sem) + <e_i^time, v_t^time>/sqrt(d_time)`; soft search keeps the top K
behaviours by that score (the `soft` searcher with `search_embeddings`), and `forward`, run on the K kept behaviours,
recomputes the softmax over them: u = Σ_i w_i e_i. The target-aware representation (TR) h = Σ_i w_i (e_i ⊙ v_t) =
u ⊙ v_t enters the head as in the authors' code: head MLP on [v_t, u, u ⊙ v_t] (their `use_cross_feature`).

Head: the paper's BN → 200 → PReLU → 80 → PReLU → 1; the BatchNorm is the `head_norm = "batch"` option (off by
default; evaluated with its running statistics, so a logit never depends on the rest of its batch at evaluation),
and `init = "normal"` draws every weight but the biases from N(0, init_std²) as the authors' code does.
Auxiliary loss (`aux_loss`): `aux_logits(full_batch)` attends over all L behaviours (softmax over L) and feeds a
second head (200 → PReLU → 1, as the authors' code); the train loop adds its BCE with the same labels, so the search
attention keeps learning on behaviours that top-K drops. Off by default (as in the authors' `train_pytorch.py`; their
Protocol-A runs pass `-use_aux_loss True`, and so does `configs/dare_taobao.toml`). With the aux loss on and `soft`
search, the train loop's fast path calls `forward_with_aux`, which serves the search, the main head and the aux head
from one lookup (`pool_full_and_kept`; the two separate calls are its test oracle).

`history_position` is read when the batch has it (collate always sets it, and search moves it with the behaviours);
without it, time ids are derived from the mask (left-padded, most recent = 1), which equals what collate writes for
an unsearched batch. It is not listed in `reads` so that a model without categories reads nothing optional.

**Selecting each DARE-table variant** (registry name + config fields; search from the experiment's `search` table):

| variant | model | search |
| --- | --- | --- |
| TWIN | `{ name = "twin" }` | `{ method = "soft", k = 20 }` |
| TWIN (hard) | `{ name = "twin" }` (no model change) | `{ method = "category", k = 20 }` |
| TWIN w/o TR | `{ name = "twin", target_aware = false }` | `{ method = "soft", k = 20 }` |
| TWIN w/ proj. | `{ name = "twin", attention = "projection" }` | `{ method = "soft", k = 20 }` |
| TWIN-4E | `{ name = "dare", separate_target_tables = true }` | `{ method = "soft", k = 20 }` |
| DARE | `{ name = "dare" }` (`attention_dim = 8` for d_a = d_r / 2) | `{ method = "soft", k = 20 }` |

TWIN-4E lives in `dare.py` because its four table sets (attention/representation × target/history) are DARE's
attention/representation split plus a target/history split. Add `aux_loss = true` to follow the paper's protocol.
`attention = "projection"` scores W_q v_t against W_k e_i with bias-free maps that are block-diagonal over
(semantic | time), so the two scaled terms stay separate; the representation keeps the raw embeddings (the authors'
script projects each field and the representation too).

Shapes: B batch, L history length (K after search), D embedding dim, M taxonomy levels, E_s = D·(1 + M) semantic
width (D without categories), E = E_s + D behaviour width (semantic ⊕ time), P = max_position.
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

__all__ = ["ATTENTION_KINDS", "TWIN", "TWINConfig"]

ATTENTION_KINDS = ("dot", "projection")


@dataclass(frozen=True)
class TWINConfig:
    num_items: int  # item vocabulary size, id 0 = padding
    num_categories: int = 0  # category vocabulary shared by every taxonomy level, id 0 = missing; 0 = no categories
    taxonomy_levels: int = 0  # M, depth of history_category [B, L, M]
    dim: int = 16  # D, width of each table: item, category (per level) and time
    max_position: int = 200  # P: time ids 1..P (older behaviours share P); DARE's Protocol A has L = 200
    target_aware: bool = True  # TR: head on [v_t, u, u ⊙ v_t]; False = "TWIN w/o TR", head on [v_t, u]
    attention: str = "dot"  # "dot" | "projection" ("TWIN w/ proj.": scores on W_q v_t, W_k e_i)
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
        check_int(owner, "max_position", self.max_position)
        check_bool(owner, "target_aware", self.target_aware)
        check_bool(owner, "aux_loss", self.aux_loss)
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(
                f"{owner}.attention must be one of {', '.join(ATTENTION_KINDS)}. Got {self.attention!r} instead."
            )
        # Lists come back from config.json; store tuples so the config stays hashable and compares equal.
        object.__setattr__(self, "head_hidden", check_sizes(owner, "head_hidden", self.head_hidden))
        object.__setattr__(self, "aux_hidden", check_sizes(owner, "aux_hidden", self.aux_hidden))


class TWIN(nn.Module):
    """Softmax target attention over the soft-searched behaviours, one shared table per field."""

    def __init__(self, config: TWINConfig) -> None:
        super().__init__()
        self.config = config
        D = config.dim
        self.embedding = BehaviourEmbedding(
            config.num_items, D, config.num_categories, config.taxonomy_levels, config.init_std
        )
        # No padding row: row 0 is the target's own time (padding behaviours also map there, with weight 0).
        self.time_embedding = nn.Embedding(config.max_position + 1, D)
        nn.init.normal_(self.time_embedding.weight, std=config.init_std)
        E_s = self.embedding.out_dim
        self.projections: nn.ModuleDict | None = None
        if config.attention == "projection":
            # Block-diagonal (semantic | time) so the two scaled dot products stay separate, as without projection.
            self.projections = nn.ModuleDict(
                {
                    "query_semantic": nn.Linear(E_s, E_s, bias=False),
                    "query_time": nn.Linear(D, D, bias=False),
                    "key_semantic": nn.Linear(E_s, E_s, bias=False),
                    "key_time": nn.Linear(D, D, bias=False),
                }
            )
        E = E_s + D
        width = 3 * E if config.target_aware else 2 * E
        self.head = head_mlp(width, config.head_hidden, config.head_norm)
        self.aux_head = head_mlp(width, config.aux_hidden, config.head_norm) if config.aux_loss else None
        self.reads: tuple[str, ...] = self.embedding.reads
        init_weights(self, config.init, config.init_std)

    def _embed(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Query [B, E] and keys [B, L, E] (<query, key_i> = score_i), target v [B, E] and behaviours e [B, L, E]."""
        tables = [*self.embedding.tables, self.time_embedding]
        time = time_ids(batch, self.config.max_position)  # [B, L]
        e = lookup(tables, [*self.embedding.history_ids(batch), time])  # [B, L, E] = [h, p]
        v = lookup(tables, [*self.embedding.target_ids(batch), torch.zeros_like(batch.target)])  # [B, E], time id 0
        if self.projections is None:
            return scaled_query(v, self.config.dim), e, v, e  # dot attention: the keys are the behaviours
        E_s = self.embedding.out_dim
        query = torch.cat(
            [self.projections["query_semantic"](v[:, :E_s]), self.projections["query_time"](v[:, E_s:])], dim=-1
        )  # [B, E]
        keys = torch.cat(
            [self.projections["key_semantic"](e[..., :E_s]), self.projections["key_time"](e[..., E_s:])], dim=-1
        )  # [B, L, E]
        return scaled_query(query, self.config.dim), keys, v, e

    def search_embeddings(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Query [B, E] and keys [B, L, E] whose dot product is the attention score (for the `soft` searcher)."""
        query, keys, _, _ = self._embed(batch)
        return query, keys

    def attention_weights(self, batch: Batch) -> Tensor:
        """Softmax attention weights [B, L] over the real behaviours of `batch` (0 on padding)."""
        query, keys, _, _ = self._embed(batch)
        return masked_softmax(dot_scores(query, keys), batch.history_mask)  # [B, L]

    def _logit(self, batch: Batch, head: nn.Module) -> Tensor:
        query, keys, v, e = self._embed(batch)
        weights = masked_softmax(dot_scores(query, keys), batch.history_mask)  # [B, L]
        return self._head_logit(v, weighted_sum(weights, e), head)  # [B]

    def _head_logit(self, v: Tensor, u: Tensor, head: nn.Module) -> Tensor:
        # TR: Σ w_i (e_i ⊙ v_t) = u ⊙ v_t.
        x = torch.cat([v, u, u * v] if self.config.target_aware else [v, u], dim=-1)  # [B, 3E] or [B, 2E]
        return head(x).squeeze(-1)  # [B]

    def forward_with_aux(self, batch: Batch, search: SearchConfig) -> tuple[Tensor, Tensor] | None:
        """Fast path of a training step: `(forward(search_stage(batch, self, search)), aux_logits(batch))`, [B] each,
        from one lookup (`pool_full_and_kept`); None unless the aux loss is on and search is `soft`."""
        if self.aux_head is None or search.method != "soft":
            return None
        query, keys, v, e = self._embed(batch)  # [B, E], [B, L, E], [B, E], [B, L, E]
        full, kept = pool_full_and_kept(batch, query, keys, e, search.k)  # [B, E] each
        return self._head_logit(v, kept, self.head), self._head_logit(v, full, self.aux_head)

    def forward(self, batch: Batch) -> Tensor:
        """Return one click logit per example, shape [B] (attention over the behaviours search kept)."""
        return self._logit(batch, self.head)

    def aux_logits(self, batch: Batch) -> Tensor | None:
        """Auxiliary logits [B] from softmax attention over all L behaviours and the second head; None when off."""
        if self.aux_head is None:
            return None
        return self._logit(batch, self.aux_head)
