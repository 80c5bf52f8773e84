"""Loaders: each public format -> canonical lazy frame + schema + filter report; every bad input -> a DataError that
names the file, the line, the column, what was expected and what was found."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import polars as pl
import pytest

from longrec.ingest import LOADERS, load_log, reading
from longrec.ingest.alibaba import TAOBAO_WINDOW, load_taobao, load_tmall
from longrec.ingest.amazon import load_amazon
from longrec.ingest.kuaishou import load_kuairand, load_kuairec
from longrec.ingest.movielens import load_movielens
from longrec.ingest.schema import DataError, check_log
from longrec.ingest.table import load_table

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO / ".." / "shared" / "data"
FIXTURES = Path(__file__).parent / "fixtures"
TAOBAO_927 = SHARED / "taobao_userbehavior" / "UserBehavior_927users.csv.gz"
TAOBAO_SLICE = SHARED / "taobao_userbehavior" / "UserBehavior_timeslice_20171126_0100-0310.csv.gz"
MOVIELENS = SHARED / "movielens_latest_small" / "ratings.csv.gz"
KUAIREC_CATEGORIES = SHARED / "kuairec_meta" / "kuairec_caption_category.csv.gz"

TAOBAO_ROW = "1,2268318,2520377,pv,1511544070\n"
TMALL_HEADER = "user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type\n"


def shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"../shared/data not found: {path} (real data slices live next to the repo)")
    return path


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def collect(log: reading.LoadedLog) -> pl.DataFrame:
    frame = log.collect()
    assert tuple(frame.columns) == log.schema.columns
    assert frame.height == log.report.rows_kept
    check_log(frame, log.source, log.schema)
    return frame


# ---------------------------------------------------------------------------------------------------------------
# Real slices (README stats in ../shared/data/*/README.md).


def test_taobao_927_users_matches_the_readme_stats():
    log = load_taobao(shared(TAOBAO_927), window=None)
    events = collect(log)
    assert log.report.rows_read == 94_225 and log.report.dropped == {}
    assert events["user_id"].n_unique() == 927
    assert events["item_id"].n_unique() == 61_168 and events["cat_1"].n_unique() == 3_067
    counts = dict(events["action"].value_counts().iter_rows())
    assert counts == {"pv": 84_681, "cart": 5_026, "fav": 2_563, "buy": 1_955}
    assert events.schema["timestamp"] == pl.Int64 and events.schema["item_id"] == pl.Int64


def test_taobao_filters_are_counted_not_silent():
    log = load_log(shared(TAOBAO_927), "taobao", actions=("pv",))  # default: the official window
    events = collect(log)
    reasons = list(log.report.dropped)
    assert reasons == ["action not in [pv]", "timestamp outside [1511539200, 1512316800)"]
    assert log.report.dropped[reasons[0]] == 94_225 - 84_681
    assert 0 < log.report.dropped[reasons[1]] < 94_225 * 0.001  # README: 99.96% inside the window
    assert log.report.rows_read - sum(log.report.dropped.values()) == events.height
    assert set(events["action"]) == {"pv"}
    assert events["timestamp"].is_between(*TAOBAO_WINDOW, closed="left").all()


def test_taobao_time_slice():
    events = collect(load_taobao(shared(TAOBAO_SLICE)))
    assert events.height == 110_300 and events["user_id"].n_unique() == 66_454
    assert (events["action"] == "pv").sum() == 98_361


def test_large_compressed_file_is_streamed_through_a_temp_file(monkeypatch, tmp_path):
    in_memory = load_taobao(shared(TAOBAO_927), window=None).collect()
    monkeypatch.setattr(reading, "_IN_MEMORY_BYTES", 1 << 16)
    log = load_taobao(TAOBAO_927, window=None, tmp_dir=tmp_path)
    (temp,) = log.temp_files
    assert temp.parent == tmp_path and temp.stat().st_size > 1 << 16
    assert log.collect().equals(in_memory)
    log.close()
    assert not temp.exists()


def test_movielens_latest_small_with_genres():
    log = load_movielens(shared(MOVIELENS))  # movies.csv is found next to ratings.csv.gz
    events = collect(log)
    assert log.report.rows_read == 100_004 and events["user_id"].n_unique() == 671
    assert log.side["movies"].rows_read == 9_125
    assert log.schema.taxonomy_levels == 1 and set(events["action"]) == {"rate"}
    toy_story = events.filter(pl.col("item_id") == 1)["cat_1"].unique().to_list()
    assert toy_story == ["Adventure"]  # "Adventure|Animation|Children|Comedy|Fantasy": the first listed genre
    assert "(no genres listed)" not in set(events["cat_1"].drop_nulls())


def test_movielens_min_rating_and_label_threshold():
    log = load_movielens(shared(MOVIELENS), min_rating=3.0, label_threshold=4.0)
    events = collect(log)
    (reason,) = log.report.dropped
    assert reason == "rating < 3.0" and log.report.rows_kept == events.height
    assert log.schema.has_label and set(events["label"]) == {0, 1}
    unfiltered = load_movielens(MOVIELENS, label_threshold=4.0).collect()
    assert events["label"].sum() == unfiltered["label"].sum()  # every rating >= 4 survives min_rating=3


def test_kuairec_with_the_real_category_tree():
    log = load_kuairec(FIXTURES / "kuairec" / "small_matrix.csv", categories=shared(KUAIREC_CATEGORIES))
    events = collect(log)
    assert log.side["categories"].rows_read == 10_728 and log.side["categories"].dropped == {}
    by_video = {r["item_id"]: (r["cat_1"], r["cat_2"], r["cat_3"]) for r in events.iter_rows(named=True)}
    assert by_video[0] == (8, 673, None)  # -124 (unknown) -> null
    assert by_video[1] == (27, None, None)
    assert by_video[3] == (26, 686, 2434)
    assert by_video[1378] == (6, None, None)  # its caption holds a raw carriage return
    assert events["timestamp"][0] == 1593898068  # 1593898068.378 floored


# ---------------------------------------------------------------------------------------------------------------
# Fixtures.


def test_tmall_dates_actions_and_extra_fields():
    log = load_tmall(FIXTURES / "tmall" / "user_log_format1.csv")
    events = collect(log)
    assert events.height == 20 and log.schema.extra == ("seller", "brand")
    first = events.row(0, named=True)
    assert first["timestamp"] == 1440806400  # 0829 -> 2015-08-29 00:00 UTC
    assert events.filter(pl.col("user_id") == 234512)["timestamp"][0] == 1431302400  # 511 -> 2015-05-11
    assert events.filter(pl.col("user_id") == 234512)["brand"].null_count() == 5
    assert dict(events["action"].value_counts().iter_rows()) == {"click": 14, "buy": 3, "fav": 2, "cart": 1}
    clicks = load_tmall(FIXTURES / "tmall" / "user_log_format1.csv", actions=["click"], year=2014)
    assert clicks.report.dropped == {"action not in [click]": 6}
    assert collect(clicks)["timestamp"][0] == 1440806400 - 365 * 86400


def test_movielens_dat_format_with_latin1_titles():
    log = load_log(FIXTURES / "movielens_dat" / "ratings.dat", "movielens")
    events = collect(log)
    assert events.height == 10 and log.side["movies"].rows_read == 10
    genres = dict(zip(events["item_id"], events["cat_1"], strict=True))
    assert genres[661] == "Animation" and genres[647] == "Drama"  # title "Courage Under Fire: A Story" has ':'
    assert genres[9999] is None  # not in movies.dat


def test_amazon_json_reviews_with_python_literal_meta():
    meta = FIXTURES / "amazon" / "meta_Electronics.json"
    log = load_amazon(FIXTURES / "amazon" / "reviews_Electronics_5.json", meta=meta, levels=3)
    events = collect(log)
    assert events.schema["user_id"] == pl.String and events.height == 7
    paths = {r["item_id"]: (r["cat_1"], r["cat_2"], r["cat_3"]) for r in events.iter_rows(named=True)}
    assert paths["0528881469"] == ("Electronics", "GPS & Navigation", "Vehicle GPS")  # 4 levels cut to 3
    assert paths["0594451647"] == ("Electronics", "Computers & Accessories", None)  # first path, padded
    assert paths["B00000J1V5"] == (None, None, None)  # not in the meta file
    assert log.side["meta"].dropped == {"duplicate asin (kept the first)": 1}


def test_amazon_2018_meta_and_ratings_csv():
    meta = FIXTURES / "amazon" / "meta_Electronics_2018.json"
    log = load_amazon(FIXTURES / "amazon" / "ratings_Electronics.csv", meta=meta, levels=2, min_rating=2)
    events = collect(log)
    assert log.report.dropped == {"rating < 2": 1} and events.height == 3
    assert events.row(0, named=True) == {
        "user_id": "AO94DHGC771SJ",
        "item_id": "0528881469",
        "timestamp": 1370131200,
        "action": "review",
        "cat_1": "Electronics",
        "cat_2": "GPS & Navigation",
    }


def test_kuairec_finds_the_category_file_and_counts_caption_fragments():
    log = load_kuairec(FIXTURES / "kuairec" / "small_matrix.csv", label_threshold=2.0)
    events = collect(log)
    assert log.side["categories"].dropped == {"video_id not all digits (a caption fragment)": 1}
    assert events.filter(pl.col("item_id") == 2)["cat_1"].to_list() == [9]  # a quoted caption spanning 2 lines
    assert events["label"].to_list() == [0, 0, 0, 0, 0, 0, 1, 0, 0, 1]


def test_kuairec_missing_timestamps_raise_or_are_counted(tmp_path):
    text = (FIXTURES / "kuairec" / "small_matrix.csv").read_text()
    path = write(tmp_path / "small_matrix.csv", text + "30,5,100,200,,,,0.5\n")
    with pytest.raises(DataError, match=r"small_matrix\.csv line 12, column 'timestamp': .* got an empty field"):
        load_kuairec(path)
    log = load_kuairec(path, drop_missing_timestamp=True)
    assert log.report.dropped == {"empty or non-numeric timestamp": 1} and collect(log).height == 10


def test_kuairand_time_scene_and_label():
    path = FIXTURES / "kuairand" / "log_standard_4_08_to_4_21_1k.csv"
    events = collect(load_kuairand(path, label_column="is_click"))
    assert events["timestamp"][1] == 1649383202  # time_ms 1649383202913 // 1000
    assert events["scene"].to_list()[:4] == ["1", "1", "1", "0"]
    assert events["label"].to_list() == [0, 1, 1, 0, 1, 0, 1, 1]
    assert load_kuairand(path).schema.columns == ("user_id", "item_id", "timestamp", "scene")


def test_table_csv_mapping_taxonomy_path_and_date_strings(tmp_path):
    path = write(
        tmp_path / "log.csv",
        "uid,iid,ts,category,brand,clicked\n"
        "u1,10,2024-01-02 03:04:05,Books > Fiction,7,1\n"
        "u2,11,2024-01-03 00:00:00,Books,8,0\n",
    )
    mapping = {"user_id": "uid", "item_id": "iid", "timestamp": "ts", "taxonomy": "category", "label": "clicked"}
    log = load_table(path, mapping=mapping, taxonomy_separator=">", taxonomy_levels=2, extra=("brand",),
                     timestamp_format="%Y-%m-%d %H:%M:%S")  # fmt: skip
    events = collect(log)
    assert events.schema["user_id"] == pl.String and events.schema["item_id"] == pl.Int64  # auto: ints when all are
    assert events.row(0) == ("u1", 10, 1704164645, "Books", "Fiction", 7, 1)
    assert events.row(1)[3:5] == ("Books", None)


def test_table_parquet_keeps_dtypes_and_converts_datetimes(tmp_path):
    path = tmp_path / "log.parquet"
    when = pl.from_epoch(pl.Series([1704164645, 1704240000]), time_unit="s")
    pl.DataFrame({"user": [1, 2], "item_id": ["a", "b"], "when": when}).write_parquet(path)
    events = collect(load_log(path, "parquet", mapping={"user_id": "user", "timestamp": "when"}))
    assert events.to_dict(as_series=False) == {
        "user_id": [1, 2],
        "item_id": ["a", "b"],
        "timestamp": [1704164645, 1704240000],
    }


def labelled_csv(path: Path) -> Path:
    """Three users, four behaviours and one labelled impression each; 'label' and 'action' named like canonical
    columns, 'price' like none."""
    rows = ["user,item,ts,label,action,price"]
    for user in (1, 2, 3):
        rows += [f"{user},{10 + k},{1000 * user + 10 * k},,view,{k}.5" for k in range(4)]
        rows.append(f"{user},{20 + user},{1000 * user + 45},{user % 2},impression,9.9")
    return write(path, "\n".join(rows) + "\n")


MAPPING = {"user_id": "user", "item_id": "item", "timestamp": "ts"}


def test_table_reads_a_column_named_like_a_canonical_one_and_reports_every_column_it_does_not_read(tmp_path):
    log = load_log(labelled_csv(tmp_path / "log.csv"), "csv", mapping=MAPPING)
    events = collect(log)
    assert log.schema.columns == ("user_id", "item_id", "timestamp", "action", "label")
    assert events.filter(pl.col("label").is_not_null())["action"].to_list() == ["impression"] * 3
    assert events["label"].drop_nulls().to_list() == [1, 0, 1]
    assert log.report.unused_columns == ["price"]
    assert "  unused column(s), not read into the log: price" in log.report.lines()
    assert log.report.to_dict()["unused_columns"] == ["price"]


def test_table_reads_a_same_named_column_only_when_nothing_else_reads_it(tmp_path):
    path = write(tmp_path / "log.csv", "user,item,ts,label,clicked,action\n1,2,3,7,1,view\n")
    log = load_table(path, mapping={**MAPPING, "label": "clicked"}, extra={"raw_action": "action"})
    assert log.schema.columns == ("user_id", "item_id", "timestamp", "raw_action", "label")
    assert collect(log).row(0) == (1, 2, 3, "view", 1)
    assert log.report.unused_columns == ["label"]  # the mapping names another column for the label
    write(path, "user_id,item_id,timestamp,cat_1,cat_2,cat_4,taxonomy\n1,2,3,a,b,d,a>b\n")
    assert load_table(path).schema.taxonomy == ("cat_1", "cat_2")  # from cat_1 on, without gaps
    assert load_table(path).report.unused_columns == ["cat_4", "taxonomy"]
    assert load_table(path, taxonomy_levels=1).report.unused_columns == ["cat_2", "cat_4", "taxonomy"]
    mapped = load_table(path, mapping={"taxonomy": "taxonomy"}, taxonomy_separator=">", taxonomy_levels=2)
    assert collect(mapped).row(0)[3:] == ("a", "b") and mapped.report.unused_columns == ["cat_1", "cat_2", "cat_4"]


def test_a_bad_value_in_a_column_read_by_its_name_says_why_it_is_read(tmp_path):
    path = write(tmp_path / "log.csv", "user,item,ts,label\n1,2,3,yes\n")
    pattern = r"log\.csv line 2, column 'label': expected 0 or 1 \(read as 'label' because of its name; extra="
    with pytest.raises(DataError, match=pattern):
        load_table(path, mapping=MAPPING)
    assert load_table(path, mapping=MAPPING, extra={"label_raw": "label"}).schema.extra == ("label_raw",)


def test_prepare_prints_the_csv_columns_it_did_not_read(tmp_path, capsys):
    from longrec.cli import main
    from longrec.data.store import TrajectoryStore

    path = labelled_csv(tmp_path / "log.csv")
    mapping = 'mapping={user_id = "user", item_id = "item", timestamp = "ts"}'
    args = ["--format", "csv", "--option", mapping, "--set", "split_fractions=[0.34, 0.33, 0.33]"]  # 3 impressions
    assert main(["prepare", str(path), *args, "--out", str(tmp_path / "store")]) == 0
    out = capsys.readouterr().out
    assert "12 behaviours, 3 labelled impressions" in out  # the label column was read, not dropped
    assert "  load:   unused column(s), not read into the log: price" in out
    manifest = TrajectoryStore.open(tmp_path / "store").manifest
    assert manifest["schema"]["categorical"] == ["action"] and manifest["schema"]["has_label"]
    assert manifest["load_report"]["unused_columns"] == ["price"]


def test_synthetic_log_directory_is_read_as_stored(tmp_path):
    from longrec.ingest.synthetic import SyntheticConfig, generate

    generate(SyntheticConfig(num_users=30, events_per_user=20, impressions_per_user=2)).write(tmp_path / "synth")
    log = load_log(tmp_path / "synth", "synthetic")
    events = collect(log)
    assert log.schema.has_label and log.schema.has_goal and log.schema.has_event_id and log.schema.taxonomy_levels == 3
    assert events.equals(pl.read_parquet(tmp_path / "synth" / "log.parquet").select(log.schema.columns))


def test_every_registered_format_has_a_loader():
    formats = {"taobao", "tmall", "movielens", "amazon", "kuairec", "kuairand", "csv", "parquet", "synthetic"}
    assert set(LOADERS) == formats


# ---------------------------------------------------------------------------------------------------------------
# Errors: file, line, column, expected, got.


def test_missing_column_names_the_file_header_and_found_columns(tmp_path):
    path = write(tmp_path / "user_log.csv", TMALL_HEADER.replace("time_stamp", "timestamp") + "1,2,3,4,5,1111,0\n")
    pattern = r"user_log\.csv line 1 \(header\): .*'time_stamp' \(did you mean 'timestamp'\?\), got columns: user_id"
    with pytest.raises(DataError, match=pattern):
        load_tmall(path)


def test_non_integer_timestamp_names_line_column_and_value(tmp_path):
    path = write(tmp_path / "ub.csv", TAOBAO_ROW * 2 + "1,2,3,pv,1511544070.5\n")
    pattern = r"ub\.csv line 3, column 'timestamp': expected an integer epoch-seconds value, got '1511544070\.5'"
    with pytest.raises(DataError, match=pattern):
        load_taobao(path)


def test_bad_value_in_a_gzipped_file_names_its_line(tmp_path):
    path = tmp_path / "ub.csv.gz"
    path.write_bytes(gzip.compress((TAOBAO_ROW * 4 + "1,2,3,click,1511544070\n").encode()))
    with pytest.raises(DataError, match=r"ub\.csv\.gz line 5, column 'behavior_type': .*got 'click'"):
        load_taobao(path)


def test_line_numbers_count_quoted_line_breaks(tmp_path):
    path = write(tmp_path / "log.csv", 'user_id,item_id,timestamp,note\n1,2,3,"two\nlines"\n1,2,3,ok\n1,2,3x,ok\n')
    with pytest.raises(DataError, match=r"log\.csv line 5, column 'timestamp': expected an integer .* got '3x'"):
        load_table(path, extra=("note",))


def test_empty_file(tmp_path):
    path = write(tmp_path / "empty.csv", "")
    with pytest.raises(
        DataError, match=r"empty\.csv line 1: expected at least one row \(user_id,.*\), got an empty file"
    ):
        load_taobao(path)


def test_blank_lines_are_counted_not_an_error(tmp_path):
    log = load_taobao(write(tmp_path / "ub.csv", TAOBAO_ROW + "\n" + TAOBAO_ROW + "\n"))
    assert log.report.dropped == {"empty row (blank line)": 2} and collect(log).height == 2


def test_header_only_file(tmp_path):
    path = write(tmp_path / "user_log.csv", TMALL_HEADER)
    with pytest.raises(DataError, match=r"user_log\.csv line 2: expected at least one data row after the header"):
        load_tmall(path)


@pytest.mark.parametrize(
    ("bad_row", "got"),
    [("1,2,3,pv,1511544070,9", "got 6: '1,2,3,pv,1511544070,9'"), ("1,2,3,pv", "got 4: '1,2,3,pv'")],
)
def test_ragged_row_names_its_line_and_field_count(tmp_path, bad_row, got):
    path = write(tmp_path / "ub.csv", TAOBAO_ROW * 2 + bad_row + "\n" + TAOBAO_ROW)
    pattern = r"ub\.csv line 3: expected 5 fields separated by ',' \(user_id,item_id,category_id,.*\), " + re.escape(
        got
    )
    with pytest.raises(DataError, match=pattern):
        load_taobao(path)


def test_unparsable_json_line_names_its_line(tmp_path):
    good = (FIXTURES / "amazon" / "reviews_Electronics_5.json").read_text().splitlines()
    path = write(tmp_path / "reviews.json", "\n".join([good[0], "", good[1][:-1], good[2]]) + "\n")
    with pytest.raises(DataError, match=r"reviews\.json line 3: expected one JSON object per line, got '\{\"reviewer"):
        load_amazon(path)


def test_json_value_of_the_wrong_type_names_line_and_key(tmp_path):
    path = write(
        tmp_path / "reviews.json", '{"reviewerID": "A", "asin": "B", "unixReviewTime": "2013-06-02", "overall": 5}\n'
    )
    with pytest.raises(DataError, match=r"reviews\.json line 1, column 'unixReviewTime': .*got '2013-06-02'"):
        load_amazon(path)


def test_unparsable_meta_line_names_its_line(tmp_path):
    path = write(tmp_path / "meta.json", "{'asin': 'A1', 'categories': [['X']]}\n{'asin': 'A2', 'categories': [['Y']\n")
    reviews = FIXTURES / "amazon" / "reviews_Electronics_5.json"
    with pytest.raises(DataError, match=r"meta\.json line 2: expected a JSON object or a Python dict literal, got"):
        load_amazon(reviews, meta=path)
    write(path, "{'asin': 'A1', 'categories': 'Electronics'}\n")
    with pytest.raises(
        DataError, match=r"meta\.json line 1, column 'categories': expected a list .* got \"'Electronics'\""
    ):
        load_amazon(reviews, meta=path)


def test_mapping_to_an_absent_column_lists_the_found_columns(tmp_path):
    path = write(tmp_path / "log.csv", "uid,iid,ts\n1,2,3\n")
    pattern = (
        r"log\.csv line 1 \(header\): the mapping expected column\(s\) timestamp -> 'time'.* got columns: uid, iid, ts"
    )
    with pytest.raises(DataError, match=pattern):
        load_table(path, mapping={"user_id": "uid", "item_id": "iid", "timestamp": "time"})
    with pytest.raises(ValueError, match=r"Got 'usr_id' \(did you mean 'user_id'\?\)"):
        load_table(path, mapping={"usr_id": "uid"})


def test_empty_required_id_names_line_and_column(tmp_path):
    path = write(tmp_path / "ub.csv", TAOBAO_ROW + ",2,3,pv,1511544070\n")
    with pytest.raises(DataError, match=r"ub\.csv line 2, column 'user_id': expected an integer user_id, got an empty"):
        load_taobao(path)


def test_registry_and_option_errors(tmp_path):
    with pytest.raises(KeyError, match=r"Unknown log format 'taobo'. Known formats: amazon, csv, .* Did you mean"):
        load_log(TAOBAO_927, "taobo")
    with pytest.raises(TypeError, match=r"'action' \(did you mean 'actions'\?\). Known options: actions, window"):
        load_log(TAOBAO_927, "taobao", action=("pv",))
    with pytest.raises(ValueError, match=r"actions must be a non-empty subset of \['pv', 'cart', 'fav', 'buy'\]"):
        load_taobao(TAOBAO_927, actions=("click",))
    with pytest.raises(FileNotFoundError, match=r"nope\.csv"):
        load_taobao(tmp_path / "nope.csv")
