"""The versions holder: publish swaps a finished artifact in atomically; readers never see a half-built model, and a
request keeps the version it took."""

from __future__ import annotations

import copy
import dataclasses
import threading
import time
from pathlib import Path

import pytest
import torch

from longrec.serve.artifact import ModelArtifact, load_artifact
from longrec.serve.versions import Versions


def version_filled_with(base: ModelArtifact, value: int) -> ModelArtifact:
    """A finished artifact whose every weight is `value`, named str(value): readers can check what they got."""
    model = copy.deepcopy(base.model)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float(value))
    return dataclasses.replace(base, version=str(value), model=model)


def test_readers_never_see_a_half_built_model(artifact_dir: Path) -> None:
    base = load_artifact(artifact_dir)
    versions = Versions(keep=2)
    versions.publish(version_filled_with(base, 1))
    stop, problems, seen = threading.Event(), [], set()

    def reader() -> None:
        while not stop.is_set():
            artifact = versions.current()  # one reference per request, used to the end
            value = float(artifact.version)
            if not all(bool((p == value).all()) for p in artifact.model.parameters()):
                problems.append(artifact.version)
            seen.add(artifact.version)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for round_ in range(2, 30):
        versions.publish(version_filled_with(base, round_ % 4 + 1))  # built while the readers read, then swapped in
        time.sleep(0.002)  # let the readers run on it
    stop.set()
    for t in threads:
        t.join()
    assert not problems and len(seen) > 1
    assert versions.versions() == ["1", "2"] and versions.current().version == "2"


def test_versions_are_held_side_by_side_and_retired_explicitly(artifact_dir: Path) -> None:
    base = load_artifact(artifact_dir)
    a, b, c = (dataclasses.replace(base, version=v) for v in ("a", "b", "c"))
    versions = Versions(keep=2)
    with pytest.raises(LookupError, match=r"no model version has been published yet"):
        versions.current()
    versions.publish(a)
    versions.publish(b, current=False)  # an A/B arm beside the current version
    assert versions.current() is a and versions.get("b") is b
    taken = versions.current()
    versions.publish(c)  # keep=2: the oldest non-current version ('a') goes; a request that took it keeps it
    assert versions.versions() == ["b", "c"] and taken is a and taken.model is base.model
    with pytest.raises(KeyError, match=r"Unknown model version 'a'. Held versions: b, c."):
        versions.get("a")
    with pytest.raises(ValueError, match=r"version 'c' is current"):
        versions.retire("c")
    versions.retire("b")
    assert versions.versions() == ["c"]
