"""Answers to a waiting turn: clients' tool results and people's approvals, on any node.

A turn that waits is held by no process: its state is its events. An answer is checked
against the folded turn (the call must be one it waits for, else 409 with the code that
says why), appended in one transaction that also checks the turn still waits, and, when
nothing is left to wait for, the same transaction makes this node the turn's runner,
which continues it with the next step: its events continue the same seq. Two nodes
answering at once conflict in the store (the same version, or the turn no longer
waiting); the loser reads again and finds the call answered or the turn taken.

Ending a waiting turn (a cancel; a wait past ``TURNSTREAM_TOOL_WAIT_S``) is the same
append, with the end.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from uuid import UUID

import msgspec
from eventsourcing.persistence import IntegrityError

from turnstream.bus.local import LocalBus
from turnstream.domain.callers import Caller
from turnstream.domain.errors import ModelUnavailable, TurnNotFound, TurnNotWaiting
from turnstream.domain.modes import TurnPlan, path_to
from turnstream.domain.progress import TurnProgress
from turnstream.domain.tools import WaitingFor
from turnstream.domain.turn import TOOL_TIMEOUT, Turn, TurnEvent
from turnstream.settings import ModelConfig
from turnstream.store.application import TurnstreamApplication
from turnstream.store.gateway import StoreGateway
from turnstream.store.writer import GroupWriter
from turnstream.usecases.admission import model_input
from turnstream.usecases.conversations import Conversations, ReadModel
from turnstream.usecases.files import Files
from turnstream.usecases.registry import RunningTurn
from turnstream.usecases.runner import TurnRunner

log = logging.getLogger(__name__)

ATTEMPTS = 3
"""Reads and appends an answer tries when another node's answer got in first."""


class ToolResult(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A client's result of one of its tools' calls."""

    call_id: str
    output: Any = None
    is_error: bool = False


class ToolResults(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST …/turns/{tid}/tool-results``."""

    results: list[ToolResult]


class Approval(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST …/turns/{tid}/approvals``."""

    call_id: str
    approved: bool
    reason: str | None = None


class Answered(msgspec.Struct, kw_only=True):
    """What an answer did: the seq of its last event, and whether the turn goes on now
    (else it still waits for other calls)."""

    turn_id: UUID
    seq: int
    continues: bool


class OpenTurn(msgspec.Struct, kw_only=True, frozen=True):
    """A conversation's turn that has not ended, as a client that may answer it (or
    follow it to its next pause) needs it."""

    turn_id: UUID
    seq: int
    """The seq of its last event."""
    paused_at: int | None = None
    """While it waits: the seq of its ``Waiting``."""
    pending: dict[str, WaitingFor] = msgspec.field(default_factory=dict)
    """While it waits: each call that waits for an answer, and for which kind."""


Answer = Callable[[Turn], list[TurnEvent]]
"""Applies an answer to the folded turn (raising if it does not wait for it): its events."""


class ToolAnswers:
    def __init__(
        self,
        *,
        app: TurnstreamApplication,
        gateway: StoreGateway,
        conversations: Conversations,
        reads: ReadModel,
        models: Mapping[str, ModelConfig],
        node_id: UUID,
        bus: LocalBus,
        writer: GroupWriter,
        runner: TurnRunner,
        files: Files,
    ) -> None:
        self.app = app
        self.files = files
        self.run = gateway.run
        self.conversations = conversations
        self.reads = reads
        self.models = models
        self.node_id = node_id
        self.bus = bus
        self.writer = writer
        self.runner = runner

    async def results(
        self, caller: Caller, conversation_id: UUID, turn_id: UUID, results: Sequence[ToolResult]
    ) -> Answered:
        """Record a client's results (all or none). The turn goes on here once it waits
        for nothing more."""

        def answer(turn: Turn) -> list[TurnEvent]:
            return [turn.answer(r.call_id, r.output, is_error=r.is_error) for r in results]

        return await self._answer(caller, conversation_id, turn_id, answer)

    async def decide(
        self, caller: Caller, conversation_id: UUID, turn_id: UUID, approval: Approval
    ) -> Answered:
        """Record a person's decision on a call that waits for one. A refusal is also the
        call's result, which the model reads."""

        def answer(turn: Turn) -> list[TurnEvent]:
            return turn.decide(
                approval.call_id,
                approved=approval.approved,
                by=caller.user_id,
                reason=approval.reason,
            )

        return await self._answer(caller, conversation_id, turn_id, answer)

    async def open_turn(self, caller: Caller, conversation_id: UUID) -> OpenTurn | None:
        """The conversation's turn that runs or waits (None when none does)."""
        turn_id = await self.conversations.active_turn(caller, conversation_id)
        turn = None if turn_id is None else await self.run(self.app.turn, turn_id)
        if turn is None or turn.ended:
            return None
        pending: dict[str, WaitingFor] = {}
        if turn.paused_at is not None:
            pending = {c.call_id: w for c in turn.steps.last_calls if (w := c.waits_for)}
        return OpenTurn(
            turn_id=turn.id, seq=turn.version, paused_at=turn.paused_at, pending=pending
        )

    async def _answer(
        self, caller: Caller, conversation_id: UUID, turn_id: UUID, answer: Answer
    ) -> Answered:
        await self.conversations.turn(caller, conversation_id, turn_id)  # the caller's, or 404
        for _ in range(ATTEMPTS):
            turn = await self.run(self.app.turn, turn_id)
            if turn is None:
                raise TurnNotFound(turn_id)
            events = answer(turn)  # raises unless the turn waits for these
            run_next: RunningTurn | None = None
            if turn.steps.waiting() is None:  # nothing left to wait for: this node goes on
                run_next = await self._next_run(caller, turn)
            take = self.node_id if run_next is not None else None
            try:
                position = await self.run(self.app.append_to_waiting, turn_id, events, take=take)
            except IntegrityError:
                continue  # another answer got in first: read again
            if position is None:
                continue  # not waiting (yet, or any more): read again
            self.bus.publish(events)
            if run_next is not None:
                self.bus.open(turn_id)
                self.writer.open_turn(turn_id, turn.version)
                self.runner.launch(run_next)
            return Answered(turn_id=turn_id, seq=turn.version, continues=run_next is not None)
        raise TurnNotWaiting("*", "The turn does not wait for answers now; read it again.")

    async def _next_run(self, caller: Caller, turn: Turn) -> RunningTurn:
        """The runner of the turn's next step, from what the turn holds: made before the
        turn is taken, so that a node that takes a turn always runs it."""
        started = turn.started
        model = self.models.get(started.model)
        if model is None:
            msg = f"The turn's model {started.model!r} is no longer served."
            raise ModelUnavailable(msg)
        conversation, stored = await self.reads.tree(caller, started.conversation_id)
        plan = TurnPlan(
            started.parent_id,
            started.content if started.user_message_id is not None else None,
            prefix=started.prefix,
            history=path_to({m["id"]: m for m in stored}, started.parent_id),
        )
        path = model_input(conversation["system_prompt"], plan, started.attachments)
        return RunningTurn(
            started=started,
            model=model,
            messages=await self.files.for_model(path, model),
            first_turn=False,
            title=conversation["title"],
            progress=TurnProgress.resume(turn),
        )


def end_waiting(app: TurnstreamApplication, turn_id: UUID, *, code: str | None) -> bool:
    """End a waiting turn (``code`` None: cancelled, else failed with it), if it still
    waits; whether this call ended it. Runs on a store thread."""
    turn = app.turn(turn_id)
    if turn is None or turn.ended:
        return False
    message = ""
    if code == TOOL_TIMEOUT:
        message = "The turn waited too long for tool results or approvals."
    event = turn.end_waiting(code=code, message=message)
    try:
        return app.append_to_waiting(turn_id, [event], end=True) is not None
    except IntegrityError:
        return False  # answered (and taken) meanwhile


def end_expired_waits(app: TurnstreamApplication) -> list[UUID]:
    """End every turn that has waited past its time (``tool_timeout``); those ended."""
    ended = []
    for turn_id in app.store.expired_waits():
        if end_waiting(app, turn_id, code=TOOL_TIMEOUT):
            log.info("turn %s waited too long for answers; ended", turn_id)
            ended.append(turn_id)
    return ended
