"""Stream tickets over real HTTP: a ticket opens its conversation's GET streams in place
of the bearer token, and nothing else; expired, tampered and swapped tokens are 401."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.api.conftest import ServerFactory
from tests.api.test_bad_input import assert_problem
from tests.api.test_turn_stream import frames_of, new_conversation, run_turn
from tests.support.inprocess import InProcessServer
from tests.support.server import Frame, parse_sse
from turnstream.domain.callers import Caller
from turnstream.http.tickets import mint_ticket

TTL_S = 120


@pytest.fixture
def server(make_server: ServerFactory) -> InProcessServer:
    return make_server(
        TURNSTREAM_DEMO_TOKENS="30",
        TURNSTREAM_DEMO_TOKENS_PER_S="30",
        TURNSTREAM_STREAM_TICKET_TTL_S=str(TTL_S),
    )


def ask_ticket(server: InProcessServer, cid: str, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/v1/conversations/{cid}/stream-tickets",
        headers=headers or server.headers(),
    )


def ticket_for(server: InProcessServer, cid: str) -> str:
    r = ask_ticket(server, cid)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    assert set(body) == {"ticket", "expires_at"}
    expires = datetime.fromisoformat(body["expires_at"]).timestamp()
    assert abs(expires - (time.time() + TTL_S)) < 30
    return str(body["ticket"])


def get(
    server: InProcessServer, path: str, ticket: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    url = f"{server.base_url}/v1/conversations/{path}"
    return httpx.get(url, params={"ticket": ticket}, headers=headers)


def test_a_ticket_opens_its_conversations_events_and_active_stream(
    server: InProcessServer,
) -> None:
    # A finished turn's events, by ticket alone, are the frames the POST streamed.
    cid = new_conversation(server)
    frames = run_turn(server, cid)
    tid = frames[0].data["turn_id"]
    ticket = ticket_for(server, cid)
    url = f"{server.base_url}/v1/conversations/{cid}"
    with httpx.stream("GET", f"{url}/turns/{tid}/events", params={"ticket": ticket}) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        assert [(f.id, f.data) for f in frames_of(r)] == [(f.id, f.data) for f in frames]
    # after= and Last-Event-ID work with a ticket as with a token.
    after = {"ticket": ticket, "after": "3"}
    with httpx.stream("GET", f"{url}/turns/{tid}/events", params=after) as r:
        assert [f.id for f in frames_of(r)] == [f.id for f in frames[3:]]

    # The active stream: 204 while idle, then the running turn's frames.
    assert get(server, f"{cid}/stream", ticket).status_code == 204
    started = threading.Event()
    posted: list[Frame] = []

    def post() -> None:
        with httpx.stream(
            "POST", f"{url}/turns", json={"content": "hi"}, headers=server.headers(), timeout=60
        ) as r:
            for item in parse_sse(r.iter_lines()):
                if isinstance(item, Frame):
                    posted.append(item)
                    started.set()

    thread = threading.Thread(target=post)
    thread.start()
    assert started.wait(30)
    with httpx.stream(
        "GET", f"{url}/stream", params={"ticket": ticket}, headers={"Last-Event-ID": "1"}
    ) as r:
        assert r.status_code == 200, r.read()
        live = frames_of(r)
    thread.join(60)
    assert [f.id for f in live] == [f.id for f in posted[1:]]
    assert live[-1].event == "final"


def test_a_ticket_opens_nothing_but_its_conversations_streams(
    server: InProcessServer,
) -> None:
    a, b = new_conversation(server), new_conversation(server)
    bob = {"Authorization": f"Bearer {server.token('acme', 'bob')}"}
    bobs = httpx.post(f"{server.base_url}/v1/conversations", json={}, headers=bob).json()["id"]
    tid = run_turn(server, b)[0].data["turn_id"]
    ticket = ticket_for(server, a)

    # Another conversation's streams, the caller's own or another user's: as if absent.
    for path in (f"{b}/stream", f"{b}/turns/{tid}/events", f"{bobs}/stream"):
        assert_problem(get(server, path, ticket), 404, "conversation_not_found")
    absent = get(server, f"{uuid.uuid4()}/stream", ticket)
    assert assert_problem(absent, 404, "conversation_not_found")["detail"]

    # Every other route takes no ticket: 401 as with no token at all.
    base = f"{server.base_url}/v1"
    params = {"ticket": ticket}
    for method, path, body in (
        ("GET", f"/conversations/{a}", None),
        ("GET", "/conversations", None),
        ("GET", "/usage", None),
        ("POST", f"/conversations/{a}/turns", {"content": "hi"}),
        ("POST", f"/conversations/{a}/turns/{tid}/cancel", None),
        ("POST", f"/conversations/{a}/stream-tickets", None),
        ("PATCH", f"/conversations/{a}", {"title": "mine now"}),
        ("DELETE", f"/conversations/{a}", None),
    ):
        r = httpx.request(method, base + path, params=params, json=body)
        assert_problem(r, 401, "unauthorized")
        assert "Authorization" in str(r.json()["detail"]), (method, path)
    assert httpx.get(f"{base}/conversations/{a}", headers=server.headers()).status_code == 200

    # Tickets are the conversation's readers' only: bob gets none for alice's.
    assert_problem(ask_ticket(server, a, **bob), 404, "conversation_not_found")
    assert_problem(ask_ticket(server, str(uuid.uuid4())), 404, "conversation_not_found")
    assert_problem(ask_ticket(server, a, Authorization=f"Bearer {ticket}"), 401, "unauthorized")


def test_expired_tampered_and_swapped_tickets_are_unauthorized(
    server: InProcessServer,
) -> None:
    cid = new_conversation(server)
    ticket = ticket_for(server, cid)
    alice = Caller(user_id="alice", tenant="acme")

    expired, _ = mint_ticket(server.secret, alice, uuid.UUID(cid), ttl_s=-5)
    body = assert_problem(get(server, f"{cid}/stream", expired), 401, "unauthorized")
    assert "expired" in str(body["detail"])

    head, payload, signature = ticket.split(".")
    flipped = "A" if signature[0] != "A" else "B"
    tampered = [
        f"{head}.{payload}.{flipped}{signature[1:]}",
        f"{head}.{payload[:-2]}{'x' if payload[-2] != 'x' else 'y'}{payload[-1]}.{signature}",
        f"{head}.{payload}.",
        "not-a-ticket",
    ]
    for bad in tampered:
        assert_problem(get(server, f"{cid}/stream", bad), 401, "unauthorized")

    # A bearer token is no ticket, and a ticket no bearer token.
    bearer = server.token("acme", "alice")
    assert_problem(get(server, f"{cid}/stream", bearer), 401, "unauthorized")
    as_bearer = {"Authorization": f"Bearer {ticket}"}
    url = f"{server.base_url}/v1/conversations/{cid}"
    assert_problem(httpx.get(f"{url}/stream", headers=as_bearer), 401, "unauthorized")
    assert_problem(httpx.get(url, headers=as_bearer), 401, "unauthorized")

    # The header, when sent, is what counts: a bad one is 401 even beside a good ticket,
    # and a good one opens the stream whatever ticket comes with it.
    assert_problem(get(server, f"{cid}/stream", ticket, as_bearer), 401, "unauthorized")
    other = ticket_for(server, new_conversation(server))
    assert get(server, f"{cid}/stream", other, server.headers()).status_code == 204
    assert get(server, f"{cid}/stream", ticket).status_code == 204


def test_the_openapi_documents_the_ticket_on_the_stream_routes_only(
    server: InProcessServer,
) -> None:
    paths = httpx.get(f"{server.base_url}/schema/openapi.json").json()["paths"]
    with_ticket = {
        (method, path)
        for path, item in paths.items()
        for method, op in item.items()
        if any(p["name"] == "ticket" and p["in"] == "query" for p in op.get("parameters", []))
    }
    assert with_ticket == {
        ("get", "/v1/conversations/{cid}/turns/{tid}/events"),
        ("get", "/v1/conversations/{cid}/stream"),
        ("get", "/v1/chat/{chat_id}/stream"),
    }
    created = paths["/v1/conversations/{cid}/stream-tickets"]["post"]["responses"]
    assert {"201", "401", "404"} <= set(created)


def test_a_ticket_opens_its_chats_stream_and_no_other_chat(server: InProcessServer) -> None:
    r = httpx.post(
        f"{server.base_url}/v1/chat",
        json={"id": "ticketed", "message": {"id": "m1", "role": "user", "parts": []}},
        headers=server.headers(),
    )
    assert r.status_code == 400  # no text: nothing made
    first = threading.Event()
    body: list[str] = []

    def chat() -> None:
        message = {"id": "m1", "role": "user", "parts": [{"type": "text", "text": "Hi"}]}
        with httpx.stream(
            "POST",
            f"{server.base_url}/v1/chat",
            json={"id": "ticketed", "message": message},
            headers=server.headers(),
            timeout=60,
        ) as response:
            for text in response.iter_text():
                body.append(text)
                first.set()

    thread = threading.Thread(target=chat)
    thread.start()
    assert first.wait(60)
    start = next(line for line in "".join(body).splitlines() if '"type":"start"' in line)
    cid = start.split('"conversation_id":"')[1].split('"')[0]
    ticket = ticket_for(server, cid)
    url = f"{server.base_url}/v1/chat/ticketed/stream"
    with httpx.stream("GET", url, params={"ticket": ticket}, timeout=60) as response:
        assert response.status_code == 200
        streamed = response.read().decode()
    thread.join(60)
    assert streamed.rstrip().endswith("data: [DONE]")
    # Another chat of the same user, existing or not, is not the ticket's.
    other = f"{server.base_url}/v1/chat/{new_conversation(server)}/stream"
    assert_problem(httpx.get(other, params={"ticket": ticket}), 404, "conversation_not_found")
    never = f"{server.base_url}/v1/chat/never-made/stream"
    assert_problem(httpx.get(never, params={"ticket": ticket}), 404, "conversation_not_found")
    # Nothing but the stream takes it.
    stop = f"{server.base_url}/v1/chat/ticketed/stop"
    assert_problem(httpx.post(stop, params={"ticket": ticket}), 401, "unauthorized")
