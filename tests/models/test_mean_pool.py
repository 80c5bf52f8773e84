import pytest
import torch

from longrec.data.batch import Batch
from longrec.models import MeanPoolConfig


@pytest.fixture
def mean_pool(make_model):
    return make_model("mean_pool")


def test_empty_history_pools_to_zeros_and_gives_a_finite_logit(mean_pool, batch) -> None:
    empty = batch.replace(
        history=torch.zeros_like(batch.history),
        history_mask=torch.zeros_like(batch.history_mask),
        history_category=torch.zeros_like(batch.history_category),
    )
    logits = mean_pool(empty)
    assert torch.isfinite(logits).all()
    t = mean_pool.embedding(empty)[1]  # [B, E]
    expected = mean_pool.head(torch.cat([torch.zeros_like(t), t], dim=-1)).squeeze(-1)  # [B]
    torch.testing.assert_close(logits, expected)


def test_pooling_is_a_mean_so_repeating_every_behaviour_changes_nothing(mean_pool, batch) -> None:
    # A sum would double here; a mean over the (masked) behaviours does not.
    doubled = Batch(
        **{
            **batch.fields(),
            "history": batch.history.repeat(1, 2),
            "history_mask": batch.history_mask.repeat(1, 2),
            "history_category": batch.history_category.repeat(1, 2, 1),
        }
    )
    torch.testing.assert_close(mean_pool(doubled), mean_pool(batch))


def test_shuffling_the_history_leaves_the_logit_unchanged(mean_pool, batch, shuffle_history) -> None:
    shuffled = shuffle_history(batch)
    assert not torch.equal(shuffled.history, batch.history)
    torch.testing.assert_close(mean_pool(shuffled), mean_pool(batch))


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match=r"MeanPoolConfig\.head_hidden\[1\] must be a positive int .*Got 0 instead"):
        MeanPoolConfig(num_items=10, head_hidden=(8, 0))
    with pytest.raises(ValueError, match=r"MeanPoolConfig\.num_items must be an int >= 2\. Got 1 instead"):
        MeanPoolConfig(num_items=1)
