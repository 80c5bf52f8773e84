"""The HTTP adapter of a scoring service: FastAPI routes, request limits, errors as 4xx JSON, per-route metrics.

Routes (the OpenAPI schema is at `/openapi.json`, the interactive docs at `/docs`):

| route | what |
| --- | --- |
| `POST /v1/score` | one user, C candidates -> one probability per candidate, the model version, timings |
| `POST /v1/events` | append behaviours to the history store (idempotent on `event_id`) |
| `POST /v1/models` | load a full model or apply a delta (a path on the server's host), swapped in atomically |
| `GET /healthz` | the process answers |
| `GET /readyz` | 200 once a model and the history store are loaded, else 503 |
| `GET /metrics` | Prometheus text (`longrec.serve.metrics`) |

The adapter is thin: every decision is the service's (`Service`). What it adds is the edge: a body over the size
limit is a 413 before it is parsed; malformed JSON, a missing or extra field, a wrong type, NaN, an id out of range,
too many candidates or events are a 422 whose `error` names the field, what was expected and what was sent; a
`RequestError` raised by the service keeps its status; anything else is a 500 (a bug of ours, logged with its
traceback: bad input must never get there, which the schemathesis test checks).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from longrec.serve.metrics import CONTENT_TYPE, ServerMetrics
from longrec.serve.schema import (
    ErrorResponse,
    EventsRequest,
    EventsResponse,
    Limits,
    ModelRequest,
    ModelResponse,
    ScoreRequest,
    ScoreResponse,
)

__all__ = ["RequestError", "Service", "create_app"]

logger = logging.getLogger(__name__)


class RequestError(ValueError):
    """A request the service refuses: the HTTP status and a message naming the field, expected and got."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Service(Protocol):
    """What the HTTP layer calls; `longrec.serve.service.ScoringService` is the real one."""

    limits: Limits

    def score(self, request: ScoreRequest) -> ScoreResponse: ...

    def append(self, request: EventsRequest) -> EventsResponse: ...

    def load_model(self, request: ModelRequest) -> ModelResponse: ...

    def ready(self) -> bool: ...

    def status(self) -> dict[str, Any]: ...

    def snapshot(self) -> dict[str, Any]: ...


# pydantic names the branch of a union it tried ('constrained-int', 'str', ...): not a field the user wrote
_UNION_BRANCH = re.compile(r"(constrained-)?(int|str|float|bool|list\[.*\]|dict\[.*\])|function-.*")


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "body" and not _UNION_BRANCH.fullmatch(str(p))]
    return ".".join(parts) or "body"


def _validation_message(errors: list[dict[str, Any]]) -> str:
    """'candidates.0.item: Input should be a valid integer or Input should be a valid string (got 1.5); ...'.

    One entry per field (the branches of a union joined with 'or'), the first five fields.
    """
    by_field: dict[str, tuple[list[str], Any]] = {}
    for error in errors:
        field = _field(tuple(error.get("loc", ())))
        messages, _ = by_field.setdefault(field, ([], error.get("input")))
        if error.get("msg", "invalid") not in messages:
            messages.append(error.get("msg", "invalid"))
    shown = []
    for field, (messages, got) in list(by_field.items())[:5]:
        got_text = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
        shown.append(f"{field}: {' or '.join(messages)}{got_text}")
    more = f"; and {len(by_field) - 5} more field(s)" if len(by_field) > 5 else ""
    return "; ".join(shown) + more


def _check_counts(request: ScoreRequest | EventsRequest, limits: Limits) -> None:
    if isinstance(request, ScoreRequest):
        if len(request.candidates) > limits.max_candidates:
            raise RequestError(
                422, f"candidates: at most {limits.max_candidates} per request. Got {len(request.candidates)}."
            )
        if len(request.events) > limits.max_inline_events:
            raise RequestError(
                422, f"events: at most {limits.max_inline_events} inline behaviours. Got {len(request.events)}."
            )
    elif len(request.events) > limits.max_events_per_append:
        raise RequestError(
            422, f"events: at most {limits.max_events_per_append} per request. Got {len(request.events)}."
        )


def create_app(service: Service, metrics: ServerMetrics | None = None) -> FastAPI:
    """The FastAPI application serving `service` (run it with uvicorn; `longrec serve` does)."""
    metrics = metrics or ServerMetrics(service.snapshot)
    app = FastAPI(
        title="longrec",
        summary="Scores candidates for a user with a long behaviour history; appends behaviours; swaps models.",
        responses={413: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
    )
    app.state.service, app.state.metrics = service, metrics

    @app.middleware("http")
    async def edge(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        route = request.url.path
        declared = request.headers.get("content-length")
        too_big = declared is not None and (not declared.isdigit() or int(declared) > service.limits.max_body_bytes)
        if not too_big and request.method == "POST":
            body = await request.body()  # read once (bounded by the server's h11 limits), kept for the route
            too_big = len(body) > service.limits.max_body_bytes
        if too_big:
            response: Response = JSONResponse(
                {"error": f"the request body is over the limit of {service.limits.max_body_bytes:,} bytes."},
                status_code=413,
            )
        else:
            response = await call_next(request)
        if route in ("/v1/score", "/v1/events", "/v1/models", "/healthz", "/readyz", "/metrics"):
            metrics.observe(route, response.status_code, time.perf_counter() - started)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        errors = [dict(e) for e in err.errors()]
        detail = [{"field": _field(tuple(e.get("loc", ()))), "message": e.get("msg", "")} for e in errors]
        return JSONResponse({"error": _validation_message(errors), "detail": detail}, status_code=422)

    @app.exception_handler(RequestError)
    async def refused(request: Request, err: RequestError) -> JSONResponse:
        return JSONResponse({"error": str(err)}, status_code=err.status)

    @app.exception_handler(Exception)
    async def bug(request: Request, err: Exception) -> JSONResponse:
        logger.exception("internal error on %s", request.url.path)
        return JSONResponse({"error": f"internal error ({type(err).__name__}); see the server log."}, status_code=500)

    @app.post("/v1/score", response_model=ScoreResponse)
    def score(body: ScoreRequest) -> ScoreResponse:
        _check_counts(body, service.limits)
        return service.score(body)

    @app.post("/v1/events", response_model=EventsResponse)
    def events(body: EventsRequest) -> EventsResponse:
        _check_counts(body, service.limits)
        return service.append(body)

    @app.post("/v1/models", response_model=ModelResponse)
    def models(body: ModelRequest) -> ModelResponse:
        return service.load_model(body)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        ready = service.ready()
        return JSONResponse({"ready": ready, **service.status()}, status_code=200 if ready else 503)

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(metrics.text(), media_type=CONTENT_TYPE)

    return app
