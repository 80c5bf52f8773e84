"""DIN with a learned top-K (the DARE reference's DIN): its MLP score selects the K behaviours it attends to."""

from __future__ import annotations

import torch

from longrec.models import build_model
from longrec.models.din_topk import DINTopK
from longrec.search.config import SearchConfig
from tests.models.conftest import make_batch
from tests.models.test_din import planted_batch, train_and_score


def _model(**params: object) -> DINTopK:
    torch.manual_seed(0)
    model = build_model("din_topk", num_items=50, num_categories=20, taxonomy_levels=2, dim=4, **params)
    assert isinstance(model, DINTopK)
    return model.eval()


def test_the_k_behaviours_with_the_highest_learned_scores_are_the_ones_attended() -> None:
    model, batch = _model(k=3), make_batch()
    with torch.no_grad():
        v, e = model._embed(batch)
        scores = model._scores(v, e).masked_fill(~batch.history_mask, float("-inf"))  # [B, L]
        weights = model.attention_weights(batch)  # [B, L]
    for row in range(len(batch)):
        real = int(batch.history_mask[row].sum())
        expected = set(scores[row].topk(min(3, real)).indices.tolist()) if real else set()
        assert set(weights[row].nonzero().flatten().tolist()) == expected
        if real:
            torch.testing.assert_close(weights[row].sum(), torch.tensor(1.0))  # a softmax over the K kept


def test_with_k_at_least_l_the_main_pooling_is_the_full_softmax() -> None:
    model, batch = _model(k=64, aux_loss=True), make_batch()
    with torch.no_grad():
        _, top, full, _ = model._pooled(batch)
    torch.testing.assert_close(top, full)


def test_padding_is_never_selected_even_when_a_history_is_shorter_than_k() -> None:
    model, batch = _model(k=10), make_batch()
    with torch.no_grad():
        weights = model.attention_weights(batch)
    assert not weights[~batch.history_mask].any()


def test_the_fused_step_equals_the_two_heads_called_apart() -> None:
    model, batch = _model(k=3, aux_loss=True), make_batch()
    with torch.no_grad():
        both = model.forward_with_aux(batch, SearchConfig())
        assert both is not None
        torch.testing.assert_close(both[0], model(batch))
        torch.testing.assert_close(both[1], model.aux_logits(batch))
        assert model.forward_with_aux(batch, SearchConfig(method="latest", k=3)) is None  # searched batches: no


def test_din_topk_learns_a_planted_target_match() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train, test = planted_batch(2048, seed=1), planted_batch(1024, seed=2)
        auc = train_and_score("din_topk", train, test, k=5, aux_loss=True)
    finally:
        torch.set_num_threads(threads)
    assert auc > 0.85, f"DIN-top-K test AUC {auc:.3f}"


def test_the_time_embedding_is_an_option_off_by_default_as_in_the_reference() -> None:
    batch = make_batch()
    plain, timed = _model(), _model(use_time=True)
    assert plain.time_embedding is None and timed.time_embedding is not None
    with torch.no_grad():
        v, e = plain._embed(batch)
        tv, te = timed._embed(batch)
    assert v.shape[-1] == e.shape[-1] == 4 * 3  # item + 2 category levels at D = 4: the score is divided by 12
    assert tv.shape[-1] == te.shape[-1] == 4 * 4  # + time
    torch.testing.assert_close(te[..., :12], e)  # the same semantic part; time appended last
    assert "time_embedding.weight" not in plain.state_dict()
