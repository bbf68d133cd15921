"""Chats as the AI SDK's ``useChat`` names them: the client's chat id and message ids.

The AI SDK's transport sends a chat id of the client's own and its whole list of
messages, each with an id the client made; it says what it wants with a trigger
(``submit-message`` or ``regenerate-message``), not with our modes. This module turns
that into the same :class:`~turnstream.domain.modes.TurnRequest` every other client
sends, against the stored tree, so a chat turn is an ordinary turn:

- ``submit-message``: the last user message is new (a ``message`` under the current
  leaf), or its client id is stored already: with other text it is an ``edit`` of the
  stored one (a new user sibling), with the same text a ``retry`` of its latest answer
  (the client sent it again to get another answer);
- ``regenerate-message``: a ``retry`` of the answer the client names, by our id or by
  its own, or of the latest answer.

The client's message id is kept on the turn (``client_message_id``) so the tree answers
in the client's ids as well as ours. The last user message's files (:class:`ChatFile`)
become the new user message's attachments once the turn is placed: a ``retry`` makes
no user message, so a resent message uploads nothing again.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec

from turnstream.domain.errors import Invalid
from turnstream.domain.modes import TurnRequest
from turnstream.domain.tools import ToolSpec

Row = dict[str, Any]

CHAT_ID_RULE = "1 to 128 characters of A-Z, a-z, 0-9, '_' and '-'"
_CHAT_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")

ChatTrigger = Literal["submit-message", "regenerate-message"]


def is_chat_id(text: str) -> bool:
    return _CHAT_ID.fullmatch(text) is not None


def check_chat_id(text: str) -> str:
    if not is_chat_id(text):
        raise Invalid(f"A chat id is {CHAT_ID_RULE}.")
    return text


class ChatFile(msgspec.Struct, frozen=True, kw_only=True):
    """A ``file`` part of the last user message: a file of the caller's on this server,
    or a data URL to upload (never another URL: nothing is fetched)."""

    file_id: UUID | None = None
    data_url: str | None = None
    name: str | None = None
    """The part's ``filename`` (the upload's name)."""


class ChatTurn(msgspec.Struct, frozen=True, kw_only=True):
    """What a chat client asks of a turn, before it is placed in the tree."""

    trigger: ChatTrigger
    client_message_id: str | None = None
    """The client's id of its last user message (``submit-message``)."""
    text: str | None = None
    """That message's text."""
    message_id: str | None = None
    """``regenerate-message``: the answer to answer again (our id or the client's)."""
    request_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    model: str | None = None
    tools: list[ToolSpec] | None = None
    """The client tools the turn offers (None: the conversation's)."""
    files: tuple[ChatFile, ...] = ()
    """The last user message's files, in the order of its parts."""


def _find(messages: dict[UUID, Row], ref: str, role: str) -> Row | None:
    """The latest message of ``role`` that is ``ref`` by our id or by the client's."""
    try:
        row = messages.get(UUID(ref))
    except ValueError:
        row = None
    if row is None:
        rows = [m for m in messages.values() if m.get("client_id") == ref]
        row = rows[-1] if rows else None
    return row if row is not None and row["role"] == role else None


def _latest_answer(messages: dict[UUID, Row], parent: UUID | None = None) -> Row | None:
    answers = [
        m
        for m in messages.values()
        if m["role"] == "assistant" and (parent is None or m["parent_id"] == parent)
    ]
    return answers[-1] if answers else None


def chat_request(chat: ChatTurn, messages: dict[UUID, Row], leaf: UUID | None) -> TurnRequest:
    """The turn ``chat`` asks for, given the tree (messages in creation order)."""
    common: dict[str, Any] = {"request_id": chat.request_id, "model": chat.model}
    common["tools"] = chat.tools
    if chat.trigger == "regenerate-message":
        if chat.message_id is not None:
            target = _find(messages, chat.message_id, "assistant")
            if target is None:
                raise Invalid(f"'messageId' {chat.message_id!r} is no answer of this chat.")
        else:
            target = messages.get(leaf) if leaf is not None else None
            target = target if target and target["role"] == "assistant" else None
            target = target or _latest_answer(messages)
            if target is None:
                raise Invalid("Nothing to regenerate: this chat has no answer yet.")
        return TurnRequest(mode="retry", message_id=target["id"], **common)
    text = (chat.text or "").strip()
    if not text and not chat.files:
        raise Invalid("The last message must be a user message with text or files.")
    stored = _find(messages, chat.client_message_id, "user") if chat.client_message_id else None
    if stored is None:
        return TurnRequest(content=text, client_message_id=chat.client_message_id, **common)
    answer = _latest_answer(messages, stored["id"])
    if stored["content"] == text and answer is not None:
        return TurnRequest(mode="retry", message_id=answer["id"], **common)
    return TurnRequest(
        mode="edit",
        message_id=stored["id"],
        content=text,
        client_message_id=chat.client_message_id,
        **common,
    )
