"""Client tools in a turn, with the offline demo model: the turn waits, held by no one,
until its client posts the result; stale, repeated and foreign answers change nothing."""

from __future__ import annotations

import json
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from tests.api.conftest import ServerFactory
from tests.api.test_turn_stream import new_conversation, resume, stored_events
from tests.support.server import Frame, Server, parse_sse
from turnstream.domain.turn import Turn

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def until_pause(response: httpx.Response) -> list[Frame]:
    """A turn stream's frames up to its next ``waiting`` or its end (then hang up: the
    turn does not need a reader)."""
    assert response.status_code == 200, response.read()
    frames: list[Frame] = []
    for item in parse_sse(response.iter_lines()):
        if isinstance(item, Frame):
            frames.append(item)
            if item.event in ("waiting", "final", "error"):
                break
    return frames


def start_until_waiting(
    server: Server, cid: str, content: str, **body: Any
) -> tuple[list[Frame], Frame]:
    """Start a turn and read its stream up to its ``waiting`` frame."""
    url = f"{server.base_url}/v1/conversations/{cid}/turns"
    json_body = {"content": content, **body}
    with httpx.stream("POST", url, json=json_body, headers=server.headers(), timeout=60) as r:
        frames = until_pause(r)
    assert frames[-1].event == "waiting", [f.event for f in frames]
    return frames, frames[-1]


def follow_until_pause(server: Server, cid: str, tid: str, after: int) -> list[Frame]:
    """The turn's frames after ``after``, up to its next ``waiting`` or its end."""
    headers = server.headers() | {"Last-Event-ID": str(after)}
    url = f"{server.base_url}/v1/conversations/{cid}/turns/{tid}/events"
    with httpx.stream("GET", url, headers=headers, timeout=60) as r:
        return until_pause(r)


def post_results(
    server: Server, cid: str, tid: str, results: list[dict[str, Any]], user: str = "alice"
) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/v1/conversations/{cid}/turns/{tid}/tool-results",
        json={"results": results},
        headers=server.headers(user=user),
    )


def view(server: Server, cid: str) -> dict[str, Any]:
    r = httpx.get(f"{server.base_url}/v1/conversations/{cid}", headers=server.headers())
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_a_client_tool_call_waits_for_its_result_then_the_turn_goes_on(
    server: Server, database_url: str, db_schema: str
) -> None:
    cid = new_conversation(server)
    frames, waiting = start_until_waiting(
        server, cid, "What does get_weather say for Oslo?", tools=[WEATHER]
    )
    tid = frames[0].data["turn_id"]
    call = next(f for f in frames if f.event == "tool_call")
    assert call.data["name"] == "get_weather"
    assert call.data["kind"] == "client"
    assert isinstance(call.data["arguments"]["city"], str)
    streamed_args = "".join(f.data["text"] for f in frames if f.event == "tool_call.arguments")
    assert streamed_args
    assert call.data["arguments"] == json.loads(streamed_args)
    assert waiting.data["reason"] == "tool_result"
    assert waiting.data["call_ids"] == [call.data["call_id"]]
    active = view(server, cid)["active_turn"]
    assert active["turn_id"] == tid
    assert active["waiting"] == {"reason": "tool_result", "call_ids": [call.data["call_id"]]}

    answered = post_results(
        server, cid, tid, [{"call_id": call.data["call_id"], "output": {"sky": "clear-7C"}}]
    )
    assert answered.status_code == 202, answered.text
    assert answered.json()["continues"] is True

    rest = resume(server, cid, tid, header=waiting.id)
    assert rest[0].event == "tool_result"
    assert rest[0].data["output"] == {"sky": "clear-7C"}
    assert rest[-1].event == "final"
    assert rest[-1].data["status"] == "completed"
    assert "clear-7C" in rest[-1].data["text"]
    whole = resume(server, cid, tid, header=0)
    assert [f.id for f in whole] == list(range(1, len(whole) + 1))
    assert [f.data for f in whole] == [f.data for f in frames + rest]
    assert [f.event for f in whole].count("step") == 2
    stored = stored_events(database_url, db_schema, tid)
    assert [e.originator_version for e in stored] == [f.id for f in whole]
    assert any(isinstance(e, Turn.Waiting) for e in stored)
    assert view(server, cid)["active_turn"] is None

    # The same result again, a call the turn never made, an answer after the end.
    again = post_results(server, cid, tid, [{"call_id": call.data["call_id"], "output": 1}])
    assert again.status_code == 409
    assert again.json()["code"] == "turn_not_waiting"
    assert len(stored_events(database_url, db_schema, tid)) == len(stored)


def test_stale_and_repeated_results_have_their_codes_and_change_nothing(
    server: Server, database_url: str, db_schema: str
) -> None:
    cid = new_conversation(server, tools=[WEATHER])  # the conversation's tools
    frames, waiting = start_until_waiting(server, cid, "Please call get_weather for Bergen.")
    tid = frames[0].data["turn_id"]
    call_id = waiting.data["call_ids"][0]
    before = stored_events(database_url, db_schema, tid)

    unknown = post_results(server, cid, tid, [{"call_id": "call_nope", "output": "x"}])
    assert unknown.status_code == 409
    assert unknown.json()["code"] == "unknown_tool_call"
    mixed = post_results(
        server, cid, tid, [{"call_id": call_id, "output": "x"}, {"call_id": "zz", "output": 1}]
    )
    assert mixed.status_code == 409  # all or nothing: the good result is not kept either
    bad = post_results(server, cid, tid, [{"output": "no id"}])
    assert bad.status_code == 400
    assert bad.json()["code"] == "invalid_request"
    assert stored_events(database_url, db_schema, tid) == before

    # Another user's answer is a 404, exactly as for a conversation that is not there.
    foreign = post_results(server, cid, tid, [{"call_id": call_id, "output": "x"}], user="bob")
    assert foreign.status_code == 404
    assert foreign.json()["code"] == "conversation_not_found"
    approval = httpx.post(
        f"{server.base_url}/v1/conversations/{cid}/turns/{tid}/approvals",
        json={"call_id": call_id, "approved": True},
        headers=server.headers(user="bob"),
    )
    assert approval.status_code == 404
    assert stored_events(database_url, db_schema, tid) == before

    # An approval for a call that asked for none.
    not_asked = httpx.post(
        f"{server.base_url}/v1/conversations/{cid}/turns/{tid}/approvals",
        json={"call_id": call_id, "approved": True},
        headers=server.headers(),
    )
    assert not_asked.status_code == 409
    assert not_asked.json()["code"] == "tool_call_not_pending"

    first = post_results(server, cid, tid, [{"call_id": call_id, "output": "rain"}])
    assert first.status_code == 202
    repeated = post_results(server, cid, tid, [{"call_id": call_id, "output": "rain"}])
    assert repeated.status_code == 409
    assert repeated.json()["code"] in ("tool_call_answered", "turn_not_waiting")
    assert resume(server, cid, tid, header=waiting.id)[-1].event == "final"


def test_cancel_ends_a_waiting_turn_keeping_its_text(server: Server) -> None:
    cid = new_conversation(server)
    frames, waiting = start_until_waiting(server, cid, "Use get_weather on Paris.", tools=[WEATHER])
    tid = frames[0].data["turn_id"]
    r = httpx.post(
        f"{server.base_url}/v1/conversations/{cid}/turns/{tid}/cancel", headers=server.headers()
    )
    assert r.status_code == 202
    end = resume(server, cid, tid, header=waiting.id)
    assert [f.event for f in end] == ["final"]
    assert end[0].data["status"] == "interrupted"
    assert end[0].data["text"] == "".join(f.data["text"] for f in frames if f.event == "token")
    late = post_results(server, cid, tid, [{"call_id": waiting.data["call_ids"][0], "output": 1}])
    assert late.status_code == 409
    assert late.json()["code"] == "turn_not_waiting"
    assert view(server, cid)["active_turn"] is None


def test_a_turn_that_waits_too_long_ends_with_tool_timeout(make_server: ServerFactory) -> None:
    server = make_server(
        TURNSTREAM_DEMO_TOKENS_PER_S="0",
        TURNSTREAM_TOOL_WAIT_S="0.2",
        TURNSTREAM_RUNNER_CHECK_INTERVAL_S="0.2",
    )
    cid = new_conversation(server)
    frames, waiting = start_until_waiting(server, cid, "get_weather for Rome", tools=[WEATHER])
    end = resume(server, cid, frames[0].data["turn_id"], header=waiting.id)
    assert end[-1].event == "error"
    assert end[-1].data["code"] == "tool_timeout"


@pytest.mark.parametrize(
    ("tools", "reason"),
    [
        ([{"type": "function", "function": {"name": "a b"}}], "letters, digits"),
        ([WEATHER, WEATHER], "given twice"),
        (
            [{"type": "function", "function": {"name": "x", "parameters": {"type": 5}}}],
            "not a valid JSON Schema",
        ),
        ([{"type": "function", "function": {"name": "x", "extra": 1}}], "extra"),
    ],
)
def test_malformed_tools_are_refused_before_anything_is_stored(
    server: Server, tools: list[dict[str, Any]], reason: str
) -> None:
    created = httpx.post(
        f"{server.base_url}/v1/conversations", json={"tools": tools}, headers=server.headers()
    )
    assert created.status_code == 400
    assert reason in created.json()["detail"]
    cid = new_conversation(server)
    r = httpx.post(
        f"{server.base_url}/v1/conversations/{cid}/turns",
        json={"content": "hi", "tools": tools},
        headers=server.headers(),
    )
    assert r.status_code == 400, r.text
    assert reason in r.json()["detail"]
    assert view(server, cid)["messages"] == []


def reserved_tokens(database_url: str, schema: str, turn_id: str) -> int:
    with psycopg.connect(database_url) as conn:
        query = sql.SQL(
            "SELECT reserved_tokens FROM {}.turnstream_events_turns WHERE turn_id = %s"
        ).format(sql.Identifier(schema))
        row = conn.execute(query, (turn_id,)).fetchone()
    assert row is not None
    return int(row[0])


def test_with_a_quota_each_further_step_holds_its_own_worth(
    make_server: ServerFactory, database_url: str, db_schema: str
) -> None:
    server = make_server(TURNSTREAM_DEMO_TOKENS_PER_S="0", TURNSTREAM_LIMIT_DAILY_TOKENS="100000")
    cid = new_conversation(server)
    frames, waiting = start_until_waiting(server, cid, "get_weather in Lima", tools=[WEATHER])
    tid = frames[0].data["turn_id"]
    first = reserved_tokens(database_url, db_schema, tid)
    assert first > 0
    call_id = waiting.data["call_ids"][0]
    assert (
        post_results(server, cid, tid, [{"call_id": call_id, "output": "warm"}]).status_code == 202
    )
    assert resume(server, cid, tid, header=waiting.id)[-1].event == "final"
    # The second step read the whole input again (with the call and its result).
    assert reserved_tokens(database_url, db_schema, tid) > 2 * first - 50
