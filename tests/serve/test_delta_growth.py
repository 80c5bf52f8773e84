"""A delta across a grown vocabulary: a run continued on a store whose ids grew by appending exports a delta that
carries the changed rows, the appended rows, vocabulary entries and item-table rows; applied to its base it equals a
full export of the continued run; a renumbered vocabulary or shrunk sizes are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from longrec.data.prepare import prepare
from longrec.run import train
from longrec.serve.artifact import export_run, load_artifact
from longrec.serve.delta import apply_delta, export_delta
from tests.conftest import prepare_two_days
from tests.serve.conftest import run_config
from tests.serve.test_delta import ITEMS, assert_same_tensors


@pytest.fixture(scope="module")
def days(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("grow")
    log, second = prepare_two_days(root)
    prepare(log, root / "renumbered", second)  # the same log without --vocab-from: ids numbered afresh
    train(run_config(root / "day1"), root / "run1")
    train(run_config(root / "day2"), root / "run2", continue_from=root / "run1")
    export_run(root / "run1", root / "model1")
    return {"root": root}


def test_a_grown_delta_applied_to_its_base_equals_the_full_export_of_the_continued_run(
    days: dict[str, Path],
) -> None:
    root = days["root"]
    delta = export_delta(root / "model1", root / "run2", root / "delta")
    meta = json.loads((delta / "delta.json").read_text())
    base = load_artifact(root / "model1")
    full = load_artifact(export_run(root / "run2", root / "full2", parent=root / "model1"))
    assert meta["format_version"] == 2 and meta["growth"]["vocab"]["item_id"]["added"] == [8_003]
    assert meta["tables"][ITEMS]["base_rows"] == base.sizes["num_items"] < meta["tables"][ITEMS]["rows"]
    new = apply_delta(base, delta)
    assert_same_tensors(new.model.state_dict(), full.model.state_dict())
    assert (new.version, new.parent, new.lineage, new.sizes) == (full.version, base.version, 2, full.sizes)
    assert new.vocabulary.sha == full.vocabulary.sha and new.meta["vocab_sha"] == full.meta["vocab_sha"]
    for name in full.vocabulary.names():
        assert new.vocabulary.raw(name).equals(full.vocabulary.raw(name)), name
    assert list(new.vocabulary.dense("item_id", [8_002, 7])) == list(full.vocabulary.dense("item_id", [8_002, 7]))
    for got, want in ((new.item_category, full.item_category), (new.item_extra, full.item_extra)):
        assert got.dtype == want.dtype and np.array_equal(got, want)
    assert {k: v for k, v in full.meta["files"].items() if k != "weights.safetensors"} == new.meta["files"]
    assert base.sizes == json.loads((root / "model1" / "model.json").read_text())["sizes"]  # base untouched


def test_a_renumbered_vocabulary_or_shrunk_sizes_are_refused(days: dict[str, Path]) -> None:
    root = days["root"]
    train(run_config(root / "renumbered"), root / "run-renumbered")
    with pytest.raises(ValueError, match=r"did not grow from the base artifact's \w+ \(expected it among"):
        export_delta(root / "model1", root / "run-renumbered", root / "d1")
    export_run(root / "run2", root / "model2")
    with pytest.raises(ValueError, match=r"a delta can only grow tables \(shrunk or missing"):
        export_delta(root / "model2", root / "run1", root / "d2")
    assert not (root / "d1").exists() and not (root / "d2").exists()


def test_an_old_loader_format_is_refused_clearly(days: dict[str, Path]) -> None:
    root = days["root"]
    delta = export_delta(root / "model1", root / "run2", root / "delta3")
    meta = json.loads((delta / "delta.json").read_text())
    meta["format_version"] = 3
    (delta / "delta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"format_version 3; this longrec reads 1 and 2. Upgrade longrec"):
        apply_delta(load_artifact(root / "model1"), delta)
