"""The Turn aggregate: one request to a model and everything it streamed back.

A turn's events are its SSE frames: the event's version is the frame's ``id`` (1, 2,
3 … with no gap), and the stream always ends with exactly one terminal event,
``Finished`` (``final``) or ``Failed`` (``error``).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, ClassVar, Literal
from uuid import UUID

import msgspec

from turnstream.domain.events import DomainEvent

TurnMode = Literal["message", "retry", "edit", "continue"]
TurnStatus = Literal["running", "completed", "interrupted", "failed"]


class TurnUsage(msgspec.Struct, frozen=True, kw_only=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False


class TurnEvent(DomainEvent, frozen=True, kw_only=True):
    """An event of a turn; ``SSE_NAME`` is the contract's event name."""

    SSE_NAME: ClassVar[str] = ""
    SUBJECT_TYPE: ClassVar[str] = ""
    TERMINAL: ClassVar[bool] = False

    def sse_data(self) -> dict[str, Any]:
        """The event's fields as the contract lists them (``seq`` and ``turn_id`` added later)."""
        raise NotImplementedError


class Turn:
    """The state of a turn, folded from its events."""

    class Started(TurnEvent, frozen=True, kw_only=True):
        TOPIC = "turnstream.turn.started.v1"
        SSE_NAME = "turn.started"
        SUBJECT_TYPE = "turn_started"

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

        def sse_data(self) -> dict[str, Any]:
            return {
                "conversation_id": str(self.conversation_id),
                "mode": self.mode,
                "user_message_id": _opt(self.user_message_id),
                "assistant_message_id": str(self.assistant_message_id),
                "parent_id": _opt(self.parent_id),
                "model": self.model,
                "request_id": self.request_id,
                "created_at": _iso(self.timestamp),
            }

    class ReasoningAppended(TurnEvent, frozen=True, kw_only=True):
        TOPIC = "turnstream.turn.reasoning_appended.v1"
        SSE_NAME = "reasoning"
        SUBJECT_TYPE = "reasoning"

        text: str

        def sse_data(self) -> dict[str, Any]:
            return {"text": self.text}

    class TokensAppended(TurnEvent, frozen=True, kw_only=True):
        TOPIC = "turnstream.turn.tokens_appended.v1"
        SSE_NAME = "token"
        SUBJECT_TYPE = "token"

        text: str

        def sse_data(self) -> dict[str, Any]:
            return {"text": self.text}

    class Titled(TurnEvent, frozen=True, kw_only=True):
        TOPIC = "turnstream.turn.titled.v1"
        SSE_NAME = "title"
        SUBJECT_TYPE = "title"

        title: str

        def sse_data(self) -> dict[str, Any]:
            return {"title": self.title}

    class Finished(TurnEvent, frozen=True, kw_only=True):
        TOPIC = "turnstream.turn.finished.v1"
        SSE_NAME = "final"
        SUBJECT_TYPE = "final"
        TERMINAL = True

        status: Literal["completed", "interrupted"]
        text: str
        reasoning: str = ""
        finish_reason: str | None = None
        usage: TurnUsage = msgspec.field(default_factory=TurnUsage)

        def sse_data(self) -> dict[str, Any]:
            return {
                "status": self.status,
                "text": self.text,
                "reasoning": self.reasoning,
                "finish_reason": self.finish_reason,
                "usage": msgspec.to_builtins(self.usage),
            }

    class Failed(TurnEvent, frozen=True, kw_only=True):
        TOPIC = "turnstream.turn.failed.v1"
        SSE_NAME = "error"
        SUBJECT_TYPE = "error"
        TERMINAL = True

        code: str
        message: str
        text: str
        reasoning: str = ""
        usage: TurnUsage | None = None

        def sse_data(self) -> dict[str, Any]:
            return {"code": self.code, "message": self.message, "text": self.text}

    def __init__(self, started: Turn.Started) -> None:
        self.id = started.originator_id
        self.version = started.originator_version
        self.started = started
        self.text = started.prefix
        self.reasoning = started.reasoning_prefix
        self.title: str | None = None
        self.status: TurnStatus = "running"
        self.finish_reason: str | None = None
        self.usage: TurnUsage | None = None
        self.error_code: str | None = None
        self.ended_at: datetime | None = None

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
        if isinstance(event, Turn.TokensAppended):
            self.text += event.text
        elif isinstance(event, Turn.ReasoningAppended):
            self.reasoning += event.text
        elif isinstance(event, Turn.Titled):
            self.title = event.title
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


def _opt(value: UUID | None) -> str | None:
    return None if value is None else str(value)


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")
