"""Every bad input: a problem+json with its code, and nothing stored."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx
import pytest

from tests.api.conftest import ServerFactory
from tests.api.test_turn_stream import new_conversation, run_turn
from tests.support.server import Server


def assert_problem(r: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, object] = r.json()
    assert body["status"] == status
    assert body["code"] == code
    for key in ("title", "detail", "type"):
        assert isinstance(body[key], str)
        assert body[key]
    text = r.text.lower()
    for leak in ("traceback", "select ", "psycopg", "eventsourcing"):
        assert leak not in text
    return body


@pytest.fixture
def guarded(make_server: ServerFactory) -> Server:
    return make_server(
        TURNSTREAM_DEMO_TOKENS="5",
        TURNSTREAM_DEMO_TOKENS_PER_S="0",
        TURNSTREAM_LIMIT_MESSAGE_CHARS="1000",
    )


def test_every_bad_turn_request_is_a_problem_and_stores_nothing(
    guarded: Server, event_count: Callable[[], int]
) -> None:
    server = guarded
    cid = new_conversation(server)
    turns = f"{server.base_url}/v1/conversations/{cid}/turns"
    auth = server.headers()
    before = event_count()

    assert_problem(httpx.post(turns, json={"content": "hi"}), 401, "unauthorized")
    assert_problem(
        httpx.post(turns, json={"content": "hi"}, headers={"Authorization": "Bearer nope"}),
        401,
        "unauthorized",
    )
    expired = server.token(ttl_s=-10)
    assert_problem(
        httpx.post(turns, json={"content": "hi"}, headers={"Authorization": f"Bearer {expired}"}),
        401,
        "unauthorized",
    )
    assert_problem(httpx.post(turns, json={"content": ""}, headers=auth), 400, "invalid_request")
    assert_problem(httpx.post(turns, json={"content": "   "}, headers=auth), 400, "invalid_request")
    assert_problem(httpx.post(turns, json={}, headers=auth), 400, "invalid_request")
    assert_problem(
        httpx.post(turns, json={"content": "x" * 1001}, headers=auth), 413, "payload_too_large"
    )
    assert_problem(
        httpx.post(
            turns, content=b"x" * 2_000_000, headers=auth | {"Content-Type": "application/json"}
        ),
        413,
        "payload_too_large",
    )
    missing = f"{server.base_url}/v1/conversations/{uuid.uuid4()}/turns"
    assert_problem(
        httpx.post(missing, json={"content": "hi"}, headers=auth), 404, "conversation_not_found"
    )
    assert_problem(
        httpx.post(turns, json={"content": "hi", "model": "no-such-model"}, headers=auth),
        400,
        "unknown_model",
    )
    assert_problem(
        httpx.post(
            turns, content=b'{"content": "hi"', headers=auth | {"Content-Type": "application/json"}
        ),
        400,
        "invalid_request",
    )
    assert_problem(
        httpx.post(turns, json={"content": "hi", "tenant": "other"}, headers=auth),
        400,
        "invalid_request",
    )
    assert_problem(
        httpx.post(turns, json={"content": "hi", "mode": "shout"}, headers=auth),
        400,
        "invalid_request",
    )
    assert_problem(
        httpx.post(turns, json={"content": "hi", "parent_id": str(uuid.uuid4())}, headers=auth),
        404,
        "message_not_found",
    )
    assert event_count() == before


def test_bad_resume_requests_are_problems(guarded: Server) -> None:
    server = guarded
    cid = new_conversation(server)
    frames = run_turn(server, cid, "hello")
    tid = frames[0].data["turn_id"]
    events = f"{server.base_url}/v1/conversations/{cid}/turns/{tid}/events"
    auth = server.headers()
    for bad in ("abc", "-1", "1.5", "", "9" * 40):
        assert_problem(
            httpx.get(events, headers=auth | {"Last-Event-ID": bad}), 400, "invalid_request"
        )
    assert_problem(httpx.get(events, params={"after": "x"}, headers=auth), 400, "invalid_request")
    assert_problem(httpx.get(events, params={"after": "-3"}, headers=auth), 400, "invalid_request")
    other_turn = f"{server.base_url}/v1/conversations/{cid}/turns/{uuid.uuid4()}/events"
    assert_problem(httpx.get(other_turn, headers=auth), 404, "turn_not_found")
    assert_problem(httpx.get(events), 401, "unauthorized")


def test_another_users_conversation_is_not_found(guarded: Server) -> None:
    server = guarded
    cid = new_conversation(server)
    frames = run_turn(server, cid, "mine")
    tid = frames[0].data["turn_id"]
    base = f"{server.base_url}/v1/conversations/{cid}"
    for tenant, user in (("acme", "mallory"), ("other", "alice")):
        h = server.headers(tenant, user)
        assert_problem(httpx.get(base, headers=h), 404, "conversation_not_found")
        assert_problem(
            httpx.get(f"{base}/turns/{tid}/events", headers=h), 404, "conversation_not_found"
        )
        assert_problem(httpx.get(f"{base}/stream", headers=h), 404, "conversation_not_found")
        assert_problem(
            httpx.post(f"{base}/turns/{tid}/cancel", headers=h), 404, "conversation_not_found"
        )
        assert_problem(
            httpx.post(f"{base}/turns", json={"content": "x"}, headers=h),
            404,
            "conversation_not_found",
        )
        assert_problem(
            httpx.patch(base, json={"title": "x"}, headers=h), 404, "conversation_not_found"
        )
        assert_problem(httpx.delete(base, headers=h), 404, "conversation_not_found")
    assert httpx.get(base, headers=server.headers()).status_code == 200


def test_rename_and_delete(guarded: Server) -> None:
    server = guarded
    cid = new_conversation(server, title="Old")
    base = f"{server.base_url}/v1/conversations/{cid}"
    auth = server.headers()
    r = httpx.patch(base, json={"title": "  New   name "}, headers=auth)
    assert r.status_code == 200
    assert r.json()["title"] == "New name"
    assert_problem(httpx.patch(base, json={"title": "   "}, headers=auth), 400, "invalid_request")
    assert_problem(
        httpx.patch(base, json={"title": "x" * 201}, headers=auth), 400, "invalid_request"
    )
    assert httpx.delete(base, headers=auth).status_code == 204
    assert_problem(httpx.get(base, headers=auth), 404, "conversation_not_found")
    assert_problem(
        httpx.post(f"{base}/turns", json={"content": "x"}, headers=auth),
        404,
        "conversation_not_found",
    )


def test_operations_routes_and_openapi(guarded: Server) -> None:
    server = guarded
    assert httpx.get(f"{server.base_url}/healthz").json()["status"] == "ok"
    ready = httpx.get(f"{server.base_url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["postgres"] == "ok"
    spec = httpx.get(f"{server.base_url}/schema/openapi.json").json()
    assert spec["openapi"].startswith("3.1")
    for path in (
        "/v1/models",
        "/v1/conversations",
        "/v1/conversations/{cid}",
        "/v1/conversations/{cid}/turns",
        "/v1/conversations/{cid}/turns/{tid}/events",
        "/v1/conversations/{cid}/stream",
        "/v1/conversations/{cid}/turns/{tid}/cancel",
    ):
        assert path in spec["paths"], path
    models = httpx.get(f"{server.base_url}/v1/models", headers=server.headers()).json()
    demo = next(m for m in models["data"] if m["id"] == "demo")
    assert demo["provider"] == "demo"
    assert_problem(httpx.get(f"{server.base_url}/v1/models"), 401, "unauthorized")
    assert_problem(
        httpx.get(f"{server.base_url}/v1/nothing-here", headers=server.headers()), 404, "not_found"
    )
