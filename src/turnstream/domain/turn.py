"""The Turn aggregate: one request to a model and everything it streamed back.

A turn's events are its stream: the event's version is its position in the turn (1, 2,
3 … with no gap), and the stream always ends with exactly one terminal event,
``Finished`` or ``Failed``. This module is the one place turn events are made:

- :meth:`Turn.start` makes the first (``Started``);
- a running turn's ``TurnProgress`` (``turnstream.domain.progress``) makes *drafts* of
  the rest (text, reasoning, a title, the end) and checks that nothing follows the end;
  the group writer numbers the drafts of many turns in one commit and turns each into
  its event with ``Draft.event``;
- a folded :class:`Turn` whose runner died makes its end with :meth:`Turn.lose_runner`.

The events are plain facts: how they are named on SSE, on NATS or in metrics is decided
by those parts, in tables of their own.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import ClassVar, Literal
from uuid import UUID

import msgspec

from turnstream.domain.errors import TurnEnded
from turnstream.domain.events import DomainEvent, utcnow

TurnMode = Literal["message", "retry", "edit", "continue"]
TurnStatus = Literal["running", "completed", "interrupted", "failed"]

RUNNER_LOST = "runner_lost"
"""The code of a turn ended because the process running it stopped."""


class TurnUsage(msgspec.Struct, frozen=True, kw_only=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False


class TurnEvent(DomainEvent, frozen=True, kw_only=True):
    """An event of a turn; a terminal one ends it."""

    TERMINAL: ClassVar[bool] = False


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

    class ReasoningAppended(TurnEvent, frozen=True, kw_only=True):
        TOPIC = "turnstream.turn.reasoning_appended.v1"

        text: str

    class TokensAppended(TurnEvent, frozen=True, kw_only=True):
        TOPIC = "turnstream.turn.tokens_appended.v1"

        text: str

    class Titled(TurnEvent, frozen=True, kw_only=True):
        TOPIC = "turnstream.turn.titled.v1"

        title: str

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
