"""Interop input: already-built Parquet samples -> a prepared store whose batches hold exactly the file's histories."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch

from longrec.cli import EXAMPLES, main
from longrec.config import load_config
from longrec.data.batch import check_batch
from longrec.data.dataset import collate
from longrec.data.interop import import_samples
from longrec.data.store import TrajectoryStore
from longrec.eval.evaluate import evaluate
from longrec.eval.metrics import gauc
from longrec.ingest.schema import DataError
from longrec.models import build_model_for_sizes
from longrec.run import train

# Hand-written rows: different lengths, an empty history, ids kept as given (item 0 never appears).
ROWS: dict[str, list[Any]] = {
    "user": [7, 7, 3, 9],
    "target_item": [11, 40, 5, 2],
    "target_cat": [1, 4, 0, 2],
    "label": [1, 0, 1, 0],
    "hist_items": [[3, 5, 8], [3, 5, 8, 11], [], [40]],
    "hist_cats": [[1, 2, 1], [1, 2, 1, 1], [], [4]],
    "hist_ts": [[100, 150, 150], [100, 150, 150, 200], [], [10]],
    "target_ts": [200, 260, 50, 11],
}


def _write(path: Path, rows: dict[str, list[Any]], schema: dict[str, Any] | None = None) -> Path:
    pl.DataFrame(rows, schema=schema).write_parquet(path)
    return path


def _files(tmp: Path, train: dict[str, list[Any]], valid: Any = None, test: Any = None) -> dict[str, Path]:
    """Three files; valid/test default to the train rows (so every split is small and valid)."""
    return {
        s: _write(tmp / f"{s}.parquet", rows if rows is not None else train)
        for s, rows in (("train", train), ("valid", valid), ("test", test))
    }


def _import(tmp: Path, train: dict[str, list[Any]], **kwargs: Any) -> TrajectoryStore:
    paths = _files(tmp, train)
    import_samples(paths["train"], paths["valid"], paths["test"], tmp / "store", **kwargs)
    return TrajectoryStore.open(tmp / "store")


def _without_ts(rows: dict[str, list[Any]]) -> dict[str, list[Any]]:
    return {k: v for k, v in rows.items() if k not in ("hist_ts", "target_ts")}


def _random_rows(rng: np.random.Generator, n: int, num_users: int = 6, max_len: int = 7) -> dict[str, list[Any]]:
    lengths = rng.integers(0, max_len + 1, size=n)
    items = [rng.integers(1, 30, size=k).tolist() for k in lengths]
    return {
        "user": rng.integers(100, 100 + num_users, size=n).tolist(),
        "target_item": rng.integers(1, 30, size=n).tolist(),
        "target_cat": rng.integers(1, 5, size=n).tolist(),
        "label": rng.integers(0, 2, size=n).tolist(),
        "hist_items": items,
        "hist_cats": [[i % 4 + 1 for i in h] for h in items],
    }


def test_batch_holds_exactly_the_files_histories(tmp_path: Path) -> None:
    store = _import(tmp_path, ROWS)
    samples = store.samples("train")
    batch = collate(store, samples, np.arange(len(samples)), max_history=10)
    check_batch(batch, num_items=store.sizes["num_items"])
    L = batch.history.shape[1]
    assert L == 4, "padded to the longest history in the batch"
    for b, items in enumerate(ROWS["hist_items"]):
        n = len(items)
        assert batch.history[b, L - n :].tolist() == items, "same ids, oldest first, left-padded"
        assert batch.history_mask[b].tolist() == [False] * (L - n) + [True] * n
        assert (batch.history[b, : L - n] == 0).all()
        assert batch.history_category[b, L - n :, 0].tolist() == ROWS["hist_cats"][b]
        deltas = [ROWS["target_ts"][b] - t for t in ROWS["hist_ts"][b]]
        assert batch.history_time_delta[b, L - n :].tolist() == deltas, "time delta = target_ts - hist_ts"
        assert batch.history_position[b].tolist() == [0] * (L - n) + list(range(n, 0, -1)), "most recent = 1"
    assert batch.target.tolist() == ROWS["target_item"]
    assert batch.target_category[:, 0].tolist() == ROWS["target_cat"]
    assert batch.label.tolist() == ROWS["label"]
    assert batch.target_time.tolist() == ROWS["target_ts"]


def test_max_history_keeps_the_most_recent_behaviours(tmp_path: Path) -> None:
    store = _import(tmp_path, ROWS)
    batch = collate(store, store.samples("valid"), np.array([1]), max_history=2)
    assert batch.history.tolist() == [[8, 11]]


def test_integer_ids_are_kept_as_given(tmp_path: Path) -> None:
    store = _import(tmp_path, ROWS)
    assert store.sizes["num_items"] == 41 and store.sizes["num_categories"] == 5, "max id + 1"
    assert store.sizes["taxonomy_levels"] == 1 and store.sizes["num_users"] == 4  # users 3, 7, 9 -> 1, 2, 3
    assert store.manifest["interop"]["ids"] == {"item": "keep", "category": "keep", "user": "map"}
    assert store.item_category[40].tolist() == [4] and store.item_category[3].tolist() == [1]


def test_string_ids_are_mapped_to_dense_ids_in_sorted_order(tmp_path: Path) -> None:
    rows = {
        **_without_ts(ROWS),
        "user": ["u7", "u7", "u3", "u9"],
        "target_item": ["k", "b", "a", "z"],
        "hist_items": [["c", "a", "b"], ["c", "a", "b", "k"], [], ["b"]],
    }
    store = _import(tmp_path, rows)
    vocab = store.vocab("item_id").to_list()
    assert vocab == ["a", "b", "c", "k", "z"] and store.sizes["num_items"] == 6
    batch = collate(store, store.samples("train"), np.arange(4), max_history=10)
    names = ["", *vocab]
    assert [names[i] for i in batch.history[1].tolist()] == ["c", "a", "b", "k"]
    assert [names[i] for i in batch.target.tolist()] == rows["target_item"]
    assert batch.history_category[1, :, 0].tolist() == [1, 2, 1, 1], "integer categories stay as given"


def test_ids_map_maps_integers_too_and_keeps_zero_as_a_real_id(tmp_path: Path) -> None:
    rows = {**_without_ts(ROWS), "hist_items": [[0, 5, 8], [3, 5, 8, 11], [], [40]]}
    store = _import(tmp_path, rows, ids="map")
    assert store.vocab("item_id").to_list() == [0, 2, 3, 5, 8, 11, 40]
    batch = collate(store, store.samples("train"), np.arange(1), max_history=10)
    assert batch.history.tolist() == [[1, 4, 5]]


def test_ids_keep_rejects_string_ids(tmp_path: Path) -> None:
    rows = {**_without_ts(ROWS), "target_item": ["a", "b", "c", "d"], "hist_items": [["a"] * 3, ["b"] * 4, [], ["c"]]}
    with pytest.raises(DataError, match=r"column 'target_item': ids='keep' expected integer item ids, got strings"):
        _import(tmp_path, rows, ids="keep")


def test_padding_zeros_are_removed_with_their_side_fields_and_counted(tmp_path: Path) -> None:
    rows = {
        **ROWS,
        "hist_items": [[0, 0, 3, 5, 8], [3, 5, 8, 11], [0], [40]],
        "hist_cats": [[0, 0, 1, 2, 1], [1, 2, 1, 1], [0], [4]],
        "hist_ts": [[0, 0, 100, 150, 150], [100, 150, 150, 200], [0], [10]],
    }
    store = _import(tmp_path, rows)
    interop = store.manifest["interop"]
    assert interop["padding_removed"] == 3 * 3 and interop["histories_with_padding"] == 2 * 3  # x 3 files
    batch = collate(store, store.samples("test"), np.arange(4), max_history=10)
    assert batch.history[0].tolist() == [0, 3, 5, 8] and batch.history_mask[2].sum() == 0
    assert batch.history_time_delta[0, 1:].tolist() == [100, 50, 50]


def test_synthetic_timestamps_make_the_time_delta_the_relative_position(tmp_path: Path) -> None:
    store = _import(tmp_path, _without_ts(ROWS))
    batch = collate(store, store.samples("train"), np.arange(4), max_history=10)
    real = batch.history_mask
    assert torch.equal(batch.history_time_delta[real], batch.history_position[real].float())
    assert (batch.history_time_delta[real] > 0).all()
    assert store.manifest["interop"]["timestamps"].startswith("synthetic")


def test_gauc_groups_by_the_real_user_not_the_per_sample_trajectory(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = _random_rows(rng, 40, num_users=4)
    store = _import(tmp_path, rows)
    samples = store.samples("valid")
    assert len(np.unique(samples.user)) == len(samples), "one trajectory per sample"
    batch = collate(store, samples, np.arange(len(samples)), max_history=10)
    assert batch.user.tolist() == [sorted(set(rows["user"])).index(u) + 1 for u in rows["user"]]
    torch.manual_seed(0)
    model = build_model_for_sizes("din", {"dim": 4, "attention_hidden": (4,), "head_hidden": (4,)}, store.sizes)
    metrics = evaluate(model, store, "valid", batch_size=16, max_history=10)
    with torch.no_grad():
        model.eval()
        logits = model(batch).numpy()
    assert metrics["gauc"] == pytest.approx(gauc(rows["label"], logits, rows["user"]))
    assert not math.isnan(metrics["gauc"]), "grouped by trajectory, every group has one sample and GAUC is nan"


@pytest.mark.parametrize("with_ts", [False, True])
def test_imported_batches_equal_the_file_for_random_histories(tmp_path: Path, with_ts: bool) -> None:
    rng = np.random.default_rng(int(with_ts))
    n = 30
    rows = _random_rows(rng, n, max_len=12)
    if with_ts:
        rows["hist_ts"] = [np.sort(rng.integers(0, 1000, size=len(h))).tolist() for h in rows["hist_items"]]
        rows["target_ts"] = [(max(t) if t else 0) + int(rng.integers(1, 100)) for t in rows["hist_ts"]]
    store = _import(tmp_path, rows)
    index = rng.permutation(n)  # batches pick rows in any order
    batch = collate(store, store.samples("test"), index, max_history=100)
    for b, row in enumerate(index.tolist()):
        real = batch.history_mask[b]
        assert real.tolist() == sorted(real.tolist()), "left-padded"
        assert batch.history[b][real].tolist() == rows["hist_items"][row]
        assert batch.history_category[b, :, 0][real].tolist() == rows["hist_cats"][row]
        assert int(batch.target[b]) == rows["target_item"][row] and float(batch.label[b]) == rows["label"][row]
        if with_ts:
            deltas = [rows["target_ts"][row] - t for t in rows["hist_ts"][row]]
            assert batch.history_time_delta[b][real].tolist() == deltas


def _rows_with(**changes: Any) -> dict[str, list[Any]]:
    return {**ROWS, **changes}


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            {k: v for k, v in ROWS.items() if k != "hist_cats"} | {"hist_cat": ROWS["hist_cats"]},
            r"train\.parquet: expected column\(s\) 'hist_cats' \(did you mean 'hist_cat'\?\), got columns: user,",
        ),
        (
            _rows_with(hist_cats=[[1, 2, 1], [1, 2, 1], [], [4]]),
            r"train\.parquet row 1 \(0-based\): expected hist_items and hist_cats of the same length .* got 4 and 3",
        ),
        (
            _rows_with(hist_ts=[[100, 150, 150], [100, 150, 150, 200], [], []]),
            r"row 3 \(0-based\): expected hist_items and hist_ts of the same length .* got 1 and 0",
        ),
        (_rows_with(label=[1, 0, 2, 0]), r"row 2 \(0-based\), column 'label': expected 0 or 1, got 2"),
        (
            _rows_with(target_item=[11.0, 40.0, 5.0, 2.0]),
            r"row 0 \(0-based\), column 'target_item': expected integer or string ids, got 11\.0 \(Float64\)",
        ),
        (
            _rows_with(hist_items=[[3.0, 5.0, 8.0], [3.0, 5.0, 8.0, 11.0], [], [40.0]]),
            r"row 0 \(0-based\), column 'hist_items': expected integer or string ids, got 3\.0",
        ),
        (
            _rows_with(hist_ts=[[100, 150, 150], [100, 150, 150, 260], [], [10]]),
            r"row 1 \(0-based\), column 'hist_ts'\[3\]: expected a time before target_ts = 260, got 260: .*leak",
        ),
        (
            _rows_with(hist_ts=[[100, 150, 120], [100, 150, 150, 200], [], [10]]),
            r"row 0 \(0-based\), column 'hist_ts'\[2\]: expected non-decreasing times .* got 120 after 150",
        ),
        (
            _rows_with(hist_items=[[3, 5, 8], [3, -5, 8, 11], [], [40]]),
            r"row 1 \(0-based\), column 'hist_items'\[1\]: expected a non-negative integer id \(0 = padding\), got -5",
        ),
        (
            _rows_with(target_item=[11, 0, 5, 2]),
            r"row 1 \(0-based\), column 'target_item': expected a real item id \(0 is padding\), got 0",
        ),
        (
            _rows_with(target_item=[11, 40, 5, 2**40]),
            r"row 3 \(0-based\), column 'target_item': expected an id <= 2,147,483,646",
        ),
        (
            {k: v for k, v in ROWS.items() if k != "target_ts"},
            r"expected columns hist_ts and target_ts together .* got 'hist_ts' without 'target_ts'",
        ),
        (_rows_with(user=[7, None, 3, 9]), r"row 1 \(0-based\), column 'user': expected no nulls, got None"),
        (
            _rows_with(hist_items=[[3, None, 8], [3, 5, 8, 11], [], [40]]),
            r"row 0 \(0-based\), column 'hist_items': expected no nulls, got \[3, None, 8\]\.",
        ),
        (_rows_with(hist_items=[1, 2, 3, 4]), r"column 'hist_items': expected a list column .*, got Int64"),
        ({k: v[:0] for k, v in ROWS.items()}, r"train\.parquet: expected at least one sample row, got an empty file"),
    ],
    ids=[
        "missing-column",
        "hist-cats-length",
        "hist-ts-length",
        "label",
        "float-target",
        "float-history",
        "leak",
        "unsorted-ts",
        "negative-id",
        "target-padding",
        "too-large-id",
        "ts-pair",
        "null-user",
        "null-in-list",
        "not-a-list",
        "empty-file",
    ],
)
def test_bad_files_name_file_row_column_expected_and_got(
    tmp_path: Path, rows: dict[str, list[Any]], message: str
) -> None:
    paths = _files(tmp_path, rows, valid=ROWS, test=ROWS)
    with pytest.raises(DataError, match=message):
        import_samples(paths["train"], paths["valid"], paths["test"], tmp_path / "store")
    assert not (tmp_path / "store").exists(), "nothing is written on error"


def test_an_empty_file_is_refused_naming_the_split_it_was_given_for(tmp_path: Path) -> None:
    part = {"a": _write(tmp_path / "part-a.parquet", ROWS), "b": _write(tmp_path / "part-b.parquet", ROWS)}
    empty = _write(tmp_path / "part-c.parquet", {k: v[:0] for k, v in ROWS.items()})
    with pytest.raises(
        DataError, match=r"part-c\.parquet: expected at least one sample row, got an empty file \(the valid split\)"
    ):
        import_samples(part["a"], empty, part["b"], tmp_path / "store")
    assert not (tmp_path / "store").exists(), "nothing is written on error"


def test_a_single_class_split_is_imported_and_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    paths = _files(tmp_path, ROWS, valid=_rows_with(label=[0, 0, 0, 0]))
    with caplog.at_level(logging.WARNING, logger="longrec"):
        import_samples(paths["train"], paths["valid"], paths["test"], tmp_path / "store")
    assert TrajectoryStore.open(tmp_path / "store").manifest["counts"]["positives"] == {
        "train": 2,
        "valid": 0,
        "test": 2,
    }
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        len(warned) == 1
        and f"{paths['valid']}: split 'valid' holds a single class (4 samples, all negative)" in warned[0]
    )


def test_id_types_must_agree_across_files(tmp_path: Path) -> None:
    strings = _rows_with(target_item=["a", "b", "c", "d"], hist_items=[["a"] * 3, ["b"] * 4, [], ["c"]])
    paths = _files(tmp_path, ROWS, valid=strings, test=ROWS)
    with pytest.raises(DataError, match=r"item ids must have one type .*valid\.parquet column 'target_item' holds str"):
        import_samples(paths["train"], paths["valid"], paths["test"], tmp_path / "store")


def test_missing_and_unreadable_files_are_named(tmp_path: Path) -> None:
    paths = _files(tmp_path, ROWS)
    with pytest.raises(FileNotFoundError, match=r"nope\.parquet not found"):
        import_samples(paths["train"], tmp_path / "nope.parquet", paths["test"], tmp_path / "store")
    (tmp_path / "bad.parquet").write_text("user,item\n1,2\n")
    with pytest.raises(DataError, match=r"bad\.parquet: expected a Parquet file of samples"):
        import_samples(tmp_path / "bad.parquet", paths["valid"], paths["test"], tmp_path / "store")
    with pytest.raises(ValueError, match=r"ids must be one of auto, keep, map\. Got 'kept' instead"):
        import_samples(paths["train"], paths["valid"], paths["test"], tmp_path / "store", ids="kept")


def test_import_samples_help_ends_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["import-samples", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.rstrip().endswith(EXAMPLES["import-samples"].splitlines()[-1].rstrip())
    assert "longrec import-samples" in text


@pytest.mark.integration
def test_cli_import_then_train_din_scores_every_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(1)
    sizes = {"train": 48, "valid": 20, "test": 17}
    paths = {s: _write(tmp_path / f"{s}.parquet", _random_rows(rng, n)) for s, n in sizes.items()}
    store_dir = tmp_path / "store"
    args = ["--quiet", "import-samples", "--out", str(store_dir), *[f"--{s}={p}" for s, p in paths.items()]]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert (
        f"imported {store_dir}: 85 samples" in printed and "item ids kept as given: num_items = max id + 1 =" in printed
    )
    config = load_config(
        None,
        [
            "model.name=din",
            "model.dim=4",
            "model.attention_hidden=[4]",
            "model.head_hidden=[4]",
            f"data.path={str(store_dir)!r}",
            "data.max_history=8",
            "train.batch_size=16",
            "train.epochs=1",
            "train.progress=false",
        ],
    )
    result = train(config, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["valid"]["count"] == sizes["valid"] and saved["test"]["count"] == sizes["test"]
    assert result["steps"] == 3  # ceil(48 / 16)
    assert main(["--quiet", "eval", str(tmp_path / "run"), "--split", "test"]) == 0
    assert json.loads((tmp_path / "run" / "eval_test.json").read_text())["count"] == sizes["test"]


def test_a_file_whose_histories_are_all_empty_imports(tmp_path: Path) -> None:
    empty = {**_without_ts(ROWS), "hist_items": [[], [], [], []], "hist_cats": [[], [], [], []]}  # List(Null)
    paths = _files(tmp_path, _without_ts(ROWS), valid=empty, test=_without_ts(ROWS))
    import_samples(paths["train"], paths["valid"], paths["test"], tmp_path / "store")
    store = TrajectoryStore.open(tmp_path / "store")
    batch = collate(store, store.samples("valid"), np.arange(4), max_history=10)
    assert not batch.history_mask.any() and batch.target.tolist() == ROWS["target_item"]


def test_timestamps_must_be_in_every_file_or_none(tmp_path: Path) -> None:
    paths = _files(tmp_path, ROWS, valid=_without_ts(ROWS), test=ROWS)
    with pytest.raises(DataError, match=r"expected hist_ts/target_ts in every file or in none: .*valid\.parquet lacks"):
        import_samples(paths["train"], paths["valid"], paths["test"], tmp_path / "store")


def test_item_category_table_holds_each_items_most_frequent_category() -> None:
    from longrec.data.interop import _item_categories

    items = np.array([5, 5, 5, 7, 7, 9, 9, 3])
    cats = np.array([2, 3, 3, 1, 0, 4, 2, 0])  # 9: a tie -> the smaller id; 3: only missing -> 0
    table = _item_categories(items, cats, 10)
    assert table[:, 0].tolist() == [0, 0, 0, 0, 0, 3, 0, 1, 0, 2]
