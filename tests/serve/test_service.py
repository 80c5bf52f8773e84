"""`longrec serve` in process: scores equal offline scoring, events change histories, versions swap, bad input is a
4xx (schemathesis over the OpenAPI schema finds no 5xx)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.generation import GenerationMode

from longrec.data.store import TrajectoryStore
from longrec.data.vocab import Vocabulary
from longrec.run import load_run
from longrec.serve.delta import export_delta
from longrec.serve.http import create_app
from longrec.serve.server import open_service
from longrec.serve.service import ScoringService
from tests.serve.conftest import next_day


@pytest.fixture
def service(artifact_dir: Path, store_path: Path, tmp_path: Path) -> Iterator[ScoringService]:
    service = open_service(artifact_dir, store_path, history_log=tmp_path / "history.sqlite")
    try:
        yield service
    finally:
        service.history.close()


@pytest.fixture
def client(service: ScoringService) -> TestClient:
    return TestClient(create_app(service, service.metrics))


def _raw(store_path: Path) -> tuple[TrajectoryStore, list[object], list[object]]:
    store = TrajectoryStore.open(store_path)
    vocab = Vocabulary(store)
    return store, vocab.raw("user_id").to_list(), vocab.raw("item_id").to_list()


def test_a_score_equals_offline_scoring_of_the_same_history(
    client: TestClient, run_dir: Path, store_path: Path
) -> None:
    store, users, items = _raw(store_path)
    test = store.samples("test")
    run = load_run(run_dir)
    for row in range(4):
        user, cutoff = users[int(test.user[row]) - 1], int(test.target_time[row])
        candidates = [items[int(test.target_item[row]) - 1], items[3], items[10]]
        body = {"user": user, "candidates": [{"item": i} for i in candidates], "timestamp": cutoff - 1}
        response = client.post("/v1/score", json=body)
        assert response.status_code == 200, response.json()
        frame = pl.DataFrame({"user": [user] * 3, "target_item": candidates, "target_ts": [cutoff] * 3})
        np.testing.assert_allclose(response.json()["scores"], run.predict(frame), rtol=1e-5, atol=1e-6)
        assert response.json()["history_length"] == min(int(test.end[row]), run.config.data.max_history)


def test_appended_behaviours_reach_the_next_score_and_repeats_are_no_ops(client: TestClient, store_path: Path) -> None:
    _, users, items = _raw(store_path)
    user, now = users[0], 1_700_000_000
    before = client.post("/v1/score", json={"user": user, "candidates": [{"item": items[5]}], "timestamp": now})
    events = [{"user": user, "item": items[5], "timestamp": now - 60 + i, "event_id": f"e{i}"} for i in range(3)]
    first = client.post("/v1/events", json={"events": events}).json()
    again = client.post("/v1/events", json={"events": events}).json()
    assert (first["accepted"], first["duplicates"], again["accepted"], again["duplicates"]) == (3, 0, 0, 3)
    after = client.post("/v1/score", json={"user": user, "candidates": [{"item": items[5]}], "timestamp": now})
    assert after.json()["history_length"] >= 3 and after.json()["scores"] != before.json()["scores"]


def test_unknown_users_and_items_get_an_answer_and_are_counted(client: TestClient, store_path: Path) -> None:
    _, _, items = _raw(store_path)
    body = {"user": "never-seen", "candidates": [{"item": items[1]}, {"item": "no-such-item"}, {"item": 10**12}]}
    response = client.post("/v1/score", json=body)
    assert response.status_code == 200
    result = response.json()
    assert result["history_length"] == 0 and len(result["scores"]) == 3
    assert result["unknown"] == {"candidate.item": 2}
    assert 'longrec_unknown_ids_total{field="candidate.item"} 2.0' in client.get("/metrics").text


def test_inline_behaviours_count_for_one_request_only(client: TestClient, store_path: Path) -> None:
    _, _, items = _raw(store_path)
    body = {"user": "new-user", "candidates": [{"item": items[7]}], "timestamp": 1_700_000_000}
    plain = client.post("/v1/score", json=body).json()
    inline = {**body, "events": [{"item": items[7], "timestamp": 1_699_999_990}]}
    with_inline = client.post("/v1/score", json=inline).json()
    assert with_inline["history_length"] == plain["history_length"] + 1
    again = client.post("/v1/score", json=body).json()
    assert (again["history_length"], again["scores"]) == (plain["history_length"], plain["scores"]), "nothing stored"


def test_a_delta_swaps_the_version_and_a_wrong_one_is_refused(
    client: TestClient, run_dir: Path, artifact_dir: Path, tmp_path: Path, store_path: Path
) -> None:
    _, users, items = _raw(store_path)
    body = {"user": users[0], "candidates": [{"item": items[3]}, {"item": items[5]}]}
    old = client.post("/v1/score", json=body).json()
    delta = export_delta(artifact_dir, next_day(run_dir, tmp_path / "day2"), tmp_path / "delta")
    swapped = client.post("/v1/models", json={"path": str(delta), "kind": "delta"})
    assert swapped.status_code == 200 and swapped.json()["previous"] == old["version"]
    new = client.post("/v1/score", json=body).json()
    assert new["version"] == swapped.json()["version"] != old["version"] and new["scores"] != old["scores"]
    again = client.post("/v1/models", json={"path": str(delta), "kind": "delta"})  # its base is no longer current
    assert again.status_code == 422 and "path:" in again.json()["error"]
    assert client.post("/v1/score", json=body).json()["version"] == new["version"], "still serving the new version"
    pinned = client.post("/v1/score", json={**body, "version": old["version"]}).json()
    assert pinned["version"] == old["version"] and pinned["scores"] == old["scores"]
    unknown = client.post("/v1/score", json={**body, "version": "9-deadbeef"})
    assert unknown.status_code == 422 and "Unknown model version '9-deadbeef'" in unknown.json()["error"]


def test_a_request_from_the_future_and_a_future_event_are_refused(client: TestClient, service: ScoringService) -> None:
    future = int(service.clock()) + 3600
    response = client.post("/v1/score", json={"user": 1, "candidates": [{"item": 1}], "timestamp": future})
    assert response.status_code == 422 and "timestamp:" in response.json()["error"]
    event = {"events": [{"user": 1, "item": 1, "timestamp": future}]}
    refused = client.post("/v1/events", json=event)
    assert refused.status_code == 422 and "ahead of the server clock" in refused.json()["error"]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_request_the_schema_allows_or_forbids_reaches_a_5xx(client: TestClient, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    checked = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if mode is GenerationMode.NEGATIVE and operation.method.upper() == "GET":
            continue  # no parameters: nothing to get wrong

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def call(case: schemathesis.Case) -> None:
            response = case.call()
            assert response.status_code < 500, (case.method, case.path, case.body, response.text)

        call()
        checked.append(operation.label)
    assert {"POST /v1/score", "POST /v1/events", "POST /v1/models"} <= set(checked)


def test_metrics_export_every_family_the_module_documents(client: TestClient, store_path: Path) -> None:
    _, users, items = _raw(store_path)
    timings = client.post("/v1/score", json={"user": users[0], "candidates": [{"item": items[1]}]}).json()["timings_ms"]
    assert set(timings) == {"history", "candidates", "model", "total"}
    text = client.get("/metrics").text
    for family in (
        'longrec_score_stage_seconds_count{stage="candidates"}',
        'longrec_state_cache_lookups{outcome="hit"}',
        "longrec_state_cache_evictions",
        "longrec_state_cache_hit_ratio",
        "longrec_model_info{version=",
        "longrec_model_traffic{version=",
        'longrec_history_events{origin="base"}',
    ):
        assert family in text, family
