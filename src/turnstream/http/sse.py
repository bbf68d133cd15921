"""SSE framing of turn events, exactly as the contract shows them."""

from __future__ import annotations

import msgspec

from turnstream.domain.turn import TurnEvent

_json = msgspec.json.Encoder()

PING = b": ping\n\n"

HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def encode_frame(event: TurnEvent) -> bytes:
    """``id: seq``, ``event: name``, ``data: {seq, turn_id, …}`` and a blank line."""
    seq = event.originator_version
    data = {"seq": seq, "turn_id": str(event.originator_id), **event.sse_data()}
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (
        seq,
        event.SSE_NAME.encode(),
        _json.encode(data),
    )
