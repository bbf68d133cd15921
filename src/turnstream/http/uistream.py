"""The AI SDK's UI message stream (protocol v1) over a followed turn.

What ``DefaultChatTransport`` in the npm package ``ai`` (5.x to 7.x) reads: SSE
events whose data is one JSON chunk each. A turn event becomes a group of chunks
(``turnstream.http.uichunks``); the side-channel filler of text, reasoning and tool
argument deltas travels in an SSE comment line (every SSE parser drops comments), never
in the JSON, which ai 5.0.0's strict parser checks field by field.

Only a group's last chunk has an ``id:`` line, the turn's seq: whatever ``Last-Event-ID``
a client sends, it has the whole group of that seq, so resuming after it is exact. The
groups depend on what came before, so a resumed stream folds the turn from its first
event and sends only what follows the client's seq (see :func:`ui_frames`).

A stream ends with the turn, or at a pause: the AI SDK's client answers a tool call
(``addToolResult``) or an approval once its stream has ended, and posts the answer in
a new request, whose response continues the same turn (``turnstream.http.routes.chat``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec

from turnstream.domain.turn import TurnEvent
from turnstream.http.sse import PING, filler
from turnstream.http.uichunks import ABORT, Chunk, UiStream

__all__ = ["ABORT", "DONE", "HEADERS", "UiStream", "encode_group", "ui_frames"]

HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
    "X-Vercel-AI-UI-Message-Stream": "v1",
}

DONE = b"data: [DONE]\n\n"

PADDED = ("delta", "inputTextDelta")
"""The fields whose length would tell the length of the text streamed."""

_json = msgspec.json.Encoder()


def encode_chunks(chunks: list[Chunk], seq: int | None, *, padding: bool) -> bytes:
    """One SSE event per chunk; the last has ``id: <seq>`` (unless None), a delta a
    filler comment."""
    out = bytearray()
    last = len(chunks) - 1
    for n, chunk in enumerate(chunks):
        text: Any = next((chunk[f] for f in PADDED if f in chunk), None)
        if padding and isinstance(text, str):
            out += b": " + filler(text).encode() + b"\n"
        if n == last and seq is not None:
            out += b"id: %d\n" % seq
        out += b"data: " + _json.encode(chunk) + b"\n\n"
    return bytes(out)


def encode_group(event: TurnEvent, chunks: list[Chunk], *, padding: bool) -> bytes:
    """The group of one event: its last chunk has the event's seq."""
    return encode_chunks(chunks, event.originator_version, padding=padding)


async def ui_frames(
    events: AsyncIterator[TurnEvent | None],
    *,
    after: int,
    padding: bool,
    settled: int = 0,
    approvals: bool = False,
) -> AsyncIterator[bytes]:
    """The UI message stream of a followed turn, from its first event: the groups of
    events up to ``after`` only update the state (the client has them), the rest are
    sent; ``: ping`` for each keep-alive; ``data: [DONE]`` after the terminal group, or
    where the turn waits.

    ``settled``: the seq the turn had reached when the stream was asked for. A pause
    from there on ends the stream (the client must answer); an earlier one was answered
    already and the stream goes through it. When the turn still waits after answers
    that reopened the message (some of its calls are answered, not all), a ``finish``
    that says so ends it again (a chunk of no event: it has no ``id:``).

    ``approvals``: the client knows the approval chunks (ai >= 6).
    """
    stream = UiStream(approvals=approvals)
    try:
        async for event in events:
            if event is None:
                yield PING
                continue
            chunks = stream.chunks(event)
            seq = event.originator_version
            if seq > after and chunks:
                yield encode_group(event, chunks, padding=padding)
            if event.TERMINAL:
                yield DONE
                return
            if seq >= settled and stream.waits:
                if stream.message:
                    yield encode_chunks([stream.pause()], None, padding=padding)
                yield DONE
                return
    finally:
        close = getattr(events, "aclose", None)
        if close is not None:
            await close()  # a pause ends the stream, not the turn: stop following it
