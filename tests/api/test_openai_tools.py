"""Tool calls from a real local OpenAI-format server that streams them as vLLM and OpenAI
do (split names, argument chunks, two parallel calls): the stored events, the SSE frames,
the NATS messages and the tree agree, and the second step sees the results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import ServerFactory
from tests.api.test_relay import assert_exactly_the_store
from tests.api.test_tools import (
    WEATHER,
    follow_until_pause,
    post_results,
    start_until_waiting,
    view,
)
from tests.api.test_turn_stream import new_conversation, resume, stored_events
from tests.conftest import NatsTarget
from tests.support.fake_openai import FakeOpenAI, Script, ToolCallScript
from tests.support.fake_openai import fake_openai as fake_openai  # the fixture
from tests.support.jetstream import wait_relayed
from tests.support.server import Server
from turnstream.bus.envelope import TOPIC_TYPES

TIME = {
    "type": "function",
    "function": {
        "name": "local_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}},
    },
}


@pytest.fixture
def llm_server(make_server: ServerFactory, fake_openai: FakeOpenAI, tmp_path: Path) -> Server:
    models = tmp_path / "models.toml"
    models.write_text(
        f"""
[[models]]
id = "local"
provider = "openai"
base_url = "{fake_openai.base_url}"
default = true
"""
    )
    return make_server(TURNSTREAM_MODELS=str(models), TURNSTREAM_TURN_MAX_STEPS="3")


def two_parallel_calls() -> Script:
    return Script(
        chunks=["Checking", " both."],
        tool_calls=[
            ToolCallScript(
                name="get_weather",
                id="call_w",
                name_chunks=["get_", "weather"],
                arguments_chunks=['{"ci', 'ty": "Os', 'lo"}'],
            ),
            ToolCallScript(
                name="local_time", id="call_t", arguments_chunks=['{"zone"', ': "CET"}']
            ),
        ],
        interleave=True,
        finish_reason="tool_calls",
        usage=(20, 9),
    )


def test_parallel_streamed_calls_are_stored_streamed_relayed_and_answered_alike(
    llm_server: Server,
    fake_openai: FakeOpenAI,
    nats_target: NatsTarget,
    database_url: str,
    db_schema: str,
) -> None:
    fake_openai.queue(two_parallel_calls(), Script(chunks=["Oslo: 3C", ", 14:05."], usage=(40, 6)))
    cid = new_conversation(llm_server)
    frames, waiting = start_until_waiting(
        llm_server, cid, "Weather and time in Oslo?", tools=[WEATHER, TIME]
    )
    tid = frames[0].data["turn_id"]
    calls = {f.data["call_id"]: f.data for f in frames if f.event == "tool_call"}
    assert calls["call_w"]["arguments"] == {"city": "Oslo"}
    assert calls["call_t"]["arguments"] == {"zone": "CET"}
    assert sorted(waiting.data["call_ids"]) == ["call_t", "call_w"]
    for call_id in calls:
        pieces = [
            f.data["text"]
            for f in frames
            if f.event == "tool_call.arguments" and f.data["call_id"] == call_id
        ]
        assert json.loads("".join(pieces)) == calls[call_id]["arguments"]

    results: list[dict[str, Any]] = [
        {"call_id": "call_w", "output": {"temp_c": 3}},
        {"call_id": "call_t", "output": "14:05", "is_error": False},
    ]
    assert post_results(llm_server, cid, tid, results).status_code == 202
    rest = resume(llm_server, cid, tid, header=waiting.id)
    end = rest[-1]
    assert end.event == "final"
    assert end.data["text"] == "Checking both.Oslo: 3C, 14:05."
    assert end.data["usage"] == {"prompt_tokens": 60, "completion_tokens": 15, "estimated": False}
    assert [f.data["step"] for f in frames + rest if f.event == "step"] == [1, 2]

    # The second step saw the calls and their results, in OpenAI's format.
    second = fake_openai.requests[1]["messages"]
    assert second[-3]["role"] == "assistant"
    assert second[-3]["content"] == "Checking both."
    sent = {c["id"]: c["function"] for c in second[-3]["tool_calls"]}
    assert {k: json.loads(f["arguments"]) for k, f in sent.items()} == {
        "call_w": {"city": "Oslo"},
        "call_t": {"zone": "CET"},
    }
    tool_messages = {m["tool_call_id"]: m for m in second[-2:]}
    assert tool_messages == {
        "call_w": {"role": "tool", "tool_call_id": "call_w", "content": '{"temp_c":3}'},
        "call_t": {"role": "tool", "tool_call_id": "call_t", "content": "14:05"},
    }
    assert [t["function"]["name"] for t in fake_openai.requests[0]["tools"]] == [
        "get_weather",
        "local_time",
    ]

    # The store, the SSE frames and the stream on NATS agree, event for event.
    whole = resume(llm_server, cid, tid, header=0)
    stored = stored_events(database_url, db_schema, tid)
    assert [e.originator_version for e in stored] == [f.id for f in whole]
    stored_log, relayed = wait_relayed(
        nats_target.url, nats_target.stream, nats_target.prefix, database_url, db_schema
    )
    assert_exactly_the_store(stored_log, relayed, nats_target.prefix)
    turn_types = [TOPIC_TYPES[e.topic] for e in stored_log if str(e.originator_id) == tid]
    assert turn_types.count("tool_call") == 2
    assert turn_types.count("tool_result") == 2
    assert "waiting" in turn_types

    # The tree: one answer, its parts in order.
    answer = view(llm_server, cid)["messages"][-1]
    assert answer["content"] == "Checking both.Oslo: 3C, 14:05."
    kinds = [p["type"] for p in answer["parts"]]
    assert kinds == ["text", "tool_call", "tool_call", "text"]
    outputs = {p["call_id"]: p["output"] for p in answer["parts"] if p["type"] == "tool_call"}
    assert outputs == {"call_w": {"temp_c": 3}, "call_t": "14:05"}


def test_a_model_that_calls_tools_forever_stops_at_the_step_bound(
    llm_server: Server, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(
        chunks=[],
        tool_calls=[ToolCallScript(name="get_weather", arguments_chunks=['{"city": "Oslo"}'])],
        finish_reason="tool_calls",
    )
    cid = new_conversation(llm_server)
    frames, last = start_until_waiting(llm_server, cid, "Loop.", tools=[WEATHER])
    tid = frames[0].data["turn_id"]
    for step in (1, 2, 3):  # each step calls again; the bound is 3 steps
        result = [{"call_id": last.data["call_ids"][0], "output": f"answer {step}"}]
        assert post_results(llm_server, cid, tid, result).status_code == 202
        last = follow_until_pause(llm_server, cid, tid, last.id or 0)[-1]
        if step < 3:
            assert last.event == "waiting"
    assert last.event == "error"
    assert last.data["code"] == "too_many_steps"
    assert len(fake_openai.requests) == 3
