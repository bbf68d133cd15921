"""The ``p`` filler over real HTTP: frame sizes stop tracking token lengths, text unchanged."""

from __future__ import annotations

import concurrent.futures
import json
import statistics

import httpx

from tests.api.conftest import ServerFactory
from tests.api.test_turn_stream import new_conversation
from tests.support.server import Frame, Server, parse_sse
from turnstream.http.sse import PAD_ROOM

FRAMES = 10_000
"""Token-sized frames to measure: enough for the correlation to mean something."""
TURNS = 16
"""Turns run at once in a round; rounds go on until FRAMES are in."""
DEMO = {
    "TURNSTREAM_DEMO_TOKENS": "800",
    # Fast; under load the writer merges a few tokens into one frame, as in production.
    "TURNSTREAM_DEMO_TOKENS_PER_S": "200",
}
TEXT_FRAMES = ("token", "reasoning")


def raw_turn(server: Server, content: str) -> list[tuple[Frame, int]]:
    """A turn's frames, each with its length in bytes as it came over the wire."""
    cid = new_conversation(server)
    with httpx.stream(
        "POST",
        f"{server.base_url}/v1/conversations/{cid}/turns",
        json={"content": content},
        headers=server.headers(),
        timeout=120,
    ) as r:
        assert r.status_code == 200, r.read()
        frames = [f for f in parse_sse(r.iter_lines()) if isinstance(f, Frame)]
    # The blank line that ends a frame is two bytes more than the lines parse_sse joins.
    return [(f, len(f.raw.encode()) + 2) for f in frames]


def token_sized(frame: Frame) -> bool:
    """Whether the frame's text fits the room every padded frame has (as JSON, escaped).

    The writer merges the tokens a turn streamed while it committed the last batch: a
    few as a rule, but a stall of a busy test machine can merge dozens. Such a frame shows
    its length to the step, by design, and a handful of them would decide Pearson's r
    alone; the claim measured is about the frames of a token, or a few.
    """
    return len(json.dumps(frame.data["text"], ensure_ascii=False).encode()) - 2 <= PAD_ROOM


def text_frames(server: Server) -> list[tuple[Frame, int]]:
    """Token and reasoning frames of turns run several at a time, checked turn by turn."""
    out: list[tuple[Frame, int]] = []
    with concurrent.futures.ThreadPoolExecutor(TURNS) as pool:
        for round_ in range(5):
            if sum(token_sized(f) for f, _ in out) >= FRAMES:
                break
            contents = [f"Question {round_}.{i}?" for i in range(TURNS)]
            for frames in pool.map(lambda c: raw_turn(server, c), contents):
                final = frames[-1][0]
                assert final.event == "final"
                assert final.data["status"] == "completed"
                # The filler changes nothing the client reads.
                for kind, field in (("token", "text"), ("reasoning", "reasoning")):
                    texts = [f.data["text"] for f, _ in frames if f.event == kind]
                    assert "".join(texts) == final.data[field]
                assert all(f.padding is None for f, _ in frames if f.event not in TEXT_FRAMES)
                out += [(f, size) for f, size in frames if f.event in TEXT_FRAMES]
    return out


def correlation(frames: list[tuple[Frame, int]]) -> float:
    """Pearson's r of text length (characters) and frame length (bytes)."""
    return statistics.correlation([len(f.data["text"]) for f, _ in frames], [s for _, s in frames])


def test_with_padding_frame_sizes_do_not_track_token_lengths(make_server: ServerFactory) -> None:
    server = make_server(**DEMO)
    frames = text_frames(server)
    # Every text frame has its filler; it may be empty, when the text fills the frame's
    # room exactly and the random extra is 0 (one frame in 16 of those).
    assert all(f.padding is not None for f, _ in frames)
    sized = [(f, size) for f, size in frames if token_sized(f)]
    assert len(sized) >= FRAMES
    r = correlation(sized)
    assert abs(r) < 0.1, r


def test_without_padding_frame_sizes_track_token_lengths(make_server: ServerFactory) -> None:
    server = make_server(TURNSTREAM_SSE_PADDING="0", **DEMO)
    frames = text_frames(server)
    keys = {"seq", "turn_id", "text"}
    assert all(json.loads(f.raw.partition("data: ")[2]).keys() == keys for f, _ in frames)
    sized = [(f, size) for f, size in frames if token_sized(f)]
    assert len(sized) >= FRAMES
    r = correlation(sized)
    assert r > 0.5, r
