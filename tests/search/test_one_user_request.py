"""One user, C candidates: `one_user_request` shares the history and `search_stage` embeds it once (soft search)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from longrec.data.batch import Batch
from longrec.models import MODELS, build_model, data_params
from longrec.search import one_user_request, search_stage, shares_one_history
from longrec.search.config import SearchConfig

SIZES = {"num_items": 500, "num_categories": 30, "taxonomy_levels": 2, "num_actions": 4, "num_goals": 2}


def history_row(L: int = 3000, n: int = 2800, seed: int = 0) -> Batch:
    """One user's left-padded history: n real behaviours of L columns, with every side field the models read."""
    g = torch.Generator().manual_seed(seed)
    mask = (torch.arange(L) >= L - n).unsqueeze(0)  # [1, L]
    position = (L - torch.arange(L)).unsqueeze(0) * mask  # [1, L] most recent = 1
    category = torch.randint(1, SIZES["num_categories"], (1, L, 2), generator=g) * mask.unsqueeze(-1)  # [1, L, 2]
    return Batch(
        history=torch.randint(1, SIZES["num_items"], (1, L), generator=g) * mask,
        history_mask=mask,
        target=torch.ones(1, dtype=torch.long),
        history_category=category,
        target_category=torch.ones(1, 2, dtype=torch.long),
        history_action=torch.randint(1, 4, (1, L), generator=g) * mask,
        history_time_delta=position * 3600.0,
        history_position=position,
        user=torch.tensor([7]),
        goal=torch.ones(1, dtype=torch.long),
    )


def candidates(C: int, seed: int = 1) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "target": torch.randint(1, SIZES["num_items"], (C,), generator=g),
        "target_category": torch.randint(1, SIZES["num_categories"], (C, 2), generator=g),
    }


class CountingModel(nn.Module):
    """Wraps a model and counts the behaviours its search_embeddings embedded."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.embedded = 0

    def search_embeddings(self, batch: Batch) -> tuple[Tensor, Tensor]:
        self.embedded += batch.history.numel()
        return self.model.search_embeddings(batch)


def test_request_shares_one_history_and_keeps_the_users_fields() -> None:
    request = one_user_request(history_row(), candidates(5))
    assert shares_one_history(request) and len(request) == 5
    assert request.history.untyped_storage().nbytes() == history_row().history.untyped_storage().nbytes()  # no copy
    assert request.user is not None and request.user.tolist() == [7] * 5
    assert request.label is None
    assert not shares_one_history(history_row())  # one row is not a shared request
    copied = request.replace(**{k: v.contiguous() for k, v in request.fields().items()})
    assert not shares_one_history(copied)


def test_request_arguments_are_checked() -> None:
    two_rows = history_row().replace(**{k: v.expand(2, *v.shape[1:]) for k, v in history_row().fields().items()})
    with pytest.raises(ValueError, match=r"1 row\. Got 2"):
        one_user_request(two_rows, candidates(3))
    with pytest.raises(ValueError, match="must include 'target'"):
        one_user_request(history_row(), {"goal": torch.ones(3, dtype=torch.long)})
    with pytest.raises(ValueError, match="not target fields"):
        one_user_request(history_row(), candidates(3) | {"history": torch.ones(3, 4, dtype=torch.long)})
    with pytest.raises(ValueError, match="has 2 rows, 'target' has 3"):
        one_user_request(history_row(), candidates(3) | {"goal": torch.ones(2, dtype=torch.long)})


@pytest.mark.parametrize("chunk", [0, 1024])
@pytest.mark.parametrize("name", ["twin", "dare"])
def test_shared_soft_search_keeps_what_the_per_row_search_keeps(name: str, chunk: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, **data_params(MODELS[name][0], SIZES), dim=8, max_position=3000).eval()
    request = one_user_request(history_row(), candidates(40))
    copied = request.replace(**{k: v.contiguous() for k, v in request.fields().items()})  # the same rows, unshared
    config = SearchConfig(method="soft", k=50, chunk=chunk)
    counting = CountingModel(model)
    shared = search_stage(request, counting, config)
    assert counting.embedded == 3000 + 40  # the history once, plus one column per candidate for the queries
    plain = search_stage(copied, model, config)
    for field, value in plain.fields().items():
        assert torch.equal(getattr(shared, field), value), f"{name}: {field} differs"
    with torch.no_grad():
        torch.testing.assert_close(model(shared), model(plain))
