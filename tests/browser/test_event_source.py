"""A real Chromium's own EventSource follows and resumes turns, with a stream ticket
from a page of an allowed origin; another origin's page can read nothing.

The server ends every GET stream after a second (``TURNSTREAM_SSE_MAX_STREAM_S``) and a
turn takes about four, so the browser reconnects by itself with ``Last-Event-ID``
several times while it follows one.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.api.conftest import ServerFactory
from tests.api.test_turn_stream import new_conversation
from tests.browser.conftest import OpenPage
from tests.support.inprocess import InProcessServer
from tests.support.server import Frame, parse_sse

TOKENS = 60
WAIT_MS = 20_000


@pytest.fixture
def server(make_server: ServerFactory, app_origin: str) -> InProcessServer:
    return make_server(
        TURNSTREAM_CORS_ORIGINS=app_origin,
        TURNSTREAM_SSE_MAX_STREAM_S="1",
        TURNSTREAM_DEMO_TOKENS=str(TOKENS),
        TURNSTREAM_DEMO_TOKENS_PER_S="15",
    )


def start_turn(server: InProcessServer, cid: str) -> str:
    """Start a turn and leave it running (a client that goes away does not stop it);
    returns its id, from the first frame."""
    with httpx.stream(
        "POST",
        f"{server.base_url}/v1/conversations/{cid}/turns",
        json={"content": "Tell me about event sourcing."},
        headers=server.headers(),
        timeout=30,
    ) as r:
        assert r.status_code == 200, r.read()
        first = next(f for f in parse_sse(r.iter_lines()) if isinstance(f, Frame))
    assert first.event == "turn.started"
    return str(first.data["turn_id"])


def follow(opened: OpenPage, name: str, url: str) -> None:
    """Have the page follow ``url`` with its own EventSource, as ``window.runs[name]``."""
    opened.page.evaluate("([name, url]) => { window.runs[name] = follow(url); }", [name, url])


def finished(opened: OpenPage, name: str) -> dict[str, Any]:
    """``window.runs[name]`` once the page has stopped following it."""
    opened.page.wait_for_function(
        "name => window.runs[name].ended !== null", arg=name, timeout=WAIT_MS
    )
    run: dict[str, Any] = opened.page.evaluate("name => window.runs[name]", name)
    return run


def assert_whole_turn(run: dict[str, Any], tid: str) -> None:
    """Every frame of the turn once, in order, though the stream was cut and resumed."""
    frames = run["frames"]
    seqs = [f["data"]["seq"] for f in frames]
    assert seqs == list(range(1, len(frames) + 1)), seqs
    assert [f["id"] for f in frames] == [str(s) for s in seqs]  # what Last-Event-ID resends
    assert {f["data"]["turn_id"] for f in frames} == {tid}
    assert frames[0]["type"] == "turn.started"
    assert run["ended"] == "final"
    assert frames[-1]["type"] == "final"
    tokens = [f["data"]["text"] for f in frames if f["type"] == "token"]
    # A token frame carries one token or several (the writer merges what arrives while
    # it commits, more so on a busy machine): their text is the answer, whatever the count.
    assert 1 < len(tokens) <= TOKENS
    assert "".join(tokens) == frames[-1]["data"]["text"]
    # Each cut was one error while CONNECTING, then one more open: no give-up, no extra.
    assert run["opens"] >= 3, run["opens"]
    assert run["errors"] == [0] * (run["opens"] - 1)


def test_an_allowed_pages_event_source_follows_a_turn_across_reconnects(
    server: InProcessServer, app_origin: str, open_page: Any
) -> None:
    opened: OpenPage = open_page(app_origin)
    cid = new_conversation(server)
    tid = start_turn(server, cid)

    # The page asks for a ticket with its bearer token (a preflighted CORS request) and
    # follows the turn's events and the conversation's active stream with it.
    base = f"{server.base_url}/v1/conversations/{cid}"
    ticket = opened.page.evaluate(
        "([base, token, cid]) => ticket(base, token, cid)",
        [server.base_url, server.token(), cid],
    )
    follow(opened, "events", f"{base}/turns/{tid}/events?ticket={ticket}")
    follow(opened, "active", f"{base}/stream?ticket={ticket}")

    assert_whole_turn(finished(opened, "events"), tid)
    # Also when the turn ends while the browser is between two connections: its
    # reconnect (with Last-Event-ID) gets the rest of the turn that just ended.
    assert_whole_turn(finished(opened, "active"), tid)
    assert not [m for m in opened.console if "CORS" in m], opened.console


def test_another_origins_page_can_neither_get_a_ticket_nor_read_a_stream(
    server: InProcessServer, other_origin: str, open_page: Any
) -> None:
    opened: OpenPage = open_page(other_origin)
    cid = new_conversation(server)
    tid = start_turn(server, cid)

    # The preflight is refused, so the browser never sends the POST: fetch rejects.
    refused = opened.page.evaluate(
        """([base, token, cid]) => tryFetch(`${base}/v1/conversations/${cid}/stream-tickets`,
               {method: "POST", headers: {Authorization: `Bearer ${token}`}})""",
        [server.base_url, server.token(), cid],
    )
    assert refused == {"error": "TypeError", "message": "Failed to fetch"}

    # A valid ticket (as if the page had one) opens the stream on the server, but the
    # answer has no Access-Control-Allow-Origin: the browser fails the EventSource at
    # once, with no open and no frame, and does not reconnect.
    r = httpx.post(
        f"{server.base_url}/v1/conversations/{cid}/stream-tickets", headers=server.headers()
    )
    assert r.status_code == 201, r.text
    ticket = r.json()["ticket"]
    follow(
        opened,
        "events",
        f"{server.base_url}/v1/conversations/{cid}/turns/{tid}/events?ticket={ticket}",
    )
    run = finished(opened, "events")
    assert run == {"opens": 0, "errors": [2], "frames": [], "ended": "closed"}
    assert opened.page.evaluate("window.runs.events") == run

    # Chromium says why on the page's console; nothing else reached the page.
    blocked = [m for m in opened.console if "has been blocked by CORS policy" in m]
    assert len(blocked) == 2, opened.console
    assert "/stream-tickets' from origin" in blocked[0]
    assert "Response to preflight request doesn't pass access control check" in blocked[0]
    assert f"/turns/{tid}/events?ticket=" in blocked[1]
    assert "No 'Access-Control-Allow-Origin' header is present" in blocked[1]


def test_an_allowed_page_reads_the_problem_of_a_refused_request(
    server: InProcessServer, app_origin: str, open_page: Any
) -> None:
    opened: OpenPage = open_page(app_origin)
    cid = new_conversation(server)
    tickets = f"{server.base_url}/v1/conversations/{cid}/stream-tickets"
    read = "([url, token]) => tryFetch(url, {method: 'POST', headers: {Authorization: token}})"

    unauthorized = opened.page.evaluate(read, [tickets, "Bearer not-a-token"])
    assert unauthorized["status"] == 401
    assert unauthorized["type"].startswith("application/problem+json")
    assert unauthorized["body"]["code"] == "unauthorized"

    absent = tickets.replace(cid, "00000000-0000-4000-8000-000000000000")
    not_found = opened.page.evaluate(read, [absent, f"Bearer {server.token()}"])
    assert (not_found["status"], not_found["body"]["code"]) == (404, "conversation_not_found")

    # An EventSource answered 204 (no turn runs) is failed for good, and so is one whose
    # ticket is refused: 401 is not a stream.
    idle = f"{server.base_url}/v1/conversations/{cid}/stream?ticket="
    follow(
        opened,
        "idle",
        idle
        + opened.page.evaluate(
            "([base, token, cid]) => ticket(base, token, cid)",
            [server.base_url, server.token(), cid],
        ),
    )
    assert finished(opened, "idle") == {"opens": 0, "errors": [2], "frames": [], "ended": "closed"}
    follow(opened, "bad", f"{server.base_url}/v1/conversations/{cid}/stream?ticket=forged")
    assert finished(opened, "bad") == {"opens": 0, "errors": [2], "frames": [], "ended": "closed"}
