"""Target-Decoupled SASRec: causality, padding, per-goal user vectors, once-per-request scoring, the sampled-softmax
path, the BPR and CROLoss options, and learning a sequential pattern a mean-pooled user tower cannot."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from longrec.data.batch import Batch
from longrec.eval.metrics import recall_at_k
from longrec.models import TDSASRecConfig, build_model
from longrec.models.losses import bpr_loss, croloss, sampled_softmax_loss

NUM_GOALS = 3


@pytest.fixture
def sasrec(make_model):
    return make_model("td_sasrec", num_blocks=2, num_heads=2)


def candidates_for(batch: Batch, C: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """C candidate items [B, C], their goals [B, C] (every goal appears) and category paths [B, C, M]."""
    g = torch.Generator().manual_seed(seed)
    B = len(batch)
    items = torch.randint(1, 50, (B, C), generator=g)
    goals = torch.randint(0, NUM_GOALS, (B, C), generator=g)
    goals[0] = torch.arange(C) % NUM_GOALS
    categories = torch.stack([torch.randint(1, 6, (B, C), generator=g), torch.randint(6, 20, (B, C), generator=g)], -1)
    return items, goals, categories


# --- config -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "match"),
    [
        (
            {"num_heads": 5},
            r"TDSASRecConfig\.num_heads must divide the model width E = dim·\(1 \+ taxonomy_levels\) = 16",
        ),
        ({"num_goals": 0}, r"TDSASRecConfig\.num_goals must be an int >= 1 \(goal vocabulary size"),
        ({"tdpe": "split"}, r"TDSASRecConfig\.tdpe must be one of shared, separate, shared_delta\. Got 'split'"),
        ({"num_blocks": 0}, r"TDSASRecConfig\.num_blocks must be a positive int\. Got 0 instead\."),
        ({"dropout": 1.0}, r"TDSASRecConfig\.dropout must be a float in \[0, 1\)\. Got 1\.0 instead\."),
        ({"temporal": "clock"}, r"TDSASRecConfig\.temporal must be one of position, time_gap, both\. Got 'clock'"),
        ({"scoring": "cosine"}, r"TDSASRecConfig\.scoring must be one of dot, mlp\. Got 'cosine' instead\."),
        ({"loss": "warp"}, r"TDSASRecConfig\.loss must be one of bce, sampled_softmax, bpr, croloss\. Got 'warp'"),
        ({"loss": "sampled_softmax", "scoring": "mlp"}, r"needs scoring = 'dot'\. Got scoring = 'mlp' instead"),
        ({"loss": "croloss", "scoring": "mlp"}, r"loss = 'croloss' scores candidates by <U, v> and needs scoring"),
        ({"loss": "croloss", "croloss_alpha": -1.0}, r"croloss_alpha must be a float >= 0 .*Got -1\.0 instead\."),
        ({"loss": "croloss", "croloss_kernel": "erf"}, r"croloss_kernel must be one of sigmoid, softplus, exp, hinge"),
        ({"loss": "croloss", "croloss_lambda": 1}, r"croloss_lambda must be true or false\. Got 1 instead\."),
        (
            {"loss": "bpr", "croloss_alpha": 2.0},
            r"TDSASRecConfig\.croloss_alpha = 2\.0 is read only under loss = 'croloss'\. Got loss = 'bpr'",
        ),
        ({"temperature": 0}, r"TDSASRecConfig\.temperature must be a positive float\. Got 0 instead\."),
        ({"num_positions": 1}, r"TDSASRecConfig\.num_positions must be an int >= 2\. Got 1 instead\."),
        ({"head_hidden": (8, 0)}, r"TDSASRecConfig\.head_hidden\[1\] must be a positive int"),
    ],
)
def test_config_rejects_bad_values(params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TDSASRecConfig(**{"num_items": 50, **params})


def test_reads_the_time_delta_only_when_it_encodes_time_gaps(make_model) -> None:
    assert "history_time_delta" not in make_model("td_sasrec").reads
    assert "history_time_delta" in make_model("td_sasrec", temporal="time_gap").reads


# --- the encoder --------------------------------------------------------------------------------------------------


def test_changing_event_j_leaves_the_outputs_before_j_unchanged(sasrec, batch) -> None:
    out = sasrec.encode(batch)  # [B, L, E]
    L = batch.history.shape[1]
    for j in (3, 7, L - 1):
        history = batch.history.clone()
        history[:, j] = torch.where(batch.history_mask[:, j], batch.history[:, j] % 49 + 1, 0)  # another real item
        new = sasrec.encode(batch.replace(history=history))
        assert torch.equal(new[:, :j], out[:, :j]), f"event {j} reached an earlier output"
        real = batch.history_mask[:, j]
        assert (new[real, j:] != out[real, j:]).any(-1).all(), "event j must reach itself and every later output"


def test_encoder_outputs_are_zero_on_padding_and_ignore_ids_under_it(sasrec, batch, pad_history) -> None:
    out = sasrec.encode(batch)  # [B, L, E]
    assert (out[~batch.history_mask] == 0).all() and torch.isfinite(out).all()
    noisy = batch.replace(history=torch.where(batch.history_mask, batch.history, 7))
    torch.testing.assert_close(sasrec.encode(noisy), out, rtol=0, atol=0)
    torch.testing.assert_close(sasrec.encode(pad_history(batch, 4))[:, 4:], out)
    torch.testing.assert_close(sasrec.user_vectors(pad_history(batch, 4)), sasrec.user_vectors(batch))


def test_an_empty_history_gives_finite_user_vectors_that_depend_on_the_goal_only(sasrec, batch) -> None:
    u = sasrec.user_vectors(batch)  # [B, T, E]
    empty = ~batch.history_mask.any(1)
    assert torch.isfinite(u).all() and empty.sum() == 1
    none = batch.replace(history=torch.zeros_like(batch.history), history_mask=torch.zeros_like(batch.history_mask))
    torch.testing.assert_close(sasrec.user_vectors(none), u[empty].expand_as(u))


def test_each_goal_has_its_own_user_vector(sasrec, batch) -> None:
    u = sasrec.user_vectors(batch)  # [B, T, E]
    assert u.shape == (len(batch), NUM_GOALS, sasrec.embedding.out_dim)
    for a in range(NUM_GOALS):
        for b in range(a + 1, NUM_GOALS):
            assert ((u[:, a] - u[:, b]).abs().amax(-1) > 1e-4).all(), f"goals {a} and {b} share user vectors"
    # forward scores batch.target with the vector of batch.goal.
    for goal in range(NUM_GOALS):
        with_goal = batch.replace(goal=torch.full_like(batch.goal, goal))
        v = sasrec.embedding(batch)[1]
        expected = (u[:, goal] * v).sum(-1) + sasrec.goal_bias.weight[goal, 0]
        torch.testing.assert_close(sasrec(with_goal), expected)


def temporal_parameters_touched(model, batch: Batch, goal: int) -> torch.Tensor:
    """Which entries of the position and time-gap tables get a gradient from goal `goal`'s user vectors."""
    model.zero_grad()
    model.user_vectors(batch)[:, goal].pow(2).sum().backward()
    tables = [t for t in (model.position_table, model.gap_table) if t is not None]
    return torch.cat([p.grad.flatten() != 0 for t in tables for p in t.parameters()])


@pytest.mark.parametrize("temporal", ["position", "both"])
def test_separate_positional_tables_are_independent_across_goals(make_model, batch, temporal: str) -> None:
    model = make_model("td_sasrec", tdpe="separate", temporal=temporal)
    touched = [temporal_parameters_touched(model, batch, goal) for goal in range(NUM_GOALS)]
    assert all(t.any() for t in touched)
    for a in range(NUM_GOALS):
        for b in range(a + 1, NUM_GOALS):
            assert not (touched[a] & touched[b]).any(), f"goals {a} and {b} share temporal parameters"


@pytest.mark.parametrize("tdpe", ["shared", "shared_delta"])
def test_shared_modes_share_the_temporal_table_across_goals(make_model, batch, tdpe: str) -> None:
    model = make_model("td_sasrec", tdpe=tdpe)
    touched = [temporal_parameters_touched(model, batch, goal) for goal in (0, 1)]
    assert (touched[0] & touched[1]).any()
    if tdpe == "shared_delta":  # the per-goal delta starts at 0: at init it equals the shared mode
        shared = make_model("td_sasrec", tdpe="shared")
        torch.testing.assert_close(model.user_vectors(batch), shared.user_vectors(batch))


def test_time_gaps_change_the_output_only_with_time_gap_encoding(make_model, batch) -> None:
    later = batch.replace(history_time_delta=batch.history_time_delta * 50)
    gap, position = make_model("td_sasrec", temporal="time_gap"), make_model("td_sasrec")
    real = batch.history_mask.any(1)
    assert (gap(later)[real] != gap(batch)[real]).all()
    torch.testing.assert_close(position(later), position(batch), rtol=0, atol=0)
    torch.testing.assert_close(position(batch.replace(history_position=None)), position(batch), rtol=0, atol=0)


# --- scoring ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scoring", ["dot", "mlp"])
def test_scoring_candidates_once_per_request_equals_forward_per_candidate(make_model, batch, scoring: str) -> None:
    model = make_model("td_sasrec", scoring=scoring, num_heads=2)
    items, goals, categories = candidates_for(batch)
    scores = model.score_candidates(batch, items, goals, categories)  # [B, C]
    assert scores.shape == items.shape and torch.isfinite(scores).all()
    for c in range(items.shape[1]):
        one = batch.replace(target=items[:, c], goal=goals[:, c], target_category=categories[:, c])
        torch.testing.assert_close(scores[:, c], model(one))


def test_score_candidates_runs_the_user_side_once_per_goal_not_per_candidate(sasrec, batch) -> None:
    items, goals, categories = candidates_for(batch, C=7)
    calls = []
    handle = sasrec.blocks[0].register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    sasrec.score_candidates(batch, items, goals, categories)
    handle.remove()
    assert calls == [len(batch) * NUM_GOALS]  # one pass over B·G streams, G = goals used <= T, whatever C is


def test_score_candidates_needs_candidate_categories_when_the_model_uses_them(sasrec, batch) -> None:
    items, goals, _ = candidates_for(batch)
    with pytest.raises(ValueError, match=r"score_candidates needs candidate_category \[B, C, M\] = \[6, 5, 2\]"):
        sasrec.score_candidates(batch, items, goals)


def test_bce_is_the_default_and_sampled_softmax_is_opt_in(sasrec, make_model, batch) -> None:
    assert sasrec.loss(batch) is None
    model = make_model("td_sasrec", loss="sampled_softmax", temperature=0.5)
    model.train()
    loss = model.loss(batch)
    t = model.embedding(batch)[1]
    u = model.user_vectors(batch)[torch.arange(len(batch)), batch.goal]  # [B, E]
    pos = batch.label > 0.5
    expected = sampled_softmax_loss(
        u[pos], t[pos], t, temperature=0.5, positive_ids=batch.target[pos], negative_ids=batch.target
    )
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert model.query_tokens.weight.grad.abs().sum() > 0 and model.embedding.item_embedding.weight.grad.abs().sum() > 0
    no_positive = model.loss(batch.replace(label=torch.zeros_like(batch.label)))
    assert no_positive.item() == 0 and no_positive.requires_grad


@pytest.mark.parametrize("loss", ["bpr", "croloss"])
def test_bpr_and_croloss_rank_each_positive_against_every_target_of_the_batch(make_model, batch, loss: str) -> None:
    extra = {"croloss_alpha": 1.5, "croloss_kernel": "sigmoid", "croloss_lambda": True} if loss == "croloss" else {}
    model = make_model("td_sasrec", loss=loss, temperature=0.5, **extra)
    model.train()
    got = model.loss(batch)
    t = model.embedding(batch)[1]
    u = model.user_vectors(batch)[torch.arange(len(batch)), batch.goal]  # [B, E]
    pos = batch.label > 0.5
    args = (u[pos], t[pos], t)
    ids = {"positive_ids": batch.target[pos], "negative_ids": batch.target, "temperature": 0.5}
    if loss == "bpr":
        expected = bpr_loss(*args, **ids)
    else:
        expected = croloss(*args, alpha=1.5, kernel="sigmoid", lambda_method=True, **ids)
        assert got.item() != pytest.approx(croloss(*args, **ids).item(), rel=1e-3)  # the options reach the loss
    torch.testing.assert_close(got, expected)
    got.backward()
    assert model.query_tokens.weight.grad.abs().sum() > 0 and model.embedding.item_embedding.weight.grad.abs().sum() > 0


# --- learning -----------------------------------------------------------------------------------------------------


def pattern_batch(n: int, g: torch.Generator, successor: torch.Tensor, L: int = 8) -> Batch:
    """Random histories; the positive is the successor (a fixed permutation) of the most recent item."""
    history = torch.randint(1, successor.numel(), (n, L), generator=g)  # [N, L]
    return Batch(
        history=history,
        history_mask=torch.ones(n, L, dtype=torch.bool),
        target=successor[history[:, -1]],
        label=torch.ones(n),
    )


def test_learns_the_next_item_after_a_pattern_better_than_a_mean_pooled_tower() -> None:
    V, C, steps = 40, 20, 60
    g = torch.Generator().manual_seed(0)
    successor = torch.cat([torch.zeros(1, dtype=torch.long), torch.randperm(V - 1, generator=g) + 1])  # [V]
    models = {}
    for encoder in ("causal", "mean"):
        torch.manual_seed(0)
        models[encoder] = build_model(
            "td_sasrec", num_items=V, dim=16, num_blocks=1, loss="sampled_softmax", init_std=0.1, encoder=encoder
        )
    batches = [pattern_batch(128, g, successor) for _ in range(steps)]
    for model in models.values():
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        for batch in batches:
            loss = model.loss(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    test = pattern_batch(256, g, successor)
    others = torch.stack([torch.randperm(V - 1, generator=g)[:C] + 1 for _ in range(len(test))])  # [N, C]
    others = torch.where(others == test.target[:, None], others.roll(1, 1), others)[:, : C - 1]  # [N, C-1]
    items = torch.cat([test.target[:, None], others], 1)  # [N, C], the true next item first
    recall = {}
    for encoder, model in models.items():
        model.eval()
        with torch.no_grad():
            scores = model.score_candidates(test, items, torch.zeros_like(items))  # [N, C]
        ranked = items.gather(1, scores.argsort(1, descending=True)).numpy()
        recall[encoder] = recall_at_k(ranked, test.target[:, None].numpy(), k=1)
    assert recall["causal"] > 0.8 and recall["causal"] > recall["mean"] + 0.3, recall


@pytest.mark.parametrize(
    "params", [{"loss": "bpr"}, {"loss": "croloss", "croloss_alpha": 1.5, "croloss_lambda": True}], ids=["bpr", "cro"]
)
def test_trains_with_bpr_and_croloss(params: dict) -> None:
    """The next-item pattern above, learned with the pairwise and the CROLoss options: Recall@1 among 20 goes from
    chance (~0.05) to most positives."""
    V, C = 40, 20
    g = torch.Generator().manual_seed(0)
    successor = torch.cat([torch.zeros(1, dtype=torch.long), torch.randperm(V - 1, generator=g) + 1])  # [V]
    torch.manual_seed(0)
    model = build_model("td_sasrec", num_items=V, dim=16, num_blocks=1, init_std=0.1, temperature=0.2, **params)
    test = pattern_batch(256, g, successor)
    others = torch.stack([torch.randperm(V - 1, generator=g)[:C] + 1 for _ in range(len(test))])  # [N, C]
    others = torch.where(others == test.target[:, None], others.roll(1, 1), others)[:, : C - 1]  # [N, C-1]
    items = torch.cat([test.target[:, None], others], 1)  # [N, C], the true next item first

    def recall() -> float:
        model.eval()
        with torch.no_grad():
            scores = model.score_candidates(test, items, torch.zeros_like(items))  # [N, C]
        model.train()
        return float((scores[:, 0:1] > scores[:, 1:]).all(1).float().mean())

    before = recall()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(60):
        loss = model.loss(pattern_batch(128, g, successor))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert before < 0.2 and recall() > 0.7, (before, recall())


def test_the_mean_encoder_is_blind_to_order_and_time(make_model, batch) -> None:
    model = make_model("td_sasrec", encoder="mean", temporal="both")
    assert not model.blocks and model.position_table is None and model.gap_table is None
    assert "history_time_delta" not in model.reads
    mask = batch.history_mask
    order = torch.stack([torch.cat([torch.nonzero(~m).flatten(), torch.nonzero(m).flatten().flip(0)]) for m in mask])
    shuffled = dataclasses.replace(
        batch,
        history=batch.history.gather(1, order),
        history_category=batch.history_category.gather(1, order[:, :, None].expand_as(batch.history_category)),
    )
    torch.testing.assert_close(model.user_vectors(shuffled), model.user_vectors(batch))


# --- target heads keyed by category (or by nothing) ---------------------------------------------------------------

HEADS = (3, 9, 12)  # category ids with a head of their own: 3 is a level-1 id, 9 and 12 level-2 ids (fixture ranges)


def reference_heads(paths: torch.Tensor) -> torch.Tensor:
    """The head of each path [..., M] by hand: the finest listed level's position in HEADS + 1, else 0 (shared)."""
    out = torch.zeros(paths.shape[:-1], dtype=torch.long)
    for index in torch.cartesian_prod(*[torch.arange(n) for n in paths.shape[:-1]]).reshape(-1, paths.dim() - 1):
        for category in paths[tuple(index)].tolist():  # coarse to fine
            if category in HEADS:
                out[tuple(index)] = HEADS.index(category) + 1
    return out


@pytest.fixture
def by_category(make_model):
    return make_model("td_sasrec", num_heads=2, target_key="category", head_categories=HEADS)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"target_key": "genre"}, r"TDSASRecConfig\.target_key must be one of goal, category, none\. Got 'genre'"),
        ({"head_categories": (3,)}, r"head_categories is read only under target_key = 'category'\. Got 1 ids"),
        (
            {"target_key": "category"},
            r"needs categories \(num_categories > 0\) and the ids .* Got num_categories = 20, 0",
        ),
        ({"target_key": "category", "head_categories": (3, 0)}, r"distinct category ids >= 1 \(0 = missing\)"),
        ({"target_key": "category", "head_categories": (3, 3)}, r"distinct category ids >= 1 .* Got \[3, 3\] instead"),
        ({"target_key": "category", "head_categories": ("3",)}, r"head_categories must be a list of category ids"),
    ],
)
def test_target_head_options_are_checked(params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TDSASRecConfig(**{"num_items": 50, "num_categories": 20, "taxonomy_levels": 2, **params})


def test_head_categories_outside_the_datas_categories_are_refused_when_the_model_is_built(make_model) -> None:
    from longrec.config import Config

    # an experiment file is checked without the data, so any id >= 1 passes there ...
    model = {"name": "td_sasrec", "target_key": "category", "head_categories": [3, 1369]}
    assert Config.from_dict({"model": model}).model.params["head_categories"] == (3, 1369)
    # ... and the model built for the data refuses an id the data does not have
    with pytest.raises(ValueError, match=r"in \[1, num_categories = 20\)\. Got \[20\] instead: were they listed"):
        make_model("td_sasrec", target_key="category", head_categories=(3, 20))


def test_category_heads_give_one_user_vector_per_listed_category_plus_a_shared_one(by_category, batch) -> None:
    assert by_category.config.num_targets == len(HEADS) + 1
    u = by_category.user_vectors(batch)  # [B, T, E]
    assert u.shape == (len(batch), len(HEADS) + 1, by_category.embedding.out_dim)
    # forward scores each row's target with the vector of its category's head and the bias of its goal
    paths = torch.tensor([[1, 9], [3, 7], [3, 12], [2, 7], [5, 6], [3, 9]])  # heads 2, 1, 3, 0, 0, 2
    rows = batch.replace(target_category=paths)
    assert reference_heads(paths).tolist() == [2, 1, 3, 0, 0, 2]
    with torch.no_grad():
        by_category.goal_bias.weight.copy_(torch.tensor([[0.1], [0.2], [0.3]]))
    v = by_category.embedding(rows)[1]  # [B, E]
    head = reference_heads(paths)
    expected = (u[torch.arange(len(batch)), head] * v).sum(-1) + by_category.goal_bias.weight[batch.goal, 0]
    torch.testing.assert_close(by_category(rows), expected)


def test_score_candidates_with_category_heads_equals_forward_and_runs_one_stream_per_head_used(
    by_category, batch
) -> None:
    items, goals, categories = candidates_for(batch, C=7)
    categories[:, :3] = torch.tensor([[3, 9], [1, 12], [4, 8]])  # heads 2, 3, 0 in every row
    calls = []
    handle = by_category.blocks[0].register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    scores = by_category.score_candidates(batch, items, goals, categories)  # [B, C]
    handle.remove()
    assert calls == [len(batch) * len(reference_heads(categories).unique())]
    for c in range(items.shape[1]):
        one = batch.replace(target=items[:, c], goal=goals[:, c], target_category=categories[:, c])
        torch.testing.assert_close(scores[:, c], by_category(one))


def test_separate_positional_tables_are_independent_across_category_heads(make_model, batch) -> None:
    model = make_model("td_sasrec", target_key="category", head_categories=HEADS, temporal="both")
    touched = [temporal_parameters_touched(model, batch, head) for head in range(len(HEADS) + 1)]
    assert all(t.any() for t in touched)
    for a in range(len(touched)):
        for b in range(a + 1, len(touched)):
            assert not (touched[a] & touched[b]).any(), f"heads {a} and {b} share temporal parameters"


def test_target_key_none_is_one_query_whatever_the_goal_or_category(make_model, batch) -> None:
    model = make_model("td_sasrec", num_heads=2, target_key="none")
    assert model.config.num_targets == 1 and model.query_tokens.weight.shape[0] == 1
    with torch.no_grad():
        model.goal_bias.weight.copy_(torch.tensor([[0.1], [0.2], [0.3]]))
    other = batch.replace(goal=(batch.goal + 1) % NUM_GOALS, target_category=batch.target_category.flip(0))
    bias = model.goal_bias.weight[:, 0]
    torch.testing.assert_close(
        model(other) - bias[other.goal], model(batch.replace(target_category=other.target_category)) - bias[batch.goal]
    )


def test_category_heads_survive_the_config_json_round_trip(by_category, batch) -> None:
    saved = json.loads(json.dumps(dataclasses.asdict(by_category.config)))
    assert saved["head_categories"] == list(HEADS)
    rebuilt = build_model("td_sasrec", **saved).eval()
    assert rebuilt.config == by_category.config
    rebuilt.load_state_dict(by_category.state_dict())
    torch.testing.assert_close(rebuilt(batch), by_category(batch), rtol=0, atol=0)
