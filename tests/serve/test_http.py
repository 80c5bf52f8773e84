"""The HTTP edge of `longrec serve`: limits, 4xx messages that name the field, metrics; on a stand-in service."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

from longrec.serve.http import RequestError, create_app
from longrec.serve.schema import (
    EventsRequest,
    EventsResponse,
    Limits,
    ModelRequest,
    ModelResponse,
    ScoreRequest,
    ScoreResponse,
)


class StandIn:
    """Scores every candidate 0.5; refuses the user 'nobody' with a 422 from the service itself."""

    def __init__(self) -> None:
        self.limits = Limits(max_candidates=3, max_inline_events=2, max_events_per_append=2, max_body_bytes=2_000)
        self.appended: list[Any] = []

    def score(self, request: ScoreRequest) -> ScoreResponse:
        if request.user == "nobody":
            raise RequestError(422, "user: 'nobody' is refused by the stand-in")
        scores = [0.5] * len(request.candidates)
        return ScoreResponse(scores=scores, version="v1", history_length=0, unknown={}, timings_ms={"total": 0.1})

    def append(self, request: EventsRequest) -> EventsResponse:
        self.appended += request.events
        return EventsResponse(accepted=len(request.events), duplicates=0)

    def load_model(self, request: ModelRequest) -> ModelResponse:
        return ModelResponse(version="v2", previous="v1", versions={"v2": 1.0})

    def ready(self) -> bool:
        return True

    def status(self) -> dict[str, Any]:
        return {"versions": {"v1": 1.0}}

    def snapshot(self) -> dict[str, Any]:
        return {"longrec_history_users": ("users in the history store", {(): 3.0}, ())}


@pytest.fixture
def client() -> TestClient:
    return TestClient(create_app(StandIn()))


def test_a_valid_request_is_scored(client: TestClient) -> None:
    response = client.post("/v1/score", json={"user": "u1", "candidates": [{"item": 7}, {"item": "sku-9"}]})
    assert response.status_code == 200 and response.json()["scores"] == [0.5, 0.5]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"user": "u1", "candidates": []}, r"candidates: List should have at least 1 item"),
        (
            {"user": "u1", "candidates": [{"item": 1.5}]},
            r"candidates\.0\.item: Input should be a valid integer or .*string",
        ),
        (
            {"user": "u1", "candidates": [{"item": 2**70}]},
            r"candidates\.0\.item: Input should be less than or equal to 9",
        ),
        ({"user": "u1", "candidates": [{"item": 1, "price": 3}]}, r"candidates\.0\.price: Extra inputs are not"),
        ({"candidates": [{"item": 1}]}, r"user: Field required"),
        ({"user": "u1", "candidates": [{"item": 1}] * 4}, r"candidates: at most 3 per request\. Got 4"),
        ({"user": "u1", "candidates": [{"item": 1}], "timestamp": -5}, r"timestamp: Input should be greater"),
        ({"user": -1, "candidates": [{"item": 1}]}, r"user: Input should be greater than or equal to 0"),
        ({"user": "nobody", "candidates": [{"item": 1}]}, r"user: 'nobody' is refused by the stand-in"),
    ],
)
def test_bad_requests_are_422_naming_the_field(client: TestClient, body: dict[str, Any], message: str) -> None:
    response = client.post("/v1/score", json=body)
    assert response.status_code == 422
    assert re.search(message, response.json()["error"]), response.json()


def test_malformed_json_nan_and_oversized_bodies_are_4xx(client: TestClient) -> None:
    bad = client.post(
        "/v1/score", content=b'{"user": "u1", "candidates": [', headers={"content-type": "application/json"}
    )
    assert bad.status_code == 422 and "JSON" in bad.json()["error"]
    nan = client.post("/v1/score", content=b'{"user": NaN, "candidates": [{"item": 1}]}')
    assert nan.status_code == 422
    big = client.post("/v1/events", json={"events": [{"user": "u", "item": "x" * 3000, "timestamp": 1}]})
    assert big.status_code == 413 and "over the limit of 2,000 bytes" in big.json()["error"]


def test_metrics_count_requests_by_route_and_status(client: TestClient) -> None:
    client.post("/v1/score", json={"user": "u1", "candidates": [{"item": 7}]})
    client.post("/v1/score", json={"user": "u1", "candidates": []})
    text = client.get("/metrics").text
    assert 'longrec_requests_total{route="/v1/score",status="200"} 1.0' in text
    assert 'longrec_requests_total{route="/v1/score",status="422"} 1.0' in text
    assert 'longrec_request_seconds_count{route="/v1/score"} 2.0' in text
    assert "longrec_history_users 3.0" in text


def test_health_ready_and_the_openapi_schema(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"ready": True, "versions": {"v1": 1.0}}
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/score", "/v1/events", "/v1/models", "/readyz"} <= set(paths)
