"""Item content vectors beside a store: raw-id mapping, missing / unknown ids, validation, atomic no-overwrite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from longrec.cli import main
from longrec.data.content import (
    ContentError,
    content_from_pairs,
    list_modalities,
    open_content,
    read_vector_file,
    write_content,
)
from longrec.data.prepare import prepare
from longrec.data.protocols import ProtocolConfig
from longrec.data.store import TrajectoryStore
from longrec.files import OutputError
from tests.conftest import make_log


@pytest.fixture
def store(tmp_path: Path) -> TrajectoryStore:
    out = tmp_path / "store"
    prepare(
        make_log(num_users=8, events=10, num_items=30, seed=3), out, ProtocolConfig.for_protocol("T", min_history=0)
    )
    return TrajectoryStore.open(out)


def _raw_items(store: TrajectoryStore) -> list[int]:
    return [int(v) for v in store.vocab("item_id").to_list()]


def _vectors(n: int, dim: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim))


def test_raw_ids_map_to_dense_rows(store: TrajectoryStore) -> None:
    raw = _raw_items(store)[::-1]  # given in another order than the vocabulary's
    vec = _vectors(len(raw))
    table, counts = content_from_pairs(store, raw, vec)
    assert table.shape == (len(raw) + 1, 4) and table.dtype == np.float32
    assert not table[0].any()
    vocab = store.vocab("item_id").to_list()
    for k, r in enumerate(raw):
        np.testing.assert_allclose(table[vocab.index(r) + 1], vec[k].astype(np.float32))
    assert counts == {"items_given": len(raw), "items_missing": 0, "ids_unknown": 0}


def test_unknown_and_missing_ids_error_or_count(store: TrajectoryStore) -> None:
    raw = _raw_items(store)
    given = [*raw[2:], 999_999]  # two store items without a vector, one id the store does not know
    vec = _vectors(len(given))
    with pytest.raises(ContentError, match=r"not in the store's item vocabulary.*999999"):
        content_from_pairs(store, given, vec)
    with pytest.raises(ContentError, match=r"2 of .* store items have no vector"):
        content_from_pairs(store, given, vec, unknown="skip")
    table, counts = content_from_pairs(store, given, vec, unknown="skip", missing="zero")
    assert counts == {"items_given": len(raw) - 2, "items_missing": 2, "ids_unknown": 1}
    assert not table[1:3].any() and table[3:].any(axis=1).all()
    with pytest.raises(ContentError, match="at most once"):
        content_from_pairs(store, [raw[0], raw[0]], _vectors(2))


def test_validation_on_write_and_open(store: TrajectoryStore) -> None:
    rows = int(store.sizes["num_items"])
    good = np.zeros((rows, 3), np.float32)
    good[1:] = 1.0
    bad_rows = np.zeros((rows - 1, 3), np.float32)
    with pytest.raises(ContentError, match=rf"expected one row per item id .*{rows} rows.*got {rows - 1}"):
        write_content(store, "text", bad_rows, source="x", method="test")
    with pytest.raises(ContentError, match="expected dtype float32 or float16, got float64"):
        write_content(store, "text", good.astype(np.float64), source="x", method="test")
    nan = good.copy()
    nan[5, 1] = np.nan
    with pytest.raises(ContentError, match="row 5"):
        write_content(store, "text", nan, source="x", method="test")
    with pytest.raises(ContentError, match="float16"):  # 1e6 overflows float16 to inf
        content_from_pairs(store, _raw_items(store), np.full((rows - 1, 2), 1e6), dtype="float16")
    with pytest.raises(ContentError, match="cannot name a folder"):
        write_content(store, "../x", good, source="x", method="test")
    write_content(store, "text", good, source="x", method="test")
    table = open_content(store, "text")
    assert isinstance(table.vectors, np.memmap) and table.dim == 3
    np.testing.assert_array_equal(table.lookup(np.array([[0, 2]])), good[[[0, 2]]])
    with pytest.raises(FileNotFoundError, match=r"has no content modality 'image' .*it has: text"):
        open_content(store, "image")
    # a store re-prepared with other ids voids the vectors
    store.manifest["vocab_sha"] = "0" * 16
    with pytest.raises(ContentError, match="vocabulary sha"):
        open_content(store, "text")


def test_damaged_files_are_refused(store: TrajectoryStore) -> None:
    rows = int(store.sizes["num_items"])
    table = np.ones((rows, 2), np.float32)
    table[0] = 0
    folder = write_content(store, "text", table, source="x", method="test")
    np.save(folder / "vectors.npy", np.ones((rows, 3), np.float32))  # row 0 not zero, dim changed
    with pytest.raises(ContentError, match="row 0"):
        open_content(store, "text")
    zero = np.ones((rows, 3), np.float32)
    zero[0] = 0
    np.save(folder / "vectors.npy", zero)
    with pytest.raises(ContentError, match=r"says dim = 2, .* has 3"):
        open_content(store, "text")


def test_no_overwrite_without_force_and_atomic(store: TrajectoryStore) -> None:
    rows = int(store.sizes["num_items"])
    first = np.zeros((rows, 2), np.float32)
    first[1:] = 1
    write_content(store, "text", first, source="a", method="test")
    with pytest.raises(OutputError, match="--force"):
        write_content(store, "text", first * 2, source="b", method="test")
    np.testing.assert_array_equal(open_content(store, "text").vectors, first)
    write_content(store, "text", first * 2, source="b", method="test", force=True)
    assert open_content(store, "text").manifest["source"] == "b"
    assert list_modalities(store.root) == ["text"]
    assert not [p for p in (store.root / "content").iterdir() if p.name.startswith(".")]  # no temporary left
    # prepare --force still recognises the store with its content folder
    prepare(
        make_log(num_users=8, events=10, num_items=30, seed=3),
        store.root,
        ProtocolConfig.for_protocol("T", min_history=0),
        force=True,
    )
    assert list_modalities(store.root) == []


def test_read_vector_file_formats(tmp_path: Path) -> None:
    vec = _vectors(3, 2)
    pl.DataFrame({"item_id": [7, 14, 21], "emb": vec.tolist()}).write_parquet(tmp_path / "list.parquet")
    raw, got = read_vector_file(tmp_path / "list.parquet")
    assert raw.to_list() == [7, 14, 21]
    np.testing.assert_allclose(got, vec)
    pl.DataFrame({"id": [7, 14, 21], "a": vec[:, 0], "b": vec[:, 1]}).write_parquet(tmp_path / "cols.parquet")
    raw, got = read_vector_file(tmp_path / "cols.parquet", id_column="id", vector_columns=["a", "b"])
    np.testing.assert_allclose(got, vec)
    pl.DataFrame({"item_id": [7, 14], "emb": [[1.0, 2.0], [1.0]]}).write_parquet(tmp_path / "ragged.parquet")
    with pytest.raises(ContentError, match="same length"):
        read_vector_file(tmp_path / "ragged.parquet")
    np.save(tmp_path / "v.npy", vec)
    (tmp_path / "ids.txt").write_text("a\nb\nc\n")
    raw, got = read_vector_file(tmp_path / "v.npy", ids=tmp_path / "ids.txt")
    assert raw.to_list() == ["a", "b", "c"]
    with pytest.raises(ContentError, match="needs --ids"):
        read_vector_file(tmp_path / "v.npy")


def test_cli_content_add(store: TrajectoryStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = _raw_items(store)[1:]
    pl.DataFrame({"item_id": raw, "emb": _vectors(len(raw), 5).tolist()}).write_parquet(tmp_path / "e.parquet")
    args = ["content", "add", str(store.root), "--from", str(tmp_path / "e.parquet"), "--modality", "text"]
    assert main(args) == 2  # one store item has no vector: a one-line error
    assert "have no vector" in capsys.readouterr().err
    assert main([*args, "--missing", "zero", "--dtype", "float16"]) == 0
    assert "missing (zero rows) 1" in capsys.readouterr().out
    table = open_content(store, "text")
    assert table.vectors.dtype == np.float16 and table.manifest["items_missing"] == 1
    assert main([*args, "--missing", "zero"]) == 2  # exists: needs --force
    assert "--force" in capsys.readouterr().err


def test_a_run_reads_the_content_it_names_and_the_checkpoint_carries_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    import torch

    from longrec.run import load_run

    out = tmp_path / "store"
    prepare(make_log(num_users=30, events=20, seed=9), out, ProtocolConfig.for_protocol("T"))
    store = TrajectoryStore.open(out)
    raw = _raw_items(store)
    table, counts = content_from_pairs(store, raw, _vectors(len(raw), 6))
    write_content(store, "text", table, source="test", method="test", counts=counts)
    sets = ["model.dim=4", "model.attention_hidden=[8]", "model.head_hidden=[8]", f"data.path={out}"]
    sets += ["data.max_history=10", "train.batch_size=16", "train.epochs=1", "model.content_proj=3"]
    args = ["--quiet", "train", "configs/din_synthetic.toml", *(f"--set={s}" for s in sets)]
    assert main([*args, "--out", str(tmp_path / "no"), "--set=data.content=['image']"]) == 2
    assert "has no content modality 'image'" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "run"), "--set=data.content=['text']"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["content"]["text"]["dim"] == 6
    run = load_run(tmp_path / "run")
    content = run.model.state_dict()["content"]
    torch.testing.assert_close(content, torch.from_numpy(table))
    assert main([*args, "--out", str(tmp_path / "plain")]) == 2  # content_proj without data.content
    assert "needs item content" in capsys.readouterr().err
    assert main(["--quiet", "export", str(tmp_path / "run"), "--out", str(tmp_path / "served")]) == 0
    from longrec.serve.artifact import load_artifact

    served = load_artifact(tmp_path / "served")
    torch.testing.assert_close(served.model.state_dict()["content"], torch.from_numpy(table))
    again = [*args, "--out", str(tmp_path / "next"), "--set=data.content=['text']"]
    assert main([*again, "--continue-from", str(tmp_path / "run")]) == 2
    assert "not supported yet" in capsys.readouterr().err
