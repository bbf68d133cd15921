"""The Turn aggregate: one request to a model and everything it streamed back.

A turn's events are its stream: the event's version is its position in the turn (1, 2,
3 … with no gap), and the stream always ends with exactly one terminal event,
``Finished`` or ``Failed``. This module is the one place turn events are made:

- :meth:`Turn.start` makes the first (``Started``);
- a running turn's ``TurnProgress`` (``turnstream.domain.progress``) makes *drafts* of
  the rest (text, reasoning, a title, the end) and checks that nothing follows the end;
  the group writer numbers the drafts of many turns in one commit and turns each into
  its event with ``Draft.event``;
- a folded :class:`Turn` whose runner died makes its end with :meth:`Turn.lose_runner`;
- a folded :class:`Turn` that waits (for tool results or approvals, with no runner)
  takes them with :meth:`Turn.answer` and :meth:`Turn.decide`, and ends, if it must
  (cancelled, or waiting too long), with :meth:`Turn.end_waiting`.

A turn is a sequence of model steps (``turnstream.domain.tools``): in each the model may
call tools; the turn then runs them, or pauses (``Waiting``) until a client posts their
results or a person decides, and whichever node takes those continues it.

The events are plain facts: how they are named on SSE, on NATS or in metrics is decided
by those parts, in tables of their own.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal, TypeAlias
from uuid import UUID

import msgspec

from turnstream.domain import toolevents
from turnstream.domain.errors import (
    ToolCallAnswered,
    ToolCallNotPending,
    TurnEnded,
    TurnNotWaiting,
    UnknownToolCall,
)
from turnstream.domain.events import utcnow
from turnstream.domain.files import FileRef
from turnstream.domain.tools import Steps, ToolSpec, WaitingFor
from turnstream.domain.turnevents import TurnEvent, TurnUsage, add_usage

__all__ = ["RUNNER_LOST", "TOOL_TIMEOUT", "Turn", "TurnEvent", "TurnUsage", "add_usage"]

TurnMode = Literal["message", "retry", "edit", "continue"]
TurnStatus = Literal["running", "completed", "interrupted", "failed"]

RUNNER_LOST = "runner_lost"
"""The code of a turn ended because the process running it stopped."""
TOOL_TIMEOUT = "tool_timeout"
"""The code of a turn that waited longer than allowed for tool results or approvals."""


class Turn:
    """The state of a turn, folded from its events."""

    class Started(TurnEvent, frozen=True, kw_only=True):
        TOPIC = "turnstream.turn.started.v1"

        conversation_id: UUID
        tenant: str
        user_id: str
        node_id: UUID
        mode: TurnMode
        user_message_id: UUID | None
        assistant_message_id: UUID
        parent_id: UUID | None
        model: str
        request_id: str | None = None
        content: str = ""
        """The user's message (empty for retry and continue)."""
        prefix: str = ""
        """For ``continue``: the text the answer extends."""
        reasoning_prefix: str = ""
        """For ``continue``: the reasoning the answer had so far."""
        client_message_id: str | None = None
        """The client's own id of the user message (a chat client's, e.g. the AI SDK's)."""
        tools: tuple[ToolSpec, ...] = ()
        """The client tools offered in this turn (the turn's, else its conversation's)."""
        attachments: tuple[FileRef, ...] = ()
        """The files attached to the user message (``message`` and ``edit``)."""

    class ReasoningAppended(TurnEvent, frozen=True, kw_only=True):
        TOPIC = "turnstream.turn.reasoning_appended.v1"

        text: str

    class TokensAppended(TurnEvent, frozen=True, kw_only=True):
        TOPIC = "turnstream.turn.tokens_appended.v1"

        text: str

    class Titled(TurnEvent, frozen=True, kw_only=True):
        TOPIC = "turnstream.turn.titled.v1"

        title: str

    class FellBack(TurnEvent, frozen=True, kw_only=True):
        """Another model answers: ``from_model`` failed before its first token (after its
        retries), for the reason given. ``Started.model`` stays the one asked for."""

        TOPIC = "turnstream.turn.fell_back.v1"

        model: str
        from_model: str
        code: str
        message: str

    # The events of tools (``turnstream.domain.toolevents``), named here like the rest.
    ToolCallStarted: TypeAlias = toolevents.ToolCallStarted
    ToolArgumentsAppended: TypeAlias = toolevents.ToolArgumentsAppended
    ToolCallReady: TypeAlias = toolevents.ToolCallReady
    ApprovalRequested: TypeAlias = toolevents.ApprovalRequested
    ApprovalDecided: TypeAlias = toolevents.ApprovalDecided
    ToolResultRecorded: TypeAlias = toolevents.ToolResultRecorded
    StepFinished: TypeAlias = toolevents.StepFinished
    Waiting: TypeAlias = toolevents.Waiting

    class Finished(TurnEvent, frozen=True, kw_only=True):
        TOPIC = "turnstream.turn.finished.v1"
        TERMINAL = True

        status: Literal["completed", "interrupted"]
        text: str
        reasoning: str = ""
        finish_reason: str | None = None
        usage: TurnUsage = msgspec.field(default_factory=TurnUsage)

    class Failed(TurnEvent, frozen=True, kw_only=True):
        TOPIC = "turnstream.turn.failed.v1"
        TERMINAL = True

        code: str
        message: str
        text: str
        reasoning: str = ""
        usage: TurnUsage | None = None

    def __init__(self, started: Turn.Started) -> None:
        self.id = started.originator_id
        self.version = started.originator_version
        self.started = started
        self.text = started.prefix
        self.reasoning = started.reasoning_prefix
        self.title: str | None = None
        self.served_by = started.model
        """The model that answers: the one asked for, unless the turn fell back."""
        self.status: TurnStatus = "running"
        self.finish_reason: str | None = None
        self.usage: TurnUsage | None = None
        self.error_code: str | None = None
        self.ended_at: datetime | None = None
        self.steps = Steps()
        self.steps_usage: TurnUsage | None = None
        """The usage of the finished steps, summed."""
        self.waiting_until: datetime | None = None
        """Set while the turn waits (since its ``Waiting``, only answers came)."""
        self.paused_at: int | None = None
        """While it waits: the seq of its ``Waiting`` (a client that saw it has the rest
        of the turn up to there; what follows are answers, then the next step)."""

    @property
    def waiting(self) -> tuple[WaitingFor, list[str]] | None:
        """What the turn waits for and the call ids, when it waits."""
        return self.steps.waiting() if self.waiting_until is not None else None

    @property
    def conversation_id(self) -> UUID:
        return self.started.conversation_id

    @property
    def ended(self) -> bool:
        return self.status != "running"

    def apply(self, event: TurnEvent) -> None:
        if event.originator_version != self.version + 1:
            msg = f"turn {self.id}: event {event.originator_version} after {self.version}"
            raise ValueError(msg)
        self.version = event.originator_version
        if isinstance(event, Turn.Waiting):
            self.waiting_until, self.paused_at = event.until, event.originator_version
        elif not isinstance(event, ANSWERS):  # answers come while it waits; else it goes on
            self.waiting_until = self.paused_at = None
        steps = self.steps
        if isinstance(event, Turn.TokensAppended):
            self.text += event.text
            steps.text(event.text)
        elif isinstance(event, Turn.ReasoningAppended):
            self.reasoning += event.text
            steps.reasoning(event.text)
        elif isinstance(event, Turn.ToolCallStarted):
            steps.call_started(event.call_id, event.name)
        elif isinstance(event, Turn.ToolArgumentsAppended):
            steps.arguments(event.call_id, event.text)
        elif isinstance(event, Turn.ToolCallReady):
            steps.call_ready(event.call_id, event.arguments, event.kind, event.server)
        elif isinstance(event, Turn.ApprovalRequested):
            steps.approval_requested(event.call_id)
        elif isinstance(event, Turn.ApprovalDecided):
            steps.decided(event.call_id, event.approved)
        elif isinstance(event, Turn.ToolResultRecorded):
            steps.result(event.call_id, event.output, event.is_error)
        elif isinstance(event, Turn.StepFinished):
            steps.step_finished(event.finish_reason)
            self.steps_usage = add_usage(self.steps_usage, event.usage)
        elif isinstance(event, Turn.Titled):
            self.title = event.title
        elif isinstance(event, Turn.FellBack):
            self.served_by = event.model
        elif isinstance(event, Turn.Finished):
            self.status = event.status
            self.text = event.text
            self.reasoning = event.reasoning
            self.finish_reason = event.finish_reason
            self.usage = event.usage
            self.ended_at = event.timestamp
        elif isinstance(event, Turn.Failed):
            self.status = "failed"
            self.text = event.text
            self.reasoning = event.reasoning or self.reasoning
            self.error_code = event.code
            self.usage = event.usage
            self.ended_at = event.timestamp

    @classmethod
    def fold(cls, events: Iterable[TurnEvent]) -> Turn | None:
        """The turn as of the given events (in version order), None if there are none."""
        turn: Turn | None = None
        for event in events:
            if turn is None:
                if not isinstance(event, Turn.Started):
                    msg = f"turn {event.originator_id} does not begin with Started"
                    raise ValueError(msg)
                turn = cls(event)
            else:
                turn.apply(event)
        return turn

    # Commands.

    @staticmethod
    def start(
        turn_id: UUID,
        *,
        conversation_id: UUID,
        tenant: str,
        user_id: str,
        node_id: UUID,
        mode: TurnMode,
        user_message_id: UUID | None,
        assistant_message_id: UUID,
        parent_id: UUID | None,
        model: str,
        request_id: str | None = None,
        content: str = "",
        prefix: str = "",
        reasoning_prefix: str = "",
        client_message_id: str | None = None,
        tools: tuple[ToolSpec, ...] = (),
        attachments: tuple[FileRef, ...] = (),
        at: datetime | None = None,
    ) -> Turn.Started:
        """A new turn: its first event. A mode that adds a user message has its id."""
        if (user_message_id is None) == (mode in ("message", "edit")):
            msg = f"mode {mode!r}: a user message id goes with message and edit only"
            raise ValueError(msg)
        return Turn.Started(
            originator_id=turn_id,
            originator_version=1,
            timestamp=at or utcnow(),
            conversation_id=conversation_id,
            tenant=tenant,
            user_id=user_id,
            node_id=node_id,
            mode=mode,
            user_message_id=user_message_id,
            assistant_message_id=assistant_message_id,
            parent_id=parent_id,
            model=model,
            request_id=request_id,
            content=content,
            prefix=prefix,
            reasoning_prefix=reasoning_prefix,
            client_message_id=client_message_id if user_message_id is not None else None,
            tools=tools,
            attachments=attachments if user_message_id is not None else (),
        )

    def lose_runner(self, at: datetime | None = None) -> Turn.Failed:
        """The process running this turn stopped: end it, keeping what it streamed."""
        if self.ended:
            raise TurnEnded(self.id)
        return Turn.Failed(
            originator_id=self.id,
            originator_version=self.version + 1,
            timestamp=at or utcnow(),
            code=RUNNER_LOST,
            message="The process running this turn stopped; the text streamed so far is kept.",
            text=self.text,
            reasoning=self.reasoning,
        )

    # Commands of a waiting turn (no runner holds it: whoever takes it records these).

    def _next(self, at: datetime | None) -> dict[str, Any]:
        return {
            "originator_id": self.id,
            "originator_version": self.version + 1,
            "timestamp": at or utcnow(),
        }

    def answer(
        self, call_id: str, output: Any, *, is_error: bool = False, at: datetime | None = None
    ) -> Turn.ToolResultRecorded:
        """A client's result of one of the calls it waits for (see :meth:`pending_call`)."""
        self.pending_call(call_id, "tool_result")
        event = Turn.ToolResultRecorded(
            **self._next(at), call_id=call_id, output=output, is_error=is_error, by="client"
        )
        self.apply(event)
        return event

    def decide(
        self,
        call_id: str,
        *,
        approved: bool,
        by: str,
        reason: str | None = None,
        at: datetime | None = None,
    ) -> list[TurnEvent]:
        """A person's decision on a call that waits for one; a refusal is also the call's
        result (the model reads it), an approval lets the next runner call the tool."""
        self.pending_call(call_id, "approval")
        decided = Turn.ApprovalDecided(
            **self._next(at), call_id=call_id, approved=approved, by=by, reason=reason
        )
        self.apply(decided)
        if approved:
            return [decided]
        why = f"The user refused this call{': ' + reason if reason else '.'}"
        refused = Turn.ToolResultRecorded(
            **self._next(at), call_id=call_id, output=why, is_error=True, by="server"
        )
        self.apply(refused)
        return [decided, refused]

    def pending_call(self, call_id: str, reason: WaitingFor) -> None:
        """Raise unless the turn waits for ``call_id`` for ``reason`` (409 with its code)."""
        if self.ended:
            raise TurnNotWaiting(call_id, "The turn has ended.")
        call = self.steps.calls.get(call_id)
        if call is None:
            raise UnknownToolCall(call_id, "The turn has no such call.")
        decided = reason == "approval" and call.approval in ("approved", "refused")
        if (call.answered and reason == "tool_result") or decided:
            what = "result" if reason == "tool_result" else "decision"
            raise ToolCallAnswered(call_id, f"It has its {what}.")
        if call.waits_for != reason:
            needs = "a person's decision" if call.waits_for == "approval" else "no such answer"
            raise ToolCallNotPending(call_id, f"It waits for {needs}.")

    def end_waiting(
        self, *, code: str | None, message: str = "", at: datetime | None = None
    ) -> TurnEvent:
        """End a turn no runner holds: interrupted (``code`` None: cancelled) or failed
        with ``code`` (``tool_timeout``). The text so far is kept."""
        if self.ended:
            raise TurnEnded(self.id)
        if code is None:
            return Turn.Finished(
                **self._next(at), status="interrupted", text=self.text,
                reasoning=self.reasoning, finish_reason="cancelled",
                usage=self.steps_usage or TurnUsage(estimated=True),
            )  # fmt: skip
        return Turn.Failed(
            **self._next(at), code=code, message=message, text=self.text,
            reasoning=self.reasoning, usage=self.steps_usage,
        )  # fmt: skip


ANSWERS = (Turn.ApprovalDecided, Turn.ToolResultRecorded)
"""What a waiting turn takes without going on: its calls' decisions and results."""
