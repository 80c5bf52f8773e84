import math

import pytest
import torch
import torch.nn.functional as F

from longrec.data.batch import Batch
from longrec.eval.metrics import auc
from longrec.models import build_model
from longrec.models.dare import DAREConfig
from longrec.search import search_stage
from longrec.search.config import SearchConfig

# DARE, DARE with d_a = d_r / 2, and TWIN-4E (four table sets).
VARIANTS = {
    "dare": {},
    "dare d_a=4": {"attention_dim": 4},
    "twin-4e": {"separate_target_tables": True},
}


@pytest.fixture(params=sorted(VARIANTS))
def variant(request: pytest.FixtureRequest, make_model):
    return make_model("dare", aux_loss=True, **VARIANTS[request.param])


def side(tables, batch: Batch, history: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(semantic, time) embeddings of the behaviours or of the target, read from one role's tables by hand."""
    items, cats = tables.embedding.item_embedding, tables.embedding.category_embedding
    if history:
        sem = torch.cat([items(batch.history), cats(batch.history_category).flatten(2)], -1)  # [B, L, S]
        return sem, tables.time_embedding(batch.history_position.clamp(max=200))  # [B, L, D]
    sem = torch.cat([items(batch.target), cats(batch.target_category).flatten(1)], -1)  # [B, S]
    return sem, tables.time_embedding(torch.zeros_like(batch.target))  # [B, D] the target's time id is 0


def reference_logits(model, batch: Batch, head: torch.nn.Module) -> torch.Tensor:
    """Scores from the attention tables, softmax over all real behaviours, pooling of the representation tables."""
    h_sem, h_time = side(model.attention, batch, history=True)
    t_sem, t_time = side(model.target_attention or model.attention, batch, history=False)
    scores = torch.einsum("bs,bls->bl", t_sem, h_sem) / math.sqrt(t_sem.shape[-1])  # [B, L]
    scores = scores + torch.einsum("bd,bld->bl", t_time, h_time) / math.sqrt(t_time.shape[-1])  # [B, L]
    weights = torch.softmax(scores.masked_fill(~batch.history_mask, -1e9), -1) * batch.history_mask  # [B, L]
    e = torch.cat(side(model.representation, batch, history=True), -1)  # [B, L, R]
    v = torch.cat(side(model.target_representation or model.representation, batch, history=False), -1)  # [B, R]
    u = torch.einsum("bl,blr->br", weights, e)  # [B, R]
    return head(torch.cat([v, u, u * v], -1)).squeeze(-1)


def tables(model, role: str) -> dict[str, torch.nn.Parameter]:
    """The embedding tables of one role ("attention" or "representation"), target side included (TWIN-4E)."""
    return {n: p for n, p in model.named_parameters() if "embedding" in n and role in n}


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"dim": 0}, r"DAREConfig\.dim must be a positive int\. Got 0 instead\."),
        ({"attention_dim": 0}, r"DAREConfig\.attention_dim must be a positive int\. Got 0 instead\."),
        ({"max_position": -3}, r"DAREConfig\.max_position must be a positive int\. Got -3 instead\."),
        ({"separate_target_tables": "no"}, r"DAREConfig\.separate_target_tables must be a bool"),
        ({"head_hidden": 200}, r"DAREConfig\.head_hidden must be a tuple of positive ints"),
    ],
)
def test_config_rejects_bad_values(params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DAREConfig(**{"num_items": 50, **params})


def test_search_embeddings_dot_product_is_the_attention_score(variant, batch) -> None:
    query, keys = variant.search_embeddings(batch)  # [B, A], [B, L, A]
    h_sem, h_time = side(variant.attention, batch, history=True)
    t_sem, t_time = side(variant.target_attention or variant.attention, batch, history=False)
    expected = torch.einsum("bs,bls->bl", t_sem, h_sem) / math.sqrt(t_sem.shape[-1])  # [B, L]
    expected = expected + torch.einsum("bd,bld->bl", t_time, h_time) / math.sqrt(t_time.shape[-1])  # [B, L]
    mask = batch.history_mask
    torch.testing.assert_close(torch.einsum("ba,bla->bl", query, keys)[mask], expected[mask])


def test_forward_and_aux_equal_the_einsum_reference(variant, batch) -> None:
    torch.testing.assert_close(variant(batch), reference_logits(variant, batch, variant.head))
    torch.testing.assert_close(variant.aux_logits(batch), reference_logits(variant, batch, variant.aux_head))


def test_search_keeping_all_l_behaviours_reproduces_full_attention(variant, batch) -> None:
    searched = search_stage(batch, variant, SearchConfig(method="soft", k=batch.history.shape[1]))
    torch.testing.assert_close(variant(searched), variant(batch))


def test_representation_gradients_never_reach_the_attention_tables_and_back(variant, batch) -> None:
    variant.train()
    v, e = variant.representations(batch)  # [B, R], [B, L, R]
    loss_r = (v.square().sum() + (e * batch.history_mask.unsqueeze(-1)).square().sum()) / len(batch)
    attention, representation = tables(variant, "attention"), tables(variant, "representation")
    assert attention and representation
    grads = torch.autograd.grad(loss_r, [*attention.values(), *representation.values()], allow_unused=True)
    assert all(g is None for g in grads[: len(attention)]), "representation loss reached an attention table"
    assert all(g is not None and g.abs().sum() > 0 for g in grads[len(attention) :])
    loss_a = variant.attention_weights(batch).square().sum()  # the attention weights alone
    grads = torch.autograd.grad(loss_a, [*attention.values(), *representation.values()], allow_unused=True)
    assert all(g is None for g in grads[len(attention) :]), "attention loss reached a representation table"
    assert all(g is not None and g.abs().sum() > 0 for g in grads[: len(attention)])


def test_twin_shares_its_tables_between_both_paths(make_model, batch) -> None:
    # The contrast: in TWIN both the attention weights and the pooled representation move the same item table.
    twin = make_model("twin")
    table = twin.embedding.item_embedding.weight
    (from_attention,) = torch.autograd.grad(twin.attention_weights(batch).square().sum(), table)
    assert from_attention.abs().sum() > 0


def test_attention_dim_sets_the_search_width_independently_of_dim(make_model, batch) -> None:
    M = batch.history_category.shape[-1]
    model = make_model("dare", dim=8, attention_dim=4)
    query, keys = model.search_embeddings(batch)
    assert query.shape == (len(batch), 4 * (1 + M) + 4) and keys.shape == (*batch.history.shape, 4 * (1 + M) + 4)
    assert model.representations(batch)[1].shape == (*batch.history.shape, 8 * (1 + M) + 8)
    searched = search_stage(batch, model, SearchConfig(method="soft", k=3))
    assert searched.history.shape[1] == 3 and torch.isfinite(model(searched)).all()


def test_twin_4e_target_and_history_do_not_share_embeddings(make_model, batch) -> None:
    # Rewriting the history-side rows of the target items changes DARE (shared target/history tables) but not
    # TWIN-4E, where the target reads its own tables; the targets do not occur in the histories below.
    unseen = min(set(range(1, 50)) - set(batch.history.flatten().tolist()))
    batch = batch.replace(target=torch.full_like(batch.target, unseen))
    for params, should_change in (({}, True), ({"separate_target_tables": True}, False)):
        model = make_model("dare", **params)
        before = model(batch)
        with torch.no_grad():
            model.attention.embedding.item_embedding.weight[unseen] += 1.0
            model.representation.embedding.item_embedding.weight[unseen] += 1.0
        assert torch.allclose(model(batch), before) != should_change


def test_shuffling_behaviours_with_their_positions_changes_nothing(variant, batch, shuffle_history) -> None:
    shuffled = shuffle_history(batch)
    assert not torch.equal(shuffled.history, batch.history)
    torch.testing.assert_close(variant(shuffled), variant(batch))


def test_without_history_position_time_ids_come_from_the_mask(variant, batch) -> None:
    torch.testing.assert_close(variant(batch.replace(history_position=None)), variant(batch))


@pytest.mark.parametrize("params", list(VARIANTS.values()), ids=list(VARIANTS))
def test_variants_keep_the_model_contract(make_model, batch, pad_history, params: dict) -> None:
    model = make_model("dare", aux_loss=True, **params)
    torch.testing.assert_close(model(pad_history(batch, 3)), model(batch))
    torch.testing.assert_close(model(Batch(**{n: v[2:3] for n, v in batch.fields().items()})), model(batch)[2:3])
    model.train()
    loss = F.binary_cross_entropy_with_logits(model(batch), batch.label)
    (loss + F.binary_cross_entropy_with_logits(model.aux_logits(batch), batch.label)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reached: {missing}"


def planted_batch(n: int, seed: int, L: int = 24, recent: int = 6, num_items: int = 200) -> Batch:
    """Label = 1 iff the target's category occurs among the `recent` most recent behaviours."""
    g = torch.Generator().manual_seed(seed)
    category = torch.arange(num_items) % 19 + 1  # [V] each item's category, in [1, 20)
    lengths = torch.randint(1, L + 1, (n,), generator=g)
    mask = torch.arange(L) >= L - lengths.unsqueeze(1)  # [N, L]
    history = torch.randint(1, num_items, (n, L), generator=g) * mask  # [N, L]
    target = torch.randint(1, num_items, (n,), generator=g)  # [N]
    position = (L - torch.arange(L)) * mask  # [N, L] most recent = 1
    same = (category[history] == category[target].unsqueeze(1)) & mask  # [N, L]
    return Batch(
        history=history,
        history_mask=mask,
        target=target,
        label=(same & (position <= recent)).any(1).float(),
        history_category=(category[history] * mask).unsqueeze(-1),  # [N, L, 1]
        target_category=category[target].unsqueeze(-1),  # [N, 1]
        history_position=position,
    )


def test_dare_learns_whether_the_targets_category_is_recent() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is faster and immune to a busy machine
    try:
        train, test = planted_batch(4096, seed=1), planted_batch(1024, seed=2)
        torch.manual_seed(0)
        model = build_model(
            "dare", num_items=200, num_categories=20, taxonomy_levels=1, dim=8, head_hidden=(32, 16),
            aux_hidden=(32,), aux_loss=True,
        )  # fmt: skip
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)  # DARE's protocol
        search = SearchConfig(method="soft", k=8)
        g = torch.Generator().manual_seed(0)
        for _ in range(200):
            rows = torch.randint(0, len(train), (128,), generator=g)
            batch = Batch(**{n: v[rows] for n, v in train.fields().items()})
            loss = F.binary_cross_entropy_with_logits(model(search_stage(batch, model, search)), batch.label)
            loss = loss + F.binary_cross_entropy_with_logits(model.aux_logits(batch), batch.label)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            score = auc(test.label.numpy(), model.eval()(search_stage(test, model, search)).numpy())
    finally:
        torch.set_num_threads(threads)
    assert score > 0.8, f"DARE test AUC {score:.3f}"
