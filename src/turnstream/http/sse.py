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

import msgspec

from turnstream.domain.turn import TurnEvent

_json = msgspec.json.Encoder()

PING = b": ping\n\n"

HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}

PADDED = frozenset({"token", "reasoning"})
"""The frames whose length would reveal the length of the text they carry."""

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
    fields = event.sse_data()
    data = _json.encode({"seq": seq, "turn_id": str(event.originator_id), **fields})
    if padding and event.SSE_NAME in PADDED:
        data = data[:-1] + b',"p":"' + _filler(fields["text"]).encode() + b'"}'
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, event.SSE_NAME.encode(), data)


def _filler(text: str) -> str:
    """Filler that pads ``text``'s JSON length to its room, plus a random extra."""
    size = len(_json.encode(text)) - 2  # as it is in the frame: escaped, without quotes
    room = max(PAD_ROOM, -(-size // PAD_STEP) * PAD_STEP)
    n = room - size + secrets.randbelow(PAD_STEP)
    return secrets.token_urlsafe(n)[:n]
