"""The conversation list: newest activity first, keyset pages, counts, titles, isolation."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime
from typing import Any

import httpx

from tests.api.test_bad_input import assert_problem
from tests.api.test_openai_turns import llm_server as llm_server  # the fixture
from tests.api.test_turn_rules import post_turn
from tests.api.test_turn_stream import new_conversation
from tests.support.fake_openai import FakeOpenAI
from tests.support.fake_openai import fake_openai as fake_openai  # the fixture
from tests.support.server import Frame, Server, parse_sse

ITEM_FIELDS = {
    "id",
    "title",
    "model",
    "created_at",
    "updated_at",
    "message_count",
    "active_turn_id",
    "attachment_count",
}


def page(
    server: Server,
    limit: int | None = None,
    cursor: str | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    params = {"limit": limit, "cursor": cursor}
    r = httpx.get(
        f"{server.base_url}/v1/conversations",
        params={k: v for k, v in params.items() if v is not None},
        headers=headers or server.headers(),
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    for item in body["items"]:
        assert set(item) == ITEM_FIELDS
    return body


def first_page(server: Server, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The first page (every conversation, when the test has fewer than a page of them)."""
    body = page(server, headers=headers)
    assert body["next_cursor"] is None
    items: list[dict[str, Any]] = body["items"]
    return items


def at(item: dict[str, Any], key: str) -> datetime:
    return datetime.fromisoformat(item[key])


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [item["id"] for item in items]


def item(server: Server, cid: str) -> dict[str, Any]:
    found: dict[str, Any] = next(i for i in first_page(server) if i["id"] == cid)
    return found


def message_count(server: Server, cid: str) -> int:
    r = httpx.get(f"{server.base_url}/v1/conversations/{cid}", headers=server.headers())
    assert r.status_code == 200, r.text
    return len(r.json()["messages"])


def test_pages_list_every_conversation_once_newest_first_while_new_ones_arrive(
    server: Server,
) -> None:
    created = [new_conversation(server, title=f"c{i}") for i in range(10)]

    # Page through with three a page; a new conversation arrives before each next page.
    pages: list[list[dict[str, Any]]] = []
    arrived: list[str] = []
    cursor: str | None = None
    while True:
        body = page(server, limit=3, cursor=cursor)
        pages.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
        arrived.append(new_conversation(server, title=f"new{len(arrived)}"))

    # Each one that existed before the first page, exactly once, newest first; no newcomer.
    assert [len(p) for p in pages] == [3, 3, 3, 1]
    listed = [i for p in pages for i in p]
    assert ids(listed) == created[::-1]
    assert not set(arrived) & set(ids(listed))
    assert [i["title"] for i in listed] == [f"c{n}" for n in range(9, -1, -1)]
    keys = [(at(i, "updated_at"), uuid.UUID(i["id"])) for i in listed]
    assert keys == sorted(keys, reverse=True)
    assert len(set(keys)) == len(keys)
    assert all(i["message_count"] == 0 and i["active_turn_id"] is None for i in listed)
    assert all(i["model"] == "demo" for i in listed)

    # A fresh first page starts with the newcomers.
    assert ids(page(server, limit=3)["items"]) == arrived[::-1][:3]


def test_activity_moves_a_conversation_to_the_top_and_counts_its_messages(
    llm_server: Server, fake_openai: FakeOpenAI
) -> None:
    server = llm_server
    a, b, c = (new_conversation(server) for _ in range(3))
    assert ids(first_page(server)) == [c, b, a]

    # A rename moves a conversation to the top.
    renamed = httpx.patch(
        f"{server.base_url}/v1/conversations/{a}",
        json={"title": "Renamed"},
        headers=server.headers(),
    )
    assert renamed.status_code == 200, renamed.text
    assert ids(first_page(server)) == [a, c, b]
    assert item(server, a)["title"] == "Renamed"

    # So does a finished turn; its first turn titles it.
    frames = post_turn(server, b, {"content": "What is a relay?"})
    assert frames[-1].event == "final"
    titles = [f.data["title"] for f in frames if f.event == "title"]
    assert titles == ["What is a relay?"]
    assert ids(first_page(server)) == [b, a, c]
    listed = item(server, b)
    assert listed["title"] == "What is a relay?"
    assert listed["message_count"] == 2
    assert listed["active_turn_id"] is None
    assert listed["model"] == "local"
    assert at(listed, "updated_at") > at(listed, "created_at")

    # Each mode counts the messages it adds; later turns leave the title alone.
    started = frames[0].data
    user_id, answer_id = started["user_message_id"], started["assistant_message_id"]
    for body, count in (
        ({"mode": "retry", "message_id": answer_id}, 3),
        ({"mode": "edit", "message_id": user_id, "content": "What is a relay, exactly?"}, 5),
        ({"content": "Thanks"}, 7),
    ):
        frames = post_turn(server, b, body)
        assert frames[-1].event == "final"
        assert item(server, b)["message_count"] == count == message_count(server, b)
    leaf = frames[0].data["assistant_message_id"]
    assert post_turn(server, b, {"mode": "continue", "message_id": leaf})[-1].event == "final"
    assert item(server, b)["message_count"] == 7 == message_count(server, b)
    assert item(server, b)["title"] == "What is a relay?"

    # A renamed conversation keeps its name through its first turn.
    assert post_turn(server, a, {"content": "Something else"})[-1].event == "final"
    assert ids(first_page(server)) == [a, b, c]
    assert item(server, a)["title"] == "Renamed"

    # While a turn runs, its conversation is on top and shows the running turn.
    fake_openai.script(chunks=[f"w{i} " for i in range(200)], delay_s=0.05)
    with httpx.stream(
        "POST",
        f"{server.base_url}/v1/conversations/{c}/turns",
        json={"content": "Talk for long"},
        headers=server.headers(),
        timeout=60,
    ) as r:
        assert r.status_code == 200
        stream = (piece for piece in parse_sse(r.iter_lines()) if isinstance(piece, Frame))
        frames = [next(stream)]
        tid = frames[0].data["turn_id"]
        assert ids(first_page(server)) == [c, a, b]
        assert item(server, c)["active_turn_id"] == tid
        cancel = f"{server.base_url}/v1/conversations/{c}/turns/{tid}/cancel"
        assert httpx.post(cancel, headers=server.headers()).status_code == 202
        frames += stream
    assert frames[-1].event == "final"
    assert item(server, c)["active_turn_id"] is None

    # A deleted conversation leaves the list and is gone everywhere.
    base = f"{server.base_url}/v1/conversations/{c}"
    auth = server.headers()
    assert httpx.delete(base, headers=auth).status_code == 204
    assert ids(first_page(server)) == [a, b]
    gone = [
        httpx.get(base, headers=auth),
        httpx.patch(base, json={"title": "Back?"}, headers=auth),
        httpx.delete(base, headers=auth),
        httpx.post(f"{base}/turns", json={"content": "Hello?"}, headers=auth),
        httpx.get(f"{base}/stream", headers=auth),
    ]
    for r in gone:
        assert_problem(r, 404, "conversation_not_found")


def cursor_of(payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def test_bad_pages_are_problems_and_other_users_conversations_never_appear(
    server: Server,
) -> None:
    mine = [new_conversation(server, title=f"mine{i}") for i in range(4)]
    theirs: dict[tuple[str, str], str] = {}
    for tenant, user in (("acme", "mallory"), ("other", "alice")):
        r = httpx.post(
            f"{server.base_url}/v1/conversations",
            json={"title": f"{user}@{tenant}"},
            headers=server.headers(tenant, user),
        )
        assert r.status_code == 201, r.text
        theirs[tenant, user] = r.json()["id"]

    # Each caller sees only their own conversations, on every page.
    seen: list[str] = []
    cursor: str | None = None
    while True:
        body = page(server, limit=1, cursor=cursor)
        seen += ids(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == mine[::-1]
    for (tenant, user), cid in theirs.items():
        assert ids(first_page(server, headers=server.headers(tenant, user))) == [cid]
    assert first_page(server, headers=server.headers("other", "mallory")) == []

    # Cursors are only what the API handed out; limits are 1 to 100.
    url = f"{server.base_url}/v1/conversations"
    auth = server.headers()
    valid = page(server, limit=1)["next_cursor"]
    assert valid is not None
    bad_cursors = [
        "not a cursor!",
        "x",
        valid[:-3],
        cursor_of(["yesterday", str(uuid.uuid4())]),
        cursor_of(["2025-01-01T00:00:00", str(uuid.uuid4())]),  # no time zone
        cursor_of({"updated_at": "2025-01-01T00:00:00Z"}),
        "A" * 201,
    ]
    for bad in bad_cursors:
        r = httpx.get(url, params={"cursor": bad}, headers=auth)
        assert_problem(r, 400, "invalid_request")
    for limit in ("0", "101", "-1", "many"):
        assert_problem(
            httpx.get(url, params={"limit": limit}, headers=auth), 400, "invalid_request"
        )
    assert_problem(httpx.get(url), 401, "unauthorized")


def test_a_first_turn_that_fails_still_titles_the_conversation(
    llm_server: Server, fake_openai: FakeOpenAI
) -> None:
    # The contract: a conversation's first turn sends `title` before its terminal event,
    # and `error` is one. Later turns are never titled, so a missed title is lost for good.
    cid = new_conversation(llm_server)
    fake_openai.script(status=500)
    frames = post_turn(llm_server, cid, {"content": "Explain relays"})
    assert [f.event for f in frames] == ["turn.started", "title", "error"]
    assert frames[1].data["title"] == "Explain relays"
    assert item(llm_server, cid)["title"] == "Explain relays"
