"""Grow a trained model and its Adam state onto larger vocabularies, for day-by-day training (docs/incremental.md).

A store prepared with `--vocab-from` continues its parent's ids: every old id keeps its number and new ids are
appended, so each embedding table of the new store's model is the old one with rows added at the end (`[V_old, D]`
-> `[V_new, D]`). `grow_weights` copies every old tensor into the freshly built model's: equal shapes whole, a
table that grew by its first `V_old` rows, the new rows kept as the model initialised them. `grow_optimizer_state`
does the same for Adam: the moments (`exp_avg`, `exp_avg_sq`, `max_exp_avg_sq`) of an old row are kept, those of a
new row are zero (a row never trained has no gradient history), and the step count is the parameter's.

Only the first dimension may grow (rows = ids); any other change of shape means another model, and is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["grow_optimizer_state", "grow_weights"]


def grow_weights(
    old: Mapping[str, Tensor], fresh: Mapping[str, Tensor], what: str = "the checkpoint"
) -> tuple[dict[str, Tensor], dict[str, list[int]]]:
    """The state dict `old` in the shapes of `fresh` (a freshly initialised model for the grown vocabularies).

    Args:
        old: the trained model's state dict.
        fresh: the new model's state dict, initialised as the model initialises itself (its new rows are kept).
        what: how `old` is called in messages.

    Returns:
        (the grown state dict, {name: [old rows, new rows]} of each tensor that grew).

    Raises:
        ValueError: the two hold different tensors, or a tensor changed in more than its first dimension or shrank
            (every such tensor listed).
    """
    if set(old) != set(fresh):
        raise ValueError(
            f"{what} holds other tensors than the model built for the new store (only in {what}: "
            f"{sorted(set(old) - set(fresh))[:5]}, only in the new model: {sorted(set(fresh) - set(old))[:5]}): it "
            "is another model. Continue with the same model config."
        )
    grown: dict[str, Tensor] = {}
    rows: dict[str, list[int]] = {}
    refused = []
    for name, new in fresh.items():
        before = old[name]
        if before.shape == new.shape:
            grown[name] = before
        elif before.dim() >= 1 and before.shape[1:] == new.shape[1:] and before.shape[0] < new.shape[0]:
            out = new.clone()
            out[: before.shape[0]] = before  # [V_old, ...] old ids keep their rows; new rows as initialised
            grown[name] = out
            rows[name] = [int(before.shape[0]), int(new.shape[0])]
        else:
            refused.append(f"{name} {list(before.shape)} -> {list(new.shape)}")
    if refused:
        raise ValueError(
            f"{what} cannot grow into the new store's model: {'; '.join(refused)}. Only rows (the first dimension) "
            "may be added, as a store prepared with --vocab-from adds ids; a smaller or re-shaped tensor means "
            "another vocabulary or model."
        )
    return grown, rows


def grow_optimizer_state(saved: Mapping[str, Any], model: nn.Module, rows: Mapping[str, list[int]]) -> dict[str, Any]:
    """An Adam `state_dict` saved for the old model, for `model` (the grown one): per parameter that grew (`rows`,
    from `grow_weights`), every state tensor of the old shape gets zero rows appended; the rest is kept.

    Parameters are matched by position (`torch.optim` state is keyed by the index in `model.parameters()`), which
    the same model config gives the same order.

    Raises:
        ValueError: the saved state is for a different number of parameters, or a state tensor of a grown parameter
            has a shape that is neither the old nor the new one.
    """
    names = [name for name, _ in model.named_parameters()]
    groups = saved["param_groups"]
    indices = [i for group in groups for i in group["params"]]
    if len(indices) != len(names):
        raise ValueError(
            f"the saved optimizer state holds {len(indices)} parameters, the model {len(names)}: it was saved for "
            "another model."
        )
    state: dict[Any, dict[str, Any]] = {}
    for index, values in saved["state"].items():
        name = names[int(index)]
        if name not in rows:
            state[index] = dict(values)
            continue
        before, after = rows[name]
        state[index] = {}
        for key, value in values.items():
            if not isinstance(value, Tensor) or value.dim() == 0:
                state[index][key] = value  # the step count: one per parameter
            elif value.shape[0] == before:
                pad = torch.zeros((after - before, *value.shape[1:]), dtype=value.dtype)  # [V_new - V_old, ...]
                state[index][key] = torch.cat([value, pad.to(value.device)])  # [V_new, ...] new rows: no history
            else:
                raise ValueError(
                    f"optimizer state {key!r} of {name} has {value.shape[0]} rows; expected {before} (the saved "
                    f"model's). The optimizer state does not belong to the checkpoint."
                )
    return {"state": state, "param_groups": [dict(group) for group in groups]}
