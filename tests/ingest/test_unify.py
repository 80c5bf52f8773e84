"""Unified trajectories: several sources -> one canonical log with one taxonomy; coverage per domain and level;
unmapped categories counted, never dropped; bad maps are DataErrors naming file, line, column, expected and got."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from longrec.cli import main
from longrec.data.prepare import prepare
from longrec.data.protocols import ProtocolConfig
from longrec.data.store import TrajectoryStore
from longrec.ingest.alibaba import load_taobao
from longrec.ingest.kuaishou import load_kuairec
from longrec.ingest.schema import DataError
from longrec.ingest.sources import SourceSpec, parse_source, read_sources_file
from longrec.ingest.table import load_synthetic, load_table
from longrec.ingest.taxonomy import read_taxonomy_map
from longrec.ingest.unify import Source, unify
from longrec.settings import ConfigError

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures" / "unify"
ADS, CONTENT, MAP = FIXTURES / "ads.csv", FIXTURES / "content.csv", FIXTURES / "taxonomy_map.csv"
TAOBAO_927 = Path("taobao_userbehavior") / "UserBehavior_927users.csv.gz"
KUAIREC_CATEGORIES = Path("kuairec_meta") / "kuairec_caption_category.csv.gz"


def tiny_sources(ads_first: bool = True) -> list[Source]:
    """The hand-checked fixture: ads (3 levels reachable) and content (2 levels), users 1-2 in both, 3 ads only,
    4 content only; user 1 has an ad and a content behaviour in the same second (t = 1000)."""
    ads = SourceSpec(str(ADS), "csv", domain="ad", scene="feed").load()
    content = SourceSpec(str(CONTENT), "csv", domain="content", scene="video").load()
    return [ads, content] if ads_first else [content, ads]


# ---------------------------------------------------------------------------------------------------------------
# Mapping, coverage, merging.


def test_map_lookup_replaces_each_category_by_its_unified_path():
    frame = unify(tiny_sources(), MAP).frame.collect()
    assert frame.columns[:9] == [
        "user_id",
        "item_id",
        "timestamp",
        "domain",
        "scene",
        "action",
        "cat_1",
        "cat_2",
        "cat_3",
    ]
    paths = {(r[0], r[1]): r[2:] for r in frame.select("domain", "source_category", "cat_1", "cat_2", "cat_3").rows()}
    assert paths["ad", "shoes-trail"] == ("fashion", "shoes", "trail-x")
    assert paths["content", "sneaker-reviews"] == ("fashion", "shoes", None)  # content cannot reach the SPU
    assert paths["content", "street-style"] == ("fashion", None, None)
    assert set(frame["scene"]) == {"feed", "video"}


def test_unmapped_and_uncategorised_rows_are_kept_with_null_paths():
    frame = unify(tiny_sources(), MAP).frame.collect()
    assert frame.height == 8 + 7  # nothing dropped
    lottery = frame.filter(pl.col("source_category") == "lottery")
    assert (
        lottery.height == 2 and lottery.select(pl.col("cat_1", "cat_2", "cat_3").is_null().all()).row(0) == (True,) * 3
    )
    assert frame.filter((pl.col("user_id") == 3) & (pl.col("item_id") == "a5"))["cat_1"].to_list() == [None]


def test_coverage_per_domain_and_level_matches_the_hand_count():
    coverage = unify(tiny_sources(), MAP).coverage
    ad, content = coverage.domains["ad"], coverage.domains["content"]
    # ads: 5 rows map (running x2, trail, phone-x x2), 'lottery' x2 is unmapped, one row has no category.
    assert (ad.rows, ad.mapped, ad.unmapped, ad.no_category, ad.unmapped_categories) == (8, 5, 2, 1, 1)
    assert ad.level_rows == [5, 5, 5] and ad.level_coverage == [5 / 8] * 3
    # content: 6 rows map; street-style (x2) only reaches cat_1, nothing reaches cat_3; 'cooking' is unmapped.
    assert (content.rows, content.mapped, content.unmapped, content.no_category) == (7, 6, 1, 0)
    assert content.level_rows == [6, 4, 0]
    assert coverage.unmapped == [("ad", "lottery", 2), ("content", "cooking", 1)]
    assert coverage.map_entries == {"ad": 3, "content": 3} and coverage.shared_items == 0
    assert [s["rows"] for s in coverage.sources] == [8, 7]
    text = "\n".join(coverage.lines())
    assert "domain ad: 8 rows, mapped 5 (62.5%), unmapped 2 (1 category), no category 1" in text
    assert "cat_1 85.7%, cat_2 57.1%, cat_3 0.0%" in text
    assert "ad 'lottery' 2, content 'cooking' 1" in text
    assert json.loads(json.dumps(coverage.to_dict()))["domains"]["content"]["level_rows"] == [6, 4, 0]


def test_top_unmapped_limits_the_list_not_the_counts():
    coverage = unify(tiny_sources(), MAP, top_unmapped=1).coverage
    assert coverage.unmapped == [("ad", "lottery", 2)]
    assert coverage.domains["content"].unmapped == 1


def _trajectories(store: TrajectoryStore) -> dict[int, list[str]]:
    users, items = store.vocab("user_id").to_list(), store.vocab("item_id").to_list()
    return {
        users[u - 1]: [items[i - 1] for i in store.trajectory(u)["item"]]
        for u in range(1, store.num_users)
        if store.offsets[u + 1] > store.offsets[u]
    }


def test_prepared_trajectories_are_time_sorted_and_same_second_ties_follow_the_source_order(tmp_path):
    protocol = ProtocolConfig.for_protocol("T")
    prepare(unify(tiny_sources(ads_first=True), MAP).frame, tmp_path / "a", protocol)
    prepare(unify(tiny_sources(ads_first=False), MAP).frame, tmp_path / "b", protocol)
    ads_first, content_first = (
        _trajectories(TrajectoryStore.open(tmp_path / "a")),
        _trajectories(TrajectoryStore.open(tmp_path / "b")),
    )
    assert ads_first[1] == ["a1", "c1", "c2", "a2", "c3", "a3"]  # a1 and c1 share t = 1000
    assert content_first[1] == ["c1", "a1", "c2", "a2", "c3", "a3"]
    assert ads_first[2] == content_first[2] == ["c1", "a1", "a4", "c4"]
    store = TrajectoryStore.open(tmp_path / "a")
    assert all(np.all(np.diff(store.trajectory(u)["timestamp"]) >= 0) for u in range(1, store.num_users))


def test_a_user_in_only_one_source_keeps_a_trajectory(tmp_path):
    prepare(unify(tiny_sources(), MAP).frame, tmp_path / "s", ProtocolConfig.for_protocol("T"))
    trajectories = _trajectories(TrajectoryStore.open(tmp_path / "s"))
    assert trajectories[3] == ["a4", "a5", "a3"]  # ads only
    assert trajectories[4] == ["c2", "c3"]  # content only
    assert sorted(trajectories) == [1, 2, 3, 4]


def test_synthetic_map_rederives_the_generators_unified_columns(tmp_path):
    from longrec.ingest.synthetic import SyntheticConfig, generate

    config = SyntheticConfig(num_users=20, events_per_user=30, impressions_per_user=2)
    generate(config).write(tmp_path / "synth")
    log = load_synthetic(tmp_path / "synth")
    without_paths = log.frame.drop("cat_1", "cat_2", "cat_3")  # prove the paths come from the map
    unified = unify([Source(without_paths)], tmp_path / "synth" / "taxonomy_map.csv")
    expected = pl.read_parquet(tmp_path / "synth" / "log.parquet")
    got = unified.frame.collect()
    assert got.select("cat_1", "cat_2", "cat_3").equals(expected.select("cat_1", "cat_2", "cat_3"))
    assert got.drop("cat_1", "cat_2", "cat_3").equals(log.collect().drop("cat_1", "cat_2", "cat_3"))
    content = unified.coverage.domains["content"]
    assert content.unmapped == content.no_category == 0 and content.level_rows[2] == 0  # content has no SPU
    assert unified.coverage.domains["ad"].level_coverage == [1.0, 1.0, 1.0]


def test_item_prefix_separates_id_spaces_and_shared_ids_are_reported():
    a = pl.DataFrame({"user_id": [1, 1], "item_id": [7, 8], "timestamp": [10, 20]})
    b = pl.DataFrame({"user_id": [1, 2], "item_id": [7, 9], "timestamp": [15, 30]})
    shared = unify([Source(a, domain="ad"), Source(b, domain="content")])
    assert (
        shared.coverage.shared_items == 1
        and "1 item id(s) occur in more than one domain" in shared.coverage.lines()[-1]
    )
    apart = unify([Source(a, domain="ad"), Source(b, domain="content", item_prefix="video:")])
    assert apart.coverage.shared_items == 0
    assert apart.frame.collect()["item_id"].to_list() == ["7", "8", "video:7", "video:9"]


def test_integer_and_text_ids_are_matched_as_text():
    a = pl.DataFrame({"user_id": [1], "item_id": [1], "timestamp": [10]})
    b = pl.DataFrame({"user_id": ["1"], "item_id": [2], "timestamp": [20], "label": [1]})
    frame = unify([Source(a, domain="ad"), Source(b, domain="ad")]).frame.collect()
    assert frame.schema["user_id"] == pl.String and frame["user_id"].to_list() == ["1", "1"]
    assert frame["label"].to_list() == [None, 1]  # a source without labels contributes behaviours


def test_as_is_sources_are_padded_to_the_unified_depth_and_counted():
    a = pl.DataFrame({"user_id": [1, 1], "item_id": [1, 2], "timestamp": [1, 2], "cat_1": [5, None]})
    unified = unify([Source(a, domain="ad")], levels=2)
    assert unified.frame.collect().select("cat_1", "cat_2").rows() == [(5, None), (None, None)]
    ad = unified.coverage.domains["ad"]
    assert (ad.mapped, ad.no_category, ad.level_rows) == (1, 1, [1, 0])
    assert unified.coverage.sources[0]["category"] is None and "categories as-is" in unified.coverage.lines()[-1]


def test_map_levels_can_be_cut_or_padded():
    assert unify(tiny_sources(), MAP, levels=1).frame.collect_schema().names()[6:8] == ["cat_1", "source_category"]
    deeper = unify(tiny_sources(), MAP, levels=4)
    assert deeper.coverage.domains["ad"].level_rows == [5, 5, 5, 0]


@pytest.mark.parametrize(
    ("sources", "kwargs", "match"),
    [
        ([], {}, "at least one source"),
        (
            [Source(pl.DataFrame({"user_id": [1], "item_id": [1], "timestamp": [1]}))],
            {},
            "source 1 has no domain: give the source a domain",
        ),
        (
            [
                Source(
                    pl.DataFrame({"user_id": [1], "item_id": [1], "timestamp": [1], "tag": ["x"]}),
                    "ad",
                    category="tags",
                )
            ],
            {"mapping": MAP},
            r"source 1 has no category column 'tags' \(did you mean 'tag'\?\)",
        ),
        (
            [
                Source(
                    pl.DataFrame({"user_id": [1], "item_id": [1], "timestamp": [1], "tag": ["x"]}), "ad", category="tag"
                )
            ],
            {},
            "names category column 'tag' but no taxonomy map was given",
        ),
        (
            [
                Source(
                    pl.DataFrame({"user_id": [1], "item_id": [1], "timestamp": [1], "cat_1": [1], "cat_2": [2]}), "ad"
                )
            ],
            {"levels": 1},
            "has 2 taxonomy levels .* but the unified taxonomy has 1",
        ),
        (
            [Source(pl.DataFrame({"user_id": [1], "item_id": [1], "timestamp": ["noon"]}), "ad", name="ads.parquet")],
            {},
            "ads.parquet row 0: column 'timestamp' = 'noon' is not an integer",
        ),
    ],
)
def test_source_problems_are_named(sources, kwargs, match):
    with pytest.raises(ValueError, match=match):
        unify(sources, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# The mapping file: every problem names file, line, column, expected and got.

HEADER = "domain,source_category,cat_1,cat_2,cat_3\n"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (
            "domain,source_categroy,cat_1\nad,x,1\n",
            r"map.csv is missing column\(s\) 'source_category' \(did you mean 'source_categroy'\?\)\. "
            r"Found: domain, source_categroy, cat_1",
        ),
        ("domain,source_category,cat_1,cat_3\nad,x,1,2\n", "expected cat_1..cat_M without gaps, got no cat_2"),
        (HEADER, "expected at least one mapping row, got 0 rows"),
        (
            HEADER + "ad,x,1,2,3\nad,y,1,,3\n",
            r"map.csv line 3, column 'cat_3': expected an empty value because "
            r"cat_2 is empty \(a path runs coarse to fine without gaps\), got 3\.",
        ),
        (HEADER + "ad,x,,,\n", r"map.csv line 2, column 'cat_1': expected the coarsest unified category"),
        (HEADER + ",x,1,,\n", r"map.csv line 2, column 'domain': expected a domain name, got an empty value"),
        (
            HEADER + "ad,x,1,2,3\nad,y,1,2,\nad,x,1,2,4\n",
            r"map.csv line 4: domain 'ad', source_category 'x' is mapped twice: expected one path, got '1 > 2 > 3' "
            r"at .*map.csv line 2 and '1 > 2 > 4' here\.",
        ),
        (
            HEADER + "ad,x,1,2,3\ncontent,y,9,2,\n",
            r"map.csv line 3, column 'cat_1': cat_2 = 2 already has the parent 1 at .*map.csv line 2, got 9; every "
            "unified category needs one parent",
        ),
    ],
)
def test_bad_map_file_names_file_line_column_expected_and_got(tmp_path, text, match):
    (tmp_path / "map.csv").write_text(text)
    with pytest.raises(DataError, match=match):
        read_taxonomy_map(tmp_path / "map.csv")


def test_repeated_identical_map_rows_are_dropped_and_counted(tmp_path):
    (tmp_path / "map.csv").write_text(HEADER + "ad,x,1,2,3\nad,x,1,2,3\nad,y,1,2,\n")
    table = read_taxonomy_map(tmp_path / "map.csv")
    assert table.duplicates == 1 and table.table.height == 2 and table.table.schema["cat_1"] == pl.Int64
    assert table.entries() == {"ad": 2}


def test_parquet_map_and_missing_file(tmp_path):
    pl.read_csv(MAP).write_parquet(tmp_path / "map.parquet")
    assert read_taxonomy_map(tmp_path / "map.parquet").table.equals(read_taxonomy_map(MAP).table)
    (tmp_path / "bad.parquet").write_text(HEADER + "ad,x,1,2,3\n")
    with pytest.raises(DataError, match=r"bad.parquet: expected a Parquet taxonomy map, got a read error"):
        read_taxonomy_map(tmp_path / "bad.parquet")
    with pytest.raises(FileNotFoundError, match=r"nope\.csv"):
        read_taxonomy_map(tmp_path / "nope.csv")


# ---------------------------------------------------------------------------------------------------------------
# Source specs: --source and --sources files.


def test_parse_source_specs():
    assert parse_source("a.csv:csv") == SourceSpec("a.csv", "csv")
    assert parse_source("a.csv:csv:ad:feed") == SourceSpec("a.csv", "csv", domain="ad", scene="feed")
    assert parse_source("dir:x/log.parquet:parquet::video") == SourceSpec("dir:x/log.parquet", "parquet", scene="video")
    with pytest.raises(ValueError, match=r"expected PATH:FORMAT\[:DOMAIN\[:SCENE\]\] with FORMAT one of amazon"):
        parse_source("a.csv:cvs:ad")


def test_csv_source_without_a_mapping_is_read_as_stored():
    source = SourceSpec(str(ADS), "csv").load()
    assert source.log.schema.columns == ("user_id", "item_id", "timestamp", "action", "source_category")
    assert source.log.report.unused_columns == []
    # With a mapping, load_table's own rules: same-named canonical columns are read, the others reported by name.
    mapped = SourceSpec(str(ADS), "csv", options={"mapping": {"user_id": "user_id"}}).load()
    assert mapped.log.schema.columns == ("user_id", "item_id", "timestamp", "action")
    assert mapped.log.report.unused_columns == ["source_category"]


def test_the_merged_report_names_each_sources_unused_columns():
    mapped = SourceSpec(str(ADS), "csv", domain="ad", options={"mapping": {"user_id": "user_id"}}).load()
    report = unify([tiny_sources()[1], mapped]).report
    assert report.unused_columns == ["source_category (source 2)"]
    assert "  unused column(s), not read into the log: source_category (source 2)" in report.lines()


def test_sources_file_lists_every_problem(tmp_path):
    path = tmp_path / "sources.toml"
    path.write_text(
        'taxonomy_mapp = "m.csv"\n[[source]]\npath = "a.csv"\nformat = "cvs"\ndomian = "ad"\n'
        '[[source]]\nformat = "csv"\nscene = 3\n'
    )
    with pytest.raises(ConfigError) as err:
        read_sources_file(path)
    message = str(err.value)
    assert "5 problem(s)" in message
    assert (
        "taxonomy_mapp: unknown key (did you mean 'taxonomy_map'?)" in message
        and "source 1.domian: unknown key (did you mean 'domain'?)" in message
    )
    assert "source 1.format: unknown format 'cvs' (did you mean 'csv'?)" in message
    assert "source 2.path: expected a non-empty string, got None" in message
    assert "source 2.scene: expected a string, got int 3" in message


def test_sources_file_with_loader_options_and_a_category_column(tmp_path):
    path = tmp_path / "sources.toml"
    path.write_text(
        f'taxonomy_map = "{MAP}"\ntaxonomy_levels = 2\n'
        f'[[source]]\npath = "{ADS}"\nformat = "csv"\ndomain = "ad"\ncategory = "kind"\n'
        'options = { mapping = { action = "action" }, extra = { kind = "source_category" } }\n'
    )
    listed = read_sources_file(path)
    assert listed.taxonomy_map == str(MAP) and listed.taxonomy_levels == 2
    unified = unify([s.load() for s in listed.sources], listed.taxonomy_map, listed.taxonomy_levels)
    names = ["user_id", "item_id", "timestamp", "domain", "action", "cat_1", "cat_2", "kind"]
    assert unified.frame.collect_schema().names() == names
    assert unified.coverage.domains["ad"].level_rows == [5, 5]


# ---------------------------------------------------------------------------------------------------------------
# The command line.


def test_cli_prepares_several_sources_and_records_the_coverage(tmp_path, capsys):
    args = ["prepare", "--source", f"{ADS}:csv:ad:feed", "--source", f"{CONTENT}:csv:content:video"]
    assert main([*args, "--taxonomy-map", str(MAP), "--out", str(tmp_path / "store")]) == 0
    out = capsys.readouterr().out
    assert "domain ad: 8 rows, mapped 5 (62.5%)" in out and "unmapped categories (top 2 of 2" in out
    store = TrajectoryStore.open(tmp_path / "store")
    coverage = store.manifest["taxonomy_coverage"]
    assert coverage["domains"]["content"]["level_rows"] == [6, 4, 0]
    assert coverage["unmapped_top"][0] == {"domain": "ad", "source_category": "lottery", "rows": 2}
    assert store.manifest["counts"]["behaviours"] == 15 and store.manifest["counts"]["users"] == 4
    assert store.taxonomy_levels == 3 and set(store.vocab("domain")) == {"ad", "content"}


def test_cli_single_input_is_unchanged_and_an_input_joining_sources_needs_a_domain(tmp_path, capsys):
    fractions = "split_fractions=[0.6, 0.2, 0.2]"  # 5 targets: the default 0.8/0.1/0.1 leaves valid empty
    assert main(["prepare", str(ADS), "--format", "csv", "--set", fractions, "--out", str(tmp_path / "one")]) == 0
    manifest = TrajectoryStore.open(tmp_path / "one").manifest
    # load_table's rules, not a source's read-as-stored: 'action' is read by its name, 'source_category' reported.
    assert "taxonomy_coverage" not in manifest and manifest["schema"]["categorical"] == ["action"]
    assert manifest["load_report"]["unused_columns"] == ["source_category"]
    args = ["prepare", str(CONTENT), "--format", "csv", "--source", f"{ADS}:csv:ad", "--out", str(tmp_path / "two")]
    assert main(args) == 2
    assert "content.csv has no domain: give the source a domain" in capsys.readouterr().err


def test_cli_single_synthetic_input_with_its_map(tmp_path, capsys):
    from longrec.ingest.synthetic import SyntheticConfig, generate

    generate(SyntheticConfig(num_users=20, events_per_user=20, impressions_per_user=2)).write(tmp_path / "raw")
    args = ["prepare", str(tmp_path / "raw"), "--format", "synthetic", "--out", str(tmp_path / "store")]
    assert main([*args, "--taxonomy-map", str(tmp_path / "raw" / "taxonomy_map.csv")]) == 0
    assert "domain content:" in capsys.readouterr().out
    coverage = TrajectoryStore.open(tmp_path / "store").manifest["taxonomy_coverage"]
    assert coverage["sources"][0]["domain"] is None and coverage["sources"][0]["category"] == "source_category"
    assert coverage["domains"]["ad"]["level_coverage"] == [1.0, 1.0, 1.0]
    assert coverage["domains"]["content"]["level_coverage"][2] == 0.0


def test_cli_prepare_errors_are_one_line(tmp_path, capsys):
    assert main(["prepare", "--out", str(tmp_path / "x")]) == 2
    assert "prepare needs a log" in capsys.readouterr().err
    assert main(["prepare", str(ADS), "--out", str(tmp_path / "x")]) == 2
    assert "prepare INPUT needs --format" in capsys.readouterr().err
    assert main(["prepare", "--source", f"{ADS}:csv:ad", "--option", "x=1", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--option sets INPUT's loader options" in err and "Traceback" not in err


def test_prepare_rejects_manifest_sections_it_writes_itself(tmp_path, tiny_log):
    with pytest.raises(ValueError, match=r"extra_manifest keys \['counts'\] clash"):
        prepare(tiny_log, tmp_path / "s", ProtocolConfig.for_protocol("T"), extra_manifest={"counts": {}})
    assert not (tmp_path / "s").exists()


# ---------------------------------------------------------------------------------------------------------------
# Real slices (../shared/data): Taobao behaviour types as scenarios; KuaiRec's 3-level tree as a taxonomy.


def test_taobao_behaviour_types_as_scenarios_merge_back_into_the_single_file_trajectories(shared_data):
    single = load_taobao(shared_data / TAOBAO_927).collect()  # read once; the slow test below reads the TOML
    is_pv = pl.col("action") == "pv"
    browse, transact = single.filter(is_pv), single.filter(~is_pv)
    unified = unify([Source(browse, "ad", "browse"), Source(transact, "ad", "transact")])
    merged = unified.frame.collect()
    assert dict(merged.group_by("scene").len().iter_rows()) == {"browse": browse.height, "transact": transact.height}
    assert set(merged["domain"]) == {"ad"} and unified.coverage.levels == 1
    assert unified.coverage.domains["ad"].level_rows == [single.height]  # as-is: every row has its cat_1
    # One trajectory per user, the same as the single file's: same rows and, sorted by (user, timestamp), the same
    # time sequence. Same-second rows of different behaviour types may change order (browse now comes first), so
    # rows are compared sorted within each second.
    key = ["user_id", "timestamp", "item_id", "action", "cat_1"]
    assert merged.drop("domain", "scene").sort(key).equals(single.sort(key))
    by_time = ["user_id", "timestamp"]
    assert merged.sort(by_time, maintain_order=True)["timestamp"].equals(single.sort(by_time)["timestamp"])


@pytest.mark.slow
def test_taobao_scenarios_prepare_into_the_single_file_store(shared_data, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    listed = read_sources_file(FIXTURES / "taobao_scenes.toml")
    unified = unify([spec.load() for spec in listed.sources])
    protocol = ProtocolConfig.for_protocol("A")
    prepare(unified.frame, tmp_path / "merged", protocol, load_report=unified.report)
    prepare(load_taobao(shared_data / TAOBAO_927).frame, tmp_path / "single", protocol)
    merged, single = TrajectoryStore.open(tmp_path / "merged"), TrajectoryStore.open(tmp_path / "single")
    assert np.array_equal(merged.offsets, single.offsets)
    for name in ("item_id", "cat_1", "action", "user_id"):
        assert merged.vocab(name).equals(single.vocab(name))
    assert set(merged.arrays) - set(single.arrays) == {"domain", "scene"}
    # Rows agree up to the order of same-second rows: sort each store by (user, time, item, action).
    rows = {}
    for name, store in (("merged", merged), ("single", single)):
        user = np.repeat(np.arange(store.num_users), np.diff(store.offsets))
        a = store.arrays
        order = np.lexsort((a["action"], a["item"], a["timestamp"], user))
        rows[name] = np.stack([user, a["timestamp"], a["item"], a["action"], a["category"][:, 0]])[:, order]
    assert np.array_equal(rows["merged"], rows["single"])
    assert merged.manifest["counts"] == single.manifest["counts"]


def test_kuairec_tree_as_the_unified_taxonomy_with_a_shallower_ad_domain(shared_data):
    categories = shared_data / KUAIREC_CATEGORIES
    content = load_kuairec(FIXTURES / "kuairec_content.csv", categories=categories)
    # The content map: every path of the real tree, keyed by its deepest known id (KuaiRec category ids are unique
    # across levels, so that id names one node); -124 = unknown level.
    levels = {
        "first_level_category_id": "cat_1",
        "second_level_category_id": "cat_2",
        "third_level_category_id": "cat_3",
    }
    tree = pl.read_csv(categories, columns=["video_id", *levels], infer_schema=False).filter(
        pl.col("video_id").str.contains(r"^\d+$")
    )
    assert tree.height == 10_728
    deepest = pl.coalesce("cat_3", "cat_2", "cat_1").cast(pl.String)
    content_map = (
        tree.select(pl.col(raw).cast(pl.Int64).replace(-124, None).alias(cat) for raw, cat in levels.items())
        .unique()
        .filter(pl.col("cat_1").is_not_null())
        .select(pl.lit("content").alias("domain"), deepest.alias("source_category"), "cat_1", "cat_2", "cat_3")
    )
    # The ad domain has its own categories and reaches level 1 or 2 of the tree only.
    ad_map = read_taxonomy_map(FIXTURES / "kuairec_ad_map.csv").table
    mapping = read_taxonomy_map(pl.concat([content_map, ad_map.select(content_map.columns)]))  # still one tree
    assert mapping.entries()["ad"] == 3 and mapping.levels == 3
    ads = load_table(FIXTURES / "kuairec_ads.csv", extra=("ad_category",))
    unified = unify(
        [
            Source(content.frame.with_columns(kuairec_category=deepest), domain="content", category="kuairec_category"),
            Source(ads, domain="ad", category="ad_category"),
        ],
        mapping,
    )
    c, a = unified.coverage.domains["content"], unified.coverage.domains["ad"]
    # content: videos 3, 4, 1613 reach cat_3; 0, 10727 stop at cat_2; 1 at cat_1; 862 is unknown at every level.
    assert (c.rows, c.mapped, c.unmapped, c.no_category, c.level_rows) == (7, 6, 0, 1, [6, 5, 3])
    # ads: womenswear x2 -> 5 > 737, comedy-promo -> 9 > 727, gadgets -> 27 only, lottery is not in the map.
    assert (a.rows, a.mapped, a.unmapped, a.no_category, a.level_rows) == (5, 4, 1, 0, [4, 3, 0])
    assert unified.coverage.unmapped == [("ad", "lottery", 1)]
    frame = unified.frame.collect()
    by_item = {r[0]: r[1:] for r in frame.select("item_id", "cat_1", "cat_2", "cat_3").rows()}
    assert by_item["3"] == (26, 686, 2434) and by_item["ad-1"] == (5, 737, None) and by_item["862"] == (None,) * 3
    assert frame.schema["item_id"] == pl.String  # integer video ids and text ad ids: compared as text
    assert sorted(set(frame["user_id"])) == [14, 19, 21, 33]  # 21: content only, 33: ads only
