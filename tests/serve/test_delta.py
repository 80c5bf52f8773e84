"""Incremental exchange: a delta holds the changed embedding rows and every dense tensor; applied to its base it
equals a full export of the new weights exactly; a wrong base or a damaged payload is refused; the training callback
writes a chain of deltas that rebuilds the trained model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from longrec.run import train
from longrec.serve.artifact import export_run, load_artifact
from longrec.serve.delta import DeltaExporter, apply_delta, export_delta
from longrec.serve.embedding_cache import EmbeddingCacheConfig
from tests.serve.conftest import CHANGED_ITEMS, read_meta, run_config

ITEMS = "embedding.item_embedding.weight"


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_a_delta_holds_the_changed_rows_and_every_dense_tensor(
    artifact_dir: Path, next_run_dir: Path, tmp_path: Path
) -> None:
    meta = read_meta(export_delta(artifact_dir, next_run_dir, tmp_path / "d"), "delta.json")
    tables: Any = meta["tables"]
    assert (
        tables[ITEMS]["changed"] == len(CHANGED_ITEMS) and tables["embedding.category_embedding.weight"]["changed"] == 0
    )
    assert meta["base_version"] == read_meta(artifact_dir)["version"] and str(meta["version"]).startswith("2-")
    assert ITEMS not in meta["dense"] and "head.0.weight" in meta["dense"]  # type: ignore[operator]
    assert (tmp_path / "d" / "delta.safetensors").stat().st_size < (artifact_dir / "weights.safetensors").stat().st_size


def test_a_delta_applied_to_its_base_equals_a_full_export_of_the_new_weights(
    artifact_dir: Path, next_run_dir: Path, tmp_path: Path
) -> None:
    base = load_artifact(artifact_dir)
    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    new = apply_delta(base, export_delta(artifact_dir, next_run_dir, tmp_path / "d"))
    full = load_artifact(export_run(next_run_dir, tmp_path / "full", parent=artifact_dir))
    assert_same_tensors(new.model.state_dict(), full.model.state_dict())
    assert (new.version, new.parent, new.lineage) == (full.version, base.version, 2)
    assert not new.model.training and new.config == base.config
    assert_same_tensors(base.model.state_dict(), before)  # the base that requests use is untouched


def test_a_delta_for_another_base_or_with_a_damaged_payload_is_refused(
    artifact_dir: Path, next_run_dir: Path, tmp_path: Path
) -> None:
    delta = export_delta(artifact_dir, next_run_dir, tmp_path / "d")
    other = load_artifact(export_run(next_run_dir, tmp_path / "other"))
    with pytest.raises(ValueError, match=r"turns version '1-\w+' into '2-\w+', but the model given is version"):
        apply_delta(other, delta)
    payload = delta / "delta.safetensors"
    data = bytearray(payload.read_bytes())
    data[-3] ^= 0x10
    payload.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"delta.safetensors is damaged or was changed"):
        apply_delta(load_artifact(artifact_dir), delta)


def test_a_delta_whose_result_is_not_the_promised_version_is_refused(
    artifact_dir: Path, next_run_dir: Path, tmp_path: Path
) -> None:
    delta = export_delta(artifact_dir, next_run_dir, tmp_path / "d")
    base = load_artifact(artifact_dir)
    with torch.no_grad():
        base.model.state_dict()["embedding.category_embedding.weight"][2] += 1.0  # a base that drifted in memory
    with pytest.raises(ValueError, match=r"not the .* the delta promises"):
        apply_delta(base, delta)


def test_a_delta_between_models_that_differ_in_more_than_weights_is_refused(
    artifact_dir: Path, next_run_dir: Path, tmp_path: Path
) -> None:
    changed = tmp_path / "run"
    shutil.copytree(next_run_dir, changed)
    config = json.loads((changed / "config.json").read_text())
    config["data"]["max_history"] = 8
    (changed / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"differs from the base artifact 1-\w+ in max_history: a delta carries"):
        export_delta(artifact_dir, changed, tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_a_cached_base_refuses_a_delta_clearly(artifact_dir: Path, next_run_dir: Path, tmp_path: Path) -> None:
    delta = export_delta(artifact_dir, next_run_dir, tmp_path / "d")
    with pytest.raises(ValueError, match=r"serves embedding.item_embedding.weight from disk"):
        apply_delta(load_artifact(artifact_dir, EmbeddingCacheConfig(capacity=4)), delta)


class _Recorder:
    """A callback that keeps the model's state after every step (what each delta must rebuild)."""

    def __init__(self) -> None:
        self.states: dict[int, dict[str, torch.Tensor]] = {}
        self.model: torch.nn.Module | None = None

    def on_train_start(self, info: dict[str, Any]) -> None:
        self.model = info["model"]

    def on_step(self, step: int, epoch: int, loss: torch.Tensor, samples: int) -> None:
        assert self.model is not None
        self.states[step] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def on_validation(self, step: int, epoch: int, metrics: dict[str, Any], best: bool) -> None:
        pass

    def on_train_end(self, result: dict[str, Any]) -> None:
        pass


def test_the_delta_exporter_writes_a_chain_that_rebuilds_the_trained_model(
    store_path: Path, run_dir: Path, artifact_dir: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)  # continue the base's run (its last.pt) for more steps
    exporter, recorder = DeltaExporter(artifact_dir, tmp_path / "deltas", every_steps=3), _Recorder()
    train(run_config(store_path, epochs=2, max_steps=0), run, resume=True, callbacks=[exporter, recorder])
    series = json.loads((tmp_path / "deltas" / "deltas.json").read_text())
    assert [d["folder"] for d in series["deltas"]] == [p.name for p in exporter.written] and len(exporter.written) >= 2
    current = load_artifact(artifact_dir)
    for entry in series["deltas"]:
        current = apply_delta(current, tmp_path / "deltas" / entry["folder"])
        assert current.version == entry["version"]
        assert_same_tensors(current.model.state_dict(), recorder.states[entry["step"]])
    rows = json.loads((exporter.written[-1] / "delta.json").read_text())["tables"][ITEMS]
    assert 0 < rows["changed"] <= rows["rows"]
    with pytest.raises(ValueError, match=r"needs a trigger"):
        DeltaExporter(artifact_dir, tmp_path / "x", every_steps=None, at_validation=False)
