"""A served process stops gracefully: SIGTERM lets running turns end, keeping their text."""

from __future__ import annotations

import pytest

from tests.api.test_turn_rules import first_frame
from tests.api.test_turn_stream import new_conversation, resume
from tests.e2e.conftest import ServerFactory

pytestmark = pytest.mark.e2e


def test_sigterm_ends_running_turns_as_interrupted_and_keeps_their_text(
    make_server: ServerFactory,
) -> None:
    slow = {
        "TURNSTREAM_DEMO_TOKENS": "500",
        "TURNSTREAM_DEMO_TOKENS_PER_S": "20",
        "TURNSTREAM_SHUTDOWN_GRACE_S": "0.5",
    }
    server = make_server(**slow)
    cid = new_conversation(server)
    first = first_frame(server, cid, {"content": "long"})
    server.stop()  # SIGTERM
    assert server.proc is not None
    assert server.proc.returncode == 0, server.log()
    again = make_server(**slow)
    frames = resume(again, cid, first.data["turn_id"], header=0)
    assert frames[-1].event == "final"
    assert frames[-1].data["status"] == "interrupted"
    assert frames[-1].data["finish_reason"] == "shutdown"
    assert frames[-1].data["text"] == "".join(f.data["text"] for f in frames if f.event == "token")
