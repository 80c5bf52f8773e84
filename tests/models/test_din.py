import pytest
import torch

from longrec.data.batch import HISTORY_FIELDS, Batch
from longrec.models import DINConfig, build_model
from longrec.search import search_stage
from longrec.search.config import SearchConfig
from tests.models.conftest import fit_and_auc


@pytest.fixture
def din(make_model):
    return make_model("din")


def most_recent(batch: Batch, k: int) -> Batch:
    """The batch cut to its last k columns, written independently of DIN's own truncation."""
    return batch.replace(**{n: getattr(batch, n)[:, -k:] for n in HISTORY_FIELDS if getattr(batch, n) is not None})


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"dim": 0}, r"DINConfig\.dim must be a positive int\. Got 0 instead\."),
        ({"dim": 8.0}, r"DINConfig\.dim must be a positive int\. Got 8\.0 instead\."),
        ({"num_items": 1}, r"DINConfig\.num_items must be an int >= 2\. Got 1 instead\."),
        ({"num_categories": -1}, r"DINConfig\.num_categories must be a non-negative int\. Got -1 instead\."),
        ({"num_categories": 20, "taxonomy_levels": 0}, r"DINConfig\.taxonomy_levels must be >= 1 when num_categ"),
        ({"attention_hidden": (80, 0)}, r"DINConfig\.attention_hidden\[1\] must be a positive int .*Got 0 instead"),
        ({"head_hidden": 200}, r"DINConfig\.head_hidden must be a tuple of positive ints .*Got 200 instead"),
        ({"max_history": 0}, r"DINConfig\.max_history must be a positive int\. Got 0 instead\."),
        ({"init_std": 0.0}, r"DINConfig\.init_std must be a positive float\. Got 0\.0 instead\."),
    ],
)
def test_config_rejects_bad_values(params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DINConfig(**{"num_items": 50, **params})


def test_config_stores_layer_widths_as_tuples() -> None:
    config = DINConfig(num_items=50, attention_hidden=[8, 4], head_hidden=[])  # type: ignore[arg-type]
    assert config.attention_hidden == (8, 4) and config.head_hidden == ()
    assert hash(config) == hash(DINConfig(num_items=50, attention_hidden=(8, 4), head_hidden=()))


@pytest.mark.parametrize("k", [1, 4, 11])
def test_max_history_equals_running_on_the_k_most_recent(din, make_model, batch, k: int) -> None:
    recent = make_model("din", max_history=k)
    recent.load_state_dict(din.state_dict())
    torch.testing.assert_close(recent(batch), din(most_recent(batch, k)))
    weights = recent.attention_weights(batch)  # [B, L]
    assert weights.shape == batch.history.shape and (weights[:, :-k] == 0).all()


def test_max_history_longer_than_the_batch_keeps_everything(din, make_model, batch) -> None:
    recent = make_model("din", max_history=100)
    recent.load_state_dict(din.state_dict())
    torch.testing.assert_close(recent(batch), din(batch), rtol=0, atol=0)


def test_attention_depends_on_the_target(din, batch) -> None:
    weights = din.attention_weights(batch)  # [B, L]
    other = din.attention_weights(
        batch.replace(target=batch.target % 49 + 1, target_category=batch.target_category.flip(0))
    )
    mask = batch.history_mask
    assert (weights[~mask] == 0).all() and (other[~mask] == 0).all()
    assert (weights[mask] != other[mask]).all()


def test_a_behaviours_weight_does_not_depend_on_the_others(din, batch) -> None:
    # Eq. 3, no softmax: a behaviour's weight is a(target, behaviour) alone, so dropping older ones leaves it as is.
    torch.testing.assert_close(din.attention_weights(most_recent(batch, 3)), din.attention_weights(batch)[:, -3:])


def test_logit_is_the_head_on_the_attention_pooled_interest(din, batch) -> None:
    h, t = din.embedding(batch)  # [B, L, E], [B, E]
    interest = (din.attention_weights(batch).unsqueeze(-1) * h).sum(1)  # [B, E]
    expected = din.head(torch.cat([interest, t, interest * t], dim=-1)).squeeze(-1)  # [B]
    torch.testing.assert_close(din(batch), expected)


def test_shuffling_the_history_leaves_the_logit_unchanged(din, batch, shuffle_history) -> None:
    shuffled = shuffle_history(batch)
    assert not torch.equal(shuffled.history, batch.history)
    torch.testing.assert_close(din(shuffled), din(batch))


def planted_batch(n: int, seed: int, L: int = 10, num_items: int = 200, num_categories: int = 20) -> Batch:
    """Label = 1 iff the target's category occurs in the history: only a target-aware pooling can see it."""
    g = torch.Generator().manual_seed(seed)
    category = torch.arange(num_items) % (num_categories - 1) + 1  # [V] each item's category, in [1, 20)
    lengths = torch.randint(1, L + 1, (n,), generator=g)
    mask = torch.arange(L) >= L - lengths.unsqueeze(1)  # [N, L]
    history = torch.randint(1, num_items, (n, L), generator=g) * mask  # [N, L]
    target = torch.randint(1, num_items, (n,), generator=g)  # [N]
    same = (category[history] == category[target].unsqueeze(1)) & mask  # [N, L]
    return Batch(
        history=history,
        history_mask=mask,
        target=target,
        label=same.any(1).float(),
        history_category=(category[history] * mask).unsqueeze(-1),  # [N, L, 1]
        target_category=category[target].unsqueeze(-1),  # [N, 1]
    )


def train_and_score(name: str, train: Batch, test: Batch, steps: int = 300, **params: object) -> float:
    torch.manual_seed(0)
    model = build_model(
        name, num_items=200, num_categories=20, taxonomy_levels=1, dim=8, head_hidden=(32, 16), **params
    )
    return fit_and_auc(model, train, test, steps, lr=1e-2)


def test_din_learns_a_planted_target_match_that_mean_pooling_misses() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is faster and immune to a busy machine
    try:
        train, test = planted_batch(2048, seed=1), planted_batch(1024, seed=2)
        din_auc = train_and_score("din", train, test, attention_hidden=(32, 16))
        mean_pool_auc = train_and_score("mean_pool", train, test)
    finally:
        torch.set_num_threads(threads)
    assert din_auc > 0.9, f"DIN test AUC {din_auc:.3f}"
    assert din_auc > mean_pool_auc + 0.1, f"DIN {din_auc:.3f} vs MeanPool {mean_pool_auc:.3f}"


def test_soft_search_runs_din_on_the_top_k_by_embedding_inner_product(din, batch) -> None:
    L = batch.history.shape[1]
    torch.testing.assert_close(din(search_stage(batch, din, SearchConfig(method="soft", k=L))), din(batch))
    h, t = din.embedding(batch)  # [B, L, E], [B, E]
    query, keys = din.search_embeddings(batch)
    assert torch.equal(query, t) and torch.equal(keys, h)
    k = 3
    score = torch.einsum("be,ble->bl", t, h).masked_fill(~batch.history_mask, float("-inf"))  # [B, L]
    keep = torch.zeros_like(batch.history_mask).scatter(1, score.topk(k, dim=1).indices, True) & batch.history_mask
    # DIN's weights are per behaviour (no softmax), so DIN on the top-K = DIN with every other behaviour masked out.
    expected = din(batch.replace(history_mask=keep, history=batch.history * keep))
    torch.testing.assert_close(din(search_stage(batch, din, SearchConfig(method="soft", k=k))), expected)
