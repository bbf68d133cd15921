"""``/metrics``: Prometheus text, from a registry of this app's own (no globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from turnstream.projections.runner import ProjectionStatus

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.log_head = Gauge(
            "turnstream_log_head_position",
            "The event store's last notification id (the log's head).",
            registry=self.registry,
        )
        self.projection_position = Gauge(
            "turnstream_projection_position",
            "The log position up to which a projection's active view is built.",
            ["projection"],
            registry=self.registry,
        )
        self.projection_lag = Gauge(
            "turnstream_projection_lag_events",
            "Log positions between the head and a projection's view (0: up to date).",
            ["projection"],
            registry=self.registry,
        )
        self.projection_generation = Gauge(
            "turnstream_projection_generation",
            "The active generation of a projection's view (it grows with each rebuild).",
            ["projection"],
            registry=self.registry,
        )

    def render(self, projections: list[ProjectionStatus]) -> bytes:
        for p in projections:
            self.log_head.set(p.head)
            self.projection_position.labels(p.name).set(p.position)
            self.projection_lag.labels(p.name).set(p.lag)
            self.projection_generation.labels(p.name).set(p.generation)
        return generate_latest(self.registry)
