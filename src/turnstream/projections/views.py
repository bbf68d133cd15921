"""What clients read, built from the projections' rows (see ``reader``)."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import msgspec

from turnstream.domain.conversation import Conversation
from turnstream.domain.errors import Invalid
from turnstream.domain.turn import TurnUsage
from turnstream.projections.reader import ListCursor
from turnstream.projections.tree_steps import text_parts

MessageStatus = Literal["complete", "streaming", "waiting", "interrupted", "failed"]
"""``waiting``: the answer's turn pauses for tool results or approvals."""


class AttachmentView(msgspec.Struct, kw_only=True):
    """A file a user message lists: what a client shows of it; its bytes are at
    ``GET /v1/files/{id}``."""

    id: UUID
    name: str
    media_type: str
    bytes: int
    width: int | None
    """An image's size in pixels; null for other files."""
    height: int | None


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
    client_id: str | None = None
    """The client's own id of a user message (a chat client's), beside ours."""
    parts: list[dict[str, Any]] = msgspec.field(default_factory=list)
    """The message in order: ``reasoning`` and ``text`` parts (``{"type", "text"}``),
    and for a turn that called tools, per step its reasoning, text and ``tool_call``
    parts (see ``projections.tree_steps``). A running answer has its finished steps'."""
    attachments: list[AttachmentView] = msgspec.field(default_factory=list)
    """The files attached to a user message, in the order given; empty otherwise."""


class Waiting(msgspec.Struct, kw_only=True):
    """What a turn that waits needs: tool results of its client, or a decision."""

    reason: str
    call_ids: list[str]


class ActiveTurn(msgspec.Struct, kw_only=True):
    turn_id: UUID
    last_seq: int
    waiting: Waiting | None = None


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
    tools: list[dict[str, Any]] | None = None
    """The client tools its turns offer unless they bring their own (OpenAI format)."""


class ConversationItem(msgspec.Struct, kw_only=True):
    id: UUID
    title: str | None
    model: str
    created_at: datetime
    updated_at: datetime
    message_count: int
    active_turn_id: UUID | None
    attachment_count: int = 0
    """The files its user messages list, over all its turns."""


class ConversationPage(msgspec.Struct, kw_only=True):
    items: list[ConversationItem]
    next_cursor: str | None


def summary(conversation: Conversation) -> ConversationSummary:
    return ConversationSummary(
        id=conversation.id,
        title=conversation.title,
        model=conversation.model,
        system_prompt=conversation.system_prompt,
        created_at=conversation.created_at,
        updated_at=conversation.updated_at,
    )


def message_views(rows: list[dict[str, Any]]) -> list[MessageView]:
    """The flat tree, in creation order, each message with its children in order."""
    messages = [
        MessageView(
            id=r["id"],
            parent_id=r["parent_id"],
            role=r["role"],
            content=r["content"],
            reasoning=r["reasoning"],
            status=r["status"],
            model=r["model"],
            turn_id=r["turn_id"],
            children=[],
            created_at=r["created_at"],
            usage=None
            if r["prompt_tokens"] is None
            else TurnUsage(
                prompt_tokens=r["prompt_tokens"],
                completion_tokens=r["completion_tokens"],
                estimated=bool(r["estimated"]),
            ),
            client_id=r.get("client_id"),
            parts=r["parts"] if "parts" in r else text_parts(r["reasoning"], r["content"]),
            attachments=[AttachmentView(**a) for a in r.get("attachments") or ()],
        )
        for r in rows
    ]
    by_id = {m.id: m for m in messages}
    for message in messages:
        parent = by_id.get(message.parent_id) if message.parent_id else None
        if parent is not None:
            parent.children.append(message.id)
    return messages


def conversation_view(
    row: dict[str, Any], rows: list[dict[str, Any]], active: ActiveTurn | None
) -> ConversationView:
    return ConversationView(
        id=row["id"],
        title=row["title"],
        model=row["model"],
        system_prompt=row["system_prompt"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        messages=message_views(rows),
        current_leaf_id=row["current_leaf_id"],
        active_turn=active,
        tools=row.get("tools"),
    )


def conversation_page(rows: list[dict[str, Any]], limit: int) -> ConversationPage:
    """A page of ``limit`` items from ``limit + 1`` rows (the extra one says "more")."""
    items = [
        ConversationItem(
            id=r["id"],
            title=r["title"],
            model=r["model"],
            created_at=r["created_at"],
            updated_at=r["updated_at"],
            message_count=r["message_count"],
            active_turn_id=r["active_turn_id"],
            attachment_count=r["attachment_count"],
        )
        for r in rows[:limit]
    ]
    more = len(rows) > limit
    return ConversationPage(
        items=items,
        next_cursor=encode_cursor(ListCursor(items[-1].updated_at, items[-1].id))
        if more and items
        else None,
    )


_cursor_encoder = msgspec.json.Encoder()
_cursor_decoder = msgspec.json.Decoder(tuple[datetime, UUID])


def encode_cursor(cursor: ListCursor) -> str:
    raw = _cursor_encoder.encode((cursor.updated_at, cursor.id))
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> ListCursor:
    """A cursor from ``next_cursor``; 400 for anything else."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        updated_at, conversation_id = _cursor_decoder.decode(raw)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise Invalid("'cursor' is not a cursor this API returned.") from None
    if updated_at.tzinfo is None:
        raise Invalid("'cursor' is not a cursor this API returned.")
    return ListCursor(updated_at, conversation_id)


class UsagePeriod(msgspec.Struct, kw_only=True):
    """The caller's usage in one UTC day or ISO week (weeks start Monday 00:00 UTC)."""

    start: datetime
    resets_at: datetime
    turns: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    limit_tokens: int | None
    """The quota for this period; null when there is none."""
    remaining_tokens: int | None


class UsageLimits(msgspec.Struct, kw_only=True):
    """The limits that apply to the caller (null: no limit)."""

    messages_per_minute: int | None
    message_chars: int | None
    conversation_messages: int | None
    concurrent_turns: int | None
    daily_tokens: int | None
    weekly_tokens: int | None


class GuestAllowance(msgspec.Struct, kw_only=True):
    messages: int
    used: int
    remaining: int


class StorageUsage(msgspec.Struct, kw_only=True):
    """What the caller's files hold: each distinct content counted once, as it is stored
    (the same bytes uploaded twice are stored once); deleted files not at all."""

    bytes: int
    files: int
    """The caller's files that are not deleted."""


class UsageReport(msgspec.Struct, kw_only=True):
    day: UsagePeriod
    week: UsagePeriod
    limits: UsageLimits
    guest: GuestAllowance | None
    """For guests: the messages they may send before they must sign in."""
    storage: StorageUsage = msgspec.field(default_factory=lambda: StorageUsage(bytes=0, files=0))
