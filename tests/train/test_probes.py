"""Probe tasks: the two-hop task's labels follow its rule, negatives are hard, and bad sizes are refused."""

from __future__ import annotations

import pytest
import torch

from longrec.train.probes import TwoHopTask


def test_two_hop_labels_follow_the_rule_and_negatives_hold_a_target_partner() -> None:
    task = TwoHopTask()
    batch = task.sample(4096, seed=3)
    assert batch.label is not None
    assert batch.history.shape == (4096, task.length) and batch.history.max() < task.num_items
    assert 0.45 < batch.label.mean().item() < 0.55
    # The rule, re-derived per row from the definition.
    bridge_index = torch.arange(task.num_targets * task.bridges_per_target)
    partner = dict(zip((bridge_index + task.first_bridge).tolist(), task.partner_of.tolist(), strict=True))
    for row in range(200):
        items = set(batch.history[row].tolist())
        wanted = {partner[i] for i in items if i in partner}
        assert batch.label[row].item() == float(bool(wanted & items))
    # Every history holds bridges_present of its target's bridges and a partner of one of the target's bridges.
    mine = task.bridges(batch.target)  # [n, S]
    present = (batch.history[:, :, None] == mine[:, None, :]).any(1).sum(1)  # [n]
    assert (present == task.bridges_present).all()
    assert task.target_partners(batch.history, batch.target).any(1).all()  # so the target alone cannot tell


def test_two_hop_samples_are_reproducible_from_their_seeds() -> None:
    task = TwoHopTask(seed=4)
    a, b = task.sample(64, seed=9), task.sample(64, seed=9)
    torch.testing.assert_close(a.history, b.history, rtol=0, atol=0)
    assert not torch.equal(a.history, task.sample(64, seed=10).history)
    assert not torch.equal(task.partner_of, TwoHopTask(seed=5).partner_of)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"num_partners": 0}, r"TwoHopTask\.num_partners must be a positive int\. Got 0 instead\."),
        ({"bridges_present": 4}, r"bridges_present must be in \[1, bridges_per_target - 1 = 3\].*Got 4 instead"),
        ({"partners_present": 11}, r"partners_present must be in \[1, length - bridges_present = 10\]"),
    ],
)
def test_two_hop_rejects_sizes_it_cannot_build(params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TwoHopTask(**params)
