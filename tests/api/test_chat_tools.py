"""Client tools through the AI SDK's chat routes over real HTTP, with the offline demo
model: the stream ends where the turn waits, the client's re-post of its messages
answers the call and continues the same turn, and a post that answers nothing is 409
(the real AI SDK clients are in ``tests/clients``)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.api.conftest import ServerFactory
from tests.api.test_chat import chunks_of, post_chat, user
from tests.api.test_cors import APP, listed, preflight
from tests.api.test_tools import WEATHER
from tests.api.test_turn_stream import resume, stored_events
from tests.support.server import Server

ASK = "What does get_weather say for Oslo?"


def chat_id() -> str:
    return f"tools-{uuid.uuid4().hex[:10]}"


def ask(server: Server, cid: str) -> list[tuple[int | None, Any]]:
    """The first request of a tool turn: the app's tools in the body, the demo calls."""
    r = post_chat(server, {"id": cid, "messages": [user(ASK)], "tools": [WEATHER]})
    assert r.status_code == 200, r.text
    return chunks_of(r.text)


def answered(message_id: str, call_id: str, **state: Any) -> dict[str, Any]:
    """The assistant message as the AI SDK re-posts it after addToolResult."""
    part = {"type": "tool-get_weather", "toolCallId": call_id, "input": {"city": "Oslo"}}
    part |= state or {"state": "output-available", "output": {"sky": "clear-7C"}}
    return {
        "id": message_id,
        "role": "assistant",
        "metadata": {"status": "waiting"},
        "parts": [{"type": "step-start"}, {"type": "reasoning", "text": "…"}, part],
    }


def test_a_tool_call_ends_the_stream_and_the_answer_continues_the_same_turn(
    server: Server, database_url: str, db_schema: str
) -> None:
    cid = chat_id()
    first = ask(server, cid)
    assert first[-1] == (None, "[DONE]")
    start = first[0][1]
    tid, message_id = start["messageMetadata"]["turn_id"], start["messageId"]
    call = next(c for _, c in first if c["type"] == "tool-input-available")
    assert call["toolName"] == "get_weather"
    assert "dynamic" not in call  # the client runs it
    seq, pause = first[-2]
    assert pause["messageMetadata"]["status"] == "waiting"
    assert pause["messageMetadata"]["waiting"]["call_ids"] == [call["toolCallId"]]

    # The chat's stream (a reload) ends at the pause too, and resumes exactly.
    r = httpx.get(f"{server.base_url}/v1/chat/{cid}/stream", headers=server.headers(), timeout=60)
    assert r.status_code == 200
    assert chunks_of(r.text) == first
    tail = httpx.get(
        f"{server.base_url}/v1/chat/{cid}/stream",
        headers=server.headers() | {"Last-Event-ID": str(first[-4][0])},
        timeout=60,
    )
    assert chunks_of(tail.text) == first[-3:]

    body = {
        "id": cid,
        "messages": [user(ASK), answered(message_id, call["toolCallId"])],
        "trigger": "submit-message",
        "messageId": message_id,
    }
    second = post_chat(server, body)
    assert second.status_code == 200, second.text
    rest = chunks_of(second.text)
    assert rest.pop() == (None, "[DONE]")
    assert rest[0][1]["messageId"] == message_id
    assert rest[1] == (
        seq + 1,
        {
            "type": "tool-output-available",
            "toolCallId": call["toolCallId"],
            "output": {"sky": "clear-7C"},
        },
    )
    assert rest[2][1] == {"type": "start-step"}
    assert rest[-1][1]["messageMetadata"]["status"] == "completed"
    text = "".join(c["delta"] for _, c in rest if c["type"] == "text-delta")
    assert "clear-7C" in text

    # One turn, its seq gapless over both streams.
    frames = resume(server, start["messageMetadata"]["conversation_id"], tid, header=0)
    assert [f.id for f in frames] == list(range(1, len(frames) + 1))
    assert [f.id for f in frames] == [e.originator_version for e in stored_events(
        database_url, db_schema, tid
    )]  # fmt: skip
    assert frames[-1].event == "final"
    assert {f.data["turn_id"] for f in frames} == {tid}

    # The same answer again: the turn waits no more.
    again = post_chat(server, body)
    assert again.status_code == 409, again.text
    assert again.json()["code"] == "turn_not_waiting"


def test_a_post_that_answers_nothing_is_409_and_never_a_second_turn(
    server: Server, database_url: str, db_schema: str
) -> None:
    cid = chat_id()
    first = ask(server, cid)
    start = first[0][1]
    tid, message_id = start["messageMetadata"]["turn_id"], start["messageId"]
    call_id = next(c for _, c in first if c["type"] == "tool-input-available")["toolCallId"]
    before = stored_events(database_url, db_schema, tid)

    unanswered = answered(message_id, call_id, state="input-available")
    r = post_chat(server, {"id": cid, "messages": [user(ASK), unanswered]})
    assert r.status_code == 409, r.text
    assert r.json()["code"] == "tool_call_not_pending"
    r = post_chat(server, {"id": cid, "messages": [user(ASK), unanswered, user("And Bergen?")]})
    assert r.status_code == 409
    assert r.json()["code"] == "turn_in_progress"
    other = post_chat(server, {"id": chat_id(), "messages": [answered(message_id, call_id)]})
    assert other.status_code == 409
    assert other.json()["code"] == "turn_not_waiting"
    assert stored_events(database_url, db_schema, tid) == before
    schema = httpx.get(f"{server.base_url}/schema/openapi.json").json()
    assert "409" in schema["paths"]["/v1/chat"]["post"]["responses"]  # as the document says

    # An error result is an answer too.
    failed = answered(message_id, call_id, state="output-error", errorText="no network")
    r = post_chat(server, {"id": cid, "messages": [user(ASK), failed]})
    assert r.status_code == 200, r.text
    error = next(c for _, c in chunks_of(r.text)[:-1] if c["type"] == "tool-output-error")
    assert error == {"type": "tool-output-error", "toolCallId": call_id, "errorText": "no network"}


def test_a_page_may_say_its_client_knows_approvals(make_server: ServerFactory) -> None:
    server = make_server(TURNSTREAM_CORS_ORIGINS=APP)
    r = preflight(server, APP, headers="Authorization, X-Turnstream-Tool-Approvals")
    assert r.status_code == 204, r.text
    assert "x-turnstream-tool-approvals" in listed(r, "access-control-allow-headers")
