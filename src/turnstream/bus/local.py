"""The in-process bus: committed turn events to the readers on this node.

The writer hands each committed batch over once; every event is put on the queue of
every reader of that turn. A reader subscribes before it reads the store, and drops
what it has already sent by ``seq``, so the switch from stored to live has no gap and
no repeat. Readers get events, not bytes: each wire format (the SSE frames, the AI
SDK's UI message stream) encodes them in its own adapter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import NamedTuple
from uuid import UUID

from turnstream.domain.turn import TurnEvent


class Frame(NamedTuple):
    seq: int
    terminal: bool
    event: TurnEvent


def frame(event: TurnEvent) -> Frame:
    return Frame(event.originator_version, event.TERMINAL, event)


class LocalBus:
    def __init__(self) -> None:
        self._readers: dict[UUID, set[asyncio.Queue[Frame]]] = {}
        self._running: set[UUID] = set()

    def open(self, turn_id: UUID) -> None:
        """This node runs the turn: its readers are fed from here, not by polling."""
        self._running.add(turn_id)

    def is_running(self, turn_id: UUID) -> bool:
        return turn_id in self._running

    def subscribe(self, turn_id: UUID) -> asyncio.Queue[Frame]:
        queue: asyncio.Queue[Frame] = asyncio.Queue()
        self._readers.setdefault(turn_id, set()).add(queue)
        return queue

    def unsubscribe(self, turn_id: UUID, queue: asyncio.Queue[Frame]) -> None:
        readers = self._readers.get(turn_id)
        if readers is not None:
            readers.discard(queue)
            if not readers:
                del self._readers[turn_id]

    def publish(self, events: Sequence[TurnEvent]) -> None:
        for event in events:
            turn_id = event.originator_id
            if event.TERMINAL or event.PAUSES:  # a paused turn is followed from the store
                self._running.discard(turn_id)
            readers = self._readers.get(turn_id)
            if not readers:
                continue
            item = frame(event)
            for queue in readers:
                queue.put_nowait(item)

    def lost(self, turn_id: UUID) -> None:
        self._running.discard(turn_id)

    @property
    def readers(self) -> int:
        return sum(len(r) for r in self._readers.values())
