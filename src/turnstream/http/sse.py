"""SSE framing of turn events, exactly as the contract shows them.

Token and reasoning frames carry ``p``, random filler against the token-length side
channel: TLS hides the bytes of a frame but not how many there are, and a stream of
one-token frames spells out the lengths of the answer's words. The filler makes a frame
as long as if its text (as JSON) had ``PAD_ROOM`` bytes, or, when longer, the next whole
number of ``PAD_STEP`` bytes; then it adds a random ``0 .. PAD_STEP - 1`` bytes, which
blurs where one step ends and the next begins. Every
delta of up to ``PAD_ROOM`` bytes (a token, or the several tokens the writer merges
under load) thus gives a frame whose length does not depend on its text at all; a longer
one shows its length only to the step. That costs about 50 bytes a token frame. The
filler is URL-safe base64 text, which JSON never escapes.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec

from turnstream.domain.turn import Turn, TurnEvent

_json = msgspec.json.Encoder()

PING = b": ping\n\n"

HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def _opt(value: UUID | None) -> str | None:
    return None if value is None else str(value)


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _started(e: Turn.Started) -> dict[str, Any]:
    return {
        "conversation_id": str(e.conversation_id),
        "mode": e.mode,
        "user_message_id": _opt(e.user_message_id),
        "assistant_message_id": str(e.assistant_message_id),
        "parent_id": _opt(e.parent_id),
        "model": e.model,
        "request_id": e.request_id,
        "created_at": _iso(e.timestamp),
        "attachments": [
            {
                "id": str(a.id),
                "name": a.name,
                "media_type": a.media_type,
                "bytes": a.bytes,
                "width": a.width,
                "height": a.height,
            }
            for a in e.attachments
        ],
    }


def _final(e: Turn.Finished) -> dict[str, Any]:
    return {
        "status": e.status,
        "text": e.text,
        "reasoning": e.reasoning,
        "finish_reason": e.finish_reason,
        "usage": msgspec.to_builtins(e.usage),
    }


def _text(e: Turn.TokensAppended | Turn.ReasoningAppended) -> dict[str, Any]:
    return {"text": e.text}


def _fields(*names: str) -> Callable[[Any], dict[str, Any]]:
    """The data of a frame that carries these fields of its event as they are."""

    def data(e: Any) -> dict[str, Any]:
        return {n: msgspec.to_builtins(getattr(e, n)) for n in names}

    return data


SSE_EVENTS: dict[type[TurnEvent], tuple[str, Callable[[Any], dict[str, Any]]]] = {
    Turn.Started: ("turn.started", _started),
    Turn.ReasoningAppended: ("reasoning", _text),
    Turn.TokensAppended: ("token", _text),
    Turn.Titled: ("title", lambda e: {"title": e.title}),
    Turn.FellBack: ("model.fallback", _fields("model", "from_model", "code", "message")),
    Turn.ToolCallStarted: ("tool_call.started", _fields("call_id", "name")),
    Turn.ToolArgumentsAppended: ("tool_call.arguments", _fields("call_id", "text")),
    Turn.ToolCallReady: ("tool_call", _fields("call_id", "name", "arguments", "kind", "server")),
    Turn.ApprovalRequested: ("approval.requested", _fields("call_id", "name")),
    Turn.ApprovalDecided: ("approval.decided", _fields("call_id", "approved", "by", "reason")),
    Turn.ToolResultRecorded: ("tool_result", _fields("call_id", "output", "is_error")),
    Turn.StepFinished: ("step", _fields("step", "finish_reason", "usage", "text", "reasoning")),
    Turn.Waiting: ("waiting", _fields("reason", "call_ids", "until")),
    Turn.Finished: ("final", _final),
    Turn.Failed: ("error", lambda e: {"code": e.code, "message": e.message, "text": e.text}),
}
"""Each turn event's SSE name and data (the contract's fields; ``seq`` and ``turn_id``
are added to every frame)."""

PADDED = frozenset({Turn.TokensAppended, Turn.ReasoningAppended, Turn.ToolArgumentsAppended})
"""The frames whose length would reveal the length of the text they carry."""


def sse_name(event: TurnEvent) -> str:
    return SSE_EVENTS[type(event)][0]


def sse_data(event: TurnEvent) -> dict[str, Any]:
    return SSE_EVENTS[type(event)][1](event)


PAD_ROOM = 48
"""Bytes of JSON text every padded frame has room for (several tokens' worth)."""
PAD_STEP = 16
"""Longer text is padded to whole steps; also the spread of the random extra."""


def encode_frame(event: TurnEvent, *, padding: bool) -> bytes:
    """``id: seq``, ``event: name``, ``data: {seq, turn_id, …}`` and a blank line.

    Args:
        event: A turn event.
        padding: Whether token and reasoning data get their ``p`` filler.
    """
    seq = event.originator_version
    name, data_of = SSE_EVENTS[type(event)]
    fields = data_of(event)
    data = _json.encode({"seq": seq, "turn_id": str(event.originator_id), **fields})
    if padding and type(event) in PADDED:
        data = data[:-1] + b',"p":"' + filler(fields["text"]).encode() + b'"}'
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, name.encode(), data)


async def sse_frames(
    items: AsyncIterator[TurnEvent | None], *, padding: bool, retry_ms: int | None = None
) -> AsyncIterator[bytes]:
    """The SSE body of a followed turn: a frame per event, ``: ping`` for each None.

    ``retry_ms``: first tell the client how soon to reconnect (a stream that ends on
    purpose before the turn does; the browser then resumes from its ``Last-Event-ID``).
    """
    if retry_ms is not None:
        yield b"retry: %d\n\n" % retry_ms
    async for item in items:
        yield PING if item is None else encode_frame(item, padding=padding)


def filler(text: str) -> str:
    """Filler that pads ``text``'s JSON length to its room, plus a random extra."""
    size = len(_json.encode(text)) - 2  # as it is in the frame: escaped, without quotes
    room = max(PAD_ROOM, -(-size // PAD_STEP) * PAD_STEP)
    n = room - size + secrets.randbelow(PAD_STEP)
    return secrets.token_urlsafe(n)[:n]
