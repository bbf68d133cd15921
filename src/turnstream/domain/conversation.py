"""The Conversation aggregate: who owns it, its model, title and system prompt.

The messages are not in this aggregate: each turn is its own event stream, and the
message tree is derived from the turns (see ``projections``).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from uuid import UUID

from turnstream.domain.errors import ConversationNotFound, Invalid
from turnstream.domain.events import DomainEvent, utcnow
from turnstream.domain.tools import ToolSpec, check_tools

TITLE_MAX = 200


class ConversationEvent(DomainEvent, frozen=True, kw_only=True):
    """An event of a conversation."""


class Conversation:
    """The state of a conversation, folded from its events."""

    class Created(ConversationEvent, frozen=True, kw_only=True):
        TOPIC = "turnstream.conversation.created.v1"

        tenant: str
        owner: str
        model: str
        title: str | None = None
        system_prompt: str | None = None
        tools: tuple[ToolSpec, ...] = ()
        """Client tools every turn offers unless it brings its own."""

    class Renamed(ConversationEvent, frozen=True, kw_only=True):
        TOPIC = "turnstream.conversation.renamed.v1"

        title: str

    class Deleted(ConversationEvent, frozen=True, kw_only=True):
        TOPIC = "turnstream.conversation.deleted.v1"

    class Claimed(ConversationEvent, frozen=True, kw_only=True):
        """A guest's conversation moved to the user who signed in (same tenant)."""

        TOPIC = "turnstream.conversation.claimed.v1"

        owner: str
        """The new owner."""
        previous_owner: str
        """The guest it came from."""

    def __init__(self, created: Conversation.Created) -> None:
        self.id = created.originator_id
        self.version = created.originator_version
        self.tenant = created.tenant
        self.owner = created.owner
        self.model = created.model
        self.title = created.title
        self.system_prompt = created.system_prompt
        self.created_at: datetime = created.timestamp
        self.updated_at: datetime = created.timestamp
        self.deleted = False

    def apply(self, event: ConversationEvent) -> None:
        self.version = event.originator_version
        self.updated_at = event.timestamp
        if isinstance(event, Conversation.Renamed):
            self.title = event.title
        elif isinstance(event, Conversation.Deleted):
            self.deleted = True
        elif isinstance(event, Conversation.Claimed):
            self.owner = event.owner

    @classmethod
    def fold(cls, events: Iterable[ConversationEvent]) -> Conversation | None:
        conversation: Conversation | None = None
        for event in events:
            if conversation is None:
                assert isinstance(event, Conversation.Created)
                conversation = cls(event)
            else:
                conversation.apply(event)
        return conversation

    # Commands: check the invariant, then return the fact to record.

    @staticmethod
    def create(
        conversation_id: UUID,
        *,
        tenant: str,
        owner: str,
        model: str,
        title: str | None,
        system_prompt: str | None,
        tools: tuple[ToolSpec, ...] = (),
    ) -> Conversation.Created:
        check_tools(tools)
        return Conversation.Created(
            originator_id=conversation_id,
            originator_version=1,
            timestamp=utcnow(),
            tenant=tenant,
            owner=owner,
            model=model,
            title=clean_title(title) if title is not None else None,
            system_prompt=system_prompt,
            tools=tools,
        )

    def rename(self, title: str) -> Conversation.Renamed:
        self.check_not_deleted()
        return Conversation.Renamed(
            originator_id=self.id,
            originator_version=self.version + 1,
            timestamp=utcnow(),
            title=clean_title(title),
        )

    def delete(self) -> Conversation.Deleted:
        self.check_not_deleted()
        return Conversation.Deleted(
            originator_id=self.id, originator_version=self.version + 1, timestamp=utcnow()
        )

    def claim(self, owner: str) -> Conversation.Claimed:
        self.check_not_deleted()
        return Conversation.Claimed(
            originator_id=self.id,
            originator_version=self.version + 1,
            timestamp=utcnow(),
            owner=owner,
            previous_owner=self.owner,
        )

    def check_not_deleted(self) -> None:
        if self.deleted:
            raise ConversationNotFound(self.id)


def clean_title(title: str) -> str:
    cleaned = " ".join(title.split())
    if not 1 <= len(cleaned) <= TITLE_MAX:
        msg = f"A title has 1 to {TITLE_MAX} characters after trimming."
        raise Invalid(msg)
    return cleaned
