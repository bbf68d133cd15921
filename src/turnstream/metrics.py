"""``/metrics``: Prometheus text, from a registry of this service's own (no globals).

The service owns one :class:`Metrics`: its turn runners, SSE readers and group-commit
writer record into it as they go; what lives in PostgreSQL (the log's head, the
projections' and the relay's positions) is read when scraped, since the projection
workers and the relay may run in other processes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from turnstream.domain.progress import DeltaDraft, Draft, FailDraft, FinishDraft
from turnstream.domain.turn import TurnUsage

CONTENT_TYPE = CONTENT_TYPE_LATEST

Submit = Callable[[Draft], None]
"""``GroupWriter.submit(draft)``: how a runner hands a fact on."""

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_TURN_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
_COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class ProjectionFigures(Protocol):
    """What the store says of one projection (``projections.runner.ProjectionStatus``)."""

    name: str
    generation: int
    position: int
    head: int

    @property
    def lag(self) -> int:
        """Log positions between the head and the view."""
        raise NotImplementedError


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
        self.relay_position = Gauge(
            "turnstream_relay_checkpoint_position",
            "The log position of the relay's last checkpoint (written after acks, when"
            " it has caught up, at most once a second).",
            registry=self.registry,
        )
        self.relay_lag = Gauge(
            "turnstream_relay_lag_events",
            "Log positions between the head and the relay's last checkpoint (0: all on NATS).",
            registry=self.registry,
        )
        self.repaired = Gauge(
            "turnstream_repaired_events",
            "Stored events that a part could take only repaired, each counted once: the"
            " relay's (a tenant that is no subject token, published encoded) and each"
            " projection's (text a view cannot hold, stored with U+FFFD).",
            ["part"],
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "turnstream_time_to_first_token_seconds",
            "From a turn's start on this node to the model's first token (answer or reasoning).",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.time_per_output_token = Histogram(
            "turnstream_time_per_output_token_seconds",
            "A completed turn's time from its first to its last token, per token after the first.",
            ["model"],
            buckets=_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.turn_duration = Histogram(
            "turnstream_turn_duration_seconds",
            "From a turn's start on this node to its terminal event, by how it ended.",
            ["model", "status"],
            buckets=_TURN_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "turnstream_prompt_tokens",
            "Prompt tokens of the turns that ended on this node (their terminal usage).",
            ["model"],
            registry=self.registry,
        )
        self.completion_tokens = Counter(
            "turnstream_completion_tokens",
            "Completion tokens of the turns that ended on this node (their terminal usage).",
            ["model"],
            registry=self.registry,
        )
        self.active_turns = Gauge(
            "turnstream_active_turns",
            "Turns whose runner is running on this node.",
            registry=self.registry,
        )
        self.open_streams = Gauge(
            "turnstream_open_sse_streams",
            "SSE responses this node is sending now.",
            registry=self.registry,
        )
        self.writer_batch = Histogram(
            "turnstream_writer_batch_events",
            "Events written by one group commit.",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.writer_commit = Histogram(
            "turnstream_writer_commit_seconds",
            "Time of one group commit (lock, COPY, commit).",
            buckets=_COMMIT_BUCKETS,
            registry=self.registry,
        )
        self.provider_retries = Counter(
            "turnstream_provider_retries",
            "Model requests tried again after failing before their first token.",
            ["model", "code"],
            registry=self.registry,
        )
        self.provider_fallbacks = Counter(
            "turnstream_provider_fallbacks",
            "Turns another model answered, as the one before it failed before its first token.",
            ["model", "fallback"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "turnstream_rejected_requests",
            "Requests answered with a problem+json error, by its code.",
            ["code"],
            registry=self.registry,
        )

    def turn(self, model: str, submit: Submit) -> TurnMeter:
        """Meter a turn starting now on this node; ``close()`` it when its runner ends."""
        return TurnMeter(self, model, submit)

    def render(
        self, projections: Sequence[ProjectionFigures], relayed: int, repaired: Mapping[str, int]
    ) -> bytes:
        """The exposition, with the store's positions as just read (``relayed``: the
        relay's checkpoint, read before the projections, so never past their head;
        ``repaired``: each part's repaired events)."""
        for part, count in repaired.items():
            self.repaired.labels(part).set(count)
        for p in projections:
            self.log_head.set(p.head)
            self.projection_position.labels(p.name).set(p.position)
            self.projection_lag.labels(p.name).set(p.lag)
            self.projection_generation.labels(p.name).set(p.generation)
        head = projections[0].head  # every status carries the same head, read once
        self.relay_position.set(relayed)
        self.relay_lag.set(max(0, head - relayed))
        return generate_latest(self.registry)


class TurnMeter:
    """One turn's runner: counted as active until closed, timed by the events it submits.

    It stands in for the writer's ``submit``, so what it measures is what the turn
    records: its first text delta, and its terminal event with the usage in it.
    """

    def __init__(self, metrics: Metrics, model: str, submit: Submit) -> None:
        self._metrics = metrics
        self._model = model
        self._submit = submit
        self._started = time.monotonic()
        self._first: float | None = None
        metrics.active_turns.inc()

    def __call__(self, draft: Draft) -> None:
        self._submit(draft)
        if isinstance(draft, DeltaDraft):
            if self._first is None:
                self._first = time.monotonic()
                self._metrics.time_to_first_token.labels(self._model).observe(
                    self._first - self._started
                )
        elif isinstance(draft, FinishDraft):
            self._ended(draft.status, draft.usage)
        elif isinstance(draft, FailDraft):
            self._ended("failed", draft.usage)

    def _ended(self, status: str, usage: TurnUsage | None) -> None:
        m, model, now = self._metrics, self._model, time.monotonic()
        m.turn_duration.labels(model, status).observe(now - self._started)
        if usage is None:
            return
        m.prompt_tokens.labels(model).inc(usage.prompt_tokens)
        m.completion_tokens.labels(model).inc(usage.completion_tokens)
        # Only a completed turn's count is the model's own; a cut-off one's is an estimate.
        if status == "completed" and self._first is not None and usage.completion_tokens > 1:
            per_token = (now - self._first) / (usage.completion_tokens - 1)
            m.time_per_output_token.labels(model).observe(per_token)

    def close(self) -> None:
        self._metrics.active_turns.dec()
