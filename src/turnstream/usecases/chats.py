"""Chats by the client's own id: the conversation a chat client (``useChat``) names.

A chat id is the client's string. It names the caller's conversation with that UUID if
the caller has one; else the conversation whose id is derived from the tenant, the user
and the chat id, made on first use. Another user's chat of the same id is therefore
another conversation, and nothing of anyone else's is ever found by guessing ids.
"""

from __future__ import annotations

from uuid import UUID

from eventsourcing.persistence import IntegrityError

from turnstream.domain.callers import Caller
from turnstream.domain.chats import check_chat_id
from turnstream.domain.errors import ConversationNotFound
from turnstream.ids import stable_id
from turnstream.usecases.conversations import Conversations


def chat_conversation_id(caller: Caller, chat_id: str) -> UUID:
    """The conversation a chat id names for a caller who has none with that UUID."""
    return stable_id("chat", caller.tenant, caller.user_id, chat_id)


class Chats:
    def __init__(self, *, conversations: Conversations) -> None:
        self.conversations = conversations

    async def _owned(self, caller: Caller, conversation_id: UUID, *, read: bool) -> bool:
        try:
            await self.conversations.get(caller, conversation_id, read=read)
        except ConversationNotFound:
            return False
        return True

    async def find(self, caller: Caller, chat_id: str, *, read: bool = False) -> UUID | None:
        """The caller's conversation of this chat, None if there is none yet."""
        check_chat_id(chat_id)
        try:
            own: UUID | None = UUID(chat_id)
        except ValueError:
            own = None
        if own is not None and await self._owned(caller, own, read=read):
            return own
        derived = chat_conversation_id(caller, chat_id)
        return derived if await self._owned(caller, derived, read=read) else None

    async def open(self, caller: Caller, chat_id: str, *, model: str | None) -> UUID:
        """The caller's conversation of this chat, made now if it is the chat's first
        turn (two first turns at once make it once: the store refuses the second)."""
        found = await self.find(caller, chat_id)
        if found is not None:
            return found
        derived = chat_conversation_id(caller, chat_id)
        try:
            await self.conversations.create(
                caller, model=model, title=None, system_prompt=None, conversation_id=derived
            )
        except IntegrityError:
            if not await self._owned(caller, derived, read=False):
                raise ConversationNotFound(derived) from None  # it was deleted
        return derived
