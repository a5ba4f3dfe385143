"""Prometheus metrics of one service instance (its own registry: two apps in one process —
tests, a benchmark — never share counters)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.queries = Counter(
            "ragvid_service_queries", "Search requests answered", ["index", "mode"], registry=r
        )
        self.latency = Histogram(
            "ragvid_service_query_seconds",
            "Search latency inside the service (parse to response)",
            ["index", "mode"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "ragvid_service_errors", "Requests refused or failed, by kind", ["kind"], registry=r
        )
        self.swaps = Counter(
            "ragvid_service_index_swaps", "Index versions swapped in", ["index"], registry=r
        )
        self.version = Gauge(
            "ragvid_service_index_version",
            "1 for the version each index serves",
            ["index", "version"],
            registry=r,
        )

    def error(self, kind: str) -> None:
        self.errors.labels(kind=kind).inc()

    def swapped(self, index: str, old: str | None, new: str) -> None:
        if old is not None:
            self.swaps.labels(index=index).inc()
            try:
                self.version.remove(index, old)
            except KeyError:
                pass
        self.version.labels(index=index, version=new).set(1)

    def observe(self, index: str, mode: str, seconds: float) -> None:
        self.queries.labels(index=index, mode=mode).inc()
        self.latency.labels(index=index, mode=mode).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
