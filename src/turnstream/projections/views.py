"""Read models built from the log: the conversation with its messages.

Until the projections runner lands, a conversation is read from its events and its
turns' events on request; ended turns are read from their first and last events only
(the terminal event carries the whole answer), so a read never replays tokens of
finished answers.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

import msgspec

from turnstream.domain.conversation import Conversation
from turnstream.domain.turn import Turn, TurnUsage

MessageStatus = Literal["complete", "streaming", "interrupted", "failed"]


class MessageView(msgspec.Struct, kw_only=True):
    id: UUID
    parent_id: UUID | None
    role: Literal["user", "assistant"]
    content: str
    reasoning: str
    status: MessageStatus
    model: str | None
    turn_id: UUID
    children: list[UUID]
    created_at: datetime
    usage: TurnUsage | None = None


class ActiveTurn(msgspec.Struct, kw_only=True):
    turn_id: UUID
    last_seq: int


class ConversationSummary(msgspec.Struct, kw_only=True):
    id: UUID
    title: str | None
    model: str
    system_prompt: str | None
    created_at: datetime
    updated_at: datetime


class ConversationView(ConversationSummary, kw_only=True):
    messages: list[MessageView]
    current_leaf_id: UUID | None
    active_turn: ActiveTurn | None


def summary(conversation: Conversation) -> ConversationSummary:
    return ConversationSummary(
        id=conversation.id,
        title=conversation.title,
        model=conversation.model,
        system_prompt=conversation.system_prompt,
        created_at=conversation.created_at,
        updated_at=conversation.updated_at,
    )


_STATUS: dict[str, MessageStatus] = {
    "running": "streaming",
    "completed": "complete",
    "interrupted": "interrupted",
    "failed": "failed",
}


def conversation_view(conversation: Conversation, turns: list[Turn]) -> ConversationView:
    """The conversation with every message of its turns, in order of the turns."""
    messages: dict[UUID, MessageView] = {}
    order: list[UUID] = []
    title = conversation.title
    updated_at = conversation.updated_at
    active: ActiveTurn | None = None
    leaf: UUID | None = None
    for turn in turns:
        s = turn.started
        if s.user_message_id is not None and s.user_message_id not in messages:
            messages[s.user_message_id] = MessageView(
                id=s.user_message_id,
                parent_id=s.parent_id,
                role="user",
                content=s.content,
                reasoning="",
                status="complete",
                model=None,
                turn_id=turn.id,
                children=[],
                created_at=s.timestamp,
            )
            order.append(s.user_message_id)
        answer_parent = s.user_message_id if s.user_message_id is not None else s.parent_id
        messages[s.assistant_message_id] = MessageView(
            id=s.assistant_message_id,
            parent_id=answer_parent,
            role="assistant",
            content=turn.text,
            reasoning=turn.reasoning,
            status=_STATUS[turn.status],
            model=s.model,
            turn_id=turn.id,
            children=[],
            created_at=s.timestamp,
            usage=turn.usage,
        )
        if s.assistant_message_id not in order:
            order.append(s.assistant_message_id)
        if title is None and turn.title:
            title = turn.title
        updated_at = max(updated_at, turn.ended_at or s.timestamp)
        leaf = s.assistant_message_id
        if not turn.ended:
            active = ActiveTurn(turn_id=turn.id, last_seq=turn.version)
    for message_id in order:
        message = messages[message_id]
        parent = messages.get(message.parent_id) if message.parent_id else None
        if parent is not None and message.id not in parent.children:
            parent.children.append(message.id)
    return ConversationView(
        id=conversation.id,
        title=title,
        model=conversation.model,
        system_prompt=conversation.system_prompt,
        created_at=conversation.created_at,
        updated_at=updated_at,
        messages=[messages[m] for m in order],
        current_leaf_id=leaf,
        active_turn=active,
    )


def model_path(conversation: Conversation, turns: list[Turn]) -> list[tuple[str, str]]:
    """The (role, text) messages of the conversation so far, system prompt first."""
    path: list[tuple[str, str]] = []
    if conversation.system_prompt:
        path.append(("system", conversation.system_prompt))
    for turn in turns:
        if turn.started.user_message_id is not None:
            path.append(("user", turn.started.content))
        if turn.text:
            path.append(("assistant", turn.text))
    return path
