"""Conversations: create, read (the views), list, rename, delete, claim; and reads that
see the caller's own writes.

Every conversation belongs to one tenant and one user (``Caller.may``): anything of
anyone else answers ``ConversationNotFound``, exactly as a missing id does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from uuid import UUID

from turnstream.domain.callers import Caller
from turnstream.domain.conversation import Conversation
from turnstream.domain.errors import (
    ConversationNotFound,
    Invalid,
    ServiceUnavailable,
    TurnNotFound,
    UnknownModel,
)
from turnstream.domain.tools import ToolSpec
from turnstream.ids import uuid7
from turnstream.projections.reader import Positions, Reader
from turnstream.projections.views import (
    ActiveTurn,
    ConversationPage,
    ConversationSummary,
    ConversationView,
    Waiting,
    conversation_page,
    conversation_view,
    decode_cursor,
    summary,
)
from turnstream.settings import ModelConfig, default_model_id
from turnstream.store.application import TurnstreamApplication
from turnstream.store.gateway import StoreGateway
from turnstream.store.turnindex import TurnIndexRow


class ReadModel:
    """The projections' views, read so that a caller sees its own writes."""

    def __init__(
        self, *, gateway: StoreGateway, reader: Reader, positions: Positions, wait_s: float
    ) -> None:
        self.gateway = gateway
        self.reader = reader
        self.positions = positions
        self.wait_s = wait_s

    async def caught_up(self, name: str, conversation_id: UUID | None = None) -> None:
        """Wait until projection ``name`` holds every event committed before this call
        (of ``conversation_id`` and its turns only, when given).

        Read your writes: a client that saw a turn's terminal frame, or got 2xx for a
        rename, then reads, sees it. Waits on the position the worker announces. A read
        of one conversation waits for that conversation's events alone: a burst of other
        users' turns never holds it up.
        """
        _, pending = await self.gateway.run(self.reader.pending, name, conversation_id)
        if pending is not None:
            await self._reach(name, pending)

    async def _reach(self, name: str, position: int) -> None:
        """Wait until projection ``name`` holds ``position`` (503 if it does not in time)."""
        if not await self.positions.wait(name, position, self.wait_s):
            raise ServiceUnavailable("The read model is catching up; try again shortly.")

    async def tree(
        self, caller: Caller, conversation_id: UUID
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The caller's conversation row and its messages (404 for anyone else's), as
        of every event of it committed before this call: one store call when the tree
        view holds them already, as it mostly does."""
        behind, row, messages = await self.gateway.run(self.reader.tree, conversation_id)
        if behind is not None:
            await self._reach("tree", behind)
            _, row, messages = await self.gateway.run(
                self.reader.tree, conversation_id, pending=False
            )
        if row is None or not caller.may(row["tenant"], row["owner"]):
            raise ConversationNotFound(conversation_id)
        return row, messages

    async def tree_row(
        self, caller: Caller, conversation_id: UUID, *, read: bool = False
    ) -> dict[str, Any]:
        """The caller's conversation row of the message tree (404 for anyone else's)."""
        await self.caught_up("tree", conversation_id)
        row = await self.gateway.run(self.reader.conversation, conversation_id)
        if row is None or not caller.may(row["tenant"], row["owner"], read=read):
            raise ConversationNotFound(conversation_id)
        return row


class Conversations:
    def __init__(
        self,
        *,
        app: TurnstreamApplication,
        gateway: StoreGateway,
        reads: ReadModel,
        models: Mapping[str, ModelConfig],
    ) -> None:
        self.app = app
        self.run = gateway.run
        self.reads = reads
        self.models = models

    async def create(
        self,
        caller: Caller,
        *,
        model: str | None,
        title: str | None,
        system_prompt: str | None,
        conversation_id: UUID | None = None,
        tools: tuple[ToolSpec, ...] = (),
    ) -> ConversationSummary:
        """A new conversation of the caller's (``conversation_id``: with that id, which
        must be new: a second create of it is the store's IntegrityError)."""
        model_id = model or default_model_id(self.models)
        if model_id not in self.models:
            raise UnknownModel(model_id)
        created = Conversation.create(
            conversation_id or uuid7(),
            tenant=caller.tenant,
            owner=caller.user_id,
            model=model_id,
            title=title,
            system_prompt=system_prompt,
            tools=tools,
        )
        await self.run(self.app.record, created)
        conversation = Conversation.fold([created])
        assert conversation is not None
        return summary(conversation)

    async def get(
        self, caller: Caller, conversation_id: UUID, *, read: bool = False
    ) -> Conversation:
        """The caller's conversation; anything else is 'not found', never 'forbidden'.

        ``read``: an admin may also read the conversations of their own tenant.
        """
        conversation = await self.run(self.app.conversation, conversation_id)
        if not caller.may(conversation.tenant, conversation.owner, read=read):
            raise ConversationNotFound(conversation_id)
        return conversation

    async def check_readable(self, caller: Caller, conversation_id: UUID) -> None:
        """ConversationNotFound unless the caller may read the conversation (its streams)."""
        await self.get(caller, conversation_id, read=True)

    async def view(self, caller: Caller, conversation_id: UUID) -> ConversationView:
        row = await self.reads.tree_row(caller, conversation_id, read=True)
        messages = await self.run(self.reads.reader.messages, conversation_id)
        active: ActiveTurn | None = None
        if row["active_turn_id"] is not None:
            turn = await self.run(self.app.turn, row["active_turn_id"])
            if turn is not None:
                waits = turn.waiting
                waiting = Waiting(reason=waits[0], call_ids=waits[1]) if waits else None
                active = ActiveTurn(turn_id=turn.id, last_seq=turn.version, waiting=waiting)
        return conversation_view(row, messages, active)

    async def page(self, caller: Caller, limit: int, cursor: str | None) -> ConversationPage:
        after = decode_cursor(cursor) if cursor else None
        await self.reads.caught_up("conversations")
        rows = await self.run(
            self.reads.reader.conversations, caller.tenant, caller.user_id, limit + 1, after
        )
        return conversation_page(rows, limit)

    async def rename(self, caller: Caller, conversation_id: UUID, title: str) -> None:
        conversation = await self.get(caller, conversation_id)
        await self.run(self.app.record, conversation.rename(title))

    async def delete(self, caller: Caller, conversation_id: UUID) -> None:
        conversation = await self.get(caller, conversation_id)
        await self.run(self.app.record, conversation.delete())

    async def claim(self, caller: Caller, guest: Caller, conversation_id: UUID) -> None:
        """Move ``guest``'s conversation to the signed-in ``caller`` (same tenant)."""
        if caller.guest:
            raise Invalid("Sign in first: a guest cannot claim conversations.")
        if not guest.guest:
            raise Invalid("X-Guest-Token must be a guest token (from POST /v1/guest).")
        conversation = await self.run(self.app.conversation, conversation_id)
        if conversation.deleted or conversation.tenant != caller.tenant:
            raise ConversationNotFound(conversation_id)
        if conversation.owner == caller.user_id:
            return  # claimed already: the same answer again
        if guest.tenant != caller.tenant or conversation.owner != guest.user_id:
            raise ConversationNotFound(conversation_id)
        await self.run(self.app.record, conversation.claim(caller.user_id))

    # A conversation's turns.

    async def turn(
        self, caller: Caller, conversation_id: UUID, turn_id: UUID, *, read: bool = False
    ) -> TurnIndexRow:
        """The turn's index row, if it is in the caller's conversation; else 404."""
        await self.get(caller, conversation_id, read=read)
        row = await self.run(self.app.store.turn_row, turn_id)
        if row is None or row.conversation_id != conversation_id:
            raise TurnNotFound(turn_id)
        return row

    async def active_turn(
        self, caller: Caller, conversation_id: UUID, after: int = 0
    ) -> UUID | None:
        """The running turn; with ``after`` (a reader resuming, whose turn may have ended
        while it was away), else the last turn if it has events after that seq."""
        await self.get(caller, conversation_id, read=True)
        running = await self.run(self.app.store.running_turn, conversation_id)
        if running is not None or after <= 0:
            return running
        latest = await self.run(self.app.store.latest_turn, conversation_id)
        if latest is None or await self.run(self.app.store.last_version, latest) <= after:
            return None
        return latest
