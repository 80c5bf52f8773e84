"""The serving artifact: export -> load scores like the run, needs no store, refuses damaged files, and version ids
follow the written rule (content-derived, counting along a lineage)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from longrec.cli import main
from longrec.data.batch import Batch
from longrec.data.vocab import Vocabulary
from longrec.files import OutputError
from longrec.run import load_run
from longrec.serve.artifact import export_run, load_artifact
from tests.serve.conftest import logits, read_meta


def test_an_exported_artifact_scores_exactly_like_the_run(run_dir: Path, artifact_dir: Path, batch: Batch) -> None:
    run, artifact = load_run(run_dir), load_artifact(artifact_dir)
    assert torch.equal(logits(artifact.model, batch), logits(run.model, batch))
    assert not artifact.model.training
    assert re.fullmatch(r"1-[0-9a-f]{8}", artifact.version) and artifact.parent is None and artifact.lineage == 1
    assert artifact.config.model == run.config.model and artifact.config.search == run.config.search
    assert artifact.config.data.max_history == run.config.data.max_history and artifact.sizes == run.store.sizes
    np.testing.assert_array_equal(artifact.item_category, run.store.item_category)
    np.testing.assert_array_equal(artifact.item_extra, run.store.item_extra)
    raw = Vocabulary(run.store).raw("item_id").to_list()
    ids = [raw[4], raw[0], "unknown", raw[-1]]
    np.testing.assert_array_equal(
        artifact.vocabulary.dense("item_id", ids), Vocabulary(run.store).dense("item_id", ids)
    )
    assert artifact.vocabulary.sha == run.store.manifest["vocab_sha"]


def test_an_artifact_holds_everything_it_needs_and_no_path_of_the_machine(
    store_path: Path, artifact_dir: Path, batch: Batch, tmp_path: Path
) -> None:
    moved = tmp_path / "elsewhere" / "model"
    shutil.copytree(artifact_dir, moved)
    assert sorted(p.name for p in moved.iterdir()) == ["items", "model.json", "vocab", "weights.safetensors"]
    text = (moved / "model.json").read_text()
    assert str(store_path.parent) not in text and str(artifact_dir.parent) not in text
    assert torch.equal(logits(load_artifact(moved).model, batch), logits(load_artifact(artifact_dir).model, batch))


@pytest.mark.parametrize("damage", ["flip a byte", "truncate"])
def test_a_tampered_or_truncated_weights_file_is_refused(artifact_dir: Path, tmp_path: Path, damage: str) -> None:
    copy = tmp_path / "model"
    shutil.copytree(artifact_dir, copy)
    weights = copy / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[-7] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"weights.safetensors is damaged or was changed: its sha256 is"):
        load_artifact(copy)


def test_a_damaged_model_json_or_a_newer_format_is_refused(artifact_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(artifact_dir, copy)
    text = (copy / "model.json").read_text()
    (copy / "model.json").write_text(text.replace('"format_version": 1', '"format_version": 7'))
    with pytest.raises(ValueError, match=r"format_version 7; this longrec reads 1. Upgrade longrec"):
        load_artifact(copy)
    (copy / "model.json").write_text(text[:-20])
    with pytest.raises(ValueError, match=r"model.json is damaged \(not valid JSON"):
        load_artifact(copy)
    with pytest.raises(FileNotFoundError, match=r"is not a serving model folder written by 'longrec export'"):
        load_artifact(tmp_path)


def test_version_ids_are_content_derived_and_count_along_a_lineage(
    run_dir: Path, next_run_dir: Path, artifact_dir: Path, tmp_path: Path
) -> None:
    first = read_meta(artifact_dir)
    again = read_meta(export_run(run_dir, tmp_path / "again"))
    assert again["version"] == first["version"] and again["content_sha256"] == first["content_sha256"]
    replaced = read_meta(export_run(run_dir, tmp_path / "again", force=True))  # same content over itself: same id
    assert (replaced["version"], replaced["lineage"], replaced["parent"]) == (first["version"], 1, None)
    second = read_meta(export_run(next_run_dir, tmp_path / "again", force=True))  # new weights over it: next one
    assert second["lineage"] == 2 and second["parent"] == first["version"]
    assert second["version"] == f"2-{str(second['content_sha256'])[:8]}" != first["version"]
    third = read_meta(export_run(next_run_dir, tmp_path / "labelled", version="day-3", parent=tmp_path / "again"))
    assert (third["version"], third["lineage"], third["parent"]) == ("day-3", 3, second["version"])
    with pytest.raises(ValueError, match=r"version must be 1-64 ASCII letters"):
        export_run(run_dir, tmp_path / "bad", version="../x")


def test_export_never_writes_over_what_it_did_not_write(run_dir: Path, artifact_dir: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match=r"is not a serving model written by 'longrec export'"):
        export_run(run_dir, mine)
    assert (mine / "notes.txt").read_text() == "keep me"
    with pytest.raises(OutputError, match=r"already holds a serving model .* Pass --force"):
        export_run(run_dir, artifact_dir)


def test_the_export_command_writes_an_artifact_and_a_delta(
    run_dir: Path, next_run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--quiet", "export", str(run_dir), "--out", str(tmp_path / "m")]) == 0
    version = read_meta(tmp_path / "m")["version"]
    assert f"version {version} (parent None)" in capsys.readouterr().out
    args = ["--quiet", "export", str(next_run_dir), "--delta-from", str(tmp_path / "m"), "--out", str(tmp_path / "d")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"{version} -> 2-" in out and "embedding.item_embedding.weight 3/" in out
    assert main([*args, "--version", "x"]) == 2
    assert "--version and --parent do not apply" in capsys.readouterr().err
    assert main(["--quiet", "export", str(run_dir), "--out", str(tmp_path / "m")]) == 2
    assert "Pass --force" in capsys.readouterr().err
