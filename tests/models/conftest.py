"""Fixtures shared by the model tests: a small batch with full, partial and empty histories, and every model."""

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from longrec.data.batch import HISTORY_FIELDS, Batch, gather_history
from longrec.models import MODELS, build_model, data_params

# Sizes the data would report; each model keeps the ones its config declares.
SIZES = {"num_items": 50, "num_categories": 20, "taxonomy_levels": 2, "num_actions": 4, "num_goals": 3, "num_users": 4}
B, L, M = 6, 12, 2
LENGTHS = [12, 7, 0, 3, 12, 1]  # full, partial, empty, partial, full, a single behaviour


def make_batch(seed: int = 0) -> Batch:
    """A left-padded batch with every side field, built from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(LENGTHS)
    mask = torch.arange(L) >= L - lengths.unsqueeze(1)  # [B, L], real behaviours at the end (left padding)
    history = torch.randint(1, SIZES["num_items"], (B, L), generator=g) * mask  # [B, L]
    coarse = torch.randint(1, 6, (B, L), generator=g)  # [B, L] level 1 in [1, 6)
    fine = torch.randint(6, SIZES["num_categories"], (B, L), generator=g)  # [B, L] level 2 in [6, 20)
    fine = fine * (torch.rand(B, L, generator=g) > 0.2)  # some behaviours miss the fine level (0)
    history_category = torch.stack([coarse, fine], dim=-1) * mask.unsqueeze(-1)  # [B, L, M]
    position = (L - torch.arange(L)).expand(B, L) * mask  # [B, L] most recent = 1, padding = 0
    time_delta = (position * 3600 + torch.rand(B, L, generator=g) * 60) * mask  # [B, L] float seconds, 0 on padding
    return Batch(
        history=history,
        history_mask=mask,
        target=torch.randint(1, SIZES["num_items"], (B,), generator=g),
        label=torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0]),
        history_category=history_category,
        target_category=torch.stack(
            [torch.randint(1, 6, (B,), generator=g), torch.randint(6, SIZES["num_categories"], (B,), generator=g)], -1
        ),  # [B, M]
        history_action=torch.randint(1, SIZES["num_actions"], (B, L), generator=g) * mask,
        history_domain=torch.randint(1, 3, (B, L), generator=g) * mask,
        history_time_delta=time_delta,
        history_position=position,
        target_time=torch.full((B,), 1_700_000_000),
        scene=torch.randint(1, 3, (B,), generator=g),
        goal=torch.tensor([0, 1, 2, 0, 1, 2]),
        user=torch.tensor([0, 0, 1, 2, 3, 3]),
    )


def _pad_history(batch: Batch, extra: int) -> Batch:
    """The same examples with `extra` more padding columns on the left of every history field."""
    changes: dict[str, Tensor] = {}
    for name in HISTORY_FIELDS:
        value = getattr(batch, name)
        if value is not None:
            pad = value.new_zeros((value.shape[0], extra, *value.shape[2:]))  # [B, extra, ...], False for the mask
            changes[name] = torch.cat([pad, value], dim=1)  # [B, extra + L, ...]
    return batch.replace(**changes)


def _shuffle_history(batch: Batch, seed: int = 0) -> Batch:
    """Permute the real behaviours within each history (padding stays on the left), moving every field together."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n in batch.history_mask.sum(1).tolist():
        start = batch.history.shape[1] - n
        rows.append(torch.cat([torch.arange(start), start + torch.randperm(n, generator=g)]))  # [L]
    return gather_history(batch, torch.stack(rows), batch.history_mask)


@pytest.fixture
def batch() -> Batch:
    return make_batch()


@pytest.fixture
def pad_history() -> Callable[[Batch, int], Batch]:
    return _pad_history


@pytest.fixture
def shuffle_history() -> Callable[..., Batch]:
    return _shuffle_history


def _make_model(name: str, seed: int = 0, **overrides: object) -> nn.Module:
    """Model `name` with the small test sizes, in eval mode, with parameters drawn under `seed`."""
    torch.manual_seed(seed)
    params = {**data_params(MODELS[name][0], SIZES), "dim": 8, **overrides}
    return build_model(name, **params).eval()


@pytest.fixture(params=sorted(MODELS))
def model_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make_model() -> Callable[..., nn.Module]:
    return _make_model


@pytest.fixture
def model(model_name: str) -> nn.Module:
    return _make_model(model_name)


def fit_and_auc(model: nn.Module, train: Batch, test: Batch, steps: int, lr: float = 1e-2) -> float:
    """Adam + BCE on random 128-row minibatches of `train` (seeded), then the test AUC: the learning checks' loop."""
    from longrec.train.probes import fit_probe

    return fit_probe(model, train, test, steps, lr=lr)[steps]
