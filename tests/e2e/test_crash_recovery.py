"""kill -9 mid-answer: after a restart the turn ends with runner_lost, its text kept."""

from __future__ import annotations

import httpx
import pytest

from tests.api.test_turn_stream import new_conversation, resume, run_turn
from tests.e2e.conftest import ServerFactory
from tests.support.server import Frame, parse_sse

pytestmark = pytest.mark.e2e


def test_a_killed_runner_is_ended_with_runner_lost_keeping_the_streamed_text(
    make_server: ServerFactory,
) -> None:
    slow = {"TURNSTREAM_DEMO_TOKENS": "500", "TURNSTREAM_DEMO_TOKENS_PER_S": "25"}
    server = make_server(**slow)
    cid = new_conversation(server)

    # Read part of an answer, then kill the server with SIGKILL mid-stream.
    received: list[Frame] = []
    with httpx.stream(
        "POST",
        f"{server.base_url}/v1/conversations/{cid}/turns",
        json={"content": "a long answer please"},
        headers=server.headers(),
        timeout=60,
    ) as r:
        for item in parse_sse(r.iter_lines()):
            if isinstance(item, Frame):
                received.append(item)
            if sum(f.event == "token" for f in received) >= 5:
                server.kill()
                break
    tid = received[0].data["turn_id"]
    streamed = "".join(f.data["text"] for f in received if f.event == "token")
    assert streamed

    # Restart on the same store; the turn is ended by the service, not by a client.
    restarted = make_server(
        **(slow | {"TURNSTREAM_DEMO_TOKENS": "10", "TURNSTREAM_DEMO_TOKENS_PER_S": "0"})
    )
    frames = resume(restarted, cid, tid, header=0)
    assert [f.id for f in frames] == list(range(1, len(frames) + 1))
    assert [f.data for f in frames[: len(received)]] == [f.data for f in received]
    end = frames[-1]
    assert end.event == "error"
    assert end.data["code"] == "runner_lost"
    assert end.data["text"].startswith(streamed)
    assert end.data["text"] == "".join(f.data["text"] for f in frames if f.event == "token")

    # The conversation is usable again.
    nxt = run_turn(restarted, cid, "try again")
    assert nxt[-1].event == "final"
    assert nxt[-1].data["status"] == "completed"
    view = httpx.get(
        f"{restarted.base_url}/v1/conversations/{cid}", headers=restarted.headers()
    ).json()
    assert [m["status"] for m in view["messages"] if m["role"] == "assistant"] == [
        "failed",
        "complete",
    ]
