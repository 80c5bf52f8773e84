"""Small planted tasks, as in-memory `Batch`es, that isolate one mechanism a model claims to learn.

The synthetic log (`longrec.ingest.synthetic`) plants its mechanisms inside a realistic trajectory, where several
effects overlap. A probe task plants one rule and nothing else, on a few dozen items, so a model and its ablation can
be trained to convergence in seconds and compared on exactly the ability that separates them. They back the
mechanism tests and `benchmarks/bench_stacked_chain.py`, which both train with `fit_probe`.

`TwoHopTask` — a rule only a chain of two attention hops expresses directly (Stacked TIN, whose layer l updates the
query with what layer l - 1 attended to):

- Items: targets 1..T; bridges (S per target, bridge s of target t is its own item); partners (a pool of P items:
  every bridge has one fixed partner, and each partner serves several bridges, of several targets); fillers.
- A history holds `bridges_present` of the target's S bridges, `partners_present` partners and fillers, in random
  order. The label is 1 iff the history holds the partner of one of the bridges it holds.
- Half the samples are built positive (one partner slot gets the partner of a present bridge). The others get, in
  that slot, the partner of one of the target's *absent* bridges: a target-related behaviour that the target alone
  cannot tell from the right one. Their other partner slots are redrawn until none matches (a bounded number of
  rounds). The label is computed from the history by the rule, so an unlucky draw is labelled by what it holds.

What it takes: the first hop finds the target's bridges; the second must compare the partners in the history with
*those* bridges. A layer that only sees the target sees the same picture in a positive and in a hard negative.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longrec.data.batch import Batch

__all__ = ["TwoHopTask", "fit_probe"]


def fit_probe(
    model: nn.Module,
    train: Batch,
    test: Batch,
    steps: int,
    lr: float = 1e-2,
    batch_size: int = 128,
    seed: int = 0,
    checkpoints: Iterable[int] | None = None,
) -> dict[int, float]:
    """Adam + BCE on random `batch_size`-row minibatches of `train` (drawn from `seed`), and the test AUC after each
    step in `checkpoints` (default: the last), as {step: AUC}. The model is left in eval mode after the last one.
    An in-memory loop for probe tasks and the mechanism tests: no search stage, no auxiliary loss, no L2."""
    from longrec.eval.metrics import auc

    assert test.label is not None
    marks = set(checkpoints) if checkpoints is not None else {steps}
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    aucs: dict[int, float] = {}
    for step in range(1, steps + 1):
        rows = torch.randint(0, len(train), (batch_size,), generator=g)
        batch = Batch(**{name: value[rows] for name, value in train.fields().items()})
        assert batch.label is not None
        loss = F.binary_cross_entropy_with_logits(model(batch), batch.label)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step in marks:
            with torch.no_grad():
                aucs[step] = auc(test.label.numpy(), model.eval()(test).numpy())
            if step < steps:
                model.train()
    return aucs


@dataclass(frozen=True)
class TwoHopTask:
    num_targets: int = 16  # T
    bridges_per_target: int = 4  # S
    num_partners: int = 32  # P, the partner pool (each partner serves about T·S / P bridges)
    num_fillers: int = 32  # items that carry nothing
    length: int = 12  # L, history length (every position is a real behaviour)
    bridges_present: int = 2  # of the target's S bridges, in every history
    partners_present: int = 4  # partner behaviours in every history (one of them target-related)
    seed: int = 0  # draws the bridge -> partner map
    partner_of: Tensor = field(init=False, repr=False, compare=False)  # [T·S] partner item id of each bridge

    def __post_init__(self) -> None:
        for name in ("num_targets", "bridges_per_target", "num_partners", "num_fillers", "length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TwoHopTask.{name} must be a positive int. Got {value!r} instead.")
        if not 1 <= self.bridges_present < self.bridges_per_target:
            raise ValueError(
                f"TwoHopTask.bridges_present must be in [1, bridges_per_target - 1 = {self.bridges_per_target - 1}] "
                f"(a hard negative needs an absent bridge). Got {self.bridges_present!r} instead."
            )
        if not 1 <= self.partners_present <= self.length - self.bridges_present:
            raise ValueError(
                f"TwoHopTask.partners_present must be in [1, length - bridges_present = "
                f"{self.length - self.bridges_present}]. Got {self.partners_present!r} instead."
            )
        g = torch.Generator().manual_seed(self.seed)
        bridges = self.num_targets * self.bridges_per_target
        partner = torch.randperm(bridges, generator=g) % self.num_partners + self.first_partner  # [T·S]
        object.__setattr__(self, "partner_of", partner)

    @property
    def first_bridge(self) -> int:
        return self.num_targets + 1

    @property
    def first_partner(self) -> int:
        return self.first_bridge + self.num_targets * self.bridges_per_target

    @property
    def first_filler(self) -> int:
        return self.first_partner + self.num_partners

    @property
    def num_items(self) -> int:
        """Item vocabulary size, id 0 (padding) included."""
        return self.first_filler + self.num_fillers

    def bridges(self, target: Tensor) -> Tensor:
        """The S bridge item ids of each target, [n, S]."""
        s = torch.arange(self.bridges_per_target)
        return self.first_bridge + (target[:, None] - 1) * self.bridges_per_target + s  # [n, S]

    def matches(self, history: Tensor) -> Tensor:
        """[n, L] True where a behaviour is the partner of a bridge in the same history (the label's witnesses)."""
        is_bridge = (history >= self.first_bridge) & (history < self.first_partner)  # [n, L]
        bridge_index = (history - self.first_bridge).clamp(0, len(self.partner_of) - 1)  # [n, L]
        wanted = torch.where(is_bridge, self.partner_of[bridge_index], 0)  # [n, L]; 0 never matches an item
        is_partner = (history >= self.first_partner) & (history < self.first_filler)  # [n, L]
        return is_partner & (history[:, :, None] == wanted[:, None, :]).any(-1)  # [n, L]

    def target_partners(self, history: Tensor, target: Tensor) -> Tensor:
        """[n, L] True where a behaviour is the partner of any of the target's S bridges, present or not."""
        theirs = self.partner_of[self.bridges(target) - self.first_bridge]  # [n, S]
        return (history[:, :, None] == theirs[:, None, :]).any(-1)  # [n, L]

    def sample(self, n: int, seed: int) -> Batch:
        """n labelled samples (about half positive), drawn from `seed`."""
        g = torch.Generator().manual_seed(seed)
        rows = torch.arange(n)  # [n]
        B, R, L = self.bridges_present, self.partners_present, self.length
        target = torch.randint(1, self.num_targets + 1, (n,), generator=g)  # [n]
        order = torch.argsort(torch.rand(n, self.bridges_per_target, generator=g), dim=1)  # [n, S]
        mine = self.bridges(target)  # [n, S]
        present, absent = mine.gather(1, order[:, :B]), mine.gather(1, order[:, B : B + 1])[:, 0]  # [n, B], [n]
        wanted = self.partner_of[present - self.first_bridge]  # [n, B]

        def draw_partners(shape: tuple[int, ...]) -> Tensor:
            return torch.randint(self.first_partner, self.first_filler, shape, generator=g)

        partners = draw_partners((n, R))  # [n, R]
        for _ in range(32):  # redraw partners that would match; what still matches is labelled so below
            hit = (partners[:, :, None] == wanted[:, None, :]).any(-1)  # [n, R]
            if not hit.any():
                break
            partners = torch.where(hit, draw_partners((n, R)), partners)
        positive = torch.rand(n, generator=g) < 0.5  # [n]
        pick = torch.randint(0, B, (n,), generator=g)  # [n] which present bridge a positive completes
        hard = self.partner_of[absent - self.first_bridge]  # [n] partner of an absent bridge of the target
        partners[:, 0] = torch.where(positive, wanted[rows, pick], hard)
        history = torch.randint(self.first_filler, self.num_items, (n, L), generator=g)  # [n, L]
        slots = torch.argsort(torch.rand(n, L, generator=g), dim=1)  # [n, L] a random placement
        history[rows[:, None], slots[:, :B]] = present
        history[rows[:, None], slots[:, B : B + R]] = partners
        label = self.matches(history).any(1).float()  # [n], by the rule, whatever was intended
        return Batch(
            history=history,
            history_mask=torch.ones(n, L, dtype=torch.bool),
            target=target,
            label=label,
            history_position=(L - torch.arange(L)).expand(n, L).contiguous(),  # [n, L], 1 = the latest
        )
