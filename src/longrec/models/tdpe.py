"""Target decoupling for multi-goal ads (Tencent Advertising, arXiv 2510.21714, challenge 3, "target-wise
interference"): Target-Decoupled Positional Encoding (TDPE) and per-goal output heads.

An ad is optimised for one advertising target (goal τ: click, cart, buy, ...), and the goals disagree on how fast
interest decays (a click follows last hour's browsing, a purchase last month's research). One temporal table
shared by every goal must average those patterns; TDPE gives each goal its own positional / time-gap table,
p^{(τ)}_{f(x_i)}, stored as one table indexed by τ·n_buckets + bucket (paper). `GoalHeads` does the same for the
output layer: a shared MLP trunk and one final linear layer per goal.

Used by TIN, Stacked TIN and DSI-TIN (`tdpe = ...`, `goal_heads = true` in their configs) and by SASRec.

Goal ids come from `batch.goal` [B]: dense goal vocabulary ids, 1..T-1 when the log has goals, 0 for an unknown
goal or a log without goals (`num_goals` = T counts id 0, as the store's `sizes.num_goals` does). A missing
`batch.goal` (None) reads as goal 0 everywhere.

Shapes: B batch, L history length, D table width, T goals (including id 0), R buckets per goal (positions or
time-gap buckets, bucket 0 = the target itself), W trunk width.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TDPE_MODES", "GoalHeads", "TargetDecoupledEncoding", "check_goal_options"]

TDPE_MODES = ("shared", "separate", "shared_delta")


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


def _goal_ids(goal: Tensor | None, like: Tensor) -> Tensor:
    """`goal` [B], or goal 0 for every example of `like` [B, ...] when the batch has no goals."""
    return goal if goal is not None else like.new_zeros(like.shape[0], dtype=torch.long)  # [B]


class TargetDecoupledEncoding(nn.Module):
    """A temporal (relative-position or time-gap bucket) embedding table with one set of rows per goal.

    Modes:
        "shared": one table [R, D] for every goal; the goal is ignored (plain TIN). Its parameter is `weight`, drawn
            exactly as `nn.Embedding(R, D)` followed by N(0, init_std²), so a model that switches from an
            `nn.Embedding` table to this mode keeps its seeded initialisation and its state-dict keys.
        "separate": one table [T·R, D]; goal τ reads rows τ·R .. τ·R + R - 1 only, so goals share no temporal
            parameter (and no gradient).
        "shared_delta": the shared table [R, D] plus a per-goal delta table [T·R, D] that starts at zero: training
            starts from the shared encoding and each goal learns its own correction.

    Call it with buckets [B, L] (behaviours) or [B] (one bucket per example, e.g. zeros for the target itself):

        >>> enc = TargetDecoupledEncoding(num_buckets=8, dim=4, num_goals=3, mode="separate")
        >>> goal = torch.tensor([1, 2])  # [B]
        >>> enc(torch.tensor([[0, 3, 1], [0, 2, 1]]), goal).shape  # history buckets [B, L] -> [B, L, D]
        torch.Size([2, 3, 4])
        >>> enc.target(goal, batch_size=2).shape  # the target's own encoding (bucket 0) [B, D]
        torch.Size([2, 4])

    Args:
        num_buckets: R rows per goal; bucket 0 is the target (relative position 0, time gap 0).
        dim: D, the width of each row (the width of the embedding it is added to).
        num_goals: T, goal vocabulary size including id 0 (unknown goal); ignored by "shared".
        mode: "shared" | "separate" | "shared_delta".
        init_std: rows start at N(0, init_std²) (the delta table at 0).
    """

    def __init__(
        self, num_buckets: int, dim: int, num_goals: int = 1, mode: str = "shared", init_std: float = 0.05
    ) -> None:
        super().__init__()
        if mode not in TDPE_MODES:
            raise ValueError(f"TargetDecoupledEncoding mode must be one of {', '.join(TDPE_MODES)}. Got {mode!r}.")
        self.num_buckets, self.num_goals, self.mode = num_buckets, num_goals, mode
        rows = num_buckets * num_goals if mode == "separate" else num_buckets
        # Draw as nn.Embedding does, then re-draw at init_std: the same random stream as TIN's former table.
        self.weight = nn.Embedding(rows, dim).weight  # [R, D] or [T·R, D]
        nn.init.normal_(self.weight, std=init_std)
        self.delta = nn.Parameter(torch.zeros(num_buckets * num_goals, dim)) if mode == "shared_delta" else None

    @property
    def reads_goal(self) -> bool:
        """Whether the output depends on `batch.goal` (every mode but "shared")."""
        return self.mode != "shared"

    def forward(self, buckets: Tensor, goal: Tensor | None = None) -> Tensor:
        """Encode bucket ids.

        Args:
            buckets: [B, L] (or [B]) int64 bucket ids in [0, R).
            goal: [B] int64 goal ids in [0, T), or None (goal 0 for every example).

        Returns:
            [B, L, D] (or [B, D]) encodings p^{(τ_b)}_{bucket}.
        """
        if self.mode == "shared":
            return F.embedding(buckets, self.weight)  # [B, L, D]
        tau = _goal_ids(goal, buckets).view(-1, *([1] * (buckets.dim() - 1)))  # [B, 1] (or [B])
        index = tau * self.num_buckets + buckets  # [B, L], one table indexed by τ·R + bucket
        if self.delta is None:
            return F.embedding(index, self.weight)  # [B, L, D]
        return F.embedding(buckets, self.weight) + F.embedding(index, self.delta)  # [B, L, D]

    def target(self, goal: Tensor | None, batch_size: int) -> Tensor:
        """The target's own encoding p^{(τ)}_0 (bucket 0), [B, D]."""
        if self.mode == "shared":  # a broadcast row, whose backward is a plain sum over B (as TIN's was)
            return self.weight[0].expand(batch_size, -1)  # [B, D]
        zeros = self.weight.new_zeros(batch_size, dtype=torch.long)  # [B]
        return self(zeros, goal)  # [B, D]


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
        tau = _goal_ids(goal, x)  # [B]
        return (z * self.weight[tau]).sum(-1) + self.bias[tau]  # [B]
