"""From the writer's thread to the event loop: what a group commit stored, and which
turn another node ended first.

The writer calls these on its own thread, after each commit. The committed events go
to this node's bus (the live readers) on the event loop; a turn whose end another node
wrote first (it judged the runner dead) is dropped here: its runner is stopped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from uuid import UUID

from turnstream.bus.local import LocalBus
from turnstream.domain.turn import TurnEvent
from turnstream.metrics import Metrics
from turnstream.store.writer import WriterStats
from turnstream.usecases.registry import RunningTurns


class CommitFeed:
    def __init__(self, *, bus: LocalBus, registry: RunningTurns, metrics: Metrics) -> None:
        self.bus = bus
        self.registry = registry
        self.metrics = metrics
        self.stats: WriterStats | None = None
        """The writer's figures (its last commit's time): set once the writer exists,
        since the writer is built with this feed's callbacks."""
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop to hand commits to (the one the service runs on)."""
        self._loop = loop

    def committed(self, events: Sequence[TurnEvent], position: int) -> None:
        assert self._loop is not None
        self.metrics.writer_batch.observe(len(events))
        if position and self.stats is not None:  # 0: confirmed after a drop, not timed
            self.metrics.writer_commit.observe(self.stats.last_commit_s)
        self._loop.call_soon_threadsafe(self.bus.publish, events)

    def lost(self, turn_id: UUID) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._on_lost, turn_id)

    def _on_lost(self, turn_id: UUID) -> None:
        self.bus.lost(turn_id)
        self.registry.cancel(turn_id, reason="lost")
