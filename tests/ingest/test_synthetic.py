"""Tests for the synthetic generator: determinism, schema, no leakage, each planted mechanism, atomic write, config."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from longrec.files import OutputError
from longrec.ingest.schema import CATEGORICAL_COLUMNS, check_log
from longrec.ingest.synthetic import ACTIONS, MECHANISMS, SyntheticConfig, SyntheticLog, generate, generator
from longrec.ingest.synthetic.behaviour import Events
from longrec.ingest.synthetic.mechanisms import Mechanism, Planted, SortedIndex
from longrec.ingest.synthetic.world import World

# A tiny world with many collisions: few categories/SPUs and a large ad share, so every mechanism fires.
TINY = SyntheticConfig(
    num_users=12,
    events_per_user=60,
    impressions_per_user=6,
    num_items=60,
    num_content_items=90,
    num_industries=3,
    num_categories=8,
    num_spus=16,
    num_content_tags=12,
    num_brands=5,
    ad_fraction=0.35,
    pair_pool=4,
    f_top_k=3,
    span_days=60.0,
    seed=7,
)
# Enough impressions for label statistics, still generated in ~0.1 s.
MEDIUM = dataclasses.replace(
    TINY,
    num_users=400,
    events_per_user=120,
    impressions_per_user=12,
    num_categories=30,
    num_spus=80,
    num_items=400,
    num_content_tags=60,
    num_content_items=600,
    pair_pool=6,
)


@pytest.fixture(scope="module")
def tiny() -> SyntheticLog:
    return generate(TINY)


def behaviours(log: pl.DataFrame) -> pl.DataFrame:
    return log.filter(pl.col("label").is_null())


def test_same_seed_gives_identical_frames_and_another_seed_differs(tiny: SyntheticLog) -> None:
    again = generate(TINY)
    assert again.log.equals(tiny.log)
    assert again.truth.equals(tiny.truth)
    assert again.taxonomy_map.equals(tiny.taxonomy_map)
    other = generate(dataclasses.replace(TINY, seed=8))
    assert not other.log.equals(tiny.log)
    assert not other.truth.equals(tiny.truth)


def test_log_is_canonical_with_labelled_ad_impressions(tiny: SyntheticLog) -> None:
    log = tiny.log
    schema = check_log(log, "synthetic")
    assert schema.taxonomy_levels == 3
    assert set(schema.categorical) == set(CATEGORICAL_COLUMNS)
    assert schema.has_label and schema.has_goal
    assert {"brand", "noise_tag"} <= set(schema.extra)
    assert log["event_id"].n_unique() == log.height
    assert log["event_id"].to_list() == list(range(log.height))
    impressions = log.filter(pl.col("label").is_not_null())
    assert impressions.height == TINY.num_users * TINY.impressions_per_user
    assert impressions.select((pl.col("domain") == "ad").all() & (pl.col("action") == "impression").all()).item()
    assert set(impressions["goal"].unique()) <= set(TINY.goals)
    assert set(impressions["label"].unique()) <= {0, 1}
    behaviour = behaviours(log)
    assert behaviour["goal"].null_count() == behaviour.height
    ad_actions = set(behaviour.filter(pl.col("domain") == "ad")["action"].unique())
    content_actions = set(behaviour.filter(pl.col("domain") == "content")["action"].unique())
    assert ad_actions <= {"view", "click", "cart", "buy"} and "view" in ad_actions
    assert content_actions <= {"view", "like", "share"} and "view" in content_actions
    assert set(log["action"].unique()) <= set(ACTIONS)


def test_timestamps_are_sorted_within_each_user(tiny: SyntheticLog) -> None:
    log = tiny.log
    assert log["user_id"].is_sorted()
    unsorted = log.group_by("user_id").agg(pl.col("timestamp").diff().min().alias("step")).filter(pl.col("step") < 0)
    assert unsorted.height == 0
    assert sorted(log["user_id"].unique().to_list()) == list(range(1, TINY.num_users + 1))


def test_item_ids_of_ads_and_content_are_disjoint_ranges(tiny: SyntheticLog) -> None:
    ranges = tiny.log.group_by("domain").agg(pl.col("item_id").min().alias("lo"), pl.col("item_id").max().alias("hi"))
    bounds = {row["domain"]: (row["lo"], row["hi"]) for row in ranges.iter_rows(named=True)}
    assert bounds["ad"][0] >= 1 and bounds["ad"][1] <= TINY.num_items
    assert TINY.num_items < bounds["content"][0] and bounds["content"][1] <= TINY.num_items + TINY.num_content_items


def test_relevant_behaviours_belong_to_the_user_and_precede_the_impression(tiny: SyntheticLog) -> None:
    truth = tiny.truth.select("event_id", "user_id", "timestamp", "relevant").explode("relevant").drop_nulls()
    assert truth.height > 0
    joined = truth.join(
        tiny.log.select(pl.col("event_id").alias("relevant"), pl.col("user_id").alias("r_user"),
                        pl.col("timestamp").alias("r_time"), pl.col("label").alias("r_label")),
        on="relevant",
        how="left",
    )  # fmt: skip
    assert joined["r_user"].null_count() == 0
    assert (joined["r_user"] == joined["user_id"]).all()
    assert (joined["r_time"] < joined["timestamp"]).all()
    assert joined["r_label"].null_count() == joined.height  # only behaviours, never another impression
    truth_ids = tiny.truth["event_id"].to_list()
    assert truth_ids == tiny.log.filter(pl.col("label").is_not_null())["event_id"].to_list()


def test_content_reaches_only_levels_1_and_2_and_follows_the_taxonomy_map(tiny: SyntheticLog) -> None:
    log, mapping = tiny.log, tiny.taxonomy_map
    content = behaviours(log).filter(pl.col("domain") == "content")
    assert content.height > 0 and content["cat_3"].null_count() == content.height
    assert content["source_category"].str.starts_with("content:").all()
    assert mapping.filter(pl.col("domain") == "content")["cat_3"].null_count() == TINY.num_content_tags
    for domain in ("content", "ad"):
        rows = log.filter(pl.col("domain") == domain).select("source_category", "cat_1", "cat_2", "cat_3")
        mapped = rows.join(mapping, on="source_category", how="left", suffix="_map", nulls_equal=True)
        assert mapped["cat_1_map"].null_count() == 0, f"{domain}: source category missing from the map"
        for level in ("cat_1", "cat_2", "cat_3"):
            assert mapped[level].equals(mapped[f"{level}_map"], check_names=False), f"{domain} {level}"
    ad = log.filter(pl.col("domain") == "ad")
    assert ad["cat_3"].null_count() == 0 and ad["brand"].null_count() == 0
    assert (ad["source_category"] == "ad:" + ad["cat_3"].cast(pl.String)).all()


def test_brand_is_a_function_of_the_spu(tiny: SyntheticLog) -> None:
    ad = tiny.log.filter(pl.col("domain") == "ad")
    assert ad.group_by("cat_3").agg(pl.col("brand").n_unique())["brand"].max() == 1


def _oracle(data: SyntheticLog) -> pl.DataFrame:
    """Recompute every term and relevant set with a per-impression Python loop over the log (the reference)."""
    cfg, planted = data.config, data.planted
    quality = np.r_[0.0, np.asarray(planted["item_quality"])]
    factor = planted["goal_decay_factors"]
    history = {user: frame for (user,), frame in behaviours(data.log).partition_by("user_id", as_dict=True).items()}
    rows = []
    for row in data.truth.iter_rows(named=True):
        h = history[row["user_id"]].filter(pl.col("timestamp") < row["timestamp"])
        t, c2, c3 = row["timestamp"], row["cat_2"], row["cat_3"]
        out: dict[str, object] = {"event_id": row["event_id"]}
        same = h.filter(pl.col("cat_3") == c3)
        tau = planted["tau_days_by_category"][c2] * factor[row["goal"]]
        w = np.exp(-(t - same["timestamp"].to_numpy()) / (tau * 86400))
        out["term_a"] = cfg.weight_a * math.log1p(w.sum()) if cfg.on("a") else 0.0
        out["relevant_a"] = sorted(same["event_id"].to_numpy()[w >= cfg.relevance_min_weight]) if cfg.on("a") else []
        cont = h.filter((pl.col("domain") == "content") & (pl.col("cat_2") == c2))
        w = np.exp(-(t - cont["timestamp"].to_numpy()) / (cfg.content_tau_days * 86400))
        out["term_b"] = cfg.weight_b * math.log1p(w.sum()) if cfg.on("b") else 0.0
        out["relevant_b"] = sorted(cont["event_id"].to_numpy()[w >= cfg.relevance_min_weight]) if cfg.on("b") else []
        first, second = planted["pairs_by_category"][c2]
        b_rows = h.filter(pl.col("cat_2") == second).sort("timestamp", "event_id")
        a_rows = b_rows.head(0)
        if b_rows.height:
            a_rows = h.filter((pl.col("cat_2") == first) & (pl.col("timestamp") < b_rows["timestamp"][-1]))
            a_rows = a_rows.sort("timestamp", "event_id")
        present = cfg.on("d") and a_rows.height > 0
        out["term_d"] = cfg.weight_d * present
        out["relevant_d"] = sorted([a_rows["event_id"][-1], b_rows["event_id"][-1]]) if present else []
        recent = same.sort("timestamp", "event_id").tail(cfg.f_top_k)
        mean_q = float(quality[recent["item_id"].to_numpy()].mean()) if recent.height else 0.0
        out["term_f"] = cfg.weight_f * mean_q if cfg.on("f") else 0.0
        out["relevant_f"] = sorted(recent["event_id"]) if cfg.on("f") else []
        rows.append(out)
    return pl.DataFrame(rows, schema_overrides={f"relevant_{m}": pl.List(pl.Int64) for m in "abdf"}, orient="row")


@pytest.mark.parametrize("mechanisms", [("a", "b", "c", "d", "e", "f"), ("a", "d"), ()], ids=["all", "a+d", "none"])
def test_terms_and_relevant_sets_match_a_brute_force_oracle(tiny: SyntheticLog, mechanisms: tuple[str, ...]) -> None:
    data = tiny if len(mechanisms) == 6 else generate(dataclasses.replace(TINY, mechanisms=mechanisms))
    expected = _oracle(data)
    truth = data.truth
    for m in "abdf":
        np.testing.assert_allclose(truth[f"term_{m}"].to_numpy(), expected[f"term_{m}"].to_numpy(), atol=1e-9)
        assert truth[f"relevant_{m}"].to_list() == expected[f"relevant_{m}"].to_list(), m
    union = [sorted(set().union(*row)) for row in zip(*(expected[f"relevant_{m}"] for m in "abdf"), strict=True)]
    assert truth["relevant"].to_list() == union
    score = sum(expected[f"term_{m}"].to_numpy() for m in "abdf")
    np.testing.assert_allclose(truth["logit"].to_numpy(), data.planted["bias"] + score, atol=1e-9)
    np.testing.assert_allclose(truth["prob"].to_numpy(), 1 / (1 + np.exp(-truth["logit"].to_numpy())), atol=1e-12)
    if len(mechanisms) == 6:  # the tiny world is built so that every mechanism fires somewhere
        assert all((truth[f"term_{m}"] != 0).any() for m in "abdf")


def _check_against_oracle(data: SyntheticLog) -> None:
    expected = _oracle(data)
    truth = data.truth
    for m in "abdf":
        np.testing.assert_allclose(truth[f"term_{m}"].to_numpy(), expected[f"term_{m}"].to_numpy(), atol=1e-9)
        assert truth[f"relevant_{m}"].to_list() == expected[f"relevant_{m}"].to_list(), m


def test_chunked_generation_keeps_ids_and_ground_truth_consistent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(generator, "_CHUNK_EVENTS", 150)  # ~3 users per chunk instead of all at once
    data = generate(TINY)
    assert data.stats["chunks"] > 3
    assert data.log["event_id"].to_list() == list(range(data.log.height))
    assert data.log["user_id"].is_sorted()
    assert data.truth["event_id"].to_list() == data.log.filter(pl.col("label").is_not_null())["event_id"].to_list()
    _check_against_oracle(data)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    num_users=st.integers(1, 5),
    events_per_user=st.integers(1, 40),
    impressions=st.integers(1, 4),
    mechanisms=st.sets(st.sampled_from(sorted(MECHANISMS))),
)
def test_any_small_config_matches_the_oracle(
    seed: int, num_users: int, events_per_user: int, impressions: int, mechanisms: set[str]
) -> None:
    cfg = dataclasses.replace(
        TINY,
        seed=seed,
        num_users=num_users,
        events_per_user=events_per_user,
        impressions_per_user=impressions,
        mechanisms=tuple(sorted(mechanisms)),
    )
    data = generate(cfg)
    assert data.truth.height == num_users * impressions
    assert ("noise_tag" in data.log.columns) == ("c" in mechanisms)
    _check_against_oracle(data)


def test_behaviours_in_the_impression_second_are_not_history() -> None:
    # Sub-second gaps make many behaviours share the impression's timestamp: "strictly before" must exclude them.
    data = generate(dataclasses.replace(TINY, session_gap_seconds=0.3, impression_gap_seconds=0.3, session_length=30.0))
    impressions = data.truth.select("user_id", "timestamp")
    ties = behaviours(data.log).join(impressions, on=["user_id", "timestamp"], how="semi")
    assert ties.height > 0, "the config must produce same-second ties for this test to mean anything"
    _check_against_oracle(data)
    exploded = data.truth.select("timestamp", "relevant").explode("relevant").drop_nulls()
    times = exploded.join(
        data.log.select(pl.col("event_id").alias("relevant"), pl.col("timestamp").alias("t")), on="relevant"
    )
    assert (times["t"] < times["timestamp"]).all()


def test_progress_bar_does_not_change_the_output(tiny: SyntheticLog) -> None:
    assert generate(TINY, progress=True).log.equals(tiny.log)


@pytest.mark.parametrize("mechanism", ["a", "b", "d", "f"])
def test_a_single_mechanism_sets_only_its_own_term(mechanism: str) -> None:
    data = generate(dataclasses.replace(TINY, mechanisms=(mechanism,)))
    truth = data.truth
    assert (truth[f"term_{mechanism}"] != 0).any()
    assert truth["relevant"].equals(truth[f"relevant_{mechanism}"], check_names=False)
    for other in set("abdf") - {mechanism}:
        assert (truth[f"term_{other}"] == 0).all()
        assert truth[f"relevant_{other}"].list.len().sum() == 0


def test_labels_follow_the_decayed_same_spu_count_when_only_a_is_on() -> None:
    data = generate(dataclasses.replace(MEDIUM, mechanisms=("a",)))
    truth = data.truth
    labels = truth["label"].to_numpy()
    assert roc_auc_score(labels, truth["logit"].to_numpy()) > 0.65
    assert roc_auc_score(labels, truth["term_a"].to_numpy()) > 0.65
    assert abs(labels.mean() - MEDIUM.target_positive_rate) < 0.05


def test_all_mechanisms_off_makes_the_label_independent_of_history() -> None:
    data = generate(dataclasses.replace(MEDIUM, mechanisms=()))
    truth = data.truth
    assert truth["logit"].n_unique() == 1
    assert truth["prob"][0] == pytest.approx(MEDIUM.target_positive_rate)
    assert truth["relevant"].list.len().sum() == 0
    assert "noise_tag" not in data.log.columns
    assert abs(truth["label"].mean() - MEDIUM.target_positive_rate) < 0.05


def test_all_mechanisms_on_give_a_learnable_calibrated_label() -> None:
    data = generate(MEDIUM)
    labels = data.truth["label"].to_numpy()
    assert roc_auc_score(labels, data.truth["logit"].to_numpy()) > 0.75
    assert abs(labels.mean() - MEDIUM.target_positive_rate) < 0.05
    assert data.stats["positive_rate"] == pytest.approx(labels.mean())


def test_goal_specific_decay_goes_in_the_planted_direction() -> None:
    on = generate(dataclasses.replace(MEDIUM, mechanisms=("a", "e")))
    off = generate(dataclasses.replace(MEDIUM, mechanisms=("a",)))
    factors = dict(zip(MEDIUM.goals, MEDIUM.goal_decay_factors, strict=True))
    assert on.planted["goal_decay_factors"] == factors
    assert set(off.planted["goal_decay_factors"].values()) == {1.0}
    tau = on.planted["tau_days_by_category"]
    truth = on.truth.with_columns(
        base=pl.col("cat_2").replace_strict(tau, return_dtype=pl.Float64),
        factor=pl.col("goal").replace_strict(factors, return_dtype=pl.Float64),
    )
    np.testing.assert_allclose(truth["tau_days"], truth["base"] * truth["factor"])
    np.testing.assert_allclose(off.truth["tau_days"], truth["base"])
    # Same histories and targets (e only rescales τ): slower decay (buy) keeps more weight than faster (click).
    assert on.truth.select("event_id", "cat_3", "goal").equals(off.truth.select("event_id", "cat_3", "goal"))
    by_goal = truth.group_by("goal").agg(pl.col("term_a").mean(), pl.col("relevant_a").list.len().mean().alias("n"))
    means = {row["goal"]: row for row in by_goal.iter_rows(named=True)}
    assert means["click"]["term_a"] < means["cart"]["term_a"] < means["buy"]["term_a"]
    assert means["click"]["n"] < means["buy"]["n"]
    ratio = on.truth["term_a"].to_numpy() / np.where(off.truth["term_a"] > 0, off.truth["term_a"], np.nan)
    goal = on.truth["goal"].to_numpy()
    assert np.nanmax(ratio[goal == "click"]) <= 1 + 1e-12 and np.nanmin(ratio[goal == "buy"]) >= 1 - 1e-12


def test_noise_field_exists_only_with_c_and_changes_nothing_else() -> None:
    without = generate(dataclasses.replace(TINY, mechanisms=("a", "b", "d", "e", "f")))
    with_noise = generate(TINY)
    assert "noise_tag" not in without.log.columns
    assert with_noise.log["noise_tag"].null_count() == 0
    assert with_noise.log["noise_tag"].is_between(1, TINY.num_noise_tags).all()
    assert with_noise.log.drop("noise_tag").equals(without.log)
    assert with_noise.truth.equals(without.truth)


def _plant_recent_behaviour(cfg: SyntheticConfig, world: World, events: Events, rng: np.random.Generator) -> Planted:
    """A mechanism (i) written the way the package docstring says: +2 when the user has any earlier behaviour; the
    relevant behaviour is the latest one."""
    index = SortedIndex.build(events.beh_user, events.beh_rel, np.arange(events.num_behaviours), events.radix)
    lo, hi = index.before(events.imp_user, events.imp_rel)  # [P]
    hit = np.flatnonzero(hi > lo)  # [h]
    return Planted(2.0 * (hi > lo), (hit, events.beh_event[index.row[hi[hit] - 1]]))


def test_a_mechanism_registered_in_one_line_gets_its_truth_columns_and_leaves_other_configs_alone(
    tiny: SyntheticLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(MECHANISMS, "i", Mechanism(_plant_recent_behaviour, "test: the latest behaviour, +2"))
    assert generate(TINY).truth.equals(tiny.truth)  # registered but off: the frames of before
    planted = generate(dataclasses.replace(TINY, mechanisms=(*TINY.mechanisms, "i")))
    truth = planted.truth
    assert "term_i" in truth.columns and "relevant_i" in truth.columns and "term_i" not in tiny.truth.columns
    assert set(truth["term_i"].unique()) <= {0.0, 2.0}
    shift = planted.planted["bias"] - tiny.planted["bias"]  # the bias is recalibrated for the new term
    np.testing.assert_allclose(truth["logit"] - truth["term_i"], tiny.truth["logit"] + shift, rtol=0, atol=1e-9)
    assert planted.log.drop("label").equals(tiny.log.drop("label"))  # (i) draws nothing: only the labels move
    assert planted.metadata()["mechanisms"]["i"] == {"on": True, "doc": "test: the latest behaviour, +2"}
    rows = planted.log.select("event_id", "user_id", "timestamp")
    pairs = truth.select(
        "event_id", "user_id", "timestamp", "term_i", pl.col("relevant_i").list.first().alias("latest")
    )
    joined = pairs.join(rows, left_on="latest", right_on="event_id", suffix="_b", how="left")
    assert ((joined["term_i"] == 2.0) == joined["latest"].is_not_null()).all()
    hit = joined.filter(pl.col("latest").is_not_null())
    assert (hit["user_id"] == hit["user_id_b"]).all() and (hit["timestamp_b"] < hit["timestamp"]).all()
    assert all(set(h) <= set(r) for h, r in zip(truth["relevant_i"], truth["relevant"], strict=True))


def test_write_produces_the_files(tmp_path: Path, tiny: SyntheticLog) -> None:
    out = tmp_path / "synth"
    tiny.write(out)
    assert sorted(p.name for p in out.iterdir()) == [
        "log.parquet",
        "synthetic.json",
        "taxonomy_map.csv",
        "truth.parquet",
    ]
    assert pl.read_parquet(out / "log.parquet").equals(tiny.log)
    assert pl.read_parquet(out / "truth.parquet").equals(tiny.truth)
    mapping = pl.read_csv(out / "taxonomy_map.csv", schema_overrides={"cat_3": pl.Int64})
    assert mapping.equals(tiny.taxonomy_map)
    meta = json.loads((out / "synthetic.json").read_text())
    assert meta["config"]["seed"] == TINY.seed and set(meta["mechanisms"]) == set(MECHANISMS)
    assert meta["stats"]["num_impressions"] == tiny.truth.height
    assert len(meta["planted"]["item_quality"]) == TINY.num_items
    assert [p.name for p in tmp_path.iterdir()] == ["synth"]  # no temporary directory left behind


def test_write_is_atomic_on_failure(tmp_path: Path, tiny: SyntheticLog, monkeypatch: pytest.MonkeyPatch) -> None:
    old = tmp_path / "old"
    tiny.write(old)
    before = (old / "synthetic.json").read_text()

    def explode(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(pl.DataFrame, "write_csv", explode)
    with pytest.raises(OSError, match="disk full"):
        tiny.write(tmp_path / "new")
    with pytest.raises(OSError, match="disk full"):
        tiny.write(old, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]  # no partial 'new', no temp dirs
    assert (old / "synthetic.json").read_text() == before  # the previous log is untouched
    monkeypatch.undo()
    (old / "log.parquet").unlink()
    tiny.write(old, force=True)  # a successful write replaces it whole
    assert (old / "log.parquet").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


def test_write_never_deletes_a_folder_it_did_not_write(tmp_path: Path, tiny: SyntheticLog) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for force in (False, True):
        with pytest.raises(OutputError, match=r"is not a synthetic log written by 'longrec synth' \(it holds 'notes"):
            tiny.write(mine, force=force)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    tiny.write(tmp_path / "log")
    with pytest.raises(OutputError, match=r"already holds a synthetic log .* Pass --force to replace it"):
        tiny.write(tmp_path / "log")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_users": 0}, r"num_users must be a positive int\. Got 0 instead"),
        ({"mechanisms": ("a", "z")}, r"unknown mechanism\(s\) \['z'\]\. Known mechanisms: a, b, c, d, e, f"),
        ({"mechanisms": ("a", "a")}, r"must not repeat"),
        ({"goal_decay_factors": (1.0,)}, r"one positive factor per goal \(3"),
        ({"goals": ()}, r"goals must be a non-empty tuple"),
        ({"num_categories": 600}, r"num_categories \(600\) must be <= num_spus \(500\)"),
        ({"num_content_tags": 50}, r"num_categories <= num_content_tags"),
        ({"target_positive_rate": 1.0}, r"target_positive_rate must be in \(0, 1\)"),
        ({"ad_fraction": 1.5}, r"ad_fraction must be a probability"),
        ({"tau_min_days": 10.0, "tau_max_days": 2.0}, r"tau_max_days \(2\.0\) must be >= tau_min_days"),
        ({"pair_pool": 2}, r"pair_pool must be in \[3, num_categories"),
        ({"ad_funnel": (0.3, 0.3)}, r"ad_funnel must hold 3 probabilities"),
        ({"span_days": 0}, r"span_days must be a positive finite number"),
        ({"num_users": True}, r"num_users must be a positive int\. Got True"),
        ({"h_identity_scenes": ("home",)}, r"h_identity_scenes must be a tuple of scene names among feed, search"),
        ({"h_cross_prob": 2.0}, r"h_cross_prob must be a probability in \[0, 1\]\. Got 2\.0"),
        ({"mechanisms": ("h",), "num_categories": 1, "num_content_tags": 1}, r"num_categories must be >= 2 when"),
        ({"num_users": 0, "seed": -1}, r"2 problem\(s\)(.|\n)*num_users(.|\n)*seed must be a non-negative int"),
    ],
)
def test_config_validation(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SyntheticConfig(**changes)


def test_small_fixture_generates_in_under_a_second() -> None:
    started = time.perf_counter()
    data = generate(SyntheticConfig(num_users=100, events_per_user=50, seed=1))
    assert time.perf_counter() - started < 1.0
    assert data.truth.height == 100 * 20
    assert data.stats["num_behaviours"] == data.log.height - data.truth.height


@pytest.mark.slow
def test_default_config_generates_in_a_few_seconds() -> None:
    started = time.perf_counter()
    data = generate(SyntheticConfig())
    assert time.perf_counter() - started < 10.0  # target ~5 s; ~1 s measured on a laptop CPU
    assert 0.2 <= data.stats["positive_rate"] <= 0.4


@pytest.mark.slow
def test_scales_to_ten_to_the_five_events_per_user() -> None:
    started = time.perf_counter()
    data = generate(SyntheticConfig(num_users=4, events_per_user=100_000, seed=3))
    assert time.perf_counter() - started < 20.0
    per_user = behaviours(data.log).group_by("user_id").len()["len"].to_numpy()
    assert per_user.min() >= 50_000 and per_user.sum() > 300_000
    assert data.log.group_by("user_id").agg(pl.col("timestamp").is_sorted().alias("ok"))["ok"].all()
    assert data.truth["relevant"].list.len().to_numpy().min() > 0


# (h) scenario interest migration: TINY with (h) on next to (a), so both draw and label.
MIGRATION = dataclasses.replace(TINY, mechanisms=("a", "h"), num_users=60)


@pytest.fixture(scope="module")
def migration() -> SyntheticLog:
    return generate(MIGRATION)


def test_scene_migration_term_and_relevant_sets_match_a_brute_force_oracle(migration: SyntheticLog) -> None:
    cfg, table = migration.config, migration.planted["scene_category_map"]
    history = {u: f for (u,), f in behaviours(migration.log).partition_by("user_id", as_dict=True).items()}
    scenes = migration.log.select("event_id", "scene")
    truth = migration.truth.join(scenes, on="event_id", suffix="_log")
    assert (truth["scene"] == truth["scene_log"]).all()  # the truth's scene is the impression row's
    for row in truth.iter_rows(named=True):
        wanted = table[row["scene"]][row["cat_2"]]
        assert row["h_category"] == wanted
        h = history[row["user_id"]].filter((pl.col("timestamp") < row["timestamp"]) & (pl.col("cat_2") == wanted))
        w = np.exp(-(row["timestamp"] - h["timestamp"].to_numpy()) / (cfg.h_tau_days * 86400))
        assert row["term_h"] == pytest.approx(cfg.weight_h * math.log1p(w.sum()), abs=1e-9)
        assert row["relevant_h"] == sorted(h["event_id"].to_numpy()[w >= cfg.relevance_min_weight])
        assert set(row["relevant_h"]) <= set(row["relevant"])
    score = truth["term_a"].to_numpy() + truth["term_h"].to_numpy()
    np.testing.assert_allclose(truth["logit"].to_numpy(), migration.planted["bias"] + score, atol=1e-9)
    assert (truth["term_h"] > 0).any() and set(truth["scene"]) == {"feed", "search"}


def test_scene_maps_are_the_identity_in_the_feed_and_a_derangement_in_search(migration: SyntheticLog) -> None:
    C = MIGRATION.num_categories
    table = migration.planted["scene_category_map"]
    assert table["feed"] == list(range(C + 1))
    search = np.asarray(table["search"][1:])
    assert sorted(search) == list(range(1, C + 1))  # a permutation of the categories
    assert (search != np.arange(1, C + 1)).all()  # that moves every one


def test_a_target_relates_to_the_history_through_the_map_of_the_scene_it_was_drawn_for(migration: SyntheticLog) -> None:
    truth = migration.truth.filter(pl.col("h_target_scene") != "")  # history-drawn targets
    own = truth.filter(pl.col("h_target_scene") == pl.col("scene"))
    crossed = truth.filter(pl.col("h_target_scene") != pl.col("scene"))
    assert own.height and crossed.height  # h_cross_prob = 0.5 gives both, in both scenes
    assert set(crossed["scene"]) == {"feed", "search"}
    # Drawn for its own scene, a target's π(c) is the category of a recent behaviour: (h)'s term fires; drawn for the
    # other scene, it relates to the history through the other π, which this scene's rule does not follow.
    assert (own["term_h"] > 0).mean() > 0.9 > 0.5 > (crossed["term_h"] > 0).mean()
    search = migration.truth.filter(pl.col("scene") == "search")
    assert (search["h_category"] != search["cat_2"]).all()
    feed = migration.truth.filter(pl.col("scene") == "feed")
    assert (feed["h_category"] == feed["cat_2"]).all()


def test_scene_migration_off_leaves_every_frame_as_it_was(tiny: SyntheticLog) -> None:
    knobs = dataclasses.replace(TINY, weight_h=9.0, h_tau_days=1.0, h_identity_scenes=("search",), h_cross_prob=0.9)
    again = generate(knobs)  # (h)'s knobs do nothing while (h) is off: no draws, no columns
    assert again.log.equals(tiny.log) and again.truth.equals(tiny.truth)
    assert "scene_category_map" not in again.planted and "term_h" not in again.truth.columns
    assert again.planted == tiny.planted


def test_scene_migration_labels_follow_its_term() -> None:
    data = generate(dataclasses.replace(MEDIUM, mechanisms=("h",)))
    truth = data.truth
    assert roc_auc_score(truth["label"].to_numpy(), truth["term_h"].to_numpy()) > 0.65
