"""SFPNet: Scenario-Adaptive Fine-Grained Personalization Network (Zhang et al., SIGIR 2024,
https://arxiv.org/abs/2404.09709).

One user's interests migrate between scenarios (app surfaces): the same history implies different targets in the feed
and in search. SFPNet stacks N scenario-tailoring blocks in front of target attention; block l maps the target
t^(l-1) [B, E] and the behaviours h^(l-1) [B, L, E] (h^(0), t^(0): the item ⊕ category embeddings) to t^(l), h^(l):

- coarse, the scenario-adaptive module (the paper's parameter personalization unit): a gate from the request's
  scene embedding s [B, D] re-defines the basic features, g = 2·σ(MLP_g(s)) ∈ (0, 2)^E,
  t' = t^(l-1) ⊙ g and h'_i = h_i^(l-1) ⊙ g (every behaviour shares the tables of the target, so the field embeddings
  are re-defined alike on both sides; a gate of 1 is the identity);
- context: the scenario-adjusted features consolidated into one vector, c = [t', s, mean_i h'_i, std_i h'_i]
  (mean and standard deviation over the real behaviours: our reading of the paper's distribution-aware pooling);
- fine, the residual-tailoring module: every behaviour gets its own, context-aware correction,
  h_i^(l) = h'_i + W_2 PReLU(W_1 [h'_i, c] + b_1) + b_2, and t^(l) = t'.
  The correction is non-linear in (h'_i, c) jointly, so it can move behaviours of one category towards the targets
  they imply *in this scene*; a shift that were the same for every behaviour would add a constant to every attention
  logit of a row, change nothing after the softmax, and reach only the pooled value. W_2 starts at N(0, init_std²)
  and b_2 at zero, so a fresh block is close to the identity on the behaviours and training grows the correction.

After the blocks, target attention as in TIN: keys ẽ_i = h_i^(N) + p_{pos_i} (relative position, most recent = 1),
query ṽ = t^(N) + p_0, α = softmax_i(<ẽ_i, ṽ>/sqrt(E)) over the real behaviours, u = Σ_i α_i (ẽ_i ⊙ ṽ); the head MLP
reads [u, t^(N)] plus the scene embedding s when `scene_feature` is on.

Why the fine unit matters (what the synthetic mechanism (h) plants): with a dot-product attention whose keys and
query come from the same tables, <h_b ⊙ g_z, h_c ⊙ g_z> is a symmetric form in (b, c) for every scene z, so the
coarse gate alone can re-weight *how much* each embedding dimension counts per scene but cannot express "in search, a
target of category c relates to behaviours of category π(c)" for a π that is not its own inverse: it would give
behaviours of π⁻¹(c) the same weight. The residual-tailoring module rewrites each key per scene and can.

Design choices where the paper is vague (also in docs/scenarios.md):
- The basic features are the target's and the behaviours' item ⊕ category embeddings and the scene; there are no
  user-profile fields in `Batch`. The gate reads the scene embedding only (an EPNet-style scenario gate), so "coarse"
  means one re-weighting per scenario.
- The context is [t', s, mean, std]; the pooled moments give the correction a view of the whole (scene-adjusted)
  history, which the paper's pooling is there for.
- The behaviour's own scene (`history_scene`) is not read: the mechanism SFPNet is meant for is the request's scene
  changing what a behaviour means, not the behaviour's surface.
- Data without scenes (`num_scenes = 0`) is one implicit scenario: the blocks read one learned scene vector, so the
  model still runs (and tailors behaviours to the history's context) and reads no optional field beyond categories.
- Soft search (`search_embeddings`) ranks by the keys after the scene gates only: the tailored keys read pooled
  history statistics, so they are not per-behaviour, which chunked search needs; the blocks run on the K kept.
- Ablations: `fine = false` (no residual-tailoring, the test that it is needed), `coarse = false`, `num_blocks`
  (0 = plain target attention, with `scene_feature` the "scenario as a plain feature" baseline and without it the
  scenario-blind shared model).

Shapes: B batch, L history length, D embedding dim, M taxonomy levels, E = D·(1 + M) behaviour width (D without
categories), N blocks, W hidden widths, P position rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from longrec.data.batch import Batch
from longrec.models.checks import check_behaviour_config, check_bool, check_int, check_sizes
from longrec.models.layers import BehaviourEmbedding, PReLU, dot_scores, mlp, weighted_sum
from longrec.models.target_attention import masked_softmax, time_ids

__all__ = ["SFPNet", "SFPNetConfig"]


@dataclass(frozen=True)
class SFPNetConfig:
    num_items: int  # item vocabulary size, id 0 = padding
    num_categories: int = 0  # category vocabulary shared by every taxonomy level, id 0 = missing; 0 = no categories
    taxonomy_levels: int = 0  # M, depth of history_category [B, L, M]
    num_scenes: int = 0  # scene vocabulary incl. id 0 (from the data); 0 = no scenes: one implicit scenario
    dim: int = 16  # D, width of each embedding table (the scene's too)
    num_blocks: int = 2  # N scenario-tailoring blocks; 0 = plain target attention
    coarse: bool = True  # the scenario-adaptive gate on the basic features (SAM)
    fine: bool = True  # the residual-tailoring of every behaviour (RTM)
    scene_feature: bool = True  # the scene embedding in the head's input (a plain feature)
    gate_hidden: tuple[int, ...] = (32,)  # widths of the gate MLP, scene -> E gates
    tailor_hidden: int = 64  # W, hidden width of the residual-tailoring MLP
    num_positions: int = 256  # P rows of the relative-position table (row 0 = the target); 0 = no position encoding
    head_hidden: tuple[int, ...] = (200, 80)  # widths of the output MLP
    init_std: float = 0.05  # embeddings start at N(0, init_std²)

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_behaviour_config(
            owner, self.num_items, self.num_categories, self.taxonomy_levels, self.dim, self.init_std
        )
        check_int(owner, "num_scenes", self.num_scenes, minimum=0)
        check_int(owner, "num_blocks", self.num_blocks, minimum=0)
        check_int(owner, "tailor_hidden", self.tailor_hidden)
        check_int(owner, "num_positions", self.num_positions, minimum=0)
        for name in ("coarse", "fine", "scene_feature"):
            check_bool(owner, name, getattr(self, name))
        object.__setattr__(self, "gate_hidden", check_sizes(owner, "gate_hidden", self.gate_hidden))
        object.__setattr__(self, "head_hidden", check_sizes(owner, "head_hidden", self.head_hidden))
        if self.num_scenes == 1:
            raise ValueError(
                f"{owner}.num_scenes must be 0 (the data has no scenes: one implicit scenario) or >= 2 (the scene "
                "vocabulary incl. id 0, sizes.num_scenes in the prepared store's manifest.json). Got 1 instead."
            )

    @property
    def reads_scene(self) -> bool:
        """Whether the model reads `batch.scene`: the data has scenes and a block or the head uses them."""
        return self.num_scenes > 0 and (self.num_blocks > 0 or self.scene_feature)


class ScenarioTailoringBlock(nn.Module):
    """One block: the scenario gate (coarse), the consolidated context, the per-behaviour residual (fine)."""

    def __init__(
        self, E: int, D: int, gate_hidden: tuple[int, ...], W: int, coarse: bool, fine: bool, init_std: float
    ) -> None:
        super().__init__()
        self.gate = mlp(D, gate_hidden, E) if coarse else None
        self.tailor = None
        if fine:
            context = 3 * E + D  # [t', s, mean h', std h']
            self.tailor = nn.Sequential(nn.Linear(E + context, W), PReLU(), nn.Linear(W, E))
            last = self.tailor[-1]
            assert isinstance(last, nn.Linear)
            nn.init.normal_(last.weight, std=init_std)  # a fresh block is close to the identity on the behaviours
            nn.init.zeros_(last.bias)

    def gated(self, h: Tensor, t: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """The coarse step alone: h [B, L, E] and t [B, E] re-weighted by the scene's gate (unchanged without one)."""
        if self.gate is None:
            return h, t
        g = 2.0 * torch.sigmoid(self.gate(s))  # [B, E] in (0, 2), 1 = identity
        return h * g.unsqueeze(1), t * g  # [B, L, E], [B, E]

    def forward(self, h: Tensor, t: Tensor, s: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """h [B, L, E], t [B, E], scene s [B, D], mask [B, L] -> tailored h [B, L, E] and t [B, E]."""
        h, t = self.gated(h, t, s)  # [B, L, E], [B, E]
        if self.tailor is None:
            return h, t
        m = mask.unsqueeze(-1).to(h.dtype)  # [B, L, 1]
        n = m.sum(1).clamp(min=1.0)  # [B, 1], an empty history pools to zeros
        mean = (h * m).sum(1) / n  # [B, E]
        var = (((h - mean.unsqueeze(1)) * m) ** 2).sum(1) / n  # [B, E]
        context = torch.cat([t, s, mean, torch.sqrt(var + 1e-8)], dim=-1)  # [B, 3E + D]
        # W_1 [h_i, c] + b_1 = W_h h_i + (W_c c + b_1): the context half is computed once per row, not per behaviour.
        first = self.tailor[0]
        assert isinstance(first, nn.Linear)
        W_h, W_c = first.weight.split([h.shape[-1], context.shape[-1]], dim=1)  # [W, E], [W, 3E + D]
        x = h @ W_h.t() + nn.functional.linear(context, W_c, first.bias).unsqueeze(1)  # [B, L, W]
        return h + self.tailor[1:](x), t  # [B, L, E], [B, E]


class SFPNet(nn.Module):
    """Scenario-tailoring blocks (scene gate + per-behaviour residual) in front of TIN-style target attention."""

    def __init__(self, config: SFPNetConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.embedding = BehaviourEmbedding(c.num_items, c.dim, c.num_categories, c.taxonomy_levels, c.init_std)
        E, D = self.embedding.out_dim, c.dim
        # Data without scenes is one implicit scenario: a single learned row that every request reads.
        self.scene_embedding = None
        if c.num_blocks > 0 or c.scene_feature:
            self.scene_embedding = nn.Embedding(c.num_scenes if c.reads_scene else 1, D)
            nn.init.normal_(self.scene_embedding.weight, std=c.init_std)
        self.blocks = nn.ModuleList(
            ScenarioTailoringBlock(E, D, c.gate_hidden, c.tailor_hidden, c.coarse, c.fine, c.init_std)
            for _ in range(c.num_blocks)
        )
        self.position_embedding = nn.Embedding(c.num_positions, E) if c.num_positions else None
        if self.position_embedding is not None:
            nn.init.normal_(self.position_embedding.weight, std=c.init_std)
        self.head = mlp(2 * E + (D if c.scene_feature else 0), c.head_hidden)
        self.reads: tuple[str, ...] = (*self.embedding.reads, *(("scene",) if c.reads_scene else ()))

    def _encode(self, batch: Batch, tailor: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Keys ẽ [B, L, E], query ṽ [B, E], tailored target t^(N) [B, E], scene embedding s [B, D] (None: unused).

        `tailor = False` runs only the blocks' scene gates (per-behaviour keys, for search)."""
        h, t = self.embedding(batch)  # [B, L, E], [B, E]
        s = None
        if self.scene_embedding is not None and self.config.reads_scene:
            assert batch.scene is not None  # check_batch's job
            s = self.scene_embedding(batch.scene)  # [B, D]
        elif self.scene_embedding is not None:  # looked up, not indexed: a served model's table may be external
            s = self.scene_embedding(torch.zeros_like(batch.target))  # [B, D], the one implicit scenario
        for block in self.blocks:
            assert s is not None and isinstance(block, ScenarioTailoringBlock)
            h, t = block(h, t, s, batch.history_mask) if tailor else block.gated(h, t, s)  # [B, L, E], [B, E]
        e, v = h, t
        if self.position_embedding is not None:
            P = self.position_embedding.num_embeddings
            e = h + self.position_embedding(time_ids(batch, P - 1))  # [B, L, E]
            v = t + self.position_embedding(torch.zeros_like(batch.target))  # [B, E], row 0 = the target
        return e, v, t, s

    def _attend(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
        """α [B, L] (0 on padding, all 0 for an empty history), ẽ [B, L, E], ṽ [B, E], t^(N) [B, E], s [B, D]."""
        e, v, t, s = self._encode(batch)
        scores = dot_scores(v, e) / math.sqrt(e.shape[-1])  # [B, L]
        return masked_softmax(scores, batch.history_mask), e, v, t, s

    def attention_weights(self, batch: Batch) -> Tensor:
        """α_i after the tailoring blocks, [B, L]; rows sum to 1 (0 for an empty history)."""
        return self._attend(batch)[0]  # [B, L]

    def search_embeddings(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Soft-search query ṽ / sqrt(E) [B, E] and keys ẽ [B, L, E] after the blocks' scene gates only.

        The residual-tailoring reads pooled statistics of the whole history, so its keys are not per-behaviour (a key
        would change with the other behaviours, which chunked search over 10⁴+ behaviours cannot allow); search ranks
        by the scene-gated embeddings, and the full blocks run on the K behaviours it keeps.
        """
        e, v, _, _ = self._encode(batch, tailor=False)  # [B, L, E], [B, E]
        return v / math.sqrt(e.shape[-1]), e

    def forward(self, batch: Batch) -> Tensor:
        """Return one click logit per example, shape [B]."""
        alpha, e, v, t, s = self._attend(batch)  # [B, L], [B, L, E], [B, E], [B, E], [B, D]
        u = weighted_sum(alpha, e) * v  # [B, E], Σ_i α_i (ẽ_i ⊙ ṽ)
        parts = [u, t, *([s] if s is not None and self.config.scene_feature else [])]
        return self.head(torch.cat(parts, dim=-1)).squeeze(-1)  # [B]
