"""`Client`: the Python side of `longrec serve` (httpx): score, send events, push models, read health and metrics.

    client = Client("http://127.0.0.1:8000")
    client.append([{"user": "u1", "item": 7, "timestamp": 1700000000, "event_id": "e1"}])
    result = client.score("u1", [{"item": 7}, {"item": 9}])      # {"scores": [...], "version": ..., ...}
    client.push_model("models/din-v2", kind="full")              # or kind="delta"

A 4xx answer raises `ServeError` with the server's message (which names the field); a connection problem raises
httpx's own error.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any

import httpx

__all__ = ["Client", "ServeError"]


class ServeError(RuntimeError):
    """The server refused a request: `status` and the server's `message`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message = status, message


class Client:
    """A client of one `longrec serve` instance.

    Args:
        base_url: e.g. "http://127.0.0.1:8000".
        timeout: seconds per request.
    """

    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        self._http = httpx.Client(base_url=base_url, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self._http.request(method, path, json=body)
        if response.status_code >= 400:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            raise ServeError(response.status_code, message)
        return response.json() if response.headers.get("content-type", "").startswith("application/json") else None

    def score(
        self,
        user: str | int,
        candidates: Sequence[dict[str, Any]],
        events: Sequence[dict[str, Any]] = (),
        timestamp: int | None = None,
        version: str | None = None,
    ) -> dict[str, Any]:
        """Probabilities for `candidates` ({"item": ..., optional "category", "goal", "scene"}) of `user`."""
        body: dict[str, Any] = {"user": user, "candidates": list(candidates)}
        if events:
            body["events"] = list(events)
        if timestamp is not None:
            body["timestamp"] = timestamp
        if version is not None:
            body["version"] = version
        result: dict[str, Any] = self._call("POST", "/v1/score", body)
        return result

    def append(self, events: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Append behaviours ({"user", "item", "timestamp", optional "event_id", "action", ...}); durable on return."""
        result: dict[str, Any] = self._call("POST", "/v1/events", {"events": list(events)})
        return result

    def push_model(self, path: str, kind: str = "full", traffic: float = 1.0) -> dict[str, Any]:
        """Load a full model export or apply a delta (a path on the server's host); returns the new version."""
        result: dict[str, Any] = self._call("POST", "/v1/models", {"path": path, "kind": kind, "traffic": traffic})
        return result

    def ready(self) -> bool:
        return self._http.get("/readyz").status_code == 200

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self._http.get("/readyz").json()
        return result

    def metrics(self) -> str:
        return self._http.get("/metrics").text
