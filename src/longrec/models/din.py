"""DIN: Deep Interest Network (Zhou et al., KDD 2018, https://arxiv.org/abs/1706.06978).

Each behaviour h_i gets a weight a(t, h_i) from an MLP scorer on [t, h_i, t - h_i, t ⊙ h_i], so the pooled interest
Σ_i a(t, h_i)·h_i depends on the target t. The weights are not normalised (Eq. 3: no softmax), so how much of the
history matches the target survives pooling. The head MLP reads [interest, t, interest ⊙ t] (the product term follows
the authors' released code) and returns one click logit.

Behaviours and target are embedded by `BehaviourEmbedding`: item plus, when categories are on, one category vector
per taxonomy level. `max_history = K` keeps only the K most recent behaviours (the last K columns, since histories
are left-padded): the "DIN on the latest K" baseline of long-sequence papers.

No BatchNorm (DARE's head has one): it would make a logit depend on the rest of the batch in train mode and break
the batch-of-one and padding contracts.

Item content (`content_proj = P > 0`, off by default; docs/multimodal.md): the run hands the model the content table
C [V_item, D_c] of the modalities in `data.content` (`set_content`; a frozen buffer, so the checkpoint carries it), and
every behaviour and the target get W·C[item] (W [P, D_c], no bias, so padding stays 0) concatenated to their
embedding: E grows by P. An unseen (cold) item's id embedding is untrained noise, but its content is not.

Shapes: B batch, L history length (K after `max_history`), D embedding dim, M taxonomy levels, E = D·(1 + M)
behaviour width (D without categories), W scorer/head widths.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longrec.data.batch import HISTORY_FIELDS, Batch
from longrec.models.checks import check_behaviour_config, check_head_options, check_int, check_sizes
from longrec.models.layers import BehaviourEmbedding, fast_paths, head_mlp, init_weights, mlp, weighted_sum

__all__ = ["DIN", "DINConfig"]


@dataclass(frozen=True)
class DINConfig:
    num_items: int  # item vocabulary size, id 0 = padding
    num_categories: int = 0  # category vocabulary shared by every taxonomy level, id 0 = missing; 0 = no categories
    taxonomy_levels: int = 0  # M, depth of history_category [B, L, M]
    dim: int = 16  # D, width of each embedding table
    attention_hidden: tuple[int, ...] = (80, 40)  # widths of the attention scorer MLP (the paper's 80, 40)
    head_hidden: tuple[int, ...] = (200, 80)  # widths of the output MLP (the paper's 200, 80)
    max_history: int | None = None  # keep only the K most recent behaviours; None = the whole history
    init_std: float = 0.05  # embeddings start at N(0, init_std²); DARE's protocol uses 0.01 with lr 1e-2
    head_norm: str = "none"  # none | batch | layer: normalise the head's input (layers.head_mlp)
    init: str = (
        "default"  # default (PyTorch's) | normal: every non-bias weight from N(0, init_std²) (layers.init_weights)
    )
    content_dim: int = 0  # D_c, width of the content table (data-derived: Σ dims of data.content); 0 = none
    content_proj: int = 0  # P, width of the projected content concatenated to each item embedding; 0 = off

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_behaviour_config(
            owner, self.num_items, self.num_categories, self.taxonomy_levels, self.dim, self.init_std
        )
        check_head_options(owner, self.head_norm, self.init)
        # Lists come back from config.json; store tuples so the config stays hashable and compares equal.
        object.__setattr__(self, "attention_hidden", check_sizes(owner, "attention_hidden", self.attention_hidden))
        object.__setattr__(self, "head_hidden", check_sizes(owner, "head_hidden", self.head_hidden))
        if self.max_history is not None:
            check_int(owner, "max_history", self.max_history)
        if self.content_proj < 0 or self.content_dim < 0 or (self.content_proj > 0 and self.content_dim == 0):
            raise ValueError(
                f"{owner}: content_proj = {self.content_proj} needs item content: set data.content to the store's "
                f"modalities (longrec content add); got content_dim = {self.content_dim}."
            )


class DIN(nn.Module):
    """Target attention with unnormalised MLP weights over the (most recent) history."""

    content: Tensor | None  # C [V_item, D_c], a buffer; None without content

    def __init__(self, config: DINConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = BehaviourEmbedding(
            config.num_items, config.dim, config.num_categories, config.taxonomy_levels, config.init_std
        )
        E = self.embedding.out_dim + config.content_proj
        self.content_projection = (
            nn.Linear(config.content_dim, config.content_proj, bias=False) if config.content_proj > 0 else None
        )
        # C [V_item, D_c]: frozen (no gradient, not in the optimizer), saved with the weights
        self.register_buffer(
            "content", torch.zeros(config.num_items, config.content_dim) if config.content_proj > 0 else None
        )
        self.attention_scorer = mlp(4 * E, config.attention_hidden)
        self.head = head_mlp(3 * E, config.head_hidden, config.head_norm)
        self.reads: tuple[str, ...] = self.embedding.reads
        init_weights(self, config.init, config.init_std)

    def set_content(self, table: Tensor) -> None:
        """Copy the content table C [V_item, D_c] (row i = dense item id i, row 0 zeros) into the model."""
        if self.content is None:
            raise ValueError(
                "data.content is set but this DIN has content_proj = 0: set model.content_proj > 0 to read it."
            )
        if tuple(table.shape) != tuple(self.content.shape):
            raise ValueError(f"content table: expected shape {tuple(self.content.shape)}, got {tuple(table.shape)}.")
        with torch.no_grad():
            self.content.copy_(table)

    def _embed(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Behaviour embeddings h [B, L, E] and target embedding t [B, E], content projection included."""
        h, t = self.embedding(batch)  # [B, L, E - P], [B, E - P]
        if self.content_projection is None:
            return h, t
        assert self.content is not None
        h_c = self.content_projection(self.content[batch.history])  # [B, L, P]: gathered on the device, per batch
        t_c = self.content_projection(self.content[batch.target])  # [B, P]
        return torch.cat([h, h_c], dim=-1), torch.cat([t, t_c], dim=-1)

    def _most_recent(self, batch: Batch) -> Batch:
        """The batch cut to its last `max_history` columns (every L-axis field, so side information stays aligned)."""
        K = self.config.max_history
        if K is None or batch.history.shape[1] <= K:
            return batch
        return batch.replace(**{n: v[:, -K:] for n in HISTORY_FIELDS if (v := getattr(batch, n)) is not None})

    def _scores(self, h: Tensor, t: Tensor) -> Tensor:
        """Unmasked attention scores [B, K]: the scorer MLP on [t, h_i, t - h_i, t ⊙ h_i] for every behaviour."""
        if not fast_paths():
            t_k = t.unsqueeze(1).expand_as(h)  # [B, K, E]
            return self.attention_scorer(torch.cat([t_k, h, t_k - h, t_k * h], dim=-1)).squeeze(-1)  # [B, K]
        # Fast path (the plain one above is its test oracle): the first layer is linear in each input block,
        #   W [t; h; t - h; t ⊙ h] + b = ((W_t + W_d) t + b) + (W_h - W_d + W_p diag(t)) h,
        # so one [E, W] matrix per example replaces the [B, K, 4E] concat and quarters the first layer's FLOPs.
        first, E = self.attention_scorer[0], h.shape[-1]
        assert isinstance(first, nn.Linear)
        W_t, W_h, W_d, W_p = first.weight.split(E, dim=1)  # [W, E] each
        per_example = (W_h - W_d).t() + t.unsqueeze(-1) * W_p.t()  # [B, E, W]
        bias = F.linear(t, W_t + W_d, first.bias)  # [B, W]
        x = torch.baddbmm(bias.unsqueeze(1), h, per_example)  # [B, K, W]
        return self.attention_scorer[1:](x).squeeze(-1)  # [B, K]

    def _attend(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """Attention weights [B, K], behaviour embeddings h [B, K, E] and target embedding t [B, E]."""
        h, t = self._embed(batch)  # [B, K, E], [B, E]
        scores = self._scores(h, t)  # [B, K]
        # Eq. 3: no softmax, so the intensity of interest survives pooling; padding contributes exactly 0.
        weights = scores.masked_fill(~batch.history_mask, 0.0)  # [B, K]
        return weights, h, t

    def attention_weights(self, batch: Batch) -> Tensor:
        """Weight of each behaviour in the pooled interest, [B, L]; 0 on padding and on behaviours cut by K."""
        weights = self._attend(self._most_recent(batch))[0]  # [B, K]
        return F.pad(weights, (batch.history.shape[1] - weights.shape[1], 0))  # [B, L]

    def search_embeddings(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Search query t [B, E] and keys h [B, L, E]: with `search.method = "soft"` DIN runs on the top-K by <t, h_i>.

        The scorer MLP cannot be searched with an inner product, so the search ranks by the embeddings themselves
        (SIM soft search / "DIN on the top-K"); any embedding searcher (simhash, sdim) can use them too.
        """
        h, t = self._embed(batch)  # [B, L, E], [B, E]
        return t, h

    def forward(self, batch: Batch) -> Tensor:
        """Return one click logit per example, shape [B]."""
        weights, h, t = self._attend(self._most_recent(batch))  # [B, K], [B, K, E], [B, E]
        interest = weighted_sum(weights, h)  # [B, E]
        return self.head(torch.cat([interest, t, interest * t], dim=-1)).squeeze(-1)  # [B]
