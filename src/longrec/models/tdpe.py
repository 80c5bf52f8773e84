"""Target decoupling for multi-goal ads (Tencent Advertising, arXiv 2510.21714, challenge 3, "target-wise
interference"): Target-Decoupled Positional Encoding (TDPE) and per-goal output heads.

Targets disagree on how fast interest decays: an ad optimised for clicks follows last hour's browsing, one for
purchases last month's research (the advertising goal τ); interest in Breaking News fades in hours, interest in Hiking
in weeks (the target's category). One temporal table shared by every target must average those patterns; TDPE gives
each value of a target-side key its own positional / time-gap table, p^{(τ)}_{f(x_i)}, stored as one table indexed by
τ·n_buckets + bucket (paper). `GoalHeads` does the same for the output layer, per goal: a shared MLP trunk and one
final linear layer per goal.

The key (`TDPEKey`, chosen by a model config's `tdpe_key`) is any target-side categorical field:
- "goal" (the default): `batch.goal` [B], dense goal ids 1..T-1 when the log has goals, 0 for an unknown goal or a
  log without goals (`num_goals` = T counts id 0, as the store's `sizes.num_goals` does); a missing `batch.goal`
  (None) reads as goal 0 everywhere;
- "category": the target's taxonomy path at level `tdpe_level` (1 = coarsest .. M = finest; 0 = the finest),
  `batch.target_category[:, level - 1]`, with `num_categories` tables (the vocabulary every level shares; id 0 =
  level missing);
- "scene": the request's app surface `batch.scene`, `num_scenes` tables;
- the name of an extra id column (`extra_fields`, e.g. "brand"): `batch.target_extra[:, j]`, `num_extra[j]` tables.
`TDPEKey.ids(batch)` is the one place a key is read from a batch; its values must lie in [0, size), which
`check_batch(batch, sizes=...)` checks at the edge.

Used by TIN, Stacked TIN and DSI-TIN (`tdpe = ...`, `tdpe_key = ...`, `goal_heads = true` in their configs) and by
TD-SASRec (keyed by the goal: its user tower runs one stream per goal).

Shapes: B batch, L history length, D table width, T key values (goals, categories, ...; including id 0), R buckets
per key (positions or time-gap buckets, bucket 0 = the target itself), W trunk width, M taxonomy levels, E extra id
columns.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longrec.data.batch import Batch
from longrec.models.checks import check_int

__all__ = [
    "TDPE_KEYS",
    "TDPE_MODES",
    "GoalHeads",
    "KeyOptions",
    "TDPEKey",
    "TargetDecoupledEncoding",
    "check_goal_options",
    "check_key_fields",
    "decoupling_reads",
    "tdpe_key_of",
]

TDPE_MODES = ("shared", "separate", "shared_delta")
TDPE_KEYS = ("goal", "category", "scene")  # the built-in keys; any other tdpe_key names an extra id column
_KEY_FIELDS = {"goal": "goal", "category": "target_category", "scene": "scene"}  # key -> Batch field (else extra)


def check_goal_options(owner: str, num_goals: object, tdpe: object, goal_heads: object) -> None:
    """Check the goal fields a TDPE / goal-head model config declares; messages name `owner` (the config class)."""
    if isinstance(num_goals, bool) or not isinstance(num_goals, int) or num_goals < 1:
        raise ValueError(
            f"{owner}.num_goals must be an int >= 1 (goal vocabulary size, id 0 = unknown goal). Got {num_goals!r} "
            "instead."
        )
    if tdpe not in TDPE_MODES:
        raise ValueError(f"{owner}.tdpe must be one of {', '.join(TDPE_MODES)}. Got {tdpe!r} instead.")
    if not isinstance(goal_heads, bool):
        raise ValueError(f"{owner}.goal_heads must be a bool (true or false). Got {goal_heads!r} instead.")


@dataclass(frozen=True)
class TDPEKey:
    """The target-side field whose value picks each example's TDPE table: its name, its vocabulary, its column."""

    field: str  # "goal" | "category" | "scene" | the name of an extra id column
    size: int  # T: the key's vocabulary size including id 0 = the number of tables
    column: int = 0  # category: the level's column of target_category [B, M]; extra: the column of target_extra

    @property
    def batch_field(self) -> str:
        """The `Batch` field the key is read from (a model under TDPE lists it in `reads`)."""
        return _KEY_FIELDS.get(self.field, "target_extra")

    def ids(self, batch: Batch) -> Tensor | None:
        """Each example's key [B] int64: the one place a key is read from a batch. None only for the goal of a batch
        without goals (goal 0 for every example, as before TDPE)."""
        value = getattr(batch, self.batch_field)  # [B], or [B, M] / [B, E] for a category level / an extra column
        if value is None:
            assert self.field == "goal", f"batch.{self.batch_field} is None"  # in the model's reads: check_batch's job
            return None
        return value if value.dim() == 1 else value[:, self.column]  # [B]

    def __str__(self) -> str:
        return f"category (level {self.column + 1})" if self.field == "category" else self.field


class KeyOptions(Protocol):
    """The config fields a TDPE key is built from (TINConfig, StackedTINConfig, DSITINConfig; read-only)."""

    @property
    def tdpe_key(self) -> str: ...
    @property
    def tdpe_level(self) -> int: ...
    @property
    def num_goals(self) -> int: ...
    @property
    def num_categories(self) -> int: ...
    @property
    def taxonomy_levels(self) -> int: ...
    @property
    def num_scenes(self) -> int: ...
    @property
    def num_extra(self) -> tuple[int, ...]: ...
    @property
    def extra_fields(self) -> tuple[str, ...]: ...


def check_key_fields(
    owner: str, num_scenes: object, num_extra: object, extra_fields: object
) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Check the data-derived vocabularies a key may need (`num_scenes`, `num_extra`) and the extra columns' names;
    returns num_extra and extra_fields as tuples (a list is what `config.json` holds)."""
    check_int(owner, "num_scenes", num_scenes, minimum=0)
    if isinstance(num_extra, str) or not isinstance(num_extra, list | tuple):
        raise ValueError(f"{owner}.num_extra must be a list of vocabulary sizes. Got {num_extra!r} instead.")
    for j, size in enumerate(num_extra):
        check_int(owner, f"num_extra[{j}]", size)
    names = extra_fields
    if isinstance(names, str) or not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{owner}.extra_fields must be a list of column names (strings). Got {names!r} instead.")
    for name in names:
        if name in TDPE_KEYS or names.count(name) > 1:
            raise ValueError(
                f"{owner}.extra_fields must hold distinct names other than {', '.join(TDPE_KEYS)}. Got {name!r} in "
                f"{list(names)} instead."
            )
    return tuple(num_extra), tuple(names)


def tdpe_key_of(owner: str, options: KeyOptions) -> TDPEKey:
    """The key a config names (`tdpe_key`, and `tdpe_level` for a category), sized from its data-derived
    vocabularies; messages name `owner` (the config class).

    Raises:
        ValueError: an unknown key (with a did-you-mean hint), a level outside the taxonomy, or a key the data has no
            vocabulary for.
    """
    name, level, extras = options.tdpe_key, options.tdpe_level, tuple(options.extra_fields)
    known = (*TDPE_KEYS, *extras)
    if not isinstance(name, str) or name not in known:
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValueError(
            f"{owner}.tdpe_key must be one of {', '.join(TDPE_KEYS)} or an extra id column named in extra_fields "
            f"({', '.join(extras) or 'none named'}). Got {name!r} instead{hint}."
        )
    check_int(owner, "tdpe_level", level, minimum=0)
    if name != "category" and level != 0:
        raise ValueError(
            f"{owner}.tdpe_level picks the taxonomy level of tdpe_key = 'category' and must be 0 with tdpe_key = "
            f"{name!r}. Got {level} instead."
        )
    if name == "goal":
        return TDPEKey("goal", options.num_goals)
    if name == "category":
        M = options.taxonomy_levels
        if options.num_categories < 2 or M < 1:
            raise ValueError(
                f"{owner}.tdpe_key = 'category' keys TDPE by the target's category, but the model has none "
                f"(num_categories = {options.num_categories}, taxonomy_levels = {M}): prepare the data with a "
                "taxonomy, or choose another key."
            )
        if level > M:
            raise ValueError(
                f"{owner}.tdpe_level must be in [0, taxonomy_levels = {M}] (1 = coarsest, {M} = finest, 0 = the "
                f"finest). Got {level} instead."
            )
        return TDPEKey("category", options.num_categories, (level or M) - 1)
    if name == "scene":
        if options.num_scenes < 2:
            raise ValueError(
                f"{owner}.tdpe_key = 'scene' needs num_scenes >= 2 (the scene vocabulary incl. id 0: the store's "
                f"sizes.num_scenes). Got {options.num_scenes} instead."
            )
        return TDPEKey("scene", options.num_scenes)
    j, sizes = extras.index(name), tuple(options.num_extra)
    if j >= len(sizes) or sizes[j] < 2:
        raise ValueError(
            f"{owner}.tdpe_key = {name!r} is column {j} of extra_fields {list(extras)}, but num_extra (from the data) "
            f"= {list(sizes)} has no vocabulary of >= 2 ids for it. Set extra_fields to the store's extra_fields "
            "(manifest.json)."
        )
    return TDPEKey(name, sizes[j], j)


def decoupling_reads(key: TDPEKey, tdpe: str, goal_heads: bool) -> list[str]:
    """The optional `Batch` fields target decoupling reads: the key's field under TDPE (not in "shared" mode), the goal
    with per-goal heads (each once)."""
    fields = ([key.batch_field] if tdpe != "shared" else []) + (["goal"] if goal_heads else [])
    return list(dict.fromkeys(fields))


def _ids_or_zeros(ids: Tensor | None, like: Tensor) -> Tensor:
    """`ids` [B], or id 0 for every example of `like` [B, ...] (a batch without goals: goal 0 everywhere)."""
    return ids if ids is not None else like.new_zeros(like.shape[0], dtype=torch.long)  # [B]


class TargetDecoupledEncoding(nn.Module):
    """A temporal (relative-position or time-gap bucket) embedding table with one set of rows per key value (goal,
    category, ...: `TDPEKey`).

    Modes:
        "shared": one table [R, D] for every key; the key is ignored (plain TIN). Its parameter is `weight`, drawn
            exactly as `nn.Embedding(R, D)` followed by N(0, init_std²), so a model that switches from an
            `nn.Embedding` table to this mode keeps its seeded initialisation and its state-dict keys.
        "separate": one table [T·R, D]; key τ reads rows τ·R .. τ·R + R - 1 only, so key values share no temporal
            parameter (and no gradient).
        "shared_delta": the shared table [R, D] plus a per-key delta table [T·R, D] that starts at zero: training
            starts from the shared encoding and each key value learns its own correction.

    Call it with buckets [B, L] (behaviours) or [B] (one bucket per example, e.g. zeros for the target itself) and
    the key of each example [B] (`TDPEKey.ids(batch)`):

        >>> enc = TargetDecoupledEncoding(num_buckets=8, dim=4, num_keys=3, mode="separate")
        >>> key = torch.tensor([1, 2])  # [B]
        >>> enc(torch.tensor([[0, 3, 1], [0, 2, 1]]), key).shape  # history buckets [B, L] -> [B, L, D]
        torch.Size([2, 3, 4])
        >>> enc.target(key, batch_size=2).shape  # the target's own encoding (bucket 0) [B, D]
        torch.Size([2, 4])

    Args:
        num_buckets: R rows per key value; bucket 0 is the target (relative position 0, time gap 0).
        dim: D, the width of each row (the width of the embedding it is added to).
        num_keys: T, the key's vocabulary size including id 0; ignored by "shared".
        mode: "shared" | "separate" | "shared_delta".
        init_std: rows start at N(0, init_std²) (the delta table at 0).
    """

    def __init__(
        self, num_buckets: int, dim: int, num_keys: int = 1, mode: str = "shared", init_std: float = 0.05
    ) -> None:
        super().__init__()
        if mode not in TDPE_MODES:
            raise ValueError(f"TargetDecoupledEncoding mode must be one of {', '.join(TDPE_MODES)}. Got {mode!r}.")
        self.num_buckets, self.num_keys, self.mode = num_buckets, num_keys, mode
        rows = num_buckets * num_keys if mode == "separate" else num_buckets
        # Draw as nn.Embedding does, then re-draw at init_std: the same random stream as TIN's former table.
        self.weight = nn.Embedding(rows, dim).weight  # [R, D] or [T·R, D]
        nn.init.normal_(self.weight, std=init_std)
        self.delta = nn.Parameter(torch.zeros(num_buckets * num_keys, dim)) if mode == "shared_delta" else None

    @property
    def reads_key(self) -> bool:
        """Whether the output depends on the key (every mode but "shared")."""
        return self.mode != "shared"

    def forward(self, buckets: Tensor, key: Tensor | None = None) -> Tensor:
        """Encode bucket ids.

        Args:
            buckets: [B, L] (or [B]) int64 bucket ids in [0, R).
            key: [B] int64 key ids in [0, T), or None (key 0 for every example).

        Returns:
            [B, L, D] (or [B, D]) encodings p^{(τ_b)}_{bucket}.
        """
        if self.mode == "shared":
            return F.embedding(buckets, self.weight)  # [B, L, D]
        tau = _ids_or_zeros(key, buckets).view(-1, *([1] * (buckets.dim() - 1)))  # [B, 1] (or [B])
        index = tau * self.num_buckets + buckets  # [B, L], one table indexed by τ·R + bucket
        if self.delta is None:
            return F.embedding(index, self.weight)  # [B, L, D]
        return F.embedding(buckets, self.weight) + F.embedding(index, self.delta)  # [B, L, D]

    def target(self, key: Tensor | None, batch_size: int) -> Tensor:
        """The target's own encoding p^{(τ)}_0 (bucket 0), [B, D]."""
        if self.mode == "shared":  # a broadcast row, whose backward is a plain sum over B (as TIN's was)
            return self.weight[0].expand(batch_size, -1)  # [B, D]
        zeros = self.weight.new_zeros(batch_size, dtype=torch.long)  # [B]
        return self(zeros, key)  # [B, D]


class GoalHeads(nn.Module):
    """A shared MLP trunk and one final linear layer per goal: logit_b = w_{τ_b} · trunk(x_b) + c_{τ_b}.

    With `hidden = (200, 80)` the trunk is Linear → PReLU → Linear → PReLU (as `layers.mlp`) and each goal owns a
    Linear(80, 1); with `hidden = ()` the trunk is the identity and each goal has its own logistic regression on x.
    Goals share the representation but not the final decision, so a label rule that differs by goal (a click and a
    purchase reward different evidence) does not have to be averaged into one output.

    Args:
        in_dim: width of the input x.
        hidden: trunk widths.
        num_goals: T, goal vocabulary size including id 0 (unknown goal).
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], num_goals: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_dim, width), nn.PReLU()]
            in_dim = width
        self.trunk = nn.Sequential(*layers)
        # One Linear(W, 1) per goal, stacked: nn.Linear's default init, bound 1/sqrt(fan_in).
        bound = 1.0 / math.sqrt(in_dim)
        self.weight = nn.Parameter(torch.empty(num_goals, in_dim).uniform_(-bound, bound))  # [T, W]
        self.bias = nn.Parameter(torch.empty(num_goals).uniform_(-bound, bound))  # [T]

    def forward(self, x: Tensor, goal: Tensor | None) -> Tensor:
        """x [B, F] and goal ids [B] (None = goal 0) -> one logit per example [B]."""
        z = self.trunk(x)  # [B, W]
        tau = _ids_or_zeros(goal, x)  # [B]
        return (z * self.weight[tau]).sum(-1) + self.bias[tau]  # [B]
