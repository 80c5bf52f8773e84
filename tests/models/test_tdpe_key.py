"""The TDPE key (`tdpe_key`): which target-side field picks the temporal tables (goal, the target's category at a
taxonomy level, the scene, an extra id column). The key selects the rows, shared mode ignores it, a bad key is a config
error and an id outside the table is refused at the edge; TDPE keyed by category recovers a category-specific decay
where nothing else in the model sees the category, and a shared table already does where TIN embeds the category."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from longrec.data.batch import Batch, check_batch
from longrec.models import build_model
from longrec.models.contract import KeyedTemporal
from longrec.models.tdpe import TargetDecoupledEncoding, TDPEKey, tdpe_key_of
from longrec.models.temporal import add_temporal_encoding
from tests.models.conftest import SIZES, fit_and_auc
from tests.models.test_tdpe import DECAY_ITEMS, DECAY_L, decay_batch

FAMILY = ["tin", "stacked_tin", "dsi_tin"]
R, D = 5, 3  # position rows per key value, width


def options(**overrides: Any) -> SimpleNamespace:
    """The key fields of a config (goal key, 3 goals, 20 categories over 2 levels, 4 scenes, two extra columns)."""
    fields = {
        "tdpe_key": "goal",
        "tdpe_level": 0,
        "num_goals": 3,
        "num_categories": 20,
        "taxonomy_levels": 2,
        "num_scenes": 4,
        "num_extra": (7, 9),
        "extra_fields": ("brand", "seller"),
    }
    return SimpleNamespace(**(fields | overrides))


# --- which key a config names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, TDPEKey("goal", 3)),
        ({"tdpe_key": "category"}, TDPEKey("category", 20, column=1)),  # level 0 = the finest (M = 2)
        ({"tdpe_key": "category", "tdpe_level": 1}, TDPEKey("category", 20, column=0)),  # the coarsest
        ({"tdpe_key": "category", "tdpe_level": 2}, TDPEKey("category", 20, column=1)),
        ({"tdpe_key": "scene"}, TDPEKey("scene", 4)),
        ({"tdpe_key": "seller"}, TDPEKey("seller", 9, column=1)),  # extra column 1, its own vocabulary
    ],
)
def test_the_key_is_sized_from_the_data_vocabulary_it_names(overrides: dict[str, Any], expected: TDPEKey) -> None:
    assert tdpe_key_of("TINConfig", options(**overrides)) == expected


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (
            {"tdpe_key": "categroy"},
            r"TINConfig\.tdpe_key must be one of goal, category, scene or an extra id column "
            r"named in extra_fields \(brand, seller\)\. Got 'categroy' instead \(did you mean 'category'\?\)",
        ),
        ({"tdpe_key": "category", "tdpe_level": 3}, r"tdpe_level must be in \[0, taxonomy_levels = 2\].*Got 3"),
        ({"tdpe_key": "category", "tdpe_level": -1}, r"tdpe_level must be a non-negative int\. Got -1"),
        ({"tdpe_level": 1}, r"must be 0 with tdpe_key = 'goal'\. Got 1 instead"),
        ({"tdpe_key": "category", "num_categories": 0, "taxonomy_levels": 0}, r"the model has none"),
        ({"tdpe_key": "scene", "num_scenes": 0}, r"tdpe_key = 'scene' needs num_scenes >= 2.*Got 0 instead"),
        ({"tdpe_key": "seller", "num_extra": (7,)}, r"'seller' is column 1 of extra_fields.*num_extra.*= \[7\]"),
    ],
)
def test_a_bad_key_is_a_config_error(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tdpe_key_of("TINConfig", options(**overrides))


@pytest.mark.parametrize("name", FAMILY)
def test_every_tdpe_model_refuses_an_unknown_key_when_its_config_is_built(name: str) -> None:
    with pytest.raises(ValueError, match=r"Config\.tdpe_key must be one of .*Got 'brand' instead"):
        build_model(name, num_items=50, tdpe_key="brand")  # an extra column the config does not name


# --- the key selects the rows ---------------------------------------------------------------------------------------


def keyed_batch() -> Batch:
    """Two examples, three behaviours each (positions 3, 2, 1); target categories (coarse, fine) = (3, 7), (1, 4)."""
    return Batch(
        history=torch.tensor([[5, 6, 7], [8, 9, 10]]),
        history_mask=torch.ones(2, 3, dtype=torch.bool),
        target=torch.tensor([1, 2]),
        target_category=torch.tensor([[3, 7], [1, 4]]),
        goal=torch.tensor([2, 1]),
        history_position=torch.tensor([[3, 2, 1], [3, 2, 1]]),
    )


@pytest.mark.parametrize(
    ("field", "level", "expected_key"), [("category", 1, [3, 1]), ("category", 2, [7, 4]), ("goal", 0, [2, 1])]
)
def test_the_key_selects_the_rows_key_times_buckets_plus_bucket(field: str, level: int, expected_key: list) -> None:
    key = tdpe_key_of("TINConfig", options(tdpe_key=field, tdpe_level=level))
    table = TargetDecoupledEncoding(R, D, key.size, "separate")
    with torch.no_grad():
        table.weight.copy_(torch.arange(key.size * R * D, dtype=torch.float).view(-1, D))  # row r holds 3r, 3r+1, 3r+2
    batch = keyed_batch()
    e, t = torch.zeros(2, 3, D), torch.zeros(2, D)
    e_tilde, t_tilde = add_temporal_encoding(batch, e, t, table, None, SimpleNamespace(num_positions=R), key)
    tau = torch.tensor(expected_key)  # [B]
    rows = tau.unsqueeze(1) * R + torch.tensor([3, 2, 1])  # [B, L] by hand: τ·R + position
    torch.testing.assert_close(e_tilde, table.weight[rows], rtol=0, atol=0)
    torch.testing.assert_close(t_tilde, table.weight[tau * R], rtol=0, atol=0)  # the target: bucket 0 of its key


def test_shared_mode_ignores_the_key() -> None:
    batch, e, t = keyed_batch(), torch.randn(2, 3, D), torch.randn(2, D)
    torch.manual_seed(0)
    table = TargetDecoupledEncoding(R, D, 20, "shared")
    key = tdpe_key_of("TINConfig", options(tdpe_key="category"))
    recategorised = batch.replace(target_category=torch.tensor([[9, 11], [2, 19]]), goal=None)
    out = add_temporal_encoding(batch, e, t, table, None, SimpleNamespace(num_positions=R), key)
    for other in (recategorised, batch.replace(target_category=None)):  # not even read
        again = add_temporal_encoding(other, e, t, table, None, SimpleNamespace(num_positions=R), key)
        torch.testing.assert_close(again, out, rtol=0, atol=0)


@pytest.mark.parametrize("name", FAMILY)
def test_a_shared_model_with_a_category_key_is_the_plain_model(make_model, batch, name: str) -> None:
    plain, keyed = make_model(name, temporal="both"), make_model(name, temporal="both", tdpe_key="category")
    torch.testing.assert_close(keyed(batch), plain(batch), rtol=0, atol=0)
    assert keyed.reads == plain.reads and list(keyed.state_dict()) == list(plain.state_dict())
    assert isinstance(keyed, KeyedTemporal) and keyed.temporal_key is None  # one table serves every target


@pytest.mark.parametrize("name", FAMILY)
@pytest.mark.parametrize(
    ("key", "field"), [("category", "target_category"), ("scene", "scene"), ("brand", "target_extra")]
)
def test_keyed_models_read_their_key_and_keep_the_contract(make_model, batch, pad_history, name, key, field) -> None:
    g = torch.Generator().manual_seed(0)
    batch = batch.replace(target_extra=torch.randint(0, 7, (len(batch), 1), generator=g))
    extra = {"num_scenes": 4, "num_extra": (7,), "extra_fields": ("brand",)}
    model = make_model(name, tdpe="separate", tdpe_key=key, temporal="both", **extra)
    size, column = {"category": (20, 1), "scene": (4, 0), "brand": (7, 0)}[key]  # category: the finest of 2 levels
    assert field in model.reads and model.temporal_key == TDPEKey(key, size, column)
    with pytest.raises(ValueError, match=rf"reads batch\.{field}, but it is None"):
        check_batch(batch.replace(**{field: None}), reads=model.reads)
    logits = model(batch)
    torch.testing.assert_close(model(pad_history(batch, 3)), logits)
    one = Batch(**{k: v[1:2] for k, v in batch.fields().items()})
    torch.testing.assert_close(model(one), logits[1:2])
    model.train()
    F.binary_cross_entropy_with_logits(model(batch), batch.label).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient reached: {missing}"


@pytest.mark.parametrize("name", FAMILY)
def test_the_category_changes_the_temporal_encoding_only_under_a_category_key(make_model, batch, name: str) -> None:
    # Same embeddings, other fine category: only a model whose tables are keyed by the fine level reads it there.
    keyed = make_model(name, tdpe="separate", tdpe_key="category", tdpe_level=2, temporal="both")
    coarse = make_model(name, tdpe="separate", tdpe_key="category", tdpe_level=1, temporal="both")
    moved = batch.target_category.clone()
    moved[:, 1] = 6 + (moved[:, 1] - 6 + 1) % (SIZES["num_categories"] - 6)  # another fine category, same coarse
    assert isinstance(keyed, KeyedTemporal) and isinstance(coarse, KeyedTemporal)
    key_f, key_c = keyed.temporal_key, coarse.temporal_key
    assert key_f is not None and key_c is not None
    assert not torch.equal(key_f.ids(batch.replace(target_category=moved)), key_f.ids(batch))
    torch.testing.assert_close(key_c.ids(batch.replace(target_category=moved)), key_c.ids(batch), rtol=0, atol=0)


def test_a_key_outside_the_table_is_refused_at_the_edge(batch) -> None:
    sizes = SIZES | {"num_scenes": 3, "num_extra": [7]}
    check_batch(batch, sizes=sizes)  # in range
    bad_category = batch.target_category.clone()
    bad_category[4, 1] = SIZES["num_categories"]  # one past the table
    expected = r"batch\.target_category holds 20 at \[4, 1\], outside its vocabulary \(ids must be in \[0, 20\)\)"
    with pytest.raises(ValueError, match=expected):
        check_batch(batch.replace(target_category=bad_category), sizes=sizes)
    with pytest.raises(ValueError, match=r"batch\.goal holds -1 at \[0\]"):
        check_batch(batch.replace(goal=torch.tensor([-1, 1, 2, 0, 1, 2])), sizes=sizes)
    with pytest.raises(ValueError, match=r"batch\.target_extra\[\.\.\., 0\] holds 7 at \[2\]"):
        check_batch(batch.replace(target_extra=torch.tensor([[1], [2], [7], [0], [6], [3]])), sizes=sizes)
    with pytest.raises(ValueError, match=r"batch\.scene holds 3 at"):
        check_batch(batch.replace(scene=torch.full((6,), 3)), sizes=sizes)


def test_the_default_goal_key_keeps_the_goal_tdpe_bit_for_bit(make_model, batch) -> None:
    default = make_model("tin", tdpe="separate", temporal="both")
    explicit = make_model("tin", tdpe="separate", temporal="both", tdpe_key="goal")
    torch.testing.assert_close(explicit(batch), default(batch), rtol=0, atol=0)
    assert default.temporal_key == TDPEKey("goal", SIZES["num_goals"]) and default.reads[-1] == "goal"


# --- TDPE by category recovers a category-specific decay ------------------------------------------------------------


def decay_curves(model: nn.Module) -> dict[int, list[float]]:
    """Mean attention on the matching behaviour by its position 1..L, per target category (1 = news, 2 = hiking)."""
    with torch.no_grad():
        return {
            c: [
                float(
                    model.attention_weights(decay_batch(512, 3, p, True, c, key="category")).view(512, -1)[:, -p].mean()
                )
                for p in range(1, DECAY_L + 1)
            ]
            for c in (1, 2)
        }


def trained_on_category_decay(name: str, **params: Any) -> tuple[nn.Module, float]:
    torch.manual_seed(0)
    model = build_model(
        name, num_items=DECAY_ITEMS, num_categories=3, taxonomy_levels=1, dim=8, head_hidden=(16,), **params
    )
    train, test = decay_batch(4096, 1, key="category"), decay_batch(2048, 2, key="category")
    return model, fit_and_auc(model, train, test, 300, lr=2e-2)


def test_tdpe_by_category_recovers_a_category_specific_decay_in_its_attention() -> None:
    # TIN over the item only (DSI-TIN with the one group ["item"]): the category reaches the model through the TDPE
    # key alone, so the shared table (or a key that is ignored: one table for both categories) cannot tell them apart.
    # Measured: keyed by category test AUC 0.96, news' attention on the match 0.58 at positions 1-2 and 0.31-0.35
    # further back, hiking's 0.43-0.44 everywhere; shared 0.79, one curve for both categories.
    item_only = {"groups": [["item"]]}
    keyed, keyed_auc = trained_on_category_decay("dsi_tin", tdpe="separate", tdpe_key="category", **item_only)
    shared, shared_auc = trained_on_category_decay("dsi_tin", tdpe="separate", **item_only)  # keyed by goal: none here
    assert keyed_auc > 0.93 and shared_auc < 0.85, f"by category {keyed_auc:.3f}, one table {shared_auc:.3f}"
    curves = decay_curves(keyed)
    news, hiking = curves[1], curves[2]
    assert max(news[3:]) / min(news[:2]) < 0.7, f"news must attend less to an old match: {news}"
    assert min(hiking[3:]) / max(hiking[:2]) > 0.85, f"hiking must attend to a match at any position: {hiking}"
    one = decay_curves(shared)
    torch.testing.assert_close(torch.tensor(one[1]), torch.tensor(one[2]))  # the category never reaches it


def test_a_shared_table_already_tilts_tins_decay_by_the_embedded_category() -> None:
    # TIN embeds the target's category in v_t, and its attention logit holds <p_{f(x_i)}, v_t>: one shared table can
    # decay differently per category through the category's embedding. Measured: test AUC 0.996 shared and by
    # category; news' attention on the match 0.76 at positions 1-2 and 0.11-0.15 further back, hiking's ~0.4
    # everywhere, with the shared table. Keying TDPE by category adds no information TIN lacked here.
    shared, shared_auc = trained_on_category_decay("tin")
    _, keyed_auc = trained_on_category_decay("tin", tdpe="separate", tdpe_key="category")
    assert shared_auc > 0.97 and keyed_auc > 0.97, f"shared {shared_auc:.3f}, by category {keyed_auc:.3f}"
    curves = decay_curves(shared)
    news, hiking = curves[1], curves[2]
    assert max(news[3:]) / min(news[:2]) < 0.5 and min(hiking[3:]) / max(hiking[:2]) > 0.85, f"{news}, {hiking}"
