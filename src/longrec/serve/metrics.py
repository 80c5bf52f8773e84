"""What `GET /metrics` reports, in the Prometheus text format (prometheus_client, one registry per server).

- `longrec_requests_total{route, status}` and `longrec_request_seconds{route}` (a latency histogram per route);
- `longrec_score_stage_seconds{stage}`: per score request, the history read, the candidates' ids, search + model;
- `longrec_unknown_ids_total{field}`: raw ids the model's vocabulary does not know (scored as out-of-vocabulary);
- `longrec_state_cache_lookups{outcome}` (hit, miss, refresh), `longrec_state_cache_evictions`,
  `longrec_state_cache_entries` and `longrec_state_cache_hit_ratio` (the VISTA/VQL user-state cache);
  `longrec_embedding_cache_hit_ratio{table}` when the embedding cache is on;
- `longrec_model_info{version}` (1 for each version held) and `longrec_model_traffic{version}` (its share of users);
- `longrec_history_users`, `longrec_history_events{origin}` (the history store's size).

Gauges that mirror other objects' counters are read when /metrics is scraped (a custom collector), so the hot path
never updates them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "ServerMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class _Snapshot(Collector):
    """Gauges read from `read()` at scrape time: {name: (help, {labels tuple: value}, label names)}."""

    def __init__(self, read: Callable[[], dict[str, tuple[str, dict[tuple[str, ...], float], tuple[str, ...]]]]):
        self.read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, (help_text, values, labels) in self.read().items():
            family = GaugeMetricFamily(name, help_text, labels=list(labels))
            for label_values, value in values.items():
                family.add_metric(list(label_values), value)
            yield family


class ServerMetrics:
    """The counters and histograms of one server, plus scrape-time gauges from `snapshot()`."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "longrec_requests", "requests by route and status code", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "longrec_request_seconds",
            "request latency by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stages = Histogram(
            "longrec_score_stage_seconds",
            "time per stage of a score request",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.unknown = Counter(
            "longrec_unknown_ids", "raw ids scored as out-of-vocabulary, by field", ["field"], registry=self.registry
        )
        self.registry.register(_Snapshot(snapshot))

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)
