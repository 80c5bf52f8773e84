"""DSI-TIN: Decoupled Side-Information TIN (Tencent Advertising, arXiv 2510.21714, challenge 2, "inter-field
interference"; TIN: Zhou et al., WWW 2024).

A merged ad + content trajectory carries many side fields per behaviour (category path, action, domain, scene,
brand, ...). One TIN attention over their fused embedding lets every field pair interact in the score, including
pairs that mean nothing together (the scene of a video against the brand of an ad), and a noisy field distracts the
attention of all the others. DSI-TIN runs G TIN modules; module g scores behaviours from its own *group* of fields
(plus its temporal encoding), while every module pools the fused representation of *all* fields:

    e_i, v_t = [field_1 ⊕ ... ⊕ field_F] of behaviour i / of the target (the fused representation, width E)
    ẽ^g_i = e_i + p^g_{f(x_i)},  ṽ^g_t = v_t + p^g_0              (module g's temporal table, as TIN)
    α^g_i = softmax_i(<ẽ^g_i ⊙ m_g, ṽ^g_t> / sqrt(E_g))            (m_g: 1 on the columns of g's fields)
    u^g = Σ_i α^g_i (ẽ^g_i ⊙ ṽ^g_t)                                 (value: all fields)
    logit = head([u^1, ..., u^G, v_t])

With one group holding every field this is exactly TIN over the fused fields (the ablation "single TIN"), and with
groups = [["item", "category"]] it is TIN itself.

Design choices (the paper leaves them open):
- Fields and their target side: item (history / target), category (the M-level path, one table for every level,
  M·D columns), action (history_action; the target's action is what the model predicts, so the target gets a
  learned token, the table's last row), domain (history_domain; target: a learned token too), scene
  (history_scene; target: the request's `batch.scene`), extra id columns (history_extra / target_extra, named by
  `extra_fields`, e.g. brand and the synthetic data's noise_tag). Every table has width D; id 0 embeds to 0.
- The fused value holds the fields named in any group (in the order item, category, action, domain, scene, extras),
  so a model and its single-group ablation see the same fields and differ only in how attention is split.
- Each module has its own temporal table (it may need its own recency: an action/scene module is not an item
  module), under TDPE one per value of the key (`tdpe_key`: goal, category, scene or an extra column, as in TIN).
  The temporal encoding enters the score only through the group's columns.
- A field the data lacks (its vocabulary size is 0) is dropped from every group with a warning, and a group left
  empty is dropped, so one config runs on data with fewer side fields; a misspelled field is an error.
- Vocabulary sizes (`num_actions`, `num_domains`, `num_scenes`, `num_extra`) come from the prepared data, like
  `num_items`; `extra_fields` names the store's extra columns in its order (manifest.json "extra_fields").
- `search_embeddings` uses module 0's attention (put the group that should steer soft search first).

Shapes: B batch, L history length (K after search), D embedding dim, M taxonomy levels, F value fields, E fused
width (D per field, M·D for category), G modules (field groups), E_g columns of group g, T goals.
"""

from __future__ import annotations

import difflib
import logging
import math
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn

from longrec.data.batch import Batch
from longrec.models.checks import check_behaviour_config, check_int, check_sizes
from longrec.models.layers import mlp
from longrec.models.tdpe import (
    GoalHeads,
    TargetDecoupledEncoding,
    TDPEKey,
    check_goal_options,
    decoupling_reads,
    tdpe_key_of,
)
from longrec.models.temporal import add_temporal_encoding, check_temporal_options, temporal_tables

__all__ = ["BASE_FIELDS", "DSITIN", "DSITINConfig"]

logger = logging.getLogger(__name__)

BASE_FIELDS = ("item", "category", "action", "domain", "scene")
# Optional Batch fields each side field reads (item is always there).
_READS = {
    "item": (),
    "category": ("history_category", "target_category"),
    "action": ("history_action",),
    "domain": ("history_domain",),
    "scene": ("history_scene", "scene"),
}


def _check_names(owner: str, name: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{owner}.{name} must be a list of field names (strings). Got {value!r} instead.")
    return tuple(value)


@dataclass(frozen=True)
class DSITINConfig:
    num_items: int  # item vocabulary size, id 0 = padding
    num_categories: int = 0  # category vocabulary shared by every taxonomy level, id 0 = missing; 0 = no categories
    taxonomy_levels: int = 0  # M, depth of history_category [B, L, M]
    num_actions: int = 0  # action vocabulary incl. id 0 (from the data); 0 = no action field
    num_domains: int = 0  # domain vocabulary incl. id 0 (from the data); 0 = no domain field
    num_extra: tuple[int, ...] = ()  # vocabulary of each extra id column incl. id 0 (from the data)
    num_goals: int = 1  # T, goal vocabulary size incl. id 0 = unknown (from the data); read by tdpe and goal_heads
    num_scenes: int = 0  # scene vocabulary incl. id 0: the store's sizes.num_scenes; needed by the "scene" field
    extra_fields: tuple[str, ...] = ()  # names of the extra id columns, in order (the store's extra_fields)
    groups: tuple[tuple[str, ...], ...] = (("item",), ("category",))  # fields each module's attention reads
    dim: int = 16  # D, width of each field's table
    temporal: str = "position"  # f(x): position | time_gap | both, as in TIN (one table per module)
    num_positions: int = 256  # P rows of each position table (row 0 = the target); older behaviours share row P-1
    time_buckets: int = 32  # G log-spaced time-gap buckets (bucket 0 = the target), see tin.time_gap_bucket
    min_gap_seconds: float = 60.0  # time_gap_bucket: gaps up to this share bucket 1
    max_gap_seconds: float = 365.0 * 86_400.0  # time_gap_bucket: gaps beyond this (a year) share the last bucket
    tdpe: str = "shared"  # temporal tables per key value: shared | separate | shared_delta (models/tdpe.py)
    tdpe_key: str = "goal"  # what picks the table: goal | category | scene | an extra column named in extra_fields
    tdpe_level: int = 0  # tdpe_key = "category": taxonomy level, 1 = coarsest .. M = finest; 0 = the finest
    goal_heads: bool = False  # one final head layer per goal (GoalHeads) instead of one for all goals
    head_hidden: tuple[int, ...] = (200, 80)  # widths of the output MLP
    init_std: float = 0.05  # embeddings (and temporal tables) start at N(0, init_std²)

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_behaviour_config(
            owner, self.num_items, self.num_categories, self.taxonomy_levels, self.dim, self.init_std
        )
        for name in ("num_actions", "num_domains", "num_scenes"):
            check_int(owner, name, getattr(self, name), minimum=0)
        if isinstance(self.num_extra, str) or not isinstance(self.num_extra, list | tuple):
            raise ValueError(f"{owner}.num_extra must be a list of vocabulary sizes. Got {self.num_extra!r} instead.")
        for j, size in enumerate(self.num_extra):
            check_int(owner, f"num_extra[{j}]", size)
        object.__setattr__(self, "num_extra", tuple(self.num_extra))
        extras = _check_names(owner, "extra_fields", self.extra_fields)
        for name in extras:
            if not name.isidentifier() or name in BASE_FIELDS or extras.count(name) > 1:
                raise ValueError(
                    f"{owner}.extra_fields must hold distinct identifiers other than {', '.join(BASE_FIELDS)}. "
                    f"Got {name!r} in {list(extras)} instead."
                )
        object.__setattr__(self, "extra_fields", extras)
        self._check_groups(owner)
        check_temporal_options(owner, self)
        check_goal_options(owner, self.num_goals, self.tdpe, self.goal_heads)
        object.__setattr__(self, "head_hidden", check_sizes(owner, "head_hidden", self.head_hidden))
        tdpe_key_of(owner, self)  # an unknown key, or one the data has no vocabulary for, is a config error

    def _check_groups(self, owner: str) -> None:
        if isinstance(self.groups, str) or not isinstance(self.groups, list | tuple) or not self.groups:
            raise ValueError(
                f'{owner}.groups must be a non-empty list of field groups, e.g. [["item", "category"], '
                f'["category", "action"]]. Got {self.groups!r} instead.'
            )
        known = (*BASE_FIELDS, *self.extra_fields)
        groups = []
        for g, group in enumerate(self.groups):
            fields = _check_names(owner, f"groups[{g}]", group)
            if not fields or len(set(fields)) != len(fields):
                raise ValueError(f"{owner}.groups[{g}] must be a non-empty list of distinct fields. Got {group!r}.")
            for i, name in enumerate(fields):
                if name not in known:
                    close = difflib.get_close_matches(name, known, n=1)
                    hint = f" (did you mean '{close[0]}'?)" if close else ""
                    raise ValueError(
                        f"{owner}.groups[{g}][{i}] = {name!r} is not a known field{hint}. Known fields: "
                        f"{', '.join(known)} (extra id columns are named by extra_fields)."
                    )
            groups.append(fields)
        if any("scene" in g for g in groups) and self.num_scenes < 2:
            raise ValueError(
                f"{owner}.groups uses 'scene', which needs num_scenes: the scene vocabulary size incl. id 0 "
                f"(sizes.num_scenes in the prepared store's manifest.json). Got num_scenes = {self.num_scenes}."
            )
        object.__setattr__(self, "groups", tuple(groups))


def _table(rows: int, width: int, std: float) -> nn.Embedding:
    table = nn.Embedding(rows, width, padding_idx=0)
    nn.init.normal_(table.weight, std=std)
    with torch.no_grad():
        table.weight[0].zero_()  # id 0 (padding, missing) embeds to 0
    return table


class DSITIN(nn.Module):
    """G TIN modules whose attention reads a group of side fields and whose value reads all of them."""

    group_masks: Tensor  # [G, E] buffer, 1.0 on the columns of each group's fields
    column_fields: Tensor  # [E] buffer, index into value_fields of each column

    def __init__(self, config: DSITINConfig) -> None:
        super().__init__()
        self.config = config
        c, D = config, config.dim
        if c.num_extra and c.extra_fields and len(c.num_extra) != len(c.extra_fields):
            raise ValueError(
                f"DSITINConfig.extra_fields names {len(c.extra_fields)} extra columns {list(c.extra_fields)}, but the "
                f"data has {len(c.num_extra)} (num_extra = {list(c.num_extra)}). Set extra_fields to the store's "
                "extra_fields (manifest.json)."
            )
        rows = {
            "item": c.num_items,
            "category": c.num_categories,
            "action": c.num_actions + 1 if c.num_actions else 0,  # + the target's token
            "domain": c.num_domains + 1 if c.num_domains else 0,  # + the target's token
            "scene": c.num_scenes,
            **dict(zip(c.extra_fields, c.num_extra, strict=False)),
        }
        groups = tuple(tuple(f for f in g if rows.get(f, 0) > 0) for g in c.groups)
        dropped = sorted({f for g in c.groups for f in g if rows.get(f, 0) == 0})
        if dropped:
            logger.warning("DSI-TIN: the data has no %s field(s); dropped from the groups.", ", ".join(dropped))
        self.groups: tuple[tuple[str, ...], ...] = tuple(g for g in groups if g)  # the groups in effect
        if not self.groups:
            raise ValueError(f"DSITINConfig.groups {list(map(list, c.groups))}: the data has none of these fields.")
        self.value_fields = tuple(f for f in (*BASE_FIELDS, *c.extra_fields) if any(f in g for g in self.groups))
        self.tables = nn.ModuleDict({f: _table(rows[f], D, c.init_std) for f in self.value_fields})
        widths = [D * c.taxonomy_levels if f == "category" else D for f in self.value_fields]
        column_field = torch.repeat_interleave(torch.arange(len(widths)), torch.tensor(widths))  # [E]
        masks = torch.stack(
            [
                torch.isin(column_field, torch.tensor([self.value_fields.index(f) for f in g])).float()
                for g in self.groups
            ]
        )  # [G, E], 1 on the columns of the group's fields
        self.register_buffer("group_masks", masks, persistent=False)
        self.register_buffer("column_fields", column_field, persistent=False)
        self.group_scales = [math.sqrt(float(m.sum())) for m in masks]  # sqrt(E_g), as Python floats
        self.width = E = sum(widths)
        self.tdpe_key = tdpe_key_of(type(config).__name__, config)
        tables = [temporal_tables(config, E, self.tdpe_key) for _ in self.groups]  # one per module: [P, E], [G, E]
        self.position_embeddings = nn.ModuleList([p for p, _ in tables if p is not None])
        self.gap_embeddings = nn.ModuleList([g for _, g in tables if g is not None])
        width = (len(self.groups) + 1) * E  # [u^1, ..., u^G, v_t]
        T = config.num_goals
        self.head = GoalHeads(width, config.head_hidden, T) if config.goal_heads else mlp(width, config.head_hidden)
        reads = [r for f in self.value_fields for r in _READS.get(f, ("history_extra", "target_extra"))]
        reads += ["history_time_delta"] if len(self.gap_embeddings) else []
        reads += decoupling_reads(self.tdpe_key, config.tdpe, config.goal_heads)
        self.reads: tuple[str, ...] = tuple(dict.fromkeys(reads))  # in order, without repeats

    @property
    def temporal_key(self) -> TDPEKey | None:
        """The key whose value picks the temporal tables (TDPE), or None when one table serves every target."""
        return self.tdpe_key if self.config.tdpe != "shared" else None

    def _embed(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """The fused representation of the behaviours e [B, L, E] and of the target v_t [B, E]."""
        B, hs, ts = len(batch), [], []

        def need(value: Tensor | None) -> Tensor:
            assert value is not None  # in self.reads: check_batch's job
            return value

        for name in self.value_fields:
            table = cast(nn.Embedding, self.tables[name])
            if name == "item":
                h, t = table(batch.history), table(batch.target)  # [B, L, D], [B, D]
            elif name == "category":
                h = table(need(batch.history_category)).flatten(2)  # [B, L, M·D]
                t = table(need(batch.target_category)).flatten(1)  # [B, M·D]
            elif name in ("action", "domain"):
                h = table(need(batch.history_action if name == "action" else batch.history_domain))  # [B, L, D]
                # [B, D], the target's learned token (a lookup, so the table's gradient stays sparse under lazy Adam)
                t = table(batch.target.new_full((B,), table.num_embeddings - 1))
            elif name == "scene":
                h, t = table(need(batch.history_scene)), table(need(batch.scene))  # [B, L, D], [B, D]
            else:
                j = self.config.extra_fields.index(name)
                h, t = table(need(batch.history_extra)[..., j]), table(need(batch.target_extra)[:, j])  # [B, L, D]
            hs.append(h)
            ts.append(t)
        return torch.cat(hs, dim=-1), torch.cat(ts, dim=-1)  # [B, L, E], [B, E]

    def _temporal(self, g: int) -> tuple[TargetDecoupledEncoding | None, TargetDecoupledEncoding | None]:
        position = cast(TargetDecoupledEncoding, self.position_embeddings[g]) if self.position_embeddings else None
        gap = cast(TargetDecoupledEncoding, self.gap_embeddings[g]) if self.gap_embeddings else None
        return position, gap

    def _module_inputs(self, batch: Batch, h: Tensor, v: Tensor, g: int) -> tuple[Tensor, Tensor, Tensor]:
        """Module g's scoring query [B, E] (ṽ^g_t ⊙ m_g / sqrt(E_g)), its keys ẽ^g [B, L, E] and target ṽ^g_t [B, E]."""
        e, t = add_temporal_encoding(batch, h, v, *self._temporal(g), self.config, self.tdpe_key)  # [B, L, E], [B, E]
        return t * self.group_masks[g] / self.group_scales[g], e, t  # [B, E], [B, L, E], [B, E]

    def _pool(self, batch: Batch) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """Every module's output u^g [B, E] and attention α^g [B, L], and the plain target v_t [B, E]."""
        h, v = self._embed(batch)  # [B, L, E], [B, E]
        mask, outputs, weights = batch.history_mask, [], []
        for g in range(len(self.groups)):
            query, e, t = self._module_inputs(batch, h, v, g)  # [B, E], [B, L, E], [B, E]
            scores = torch.einsum("ble,be->bl", e, query)  # [B, L], only g's columns count
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)  # [B, L]
            alpha = scores.softmax(dim=-1) * mask  # [B, L]; empty history: α = 0, no NaN (as TIN)
            outputs.append(torch.einsum("bl,ble->be", alpha, e) * t)  # [B, E], Σ_i α_i (ẽ_i ⊙ ṽ_t), all fields
            weights.append(alpha)
        return outputs, weights, v

    @property
    def group_names(self) -> list[str]:
        """One name per attention module, its fields joined by '+' (rows of `attention_weights`; `longrec analyze`)."""
        return ["+".join(group) for group in self.groups]

    def attention_weights(self, batch: Batch) -> Tensor:
        """α^g_i of every module, [B, G, L]; each row sums to 1 over the real behaviours (0 when empty)."""
        return torch.stack(self._pool(batch)[1], dim=1)  # [B, G, L]

    def field_scores(self, batch: Batch) -> dict[str, Tensor]:
        """Each field's term of every module's attention logit, name -> [B, G, L], plus "temporal": the
        behaviour's temporal encoding against the query. With ẽ^g_i = e_i + p^g_i and q^g = ṽ^g_t ⊙ m_g / sqrt(E_g),
        field f's term is <e_i[f's columns], q^g[f's columns]> and "temporal" is <p^g_i, q^g>; together they sum
        to module g's logit. 0 on padding and for a field outside the module's group: what drives each module's
        attention, field by field."""
        h, v = self._embed(batch)  # [B, L, E], [B, E]
        fields, temporal = [], []
        for g in range(len(self.groups)):
            query, e, _ = self._module_inputs(batch, h, v, g)  # [B, E], [B, L, E]
            fields.append(h * query.unsqueeze(1))  # [B, L, E], column c's share of the logit
            temporal.append(torch.einsum("ble,be->bl", e - h, query))  # [B, L]
        mask = batch.history_mask.unsqueeze(1)  # [B, 1, L]
        products = torch.stack(fields, dim=1) * mask.unsqueeze(-1)  # [B, G, L, E]
        out = {f: products[..., self.column_fields == j].sum(-1) for j, f in enumerate(self.value_fields)}
        return out | {"temporal": torch.stack(temporal, dim=1) * mask}  # each [B, G, L]

    def search_embeddings(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Soft-search query [B, E] and keys [B, L, E] whose dot product is module 0's attention logit."""
        h, v = self._embed(batch)  # [B, L, E], [B, E]
        query, e, _ = self._module_inputs(batch, h, v, 0)  # [B, E], [B, L, E]
        return query, e

    def forward(self, batch: Batch) -> Tensor:
        """Return one click logit per example, shape [B]."""
        outputs, _, v = self._pool(batch)  # G x [B, E], [B, E]
        x = torch.cat([*outputs, v], dim=-1)  # [B, (G + 1)·E]
        if self.config.goal_heads:
            return self.head(x, batch.goal)  # [B], the head of each example's goal
        return self.head(x).squeeze(-1)  # [B]
