"""Events as the service stores them, made for tests (through the domain's commands
where there is one), to write straight to a store."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from turnstream.domain.conversation import Conversation
from turnstream.domain.events import DomainEvent, utcnow
from turnstream.domain.progress import TurnProgress
from turnstream.domain.turn import Turn, TurnUsage
from turnstream.ids import uuid7


def a_started(**overrides: Any) -> Turn.Started:
    """A new turn's first event (a ``message`` turn unless told otherwise)."""
    values: dict[str, Any] = {
        "conversation_id": uuid7(),
        "tenant": "acme",
        "user_id": "alice",
        "node_id": uuid7(),
        "mode": "message",
        "user_message_id": uuid7(),
        "assistant_message_id": uuid7(),
        "parent_id": None,
        "model": "demo",
        "content": "hi",
    }
    turn_id = overrides.pop("turn_id", None) or uuid7()
    return Turn.start(turn_id, **(values | overrides))


def a_turn(
    conversation_id: UUID,
    *,
    tenant: str = "acme",
    user: str = "alice",
    content: str = "hi",
    tokens: Sequence[str] = ("t0 ", "t1 ", "t2 "),
    usage: TurnUsage | None = None,
    at: datetime | None = None,
) -> list[DomainEvent]:
    """One finished turn: started, its text in pieces, finished with the whole of it."""
    started = a_started(
        conversation_id=conversation_id, tenant=tenant, user_id=user, content=content, at=at
    )
    progress = TurnProgress(started)
    drafts = [progress.append_text(text) for text in tokens]
    end = progress.finish(finish_reason="stop", usage=usage or TurnUsage())
    numbered = [d for d in [*drafts, end] if d is not None]
    return [started, *(d.event(v) for v, d in enumerate(numbered, 2))]


def a_conversation(
    *,
    tenant: str = "acme",
    owner: str = "alice",
    content: str = "hi",
    tokens: Sequence[str] = ("t0 ", "t1 ", "t2 "),
    title: str | None = None,
) -> list[DomainEvent]:
    """A conversation and one finished turn, as the service would store them.

    The title is stored as given (an old version's event may hold what the service
    refuses today)."""
    cid = uuid7()
    created = Conversation.Created(
        originator_id=cid, originator_version=1, timestamp=utcnow(), tenant=tenant,
        owner=owner, model="demo", title=title,
    )  # fmt: skip
    return [created, *a_turn(cid, tenant=tenant, user=owner, content=content, tokens=tokens)]
