"""A turn that waits for its client's tool result survives the death of the node that ran
it: the result is posted to another node, which continues the same turn."""

from __future__ import annotations

import httpx
import pytest

from tests.api.test_tools import WEATHER, post_results, start_until_waiting
from tests.api.test_turn_stream import new_conversation, resume
from tests.e2e.conftest import ServerFactory

pytestmark = pytest.mark.e2e


def test_a_waiting_turn_outlives_its_node_and_completes_on_another(
    make_server: ServerFactory,
) -> None:
    fast = {"TURNSTREAM_DEMO_TOKENS": "12", "TURNSTREAM_DEMO_TOKENS_PER_S": "0"}
    first = make_server(**fast)
    cid = new_conversation(first)
    before, waiting = start_until_waiting(first, cid, "Ask get_weather about Oslo", tools=[WEATHER])
    tid = before[0].data["turn_id"]
    first.kill()  # SIGKILL: no goodbye, its lease is free

    other = make_server(**fast)
    view = httpx.get(f"{other.base_url}/v1/conversations/{cid}", headers=other.headers()).json()
    assert view["active_turn"]["waiting"] == {
        "reason": "tool_result",
        "call_ids": waiting.data["call_ids"],
    }
    answered = post_results(
        other, cid, tid, [{"call_id": waiting.data["call_ids"][0], "output": "sleet, 1C"}]
    )
    assert answered.status_code == 202, answered.text
    frames = resume(other, cid, tid, header=0)
    assert [f.id for f in frames] == list(range(1, len(frames) + 1))
    assert [f.data for f in frames[: len(before)]] == [f.data for f in before]
    end = frames[-1]
    assert end.event == "final"
    assert end.data["status"] == "completed"
    assert "sleet, 1C" in end.data["text"]
    assert "error" not in [f.event for f in frames]  # never ended as runner_lost
