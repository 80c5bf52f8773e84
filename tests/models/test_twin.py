import math

import pytest
import torch
import torch.nn.functional as F

from longrec.data.batch import Batch, gather_history
from longrec.eval.metrics import auc
from longrec.models import build_model
from longrec.models.twin import TWINConfig
from longrec.search import SEARCHERS, search_stage
from longrec.search.config import SearchConfig

# Every TWIN-family ablation that is a TWIN config (TWIN-4E is DARE's separate_target_tables; see test_dare.py).
VARIANTS = {
    "twin": {},
    "twin w/o TR": {"target_aware": False},
    "twin w/ proj": {"attention": "projection"},
}


@pytest.fixture(params=sorted(VARIANTS))
def variant(request: pytest.FixtureRequest, make_model):
    return make_model("twin", aux_loss=True, **VARIANTS[request.param])


def reference(model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scores [B, L], target v [B, E] and behaviours e [B, L, E], written from the tables, independently of TWIN."""
    items, cats, times = model.embedding.item_embedding, model.embedding.category_embedding, model.time_embedding
    h = torch.cat([items(batch.history), cats(batch.history_category).flatten(2)], -1)  # [B, L, E_s]
    t = torch.cat([items(batch.target), cats(batch.target_category).flatten(1)], -1)  # [B, E_s]
    p = times(batch.history_position.clamp(max=model.config.max_position))  # [B, L, D]
    p_t = times(torch.zeros_like(batch.target))  # [B, D] the target's time id is 0
    if model.projections is not None:
        proj = model.projections
        q_s, q_t, k_s, k_t = (
            proj["query_semantic"](t),
            proj["query_time"](p_t),
            proj["key_semantic"](h),
            proj["key_time"](p),
        )
    else:
        q_s, q_t, k_s, k_t = t, p_t, h, p
    semantic = (k_s * q_s.unsqueeze(1)).sum(-1) / math.sqrt(h.shape[-1])  # [B, L]
    time = (k_t * q_t.unsqueeze(1)).sum(-1) / math.sqrt(p.shape[-1])  # [B, L]
    return semantic + time, torch.cat([t, p_t], -1), torch.cat([h, p], -1)


def reference_logits(model, batch: Batch, head: torch.nn.Module) -> torch.Tensor:
    """Softmax over all real behaviours, pooled behaviours u, then head on [v, u, u ⊙ v] (or [v, u] without TR)."""
    scores, v, e = reference(model, batch)
    weights = torch.softmax(scores.masked_fill(~batch.history_mask, -1e9), -1) * batch.history_mask  # [B, L]
    u = torch.einsum("bl,ble->be", weights, e)  # [B, E]
    x = torch.cat([v, u, u * v] if model.config.target_aware else [v, u], -1)
    return head(x).squeeze(-1)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"dim": 0}, r"TWINConfig\.dim must be a positive int\. Got 0 instead\."),
        ({"max_position": 0}, r"TWINConfig\.max_position must be a positive int\. Got 0 instead\."),
        ({"attention": "mlp"}, r"TWINConfig\.attention must be one of dot, projection\. Got 'mlp'"),
        ({"target_aware": 1}, r"TWINConfig\.target_aware must be a bool \(true or false\)\. Got 1 instead\."),
        ({"aux_loss": "yes"}, r"TWINConfig\.aux_loss must be a bool"),
        ({"aux_hidden": (0,)}, r"TWINConfig\.aux_hidden\[0\] must be a positive int"),
        ({"init_std": -1.0}, r"TWINConfig\.init_std must be a positive float"),
    ],
)
def test_config_rejects_bad_values(params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TWINConfig(**{"num_items": 50, **params})


def test_search_embeddings_dot_product_is_the_attention_score(variant, batch) -> None:
    query, keys = variant.search_embeddings(batch)  # [B, E], [B, L, E]
    scores = torch.einsum("be,ble->bl", query, keys)  # [B, L]
    expected = reference(variant, batch)[0]
    mask = batch.history_mask
    torch.testing.assert_close(scores[mask], expected[mask])


def test_forward_and_aux_equal_the_einsum_reference(variant, batch) -> None:
    torch.testing.assert_close(variant(batch), reference_logits(variant, batch, variant.head))
    torch.testing.assert_close(variant.aux_logits(batch), reference_logits(variant, batch, variant.aux_head))


def test_search_keeping_all_l_behaviours_reproduces_full_attention(variant, batch) -> None:
    searched = search_stage(batch, variant, SearchConfig(method="soft", k=batch.history.shape[1]))
    torch.testing.assert_close(variant(searched), variant(batch))


def test_forward_on_the_top_k_is_softmax_renormalised_over_the_kept_behaviours(variant, batch) -> None:
    k = 4
    searched = search_stage(batch, variant, SearchConfig(method="soft", k=k))
    scores = reference(variant, batch)[0].masked_fill(~batch.history_mask, float("-inf"))  # [B, L]
    top = scores.topk(k, dim=-1).indices.sort(dim=-1).values  # [B, K] the K best, oldest first
    kept = batch.history_mask.gather(1, top)  # [B, K]
    by_hand = gather_history(batch, top, kept)
    torch.testing.assert_close(variant(searched), reference_logits(variant, by_hand, variant.head))
    assert not torch.allclose(variant(searched), variant(batch)), "dropping behaviours must matter"


def test_aux_loss_reaches_behaviours_that_search_dropped(make_model, batch) -> None:
    twin = make_model("twin", aux_loss=True).train()
    searched = search_stage(batch, twin, SearchConfig(method="soft", k=2))
    dropped = set(batch.history[batch.history_mask].tolist()) - set(searched.history[searched.history_mask].tolist())
    dropped -= set(batch.target.tolist())
    assert dropped
    rows = torch.tensor(sorted(dropped))
    table = twin.embedding.item_embedding.weight
    (main,) = torch.autograd.grad(F.binary_cross_entropy_with_logits(twin(searched), batch.label), table)
    (aux,) = torch.autograd.grad(F.binary_cross_entropy_with_logits(twin.aux_logits(batch), batch.label), table)
    assert (main[rows] == 0).all() and (aux[rows].abs().sum(-1) > 0).all()


def test_aux_logits_is_none_when_the_aux_loss_is_off(make_model, batch) -> None:
    twin = make_model("twin")
    assert twin.aux_logits(batch) is None and twin.aux_head is None


def test_shuffling_behaviours_with_their_positions_changes_nothing(variant, batch, shuffle_history) -> None:
    # Softmax attention over a set: order is invisible except through each behaviour's time id, which moves with it.
    shuffled = shuffle_history(batch)
    assert not torch.equal(shuffled.history, batch.history)
    torch.testing.assert_close(variant(shuffled), variant(batch))


@pytest.mark.parametrize("params", list(VARIANTS.values()), ids=list(VARIANTS))
def test_positions_matter_through_the_time_embedding(make_model, batch, shuffle_history, params: dict) -> None:
    # The same behaviours at other relative positions (positions stay in place): only the time embedding differs.
    model = make_model("twin", init_std=1.0, **params)  # large embeddings, so the time term is not a rounding error
    shuffled = shuffle_history(batch)
    moved = shuffled.replace(history_position=batch.history_position)
    rows = (shuffled.history != batch.history).any(1)
    assert rows.sum() >= 3
    assert (model(moved) - model(batch)).abs()[rows].min() > 1e-3


def test_positions_past_max_position_share_one_time_embedding(make_model, batch) -> None:
    twin = make_model("twin", max_position=3)
    older = batch.replace(history_position=torch.where(batch.history_position > 3, 99, batch.history_position))
    torch.testing.assert_close(twin(older), twin(batch))


def test_without_history_position_time_ids_come_from_the_mask(variant, batch) -> None:
    # The fixture's positions are what collate writes (most recent = 1), so deriving them from the mask agrees.
    torch.testing.assert_close(variant(batch.replace(history_position=None)), variant(batch))


def test_without_tr_the_head_reads_the_target_and_the_plain_weighted_sum(make_model, batch) -> None:
    no_tr = make_model("twin", target_aware=False)
    assert no_tr.head[0].in_features == 2 * (3 * 8 + 8)  # [v, u]: no u ⊙ v block
    weights = no_tr.attention_weights(batch)  # [B, L]
    _, v, e = reference(no_tr, batch)
    u = torch.einsum("bl,ble->be", weights, e)  # [B, E] Σ w_i e_i, no ⊙ target
    torch.testing.assert_close(no_tr(batch), no_tr.head(torch.cat([v, u], -1)).squeeze(-1))


def test_projection_with_identity_weights_is_plain_twin(make_model, batch) -> None:
    twin, proj = make_model("twin"), make_model("twin", attention="projection")
    proj.load_state_dict(twin.state_dict(), strict=False)
    assert not torch.allclose(proj(batch), twin(batch))
    with torch.no_grad():
        for linear in proj.projections.values():
            linear.weight.copy_(torch.eye(linear.weight.shape[0]))
    torch.testing.assert_close(proj(batch), twin(batch))


@pytest.mark.skipif("category" not in SEARCHERS, reason="the category searcher is not registered")
def test_twin_hard_is_twin_after_category_search(make_model, batch) -> None:
    # "TWIN (hard)" changes the search, not the model: search = { method = "category", k = K }.
    twin = make_model("twin")
    searched = search_stage(batch, twin, SearchConfig(method="category", k=3))
    same = (batch.history_category[..., -1] == batch.target_category[:, None, -1]) & batch.history_mask
    assert (searched.history_mask.sum(1) == same.sum(1).clamp(max=3)).all()
    assert torch.isfinite(twin(searched)).all()


@pytest.mark.parametrize("params", list(VARIANTS.values()), ids=list(VARIANTS))
def test_variants_keep_the_model_contract(make_model, batch, pad_history, params: dict) -> None:
    model = make_model("twin", aux_loss=True, **params)
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


def train_with_search_and_score(name: str, steps: int = 200, k: int = 8, **params: object) -> float:
    """Adam at lr 1e-2 (DARE's protocol), soft search to K, aux loss on; test AUC on a fresh planted sample."""
    train, test = planted_batch(4096, seed=1), planted_batch(1024, seed=2)
    torch.manual_seed(0)
    model = build_model(
        name, num_items=200, num_categories=20, taxonomy_levels=1, dim=8, head_hidden=(32, 16), aux_hidden=(32,),
        aux_loss=True, **params,
    )  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    search = SearchConfig(method="soft", k=k)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        rows = torch.randint(0, len(train), (128,), generator=g)
        batch = Batch(**{n: v[rows] for n, v in train.fields().items()})
        loss = F.binary_cross_entropy_with_logits(model(search_stage(batch, model, search)), batch.label)
        loss = loss + F.binary_cross_entropy_with_logits(model.aux_logits(batch), batch.label)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        model.eval()
        return auc(test.label.numpy(), model(search_stage(test, model, search)).numpy())


def test_twin_learns_whether_the_targets_category_is_recent() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is faster and immune to a busy machine
    try:
        score = train_with_search_and_score("twin")
    finally:
        torch.set_num_threads(threads)
    assert score > 0.8, f"TWIN test AUC {score:.3f}"
