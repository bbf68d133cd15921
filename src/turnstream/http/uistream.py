"""The AI SDK's UI message stream (protocol v1) over a followed turn.

What ``DefaultChatTransport`` in the npm package ``ai`` (5.x to 7.x) reads: SSE
events whose data is one JSON chunk each. A turn event becomes a group of chunks: the
structural ones the client's parser needs first (``start-step``, ``text-start``,
``reasoning-end`` …), then the one that carries the event. The chunk fields are exactly
those of ai 5.0.0's strict parser, which refuses any field or chunk type it does not
know, so the side-channel filler of text and reasoning deltas travels in an SSE
comment line (every SSE parser drops comments), never in the JSON.

Only a group's last chunk has an ``id:`` line, the turn's seq: whatever ``Last-Event-ID``
a client sends, it has the whole group of that seq, so resuming after it is exact. The
structural chunks depend on what came before (is a text part open?), so a resumed
stream folds the turn from its first event and sends only what follows the client's
seq (see :func:`ui_frames`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec

from turnstream.domain.turn import Turn, TurnEvent
from turnstream.http.sse import PING, filler

HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
    "X-Vercel-AI-UI-Message-Stream": "v1",
}

DONE = b"data: [DONE]\n\n"

ABORT = {"type": "abort"}

_json = msgspec.json.Encoder()


class UiStream:
    """Turn events to UI message chunks, in order; it remembers which parts are open."""

    def __init__(self) -> None:
        self.text: str | None = None
        """The open text part's id (None: none is open)."""
        self.reasoning: str | None = None

    def chunks(self, event: TurnEvent) -> list[dict[str, Any]]:
        """The chunks of one event, the one carrying it last."""
        seq = event.originator_version
        if isinstance(event, Turn.Started):
            started = {
                "turn_id": str(event.originator_id),
                "conversation_id": str(event.conversation_id),
                "model": event.model,
            }
            start = {"type": "start", "messageId": str(event.assistant_message_id)}
            return [start | {"messageMetadata": started}, {"type": "start-step"}]
        if isinstance(event, Turn.ReasoningAppended):
            out = self._close_text()
            if self.reasoning is None:
                self.reasoning = f"reasoning-{seq}"
                out.append({"type": "reasoning-start", "id": self.reasoning})
            return [*out, {"type": "reasoning-delta", "id": self.reasoning, "delta": event.text}]
        if isinstance(event, Turn.TokensAppended):
            out = self._close_reasoning()
            if self.text is None:
                self.text = f"text-{seq}"
                out.append({"type": "text-start", "id": self.text})
            return [*out, {"type": "text-delta", "id": self.text, "delta": event.text}]
        if isinstance(event, Turn.Titled):
            return [{"type": "data-title", "id": "title", "data": {"title": event.title}}]
        out = [*self._close_reasoning(), *self._close_text(), {"type": "finish-step"}]
        meta: dict[str, Any] = {"turn_id": str(event.originator_id)}  # merged into start's
        if isinstance(event, Turn.Finished):
            meta |= {"status": event.status, "finish_reason": event.finish_reason}
            meta["usage"] = msgspec.to_builtins(event.usage)
            if event.status == "interrupted":
                # The client's own stop ends a stream with ``abort``; a cancel is one.
                return [*out, {"type": "message-metadata", "messageMetadata": meta}, ABORT]
            return [*out, {"type": "finish", "messageMetadata": meta}]
        assert isinstance(event, Turn.Failed)
        meta |= {"status": "failed", "code": event.code}
        return [
            *out,
            {"type": "message-metadata", "messageMetadata": meta},
            {"type": "error", "errorText": f"{event.code}: {event.message}"},
        ]

    def _close_text(self) -> list[dict[str, Any]]:
        if self.text is None:
            return []
        closed, self.text = self.text, None
        return [{"type": "text-end", "id": closed}]

    def _close_reasoning(self) -> list[dict[str, Any]]:
        if self.reasoning is None:
            return []
        closed, self.reasoning = self.reasoning, None
        return [{"type": "reasoning-end", "id": closed}]


def encode_group(event: TurnEvent, chunks: list[dict[str, Any]], *, padding: bool) -> bytes:
    """One SSE event per chunk; the last has ``id: <seq>``, a delta a filler comment."""
    out = bytearray()
    last = len(chunks) - 1
    for n, chunk in enumerate(chunks):
        if padding and "delta" in chunk:
            out += b": " + filler(chunk["delta"]).encode() + b"\n"
        if n == last:
            out += b"id: %d\n" % event.originator_version
        out += b"data: " + _json.encode(chunk) + b"\n\n"
    return bytes(out)


async def ui_frames(
    events: AsyncIterator[TurnEvent | None], *, after: int, padding: bool
) -> AsyncIterator[bytes]:
    """The UI message stream of a followed turn, from its first event: the groups of
    events up to ``after`` only update the state (the client has them), the rest are
    sent; ``: ping`` for each keep-alive, ``data: [DONE]`` after the terminal group."""
    stream = UiStream()
    async for event in events:
        if event is None:
            yield PING
            continue
        chunks = stream.chunks(event)
        if event.originator_version > after:
            yield encode_group(event, chunks, padding=padding)
        if event.TERMINAL:
            yield DONE
