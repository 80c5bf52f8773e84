"""The HTTP API's request and response bodies (pydantic models; FastAPI derives the OpenAPI schema from them).

Every field is checked at the edge, so a bad request is a 4xx naming the field, what was expected and what was
sent, and never reaches the model. Ids are the raw ids of the log the model was trained on: user and item ids are
non-negative int64 or strings, other values (taxonomy, goal, action, ...) any int64 or strings. Timestamps are integer
epoch seconds. Limits (`Limits`) come from `longrec serve`'s options: the most candidates per request, the most
inline behaviours, how far in the future a timestamp may be.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

__all__ = [
    "Behaviour",
    "Candidate",
    "ErrorResponse",
    "EventsRequest",
    "EventsResponse",
    "Limits",
    "ModelRequest",
    "ModelResponse",
    "ScoreRequest",
    "ScoreResponse",
    "UserBehaviour",
]

INT64 = 2**63 - 1
# A user or item id: a non-negative int64 or a non-empty string, as in the log the model was trained on.
RawId = Annotated[StrictInt, Field(ge=0, le=INT64)] | Annotated[StrictStr, Field(min_length=1, max_length=256)]
# A taxonomy, goal, action, ... value: any int64 (some logs mark a missing level with a negative code) or a string.
RawValue = (
    Annotated[StrictInt, Field(ge=-INT64 - 1, le=INT64)] | Annotated[StrictStr, Field(min_length=1, max_length=256)]
)
Timestamp = Annotated[StrictInt, Field(ge=0, le=2**42, description="epoch seconds")]


@dataclass(frozen=True)
class Limits:
    """What one request may hold (`longrec serve --max-candidates ...`)."""

    max_candidates: int = 1000
    max_inline_events: int = 10_000
    max_events_per_append: int = 10_000
    future_tolerance_s: int = 300  # a timestamp this far past the server's clock is refused
    max_body_bytes: int = 8 * 2**20


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Candidate(_Strict):
    """One item to score for the user."""

    item: RawId
    category: list[RawValue] | None = Field(
        default=None, max_length=16, description="taxonomy path, coarse to fine; default: the item's own path"
    )
    goal: RawValue | None = Field(default=None, description="the advertising goal the candidate is scored for")
    scene: RawValue | None = Field(default=None, description="the app surface of the request")


class Behaviour(_Strict):
    """One behaviour of a user: stored by /v1/events, or sent inline with a score request."""

    item: RawId
    timestamp: Timestamp
    event_id: Annotated[StrictStr, Field(min_length=1, max_length=256)] | None = Field(
        default=None, description="repeating an event id is a no-op (idempotent append)"
    )
    action: RawValue | None = None
    domain: RawValue | None = None
    scene: RawValue | None = None
    category: list[RawValue] | None = Field(default=None, max_length=16)


class ScoreRequest(_Strict):
    """One user, C candidates: one probability per candidate."""

    user: RawId
    candidates: list[Candidate] = Field(min_length=1)
    events: list[Behaviour] = Field(
        default_factory=list, description="behaviours not stored yet, used for this request"
    )
    timestamp: Timestamp | None = Field(default=None, description="request time (default: the server's clock)")
    version: Annotated[StrictStr, Field(min_length=1, max_length=128)] | None = Field(
        default=None, description="pin a model version (default: the traffic split)"
    )


class ScoreResponse(BaseModel):
    scores: list[float]
    version: str
    history_length: int
    unknown: dict[str, int]
    timings_ms: dict[str, float]


class UserBehaviour(Behaviour):
    """A behaviour and the user it belongs to."""

    user: RawId


class EventsRequest(_Strict):
    """Behaviours to append to the users' histories, durable when the response arrives."""

    events: list[UserBehaviour] = Field(min_length=1)


class EventsResponse(BaseModel):
    accepted: int
    duplicates: int


class ModelRequest(_Strict):
    """Load a model into the running server: a full export (`longrec export`) or a delta, from a path on its host."""

    path: Annotated[StrictStr, Field(min_length=1, max_length=4096)]
    kind: Annotated[StrictStr, Field(pattern="^(full|delta)$")] = "full"
    traffic: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] = 1.0


class ModelResponse(BaseModel):
    version: str
    previous: str | None
    versions: dict[str, float]


class ErrorResponse(BaseModel):
    error: str
    detail: list[dict[str, Any]] | None = None
