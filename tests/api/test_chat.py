"""The AI SDK's chat routes over real HTTP: the protocol's headers and chunks, chats by
the client's id, exact resume, stop, refusals (the real AI SDK client is in
``tests/clients``)."""

from __future__ import annotations

import contextlib
import json
import threading
from typing import Any

import httpx

from tests.api.conftest import ServerFactory
from tests.support.server import Server

SLOW = {"TURNSTREAM_DEMO_TOKENS": "30", "TURNSTREAM_DEMO_TOKENS_PER_S": "15"}


def user(text: str, client_id: str = "m1") -> dict[str, Any]:
    return {"id": client_id, "role": "user", "parts": [{"type": "text", "text": text}]}


def chunks_of(body: str) -> list[tuple[int | None, Any]]:
    """(id, data) of every SSE event of a UI message stream; comments dropped."""
    out: list[tuple[int | None, Any]] = []
    for block in body.split("\n\n"):
        lines = [line for line in block.splitlines() if line and not line.startswith(":")]
        if not lines:
            continue
        fields = dict(line.split(": ", 1) for line in lines)
        data = fields["data"]
        out.append(
            (
                int(fields["id"]) if "id" in fields else None,
                data if data == "[DONE]" else json.loads(data),
            )
        )
    return out


def post_chat(server: Server, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/v1/chat", json=body, headers=server.headers() | headers, timeout=60
    )


def stored(server: Server, conversation_id: str) -> dict[str, Any]:
    r = httpx.get(f"{server.base_url}/v1/conversations/{conversation_id}", headers=server.headers())
    assert r.status_code == 200, r.text
    return dict(r.json())


def chat_in_background(server: Server, chat_id: str) -> tuple[threading.Thread, list[str]]:
    """A chat turn read on a thread into a list of text pieces; returns once the first
    text delta has arrived (the turn is running, its answer has begun)."""
    begun = threading.Event()
    whole: list[str] = []

    def run() -> None:
        with httpx.stream(
            "POST",
            f"{server.base_url}/v1/chat",
            json={"id": chat_id, "messages": [user("Hello")]},
            headers=server.headers(),
            timeout=60,
        ) as r:
            for text in r.iter_text():
                whole.append(text)
                if '"text-delta"' in "".join(whole):
                    begun.set()

    thread = threading.Thread(target=run)
    thread.start()
    assert begun.wait(60)
    return thread, whole


def test_a_chat_turn_speaks_the_ui_message_stream_and_is_an_ordinary_turn(
    server: Server,
) -> None:
    r = post_chat(
        server,
        {"id": "chat-1", "messages": [user("Hello")], "trigger": "submit-message", "app": {"x": 1}},
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["x-accel-buffering"] == "no"
    chunks = chunks_of(r.text)
    assert chunks[-1] == (None, "[DONE]")
    start = chunks[0][1]
    assert start["type"] == "start"
    meta = start["messageMetadata"]
    conversation = stored(server, meta["conversation_id"])
    question, answer = conversation["messages"]
    assert question["client_id"] == "m1"
    assert question["content"] == "Hello"
    assert answer["id"] == start["messageId"]
    text = "".join(
        c["delta"] for _, c in chunks if isinstance(c, dict) and c["type"] == "text-delta"
    )
    reasoning = "".join(
        c["delta"] for _, c in chunks if isinstance(c, dict) and c["type"] == "reasoning-delta"
    )
    assert (text, reasoning) == (answer["content"], answer["reasoning"])
    assert {"type": "data-title", "id": "title", "data": {"title": conversation["title"]}} in [
        c for _, c in chunks
    ]
    finish = chunks[-2][1]
    assert finish["type"] == "finish"
    assert finish["messageMetadata"]["status"] == "completed"
    ids = [i for i, _ in chunks if i is not None]
    assert ids == list(range(1, len(ids) + 1))  # one id per turn event, its seq
    # The same chat id is the same conversation; the short form works too.
    r = post_chat(server, {"id": "chat-1", "message": user("More", "m2")})
    assert r.status_code == 200, r.text
    assert chunks_of(r.text)[0][1]["messageMetadata"]["conversation_id"] == meta["conversation_id"]
    messages = stored(server, meta["conversation_id"])["messages"]
    assert [m["client_id"] for m in messages] == ["m1", None, "m2", None]
    assert messages[2]["parent_id"] == answer["id"]


def test_a_chat_id_is_the_callers_own(make_server: ServerFactory) -> None:
    server = make_server(TURNSTREAM_DEMO_TOKENS="4", TURNSTREAM_DEMO_TOKENS_PER_S="0")
    mine = post_chat(server, {"id": "shared", "messages": [user("Hi")]})
    theirs = httpx.post(
        f"{server.base_url}/v1/chat",
        json={"id": "shared", "messages": [user("Hi")]},
        headers=server.headers("acme", "bob"),
        timeout=60,
    )
    other_tenant = httpx.post(
        f"{server.base_url}/v1/chat",
        json={"id": "shared", "messages": [user("Hi")]},
        headers=server.headers("globex", "alice"),
        timeout=60,
    )
    cids = {
        chunks_of(r.text)[0][1]["messageMetadata"]["conversation_id"]
        for r in (mine, theirs, other_tenant)
    }
    assert len(cids) == 3
    # A conversation made through /v1/conversations is a chat by its UUID, for its owner
    # only: for anyone else that id is a new chat of their own.
    r = httpx.post(f"{server.base_url}/v1/conversations", json={}, headers=server.headers())
    cid = r.json()["id"]
    r = post_chat(server, {"id": cid, "messages": [user("Hi")]})
    assert chunks_of(r.text)[0][1]["messageMetadata"]["conversation_id"] == cid
    r = httpx.post(
        f"{server.base_url}/v1/chat",
        json={"id": cid, "messages": [user("Hi")]},
        headers=server.headers("acme", "bob"),
        timeout=60,
    )
    assert chunks_of(r.text)[0][1]["messageMetadata"]["conversation_id"] != cid
    assert len(stored(server, cid)["messages"]) == 2


def test_bad_chat_requests_are_problems(server: Server) -> None:
    cases = [
        ({"id": "a/b", "messages": [user("Hi")]}, 400),
        ({"id": "x" * 129, "messages": [user("Hi")]}, 400),
        ({"id": "c", "messages": []}, 400),
        ({"id": "c", "messages": [{"id": "a", "role": "assistant", "parts": []}]}, 400),
        ({"id": "c", "messages": [user("  ")]}, 400),
        ({"id": "c", "messages": [user("Hi")], "trigger": "nonsense"}, 400),
        ({"id": "c", "trigger": "regenerate-message", "messages": [user("Hi")]}, 400),
        ({"messages": [user("Hi")]}, 400),
        ({"id": "c", "messages": [user("Hi")], "model": "nope"}, 400),
    ]
    for body, status in cases:
        r = post_chat(server, body)
        assert r.status_code == status, (body, r.text)
        assert r.headers["content-type"].startswith("application/problem+json"), body
        assert r.json()["code"], body
    r = httpx.post(f"{server.base_url}/v1/chat", json={"id": "c", "messages": [user("Hi")]})
    assert r.status_code == 401
    assert r.json()["code"] == "unauthorized"


def test_resume_sends_exactly_what_follows_the_last_event_id(
    make_server: ServerFactory,
) -> None:
    server = make_server(**SLOW)
    thread, whole = chat_in_background(server, "resumed")
    # Mid-turn: the running turn from its start, and from a Last-Event-ID.
    with httpx.stream(
        "GET", f"{server.base_url}/v1/chat/resumed/stream", headers=server.headers(), timeout=60
    ) as r:
        assert r.status_code == 200
        from_start = chunks_of(r.read().decode())
    thread.join(60)
    original = chunks_of("".join(whole))
    assert from_start == original
    ids = [i for i, _ in original if i is not None]
    for last in (ids[0], ids[len(ids) // 2], ids[-2]):
        r = httpx.get(
            f"{server.base_url}/v1/chat/resumed/stream",
            headers=server.headers() | {"Last-Event-ID": str(last)},
            timeout=60,
        )
        # The turn has ended: nothing runs, 204, as for a chat that never ran.
        assert r.status_code == 204
    assert (
        httpx.get(f"{server.base_url}/v1/chat/never/stream", headers=server.headers()).status_code
        == 204
    )


def test_resume_mid_turn_after_each_id_is_the_tail_of_the_stream(
    make_server: ServerFactory,
) -> None:
    server = make_server(TURNSTREAM_DEMO_TOKENS="40", TURNSTREAM_DEMO_TOKENS_PER_S="10")
    thread, whole = chat_in_background(server, "tail")
    so_far = "".join(whole)
    so_far = chunks_of(so_far[: so_far.rindex("\n\n")])
    text_start = next(n for n, (_, c) in enumerate(so_far) if c["type"] == "text-start")
    # The last id before the group that closes the reasoning and opens the text.
    before_text = next(i for i, _ in reversed(so_far[:text_start]) if i is not None)
    resumed: dict[int, list[tuple[int | None, Any]]] = {}
    with contextlib.ExitStack() as streams:
        # All three open while the turn runs (each then reads to its end).
        opened = {
            last: streams.enter_context(
                httpx.stream(
                    "GET",
                    f"{server.base_url}/v1/chat/tail/stream",
                    headers=server.headers() | {"Last-Event-ID": str(last)},
                    timeout=60,
                )
            )
            for last in (1, 2, before_text)
        }
        for last, r in opened.items():
            assert r.status_code == 200
            resumed[last] = chunks_of(r.read().decode())
    thread.join(60)
    original = chunks_of("".join(whole))
    for last, tail in resumed.items():
        cut = next(n for n, (i, _) in enumerate(original) if i == last) + 1
        assert tail == original[cut:], last


def test_stop_interrupts_the_running_turn_and_is_idempotent(make_server: ServerFactory) -> None:
    server = make_server(TURNSTREAM_DEMO_TOKENS="400", TURNSTREAM_DEMO_TOKENS_PER_S="20")
    stop = f"{server.base_url}/v1/chat/stopped/stop"
    assert httpx.post(stop, headers=server.headers()).json()["status"] == "idle"
    chunks: list[tuple[int | None, Any]] = []
    with httpx.stream(
        "POST",
        f"{server.base_url}/v1/chat",
        json={"id": "stopped", "messages": [user("Hello")]},
        headers=server.headers(),
        timeout=60,
    ) as r:
        body = ""
        stopped = False
        for text in r.iter_text():
            body += text
            if not stopped and '"text-delta"' in body:
                first = httpx.post(stop, headers=server.headers())
                again = httpx.post(stop, headers=server.headers())
                assert (first.status_code, again.status_code) == (202, 202)
                assert first.json()["status"] == "cancelling"
                stopped = True
        chunks = chunks_of(body)
    assert [c["type"] for _, c in chunks[-3:-1]] == ["message-metadata", "abort"]
    cid = chunks[0][1]["messageMetadata"]["conversation_id"]
    assert stored(server, cid)["messages"][1]["status"] == "interrupted"
    assert httpx.post(stop, headers=server.headers()).json()["status"] == "idle"


def test_a_second_chat_turn_while_one_runs_is_a_409(make_server: ServerFactory) -> None:
    server = make_server(TURNSTREAM_DEMO_TOKENS="400", TURNSTREAM_DEMO_TOKENS_PER_S="20")
    with httpx.stream(
        "POST",
        f"{server.base_url}/v1/chat",
        json={"id": "busy", "messages": [user("Hello")]},
        headers=server.headers(),
        timeout=60,
    ) as r:
        next(r.iter_text())
        second = post_chat(server, {"id": "busy", "messages": [user("Hello"), user("Again", "m2")]})
        assert second.status_code == 409
        assert second.json()["code"] == "turn_in_progress"
        httpx.post(f"{server.base_url}/v1/chat/busy/stop", headers=server.headers())
