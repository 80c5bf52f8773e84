"""Target-Decoupled SASRec: a two-tower pre-ranker with one user vector per advertising goal (Tencent Advertising,
arXiv 2510.21714, on SASRec: Kang & McAuley, ICDM 2018, https://arxiv.org/abs/1808.09781).

User tower: the (recent or retrieved) history ẽ_i = e_i + p^{(τ)}_{f(x_i)} (item ⊕ category embedding plus the
Target-Decoupled Positional Encoding of target τ, `models/tdpe.py`) goes through pre-LN causal self-attention blocks,
with one learnable query token q_τ per target appended after it; its output is the user vector U_τ. Item tower: the
candidate's own embedding v_c (the same tables as the history). A candidate of target τ with goal g scores
<U_τ, v_c> + b_g (`scoring = "dot"`, the two-tower pre-ranker) or MLP([U_τ, v_c, U_τ ⊙ v_c]) + b_g (`scoring = "mlp"`).

Targets (`target_key`): what the decoupled heads (query token q_τ and TDPE tables p^{(τ)}) are keyed by.
- "goal" (default): the advertising goal, τ = g (T = num_goals heads, 3 on the synthetic data, 1 on Taobao).
- "category": the candidate's category, the paper's reading at its scale (~50 target heads: "interest in Breaking
  News vs Hiking decays differently"). The categories listed in `head_categories` (dense category ids of any taxonomy
  level, which share one id space) get a head each and every other candidate shares head 0, so a long-tailed
  taxonomy (Taobao: ~3,000 leaf categories) gets heads for its top N and one shared head for the tail rather than
  thousands of rarely trained heads; a candidate whose path holds several listed ids takes the finest level's.
  `TrajectoryStore.top_categories(n, level)` lists a store's n most frequent categories of a level. The goal still
  sets the bias b_g.
- "none": one head for every candidate, the plain SASRec user tower (one query token, one temporal table).

Design choices (the paper leaves them open):
- One stream per target. TDPE makes the sequence's encoding depend on τ, so target τ's stream is its history with
  p^{(τ)} plus its own query token only: query tokens never attend to each other (each sits alone in its stream),
  and U_τ sees the whole history under target τ's temporal view in every block. The user side is computed once per
  request, never per candidate: `forward` (training) runs the one stream of each row's target, `score_candidates`
  and `user_vectors` run the targets a request needs (at most T streams) and score C candidates by dot products.
- Attention mask: sequence token i attends to real tokens j <= i (causal + key padding); the query token (last)
  attends to every real token and itself. Every token may attend to itself, so a padding row, and the query token
  of an empty history, never meet an all-masked softmax; no real token ever attends to padding, so padding and the
  ids under it never leak, and `encode` zeroes padding rows.
- f(x_i): relative position (`temporal = "position"`, from `history_position`, or recomputed from the mask when
  absent, as in TIN), the log-bucketed time gap to the target (`"time_gap"`, `tin.time_gap_bucket`), or both
  summed; the tables are TIN's (`tin.temporal_tables`). `tdpe = "separate"` (default: the point of the model) gives
  each target its own tables, `"shared_delta"` a shared table plus a per-target delta, `"shared"` one table for all
  targets (the ablation: targets then differ only by their query token).
- `batch.goal = None` (data without goals) means goal 0 for every row, so the model reads no optional field beyond
  the categories; goal ids must lie in [0, num_goals) (prepared data: 0 = unknown, T = vocabulary + 1).
- `encoder = "mean"` is the ablation of the sequence encoder (the "mean-pooled user tower"): U_τ = LN(mean of the
  real behaviours' embeddings + q_τ), blind to order and time (no blocks, no temporal tables); everything else
  (item tower, goal bias, scoring, losses) is unchanged, so the two compare.
- Training: BCE on `forward` works as is (Protocol A/T samples already hold sampled negatives).
  `loss = "sampled_softmax"`, `"bpr"` or `"croloss"` opts into a ranking loss of `models.losses` through
  `loss(batch)`: each positive row's U_τ against every target of the batch (in-batch and sampled negatives,
  accidental hits dropped), by softmax cross-entropy, pairwise logistic loss (BPR), or CROLoss, the smoothed
  Σ_N w(N)·(1 - Recall@N) with w(N) ∝ N^-α (`croloss_alpha`: > 1 for a stage that keeps few candidates, < 1 for
  many; `croloss_kernel`, `croloss_lambda`; `temperature` serves all three); `loss(batch)` returns None under the
  default "bce". These losses leave the per-goal bias b_τ untrained (it cancels within a row), so logits trained
  that way rank well (AUC, Recall@N) but are not calibrated (logloss). Under
  `target_key = "category"` the softmax scores every candidate of a row with that row's head U_τ (its positive's
  category; computing every candidate's own head for every row would cost one stream per head and row), while
  `score_candidates` scores each candidate with its own head: BCE on `forward` trains exactly what is served.

Shapes: B batch, L history length, D embedding dim, M taxonomy levels, E = D·(1 + M) model width (D without
categories), T targets (goals, category heads or 1), G target streams (1 in `forward`, <= T in `score_candidates`),
S = L + 1 tokens per stream, C candidates, H attention heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longrec.data.batch import Batch
from longrec.models.checks import check_behaviour_config, check_int, check_sizes
from longrec.models.layers import BehaviourEmbedding, mlp
from longrec.models.losses import CROLOSS_KERNELS, bpr_loss, croloss, sampled_softmax_loss
from longrec.models.tdpe import check_goal_options
from longrec.models.temporal import YEAR, check_temporal_options, temporal_tables, time_gap_bucket
from longrec.models.transformer import TransformerBlock, attention_mask

__all__ = ["ENCODERS", "LOSSES", "SCORING", "TARGET_KEYS", "TDSASRec", "TDSASRecConfig"]

SCORING = ("dot", "mlp")
LOSSES = ("bce", "sampled_softmax", "bpr", "croloss")
ENCODERS = ("causal", "mean")
TARGET_KEYS = ("goal", "category", "none")


@dataclass(frozen=True)
class TDSASRecConfig:
    num_items: int  # item vocabulary size, id 0 = padding
    num_categories: int = 0  # category vocabulary shared by every taxonomy level, id 0 = missing; 0 = no categories
    taxonomy_levels: int = 0  # M, depth of history_category [B, L, M]
    num_goals: int = 1  # one bias b_g per goal (and one target head per goal under target_key = "goal"); ids in [0, T)
    dim: int = 16  # D, width of each embedding table; the model width is E = D·(1 + M) with categories
    num_blocks: int = 2  # causal self-attention blocks
    num_heads: int = 1  # H, must divide E
    ffn_multiplier: int = 2  # the feed-forward hidden width is ffn_multiplier·E
    dropout: float = 0.0  # on attention weights and residual branches (train mode only)
    temporal: str = "position"  # f(x): position | time_gap | both (sum of the two encodings)
    tdpe: str = "separate"  # temporal tables per goal: separate (TDPE) | shared_delta | shared (models/tdpe.py)
    num_positions: int = 256  # position buckets (0 = the target); older behaviours share the last
    time_buckets: int = 32  # log-spaced time-gap buckets (0 = the target), see tin.time_gap_bucket
    min_gap_seconds: float = 60.0  # time_gap_bucket: gaps up to this share bucket 1
    max_gap_seconds: float = YEAR  # time_gap_bucket: gaps beyond this share the last bucket
    scoring: str = "dot"  # dot (two-tower) | mlp on [U_τ, v, U_τ ⊙ v]
    encoder: str = "causal"  # causal (SASRec blocks + TDPE) | mean (the ablation: order- and time-blind mean pool)
    head_hidden: tuple[int, ...] = (64, 32)  # widths of the scoring MLP (scoring = "mlp")
    loss: str = "bce"  # bce (the loop's default) | sampled_softmax | bpr | croloss (via loss(batch); scoring "dot")
    temperature: float = 1.0  # the ranking losses: logits are <U_τ, v> / temperature
    croloss_alpha: float = 1.0  # CROLoss weighting w(N) ∝ N^-α: 1 = log, > 1 small N, < 1 large N, 0 = uniform
    croloss_kernel: str = "softplus"  # CROLoss smoothed step: sigmoid | softplus | exp | hinge
    croloss_lambda: bool = False  # CROLoss Lambda gradient: W'(r̂) at the detached sigmoid rank times ∂r
    init_std: float = 0.05  # embeddings, query tokens and positional tables start at N(0, init_std²)
    target_key: str = "goal"  # what keys the target heads (q_τ, p^{(τ)}): goal | category | none (one head)
    head_categories: tuple[int, ...] = ()  # target_key = "category": category ids with a head; the rest share head 0

    @property
    def num_targets(self) -> int:
        """T, the number of target heads: goals, 1 + the listed categories (head 0 = shared), or 1."""
        if self.target_key == "goal":
            return self.num_goals
        return 1 + len(self.head_categories) if self.target_key == "category" else 1

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_behaviour_config(
            owner, self.num_items, self.num_categories, self.taxonomy_levels, self.dim, self.init_std
        )
        object.__setattr__(self, "head_hidden", check_sizes(owner, "head_hidden", self.head_hidden))
        check_goal_options(owner, self.num_goals, self.tdpe, goal_heads=False)  # no goal heads: b_τ and U_τ
        check_temporal_options(owner, self)
        for name in ("num_blocks", "num_heads", "ffn_multiplier"):
            check_int(owner, name, getattr(self, name))
        width = self.dim * (1 + self.taxonomy_levels) if self.num_categories > 0 else self.dim
        if width % self.num_heads:
            raise ValueError(
                f"{owner}.num_heads must divide the model width E = dim·(1 + taxonomy_levels) = {width}. "
                f"Got {self.num_heads} instead."
            )
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, int | float) or not 0 <= self.dropout < 1:
            raise ValueError(f"{owner}.dropout must be a float in [0, 1). Got {self.dropout!r} instead.")
        for name, allowed in (("scoring", SCORING), ("loss", LOSSES), ("encoder", ENCODERS)):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"{owner}.{name} must be one of {', '.join(allowed)}. Got {getattr(self, name)!r} instead."
                )
        if self.loss != "bce" and self.scoring != "dot":
            raise ValueError(
                f"{owner}.loss = {self.loss!r} scores candidates by <U, v> and needs scoring = 'dot'. "
                f"Got scoring = {self.scoring!r} instead; train the MLP scorer with loss = 'bce'."
            )
        temperature = self.temperature
        if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not temperature > 0:
            raise ValueError(f"{owner}.temperature must be a positive float. Got {temperature!r} instead.")
        self._check_croloss(owner)
        self._check_targets(owner)

    def _check_croloss(self, owner: str) -> None:
        alpha = self.croloss_alpha
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 <= alpha < float("inf"):
            raise ValueError(f"{owner}.croloss_alpha must be a float >= 0 (w(N) ∝ N^-alpha). Got {alpha!r} instead.")
        if self.croloss_kernel not in CROLOSS_KERNELS:
            raise ValueError(
                f"{owner}.croloss_kernel must be one of {', '.join(CROLOSS_KERNELS)}. "
                f"Got {self.croloss_kernel!r} instead."
            )
        if not isinstance(self.croloss_lambda, bool):
            raise ValueError(f"{owner}.croloss_lambda must be true or false. Got {self.croloss_lambda!r} instead.")
        changed = [
            f"{name} = {getattr(self, name)!r}"
            for name, default in (("croloss_alpha", 1.0), ("croloss_kernel", "softplus"), ("croloss_lambda", False))
            if getattr(self, name) != default
        ]
        if changed and self.loss != "croloss":
            raise ValueError(
                f"{owner}.{', '.join(changed)} is read only under loss = 'croloss'. Got loss = {self.loss!r}; "
                "set loss = 'croloss' or leave the croloss_* options out."
            )

    def _check_targets(self, owner: str) -> None:
        if self.target_key not in TARGET_KEYS:
            raise ValueError(
                f"{owner}.target_key must be one of {', '.join(TARGET_KEYS)}. Got {self.target_key!r} instead."
            )
        listed = self.head_categories
        if not isinstance(listed, list | tuple) or not all(
            isinstance(c, int) and not isinstance(c, bool) for c in listed
        ):
            raise ValueError(f"{owner}.head_categories must be a list of category ids. Got {listed!r} instead.")
        object.__setattr__(self, "head_categories", tuple(listed))
        if self.target_key != "category":
            if listed:
                raise ValueError(
                    f"{owner}.head_categories is read only under target_key = 'category'. Got {len(listed)} ids with "
                    f"target_key = {self.target_key!r}; set target_key = 'category' or leave head_categories empty."
                )
            return
        if self.num_categories == 0 or not listed:
            raise ValueError(
                f"{owner}.target_key = 'category' needs categories (num_categories > 0) and the ids that get a head "
                f"in head_categories. Got num_categories = {self.num_categories}, {len(listed)} head categories."
            )
        # The upper bound (num_categories) comes from the data: the model checks it when it is built.
        if any(c < 1 for c in listed) or len(set(listed)) != len(listed):
            raise ValueError(
                f"{owner}.head_categories must be distinct category ids >= 1 (0 = missing). Got {list(listed[:8])}"
                f"{' ...' if len(listed) > 8 else ''} instead."
            )


class TDSASRec(nn.Module):
    """Causal self-attention user tower with per-goal query tokens and TDPE; dot-product or MLP scoring."""

    def __init__(self, config: TDSASRecConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.embedding = BehaviourEmbedding(c.num_items, c.dim, c.num_categories, c.taxonomy_levels, c.init_std)
        E = self.embedding.out_dim
        causal = c.encoder == "causal"
        T = c.num_targets
        # TDPE: p^{(τ)} position and/or time-gap tables [T·R, E] (one [R, E] under tdpe = "shared").
        self.position_table, self.gap_table = temporal_tables(c, E, num_targets=T) if causal else (None, None)
        self.query_tokens = nn.Embedding(T, E)  # q_τ, one learnable token per target
        nn.init.normal_(self.query_tokens.weight, std=c.init_std)
        self.blocks = nn.ModuleList(
            TransformerBlock(E, c.num_heads, c.ffn_multiplier * E, c.dropout)
            for _ in range(c.num_blocks if causal else 0)
        )
        self.final_norm = nn.LayerNorm(E)
        self.head = mlp(3 * E, c.head_hidden) if c.scoring == "mlp" else None
        self.goal_bias = nn.Embedding(c.num_goals, 1)  # b_g: goals have different base rates
        nn.init.zeros_(self.goal_bias.weight)
        if c.target_key == "category":  # category id -> its head (0 = the shared head); rebuilt from the config
            unknown = [i for i in c.head_categories if i >= c.num_categories]
            if unknown:
                raise ValueError(
                    f"TDSASRecConfig.head_categories must be category ids of the data, in [1, num_categories = "
                    f"{c.num_categories}). Got {unknown[:5]} instead: were they listed from another store?"
                )
            heads = torch.zeros(c.num_categories, dtype=torch.long)  # [V_cat]
            heads[list(c.head_categories)] = torch.arange(1, T)
            self.register_buffer("head_of_category", heads, persistent=False)
        self.reads: tuple[str, ...] = self.embedding.reads + (
            ("history_time_delta",) if self.gap_table is not None else ()
        )

    def _goal(self, batch: Batch) -> Tensor:
        """Goal of each row [B]; goal 0 for data without goals."""
        return batch.goal if batch.goal is not None else torch.zeros_like(batch.target)  # [B]

    def _targets(self, goals: Tensor, paths: Tensor | None) -> Tensor:
        """Target head of each candidate [...] from its goals [...] and category paths [..., M] (target_key)."""
        key = self.config.target_key
        if key == "goal":
            return goals
        if key == "none":
            return torch.zeros_like(goals)
        assert paths is not None  # target_key = "category" needs categories (config) and the model reads them
        heads = self.head_of_category
        assert isinstance(heads, Tensor)  # a buffer under target_key = "category"
        listed = heads[paths]  # [..., M], 0 = no head of its own
        head = listed[..., 0]  # [...]
        for level in range(1, listed.shape[-1]):  # coarse to fine: the finest listed level wins
            head = torch.where(listed[..., level] > 0, listed[..., level], head)
        return head

    def _row_targets(self, batch: Batch) -> Tensor:
        """Target head of each row's target [B]."""
        return self._targets(self._goal(batch), batch.target_category)

    def _temporal(self, batch: Batch, goals: Tensor) -> Tensor:
        """p^{(τ)}_{f(x_i)} [B·G, L, E] for the B·G streams with targets [B·G] (stream b·G + g is row b)."""
        G, mask = goals.shape[0] // len(batch), batch.history_mask
        p = torch.zeros((), device=mask.device)
        if self.position_table is not None:
            position = batch.history_position
            if position is None:  # left padding: position = real behaviours from this column to the end
                position = mask.flip(1).cumsum(1).flip(1) * mask  # [B, L]
            position = position.clamp(0, self.config.num_positions - 1)  # [B, L]
            p = p + self.position_table(position.repeat_interleave(G, dim=0), goals)  # [B·G, L, E]
        if self.gap_table is not None:
            assert batch.history_time_delta is not None  # in self.reads: check_batch's job
            c = self.config
            bucket = time_gap_bucket(batch.history_time_delta, c.time_buckets, c.min_gap_seconds, c.max_gap_seconds)
            p = p + self.gap_table(bucket.repeat_interleave(G, dim=0), goals)  # [B·G, L, E]
        return p

    def _streams(self, batch: Batch, h: Tensor, goals: Tensor) -> tuple[Tensor, Tensor]:
        """Encode G target streams per row: sequence outputs [B, G, L, E] (0 on padding) and user vectors [B, G, E].

        Args:
            batch: the batch (mask and temporal fields).
            h: [B, L, E] behaviour embeddings.
            goals: [B, G] the target head of each stream.
        """
        (B, L, E), G = h.shape, goals.shape[1]
        mask = batch.history_mask  # [B, L]
        if self.config.encoder == "mean":  # the ablation: U_τ = LN(mean of the real behaviours + q_τ)
            count = mask.sum(1, keepdim=True).clamp(min=1)  # [B, 1]
            pooled = (h * mask.unsqueeze(-1)).sum(1) / count  # [B, E]
            users = self.final_norm(pooled.unsqueeze(1) + self.query_tokens(goals))  # [B, G, E]
            return (h * mask.unsqueeze(-1)).unsqueeze(1).expand(B, G, L, E), users  # [B, G, L, E], [B, G, E]
        flat_goals = goals.reshape(B * G)  # [B·G], row-major: stream (b, g) sits at b·G + g
        x = h.repeat_interleave(G, dim=0) + self._temporal(batch, flat_goals)  # [B·G, L, E], ẽ_i under each goal
        x = torch.cat([x, self.query_tokens(flat_goals).unsqueeze(1)], dim=1)  # [B·G, S, E], query token last
        S = L + 1
        real = F.pad(mask, (0, 1), value=True).repeat_interleave(G, dim=0)  # [B·G, S], the query token is real
        allowed = attention_mask(real, causal=True)  # [B·G, 1, S, S]
        for block in self.blocks:
            x = block(x, allowed)  # [B·G, S, E]
        x = self.final_norm(x).view(B, G, S, E)  # [B, G, S, E]
        return x[:, :, :L] * mask[:, None, :, None], x[:, :, L]  # [B, G, L, E], [B, G, E]

    def _item_vectors(self, items: Tensor, categories: Tensor | None) -> Tensor:
        """Item tower v: items [B, C] (+ categories [B, C, M]) -> [B, C, E], the tables the history uses."""
        v = self.embedding.item_embedding(items)  # [B, C, D]
        if self.embedding.category_embedding is not None:
            assert categories is not None  # checked by the caller
            v = torch.cat([v, self.embedding.category_embedding(categories).flatten(2)], dim=-1)  # [B, C, E]
        return v

    def _score(self, u: Tensor, v: Tensor, goals: Tensor) -> Tensor:
        """u [B, C, E] user vectors, v [B, C, E] candidates, goals [B, C] (the bias b_g) -> logits [B, C]."""
        s = (u * v).sum(-1) if self.head is None else self.head(torch.cat([u, v, u * v], -1)).squeeze(-1)  # [B, C]
        return s + self.goal_bias(goals).squeeze(-1)  # [B, C]

    def encode(self, batch: Batch) -> Tensor:
        """SASRec sequence outputs under each row's target, [B, L, E]; output i depends on behaviours <= i only."""
        h, _ = self.embedding(batch)  # [B, L, E]
        return self._streams(batch, h, self._row_targets(batch).unsqueeze(1))[0][:, 0]  # [B, L, E]

    def user_vectors(self, batch: Batch) -> Tensor:
        """U [B, T, E]: one user vector per target head (row τ = head τ: goal τ, or category head τ)."""
        h, _ = self.embedding(batch)  # [B, L, E]
        targets = torch.arange(self.config.num_targets, device=h.device).expand(h.shape[0], -1)  # [B, T]
        return self._streams(batch, h, targets)[1]  # [B, T, E]

    def score_candidates(
        self, batch: Batch, candidates: Tensor, goals: Tensor, candidate_category: Tensor | None = None
    ) -> Tensor:
        """Score C candidates per request, computing the user side once (one stream per target the request needs).

        Args:
            batch: the requests' histories (its target fields are ignored).
            candidates: [B, C] int64 item ids.
            goals: [B, C] int64 goal of each candidate, in [0, num_goals).
            candidate_category: [B, C, M] int64 taxonomy paths; required when the model uses categories.

        Returns:
            [B, C] logits, equal to `forward` with target = candidate, goal = goal, target_category = its path; each
            candidate is scored with the user vector of its own target head.
        """
        if self.embedding.category_embedding is not None and candidate_category is None:
            raise ValueError(
                "TDSASRec uses categories (num_categories > 0): score_candidates needs candidate_category "
                f"[B, C, M] = {[*candidates.shape, self.config.taxonomy_levels]}. Got None instead."
            )
        h, _ = self.embedding(batch)  # [B, L, E]
        targets = self._targets(goals, candidate_category)  # [B, C]
        used = targets.unique()  # [G], sorted
        users = self._streams(batch, h, used.expand(h.shape[0], -1))[1]  # [B, G, E]
        slot = torch.searchsorted(used, targets.contiguous())  # [B, C], the stream of each candidate's target
        u = users.gather(1, slot.unsqueeze(-1).expand(-1, -1, users.shape[-1]))  # [B, C, E]
        return self._score(u, self._item_vectors(candidates, candidate_category), goals)  # [B, C]

    def loss(self, batch: Batch) -> Tensor | None:
        """The ranking loss of `config.loss` (sampled_softmax, bpr, croloss), or None under "bce" (the loop's BCE
        on `forward`).

        Each positive row's U_τ scores every target of the batch: its own positive against the other rows' targets
        (their positives and their sampled negatives); a candidate with the row's own item id is dropped.
        """
        if self.config.loss == "bce":
            return None
        assert batch.label is not None  # training batches always carry labels
        h, t = self.embedding(batch)  # [B, L, E], [B, E]
        users = self._streams(batch, h, self._row_targets(batch).unsqueeze(1))[1][:, 0]  # [B, E]
        positive = batch.label > 0.5  # [B]
        if not bool(positive.any()):
            return (users.sum() + t.sum()) * 0.0  # no positive to rank: a zero loss that still backpropagates
        c = self.config
        args = (users[positive], t[positive], t)  # [P, E], [P, E], [B, E]: every target of the batch is a candidate
        ids, negative_ids = batch.target[positive], batch.target  # [P], [B]
        if c.loss == "croloss":
            return croloss(
                *args,
                alpha=float(c.croloss_alpha),
                kernel=c.croloss_kernel,
                temperature=c.temperature,
                lambda_method=c.croloss_lambda,
                positive_ids=ids,
                negative_ids=negative_ids,
            )
        ranking = sampled_softmax_loss if c.loss == "sampled_softmax" else bpr_loss
        return ranking(*args, temperature=c.temperature, positive_ids=ids, negative_ids=negative_ids)

    def forward(self, batch: Batch) -> Tensor:
        """Return one click logit per example, shape [B]: batch.target scored under its target head and goal."""
        h, t = self.embedding(batch)  # [B, L, E], [B, E]
        goal = self._goal(batch).unsqueeze(1)  # [B, 1]
        u = self._streams(batch, h, self._row_targets(batch).unsqueeze(1))[1]  # [B, 1, E]
        return self._score(u, t.unsqueeze(1), goal).squeeze(1)  # [B]
