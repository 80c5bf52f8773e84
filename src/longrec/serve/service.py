"""The scoring service behind `longrec serve`: one request = one user's history, C candidates, one model version.

    service = ScoringService(versions, history, Limits())
    service.score(ScoreRequest(user="u1", candidates=[Candidate(item=7)]))  # probabilities, version, timings
    service.append(EventsRequest(events=[...]))                               # durable on return
    service.load_model(ModelRequest(path="deltas/day2", kind="delta"))        # built aside, swapped in

**A score request**, step by step (timed as history, candidates and model, `ScoreResponse.timings_ms`):
1. *version*: the one the request pins (`version`), else the traffic split: a user is assigned by a hash of its id,
   so the same user keeps the same arm between requests;
2. *history*: the user's newest `max_history` behaviours before the request time from the history store, merged
   with the behaviours sent inline (not stored), as the one-row `Batch` collate builds (`HistoryStore.to_batch`);
3. *candidates*: raw ids to dense ids with the store's vocabulary (the model's: their shas must match), each item's
   taxonomy path and extra ids from the item tables unless the request gives a path; unknown ids are the
   out-of-vocabulary row 0 and are counted (`ScoreResponse.unknown`, `longrec_unknown_ids_total`);
4. *model*: the C rows view one history (`longrec.search.one_user_request`, no copy); search and the model run once;
   a model with a cached user state (VISTA, VQL) reads it from the `UserStateCache`, keyed by (user, version), unless
   the request carries inline behaviours or its user is unknown (then the state is computed for the request alone).

Every request check that the schema cannot express is a `RequestError` (4xx) naming the field: a pinned version the
server does not hold, a request time too far in the future, an inline behaviour the store refuses. Model swaps
(`load_model`) build the new version before they publish it (`Versions.publish`: one reference swap), so requests in
flight finish on the version they started with and no request fails during a swap; a delta for another base or with
a bad checksum is refused and the old version keeps serving.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from longrec.models.contract import CachedUserState
from longrec.search import one_user_request, search_stage
from longrec.serve.artifact import ModelArtifact, load_artifact
from longrec.serve.cache import UserStateCache
from longrec.serve.delta import apply_delta
from longrec.serve.embedding_cache import cache_counters
from longrec.serve.events import Event
from longrec.serve.history import HistoryStore
from longrec.serve.http import RequestError
from longrec.serve.metrics import ServerMetrics
from longrec.serve.schema import (
    Behaviour,
    EventsRequest,
    EventsResponse,
    Limits,
    ModelRequest,
    ModelResponse,
    ScoreRequest,
    ScoreResponse,
)
from longrec.serve.versions import Versions

__all__ = ["ScoringService"]

logger = logging.getLogger(__name__)


def _event(user: Any, behaviour: Behaviour) -> Event:
    return Event(
        user=user,
        item=behaviour.item,
        timestamp=behaviour.timestamp,
        event_id=behaviour.event_id,
        action=behaviour.action,
        domain=behaviour.domain,
        scene=behaviour.scene,
        category=tuple(behaviour.category) if behaviour.category is not None else None,
    )


class ScoringService:
    """Scores candidates, appends behaviours and swaps model versions; safe to call from many threads.

    Args:
        versions: the model versions held (one published at least before requests arrive).
        history: the history store; its vocabulary must be every served model's (checked on publish).
        limits: request limits (`longrec serve --max-candidates ...`).
        state_cache: per-user states of VISTA/VQL (None: a fresh `UserStateCache` of 100,000 entries).
        clock: the server clock, epoch seconds.
    """

    def __init__(
        self,
        versions: Versions,
        history: HistoryStore,
        limits: Limits | None = None,
        state_cache: UserStateCache | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.versions, self.history, self.limits, self.clock = versions, history, limits or Limits(), clock
        self.state_cache = state_cache or UserStateCache(capacity=100_000, refresh_after_new=1)
        self.traffic: dict[str, float] = {}
        self._swap = threading.Lock()  # one model load at a time; scoring never waits on it
        for version in versions.versions():
            self._check_vocabulary(versions.get(version))
        if versions.versions():
            self.traffic = {versions.current().version: 1.0}
        self.metrics = ServerMetrics(self.snapshot)

    # -- versions ------------------------------------------------------------------------------------------------
    def _check_vocabulary(self, artifact: ModelArtifact) -> None:
        mine, theirs = artifact.vocabulary.sha, self.history.store.manifest["vocab_sha"]
        if mine != theirs:
            raise ValueError(
                f"model {artifact.version} was trained with vocabulary sha {mine}, but the history store "
                f"{self.history.store.root} has {theirs}: its dense ids would mean other items. Serve it with the "
                "store it was trained on."
            )

    def _pick(self, request: ScoreRequest) -> ModelArtifact:
        if request.version is not None:
            try:
                return self.versions.get(request.version)
            except KeyError as err:
                raise RequestError(422, f"version: {err.args[0]}") from None
        traffic = self.traffic
        if len(traffic) <= 1:
            return self.versions.current()
        digest = hashlib.blake2b(str(request.user).encode(), digest_size=8).digest()
        point = int.from_bytes(digest, "little") / 2**64  # [0, 1), fixed per user: a user stays in its arm
        total = sum(traffic.values())
        for version, share in traffic.items():
            point -= share / total
            if point < 0:
                return self.versions.get(version)
        return self.versions.current()

    def load_model(self, request: ModelRequest) -> ModelResponse:
        """Load a full export or apply a delta to the current version; publish it with `traffic` of the requests."""
        with self._swap:
            try:
                previous = self.versions.current()
            except LookupError:
                previous = None
            try:
                if request.kind == "delta":
                    if previous is None:
                        raise ValueError("a delta needs a base version, and none is loaded yet: load a full model.")
                    artifact = apply_delta(previous, request.path)
                else:
                    artifact = load_artifact(request.path)
                self._check_vocabulary(artifact)
            except (ValueError, FileNotFoundError, OSError) as err:
                logger.warning(
                    "refused model %s (%s): %s; still serving %s",
                    request.path,
                    request.kind,
                    err,
                    previous.version if previous else "nothing",
                )
                raise RequestError(422, f"path: {err}") from None
            share = float(request.traffic)
            self.versions.publish(artifact, current=share >= 1.0 or previous is None)
            if share >= 1.0 or previous is None:
                self.traffic = {artifact.version: 1.0}
            else:
                kept = {
                    v: s for v, s in self.traffic.items() if v in self.versions.versions() and v != artifact.version
                }
                rest = sum(kept.values()) or 1.0
                self.traffic = {**{v: s / rest * (1 - share) for v, s in kept.items()}, artifact.version: share}
            logger.info(
                "serving %s (%s from %s), traffic %s", artifact.version, request.kind, request.path, self.traffic
            )
            return ModelResponse(
                version=artifact.version, previous=previous.version if previous else None, versions=dict(self.traffic)
            )

    # -- requests ------------------------------------------------------------------------------------------------
    def append(self, request: EventsRequest) -> EventsResponse:
        events = [_event(e.user, e) for e in request.events]
        try:
            result = self.history.append(events)
        except ValueError as err:
            raise RequestError(422, f"events: {err}") from None
        for field, count in result.unknown.items():
            self.metrics.unknown.labels(f"event.{field}").inc(count)
        return EventsResponse(accepted=result.accepted, duplicates=result.duplicates)

    def score(self, request: ScoreRequest) -> ScoreResponse:
        started = time.perf_counter()
        now = self.clock()
        if request.timestamp is not None and request.timestamp > now + self.limits.future_tolerance_s:
            raise RequestError(
                422,
                f"timestamp: {request.timestamp} is {request.timestamp - now:,.0f} s ahead of the server clock; at "
                f"most {self.limits.future_tolerance_s} s is accepted (epoch seconds, not milliseconds).",
            )
        cutoff = int(request.timestamp if request.timestamp is not None else now) + 1  # behaviours up to now count
        artifact = self._pick(request)
        max_history = artifact.config.data.max_history
        inline = [_event(request.user, e) for e in request.events]
        try:
            history = self.history.history(request.user, max_history, before=cutoff, inline=inline)
        except ValueError as err:
            raise RequestError(422, f"events: {err}") from None
        one = self.history.to_batch(history, cutoff=cutoff)  # [1, L]
        read = time.perf_counter()
        candidates, unknown = self._candidates(request, cutoff)
        batch = one_user_request(one, candidates)  # [C, L], the C rows view one history
        encoded = time.perf_counter()
        with torch.no_grad():
            model = artifact.model
            if isinstance(model, CachedUserState) and not inline and history.user != 0:
                state = self.state_cache.state_for(model, batch, artifact.version, now)  # [C, ...]
                logits = model.score_with_state(state, batch)  # [C]
            else:
                logits = model(search_stage(batch, model, artifact.config.search))  # [C]
        scored = time.perf_counter()
        for field, count in unknown.items():
            self.metrics.unknown.labels(field).inc(count)
        self.metrics.stages.labels("history").observe(read - started)
        self.metrics.stages.labels("candidates").observe(encoded - read)
        self.metrics.stages.labels("model").observe(scored - encoded)
        return ScoreResponse(
            scores=torch.sigmoid(logits.float()).tolist(),
            version=artifact.version,
            history_length=len(history),
            unknown=unknown,
            timings_ms={
                "history": round((read - started) * 1e3, 3),
                "candidates": round((encoded - read) * 1e3, 3),
                "model": round((scored - encoded) * 1e3, 3),
                "total": round((time.perf_counter() - started) * 1e3, 3),
            },
        )

    def _candidates(self, request: ScoreRequest, cutoff: int) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
        """Target fields of the C candidates: dense item, taxonomy path [C, M], extra ids [C, E], goal, scene."""
        encoder = self.history.encoder
        events = [
            Event(
                user=request.user,
                item=c.item,
                timestamp=cutoff,
                category=tuple(c.category) if c.category is not None else None,
            )
            for c in request.candidates
        ]
        packed, _, found = encoder.pack(events)  # [C, W]
        M, unknown = encoder.taxonomy_levels, {f"candidate.{k}": v for k, v in found.items()}
        fields: dict[str, torch.Tensor] = {"target": torch.from_numpy(packed[:, 1].astype(np.int64))}  # [C]
        if M:
            fields["target_category"] = torch.from_numpy(packed[:, 5 : 5 + M].astype(np.int64))  # [C, M]
        if encoder.extra_fields:
            fields["target_extra"] = torch.from_numpy(packed[:, 5 + M :].astype(np.int64))  # [C, E]
        for name, size in (("goal", "num_goals"), ("scene", "num_scenes")):
            values = [getattr(c, name) for c in request.candidates]
            if int(self.history.store.sizes.get(size, 0)) > 1 and any(v is not None for v in values):
                dense = encoder.vocab(name).dense(values)  # [C]
                missing = int(((dense == 0) & np.array([v is not None for v in values])).sum())
                if missing:
                    unknown[f"candidate.{name}"] = missing
                fields[name] = torch.from_numpy(dense)
        return fields, unknown

    # -- status --------------------------------------------------------------------------------------------------
    def ready(self) -> bool:
        return bool(self.versions.versions())

    def status(self) -> dict[str, Any]:
        try:
            current = self.versions.current().version
        except LookupError:
            current = None
        return {"current": current, "versions": dict(self.traffic), "history": self.history.log.backend}

    def snapshot(self) -> dict[str, Any]:
        """Scrape-time gauges for /metrics (`longrec.serve.metrics`)."""
        stats = self.history.stats()
        cache = self.state_cache
        lookups = cache.hits + cache.misses + cache.refreshes
        gauges: dict[str, Any] = {
            "longrec_model_traffic": (
                "share of requests per model version",
                {(v,): s for v, s in self.traffic.items()},
                ("version",),
            ),
            "longrec_history_users": ("users with a base history", {(): float(stats.users)}, ()),
            "longrec_history_events": (
                "behaviours in the history store, by origin",
                {("base",): float(stats.base_behaviours), ("appended",): float(stats.appended_events)},
                ("origin",),
            ),
            "longrec_state_cache_entries": ("user states cached (VISTA/VQL)", {(): float(len(cache))}, ()),
            "longrec_state_cache_lookups": (
                "state-cache lookups by outcome since start",
                {("hit",): float(cache.hits), ("miss",): float(cache.misses), ("refresh",): float(cache.refreshes)},
                ("outcome",),
            ),
            "longrec_state_cache_evictions": ("state-cache evictions since start", {(): float(cache.evictions)}, ()),
            "longrec_state_cache_hit_ratio": (
                "fresh state-cache hits over lookups",
                {(): cache.hits / lookups if lookups else 0.0},
                (),
            ),
            "longrec_model_info": (
                "1 for every model version held",
                {(v,): 1.0 for v in self.versions.versions()},
                ("version",),
            ),
        }
        try:
            caches = cache_counters(self.versions.current().caches)
        except LookupError:
            caches = {}
        if caches:
            gauges["longrec_embedding_cache_hit_ratio"] = (
                "hot-row cache hits over lookups, per table (current version)",
                {(table,): float(c["hit_rate"]) for table, c in caches.items()},
                ("table",),
            )
        return gauges
