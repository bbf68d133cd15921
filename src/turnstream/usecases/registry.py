"""The turns running on this node: one explicit registry, shared by the lifecycle.

Admission adds a turn, its runner removes it when it ends, cancel (local or from
another node) and shutdown find it here. Nothing else keeps a list of running turns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from uuid import UUID

from turnstream.domain.progress import TurnProgress
from turnstream.domain.turn import Turn
from turnstream.providers.base import ChatMessage
from turnstream.settings import ModelConfig


@dataclass(eq=False)
class RunningTurn:
    """A turn whose runner lives on this node, and what the runner needs."""

    started: Turn.Started
    model: ModelConfig
    messages: list[ChatMessage]
    """What the model sees, system prompt first."""
    first_turn: bool
    """The conversation's first turn: it gets a title."""
    title: str | None
    """The title the conversation was created with, if any."""
    progress: TurnProgress
    task: asyncio.Task[None] | None = None
    cancel_reason: str | None = None
    """Why it was cancelled (``cancelled``, ``shutdown``, ``lost``), once it was."""

    @property
    def turn_id(self) -> UUID:
        return self.started.originator_id


class RunningTurns:
    """The registry of running turns, by id."""

    def __init__(self) -> None:
        self._turns: dict[UUID, RunningTurn] = {}

    def add(self, turn: RunningTurn) -> None:
        self._turns[turn.turn_id] = turn

    def remove(self, turn_id: UUID) -> None:
        self._turns.pop(turn_id, None)

    def get(self, turn_id: UUID) -> RunningTurn | None:
        return self._turns.get(turn_id)

    def __iter__(self) -> Iterator[RunningTurn]:
        return iter(list(self._turns.values()))

    def __len__(self) -> int:
        return len(self._turns)

    def cancel(self, turn_id: UUID, *, reason: str) -> bool:
        """Stop the turn's runner (it records its end); False if it runs nowhere here or
        is being stopped already."""
        turn = self._turns.get(turn_id)
        if turn is None or turn.task is None or turn.cancel_reason is not None:
            return False
        turn.cancel_reason = reason
        turn.task.cancel()
        return True

    async def drain(self, grace_s: float) -> None:
        """Let running turns finish for ``grace_s``, then interrupt the rest and wait
        (a few seconds) for their ends to be handed to the writer."""
        tasks = [t.task for t in self if t.task is not None]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace_s)
        for turn in self:
            self.cancel(turn.turn_id, reason="shutdown")
        if pending:
            await asyncio.wait(pending, timeout=5)
