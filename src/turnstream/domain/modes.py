"""Where a new turn goes in the message tree, by mode, and what the model sees.

- ``message``: a new user message, child of ``parent_id`` (default: the current leaf),
  and its answer.
- ``retry``: ``message_id`` is an assistant message; a new assistant sibling answers
  the same prompt.
- ``edit``: ``message_id`` is a user message and ``content`` its new text; a new user
  sibling and its answer.
- ``continue``: ``message_id`` is an assistant message with no children; the answer is
  extended in place.

The model sees the path from the root to the new answer's parent (the caller adds the
system prompt first), then for ``continue`` the answer so far.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any
from uuid import UUID

import msgspec

from turnstream.domain.errors import Invalid, MessageNotFound
from turnstream.domain.tools import ToolSpec
from turnstream.domain.turn import TurnMode

Row = dict[str, Any]

NEW_MESSAGES: dict[TurnMode, int] = {"message": 2, "edit": 2, "retry": 1, "continue": 0}
"""Messages a turn adds to the tree, by mode (continue extends an answer in place)."""


class TurnRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What a client asks of a new turn (the body of ``POST …/turns``)."""

    content: str | None = None
    """The user's message (``message`` and ``edit``)."""
    mode: TurnMode = "message"
    parent_id: UUID | None = None
    """``message``: the answer to reply to (default: the current leaf)."""
    message_id: UUID | None = None
    """``retry``, ``continue``: an answer; ``edit``: a user message."""
    request_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    """The same id on the same conversation is the same turn (idempotent retries)."""
    model: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    """Another configured model for this turn than the conversation's."""
    client_message_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    """``message``, ``edit``: the client's own id of the new user message, kept in the
    tree beside ours (``client_id``)."""
    tools: list[ToolSpec] | None = None
    """Client tools this turn offers (OpenAI function format), instead of the
    conversation's; ``[]`` offers none."""
    attachments: Annotated[list[UUID], msgspec.Meta(max_length=100)] | None = None
    """``message``, ``edit``: ids of the caller's files (``POST /v1/files``) attached to
    the new user message."""


@dataclass(frozen=True)
class TurnPlan:
    parent_id: UUID | None
    """The parent of the first new message (for retry and continue: of the answer)."""
    content: str | None
    """The new user message, if the mode makes one."""
    assistant_message_id: UUID | None = None
    """For ``continue``: the answer extended in place (otherwise a new id)."""
    prefix: str = ""
    reasoning_prefix: str = ""
    history: list[Row] = field(default_factory=list)
    """The messages from the root to the new answer's parent, excluding the new user
    message and the answer being continued."""


def path_to(messages: dict[UUID, Row], message_id: UUID | None) -> list[Row]:
    """The messages from the root down to ``message_id`` (empty for None)."""
    path: list[Row] = []
    seen: set[UUID] = set()
    while message_id is not None and message_id not in seen:
        seen.add(message_id)
        row = messages.get(message_id)
        if row is None:
            break
        path.append(row)
        message_id = row["parent_id"]
    path.reverse()
    return path


def _target(messages: dict[UUID, Row], request: TurnRequest, role: str) -> Row:
    if request.message_id is None:
        raise Invalid(f"Mode {request.mode!r} needs 'message_id' (the {role} message).")
    if request.parent_id is not None:
        raise Invalid(f"Mode {request.mode!r} takes 'message_id', not 'parent_id'.")
    row = messages.get(request.message_id)
    if row is None:
        raise MessageNotFound(request.message_id)
    if row["role"] != role:
        raise Invalid(
            f"Mode {request.mode!r} needs an {role} message; {request.message_id} is a "
            f"{row['role']} message."
        )
    return row


def _content(request: TurnRequest) -> str:
    """The new message's text: non-empty, unless files are attached to it."""
    content = (request.content or "").strip()
    if not content and not request.attachments:
        raise Invalid(f"Mode {request.mode!r} needs non-empty 'content' (or attachments).")
    return content


def _no_content(request: TurnRequest) -> None:
    if request.content is not None:
        raise Invalid(f"Mode {request.mode!r} takes no 'content'.")
    if request.attachments:
        raise Invalid(f"Mode {request.mode!r} makes no user message: no 'attachments'.")
    if request.client_message_id is not None:
        raise Invalid(f"Mode {request.mode!r} makes no user message: no 'client_message_id'.")


def plan_turn(request: TurnRequest, messages: dict[UUID, Row], leaf: UUID | None) -> TurnPlan:
    """Check the request against the tree; where the turn goes. Raises 400/404."""
    if request.mode == "message":
        if request.message_id is not None:
            raise Invalid("Mode 'message' takes 'parent_id', not 'message_id'.")
        content = _content(request)
        parent_id = request.parent_id if request.parent_id is not None else leaf
        if request.parent_id is not None:
            parent = messages.get(request.parent_id)
            if parent is None:
                raise MessageNotFound(request.parent_id)
            if parent["role"] != "assistant":
                raise Invalid(
                    "'parent_id' must be an assistant message (a reply follows an answer)."
                )
        return TurnPlan(parent_id, content, history=path_to(messages, parent_id))
    if request.mode == "retry":
        _no_content(request)
        target = _target(messages, request, "assistant")
        parent_id = target["parent_id"]
        return TurnPlan(parent_id, None, history=path_to(messages, parent_id))
    if request.mode == "edit":
        target = _target(messages, request, "user")
        content = _content(request)
        parent_id = target["parent_id"]
        return TurnPlan(parent_id, content, history=path_to(messages, parent_id))
    # continue
    _no_content(request)
    target = _target(messages, request, "assistant")
    if any(m["parent_id"] == target["id"] for m in messages.values()):
        raise Invalid("Mode 'continue' needs an answer with no replies; this one has some.")
    parent_id = target["parent_id"]
    return TurnPlan(
        parent_id,
        None,
        assistant_message_id=target["id"],
        prefix=target["content"],
        reasoning_prefix=target["reasoning"],
        history=path_to(messages, parent_id),
    )
