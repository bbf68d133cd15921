"""Poison input at the boundary: refused with a clear problem, nothing stored, nobody stopped.

One in-process service for the module (guests on). Each case is a request an attacker
could send; each answer must be a 4xx problem that names what is wrong, the store must
hold nothing new, and the relay and projections must still be at the log's head.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import psycopg
import pytest
from psycopg import sql

from tests.support.inprocess import Served, in_process_settings, serving
from tests.support.shared_server import a_place, bearer


@pytest.fixture(scope="module")
def api(database_url: str, nats_url: str) -> Iterator[Served]:
    with a_place(database_url, nats_url) as (schema, target):
        settings = in_process_settings(
            database_url, schema, target, guest_messages=3, guest_tenants="guests,acme-2"
        )
        with serving(settings) as served:
            yield served


@pytest.fixture(scope="module")
def client(api: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.base_url, headers=api.headers(), timeout=30) as c:
        yield c


def event_count(api: Served) -> int:
    with psycopg.connect(api.container.database_url) as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {}.turnstream_events").format(
                sql.Identifier(api.settings.store.schema)
            )
        ).fetchone()
    assert row is not None
    return int(row[0])


def signed(api: Served, **claims: Any) -> str:
    """A token signed with the service's secret, with whatever claims it is given."""
    body = {"sub": "alice", "tenant": "acme", "exp": int(time.time()) + 600} | claims
    return jwt.encode(body, api.container.jwt_secret, algorithm="HS256")


def assert_problem(r: httpx.Response, status: int, code: str, mentions: str = "") -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body = r.json()
    assert body["code"] == code, body
    assert mentions in body["detail"], body


@pytest.mark.parametrize(
    "claims",
    [
        {"tenant": "acme\n"},
        {"tenant": "acme\r\n"},
        {"tenant": "ac.me"},
        {"tenant": "*"},
        {"tenant": ">"},
        {"tenant": ""},
        {"sub": "alice\x00"},
        {"sub": "ali\nce"},
        {"sub": "\u0085"},
        {"sub": "x" * 256},
    ],
    ids=repr,
)
def test_a_token_whose_tenant_or_user_is_no_id_is_refused(
    api: Served, client: httpx.Client, claims: dict[str, str]
) -> None:
    before = event_count(api)
    headers = bearer(signed(api, **claims))
    assert_problem(client.get("/v1/conversations", headers=headers), 401, "unauthorized")
    r = client.post("/v1/conversations", json={}, headers=headers)
    assert_problem(r, 401, "unauthorized")
    assert event_count(api) == before


@pytest.mark.parametrize("tenant", ["acme\n", "acme\r", " acme", "ac.me", "*", ">", "ä"])
def test_a_guest_of_a_tenant_that_is_no_id_is_refused(
    api: Served, client: httpx.Client, tenant: str
) -> None:
    r = httpx.post(f"{api.base_url}/v1/guest", json={"tenant": tenant}, timeout=30)
    assert_problem(r, 400, "invalid_request", "tenant")


def test_a_guest_of_a_good_tenant_gets_a_token_that_works(api: Served) -> None:
    r = httpx.post(f"{api.base_url}/v1/guest", json={"tenant": "acme-2"}, timeout=30)
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    r = httpx.get(f"{api.base_url}/v1/conversations", headers=bearer(token), timeout=30)
    assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def conversation(client: httpx.Client) -> str:
    r = client.post("/v1/conversations", json={})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


NUL = "hi\x00there"
TURNS = "/v1/conversations/{cid}/turns"


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", TURNS, {"content": NUL}, "content"),
        ("POST", TURNS, {"content": "hi", "request_id": NUL}, "request_id"),
        ("POST", "/v1/conversations", {"title": NUL}, "title"),
        ("POST", "/v1/conversations", {"system_prompt": NUL}, "system_prompt"),
        ("POST", "/v1/conversations", {NUL: 1}, NUL),
        ("PATCH", "/v1/conversations/{cid}", {"title": NUL}, "title"),
        ("POST", "/v1/guest", {"tenant": NUL}, "tenant"),
    ],
)  # fmt: skip
def test_text_with_a_nul_is_refused_and_its_field_named(
    api: Served,
    client: httpx.Client,
    conversation: str,
    method: str,
    path: str,
    body: dict[str, Any],
    field: str,
) -> None:
    before = event_count(api)
    r = client.request(method, path.format(cid=conversation), json=body)
    assert_problem(r, 400, "invalid_request", f"{field}: text cannot contain the NUL")
    assert event_count(api) == before


def test_a_lone_surrogate_is_refused(client: httpx.Client, conversation: str) -> None:
    body = b'{"content": "hi \\ud800"}'
    r = client.post(
        f"/v1/conversations/{conversation}/turns",
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert_problem(r, 400, "invalid_request")


def deep(levels: int, inner: bytes = b"1") -> bytes:
    return b"[" * levels + inner + b"]" * levels


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", TURNS, b'{"content": ' + deep(10_000) + b"}"),
        ("POST", TURNS, deep(10_000)),
        ("POST", TURNS, b'{"x": ' + b'{"a":' * 10_000 + b"1" + b"}" * 10_000 + b"}"),
        ("POST", "/v1/conversations", b'{"title": ' + deep(10_000) + b"}"),
        ("POST", "/v1/conversations", deep(65)),
        ("PATCH", "/v1/conversations/{cid}", b'{"title": ' + deep(10_000) + b"}"),
        ("POST", "/v1/guest", deep(10_000)),
        ("POST", TURNS, b'{"content": ' + b"[" * 10_000),
    ],
    ids=["field", "body", "object", "conversation", "65", "patch", "guest", "unclosed"],
)  # fmt: skip
def test_json_nested_deeper_than_the_limit_is_refused(
    api: Served, client: httpx.Client, conversation: str, method: str, path: str, body: bytes
) -> None:
    before = event_count(api)
    r = client.request(
        method,
        path.format(cid=conversation),
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert_problem(r, 400, "invalid_request", "more than 64 deep")
    assert event_count(api) == before


def test_json_as_deep_as_the_limit_is_read(client: httpx.Client) -> None:
    # 64 levels are fine (the body is the wrong shape, so its own 400 says so).
    r = client.post(
        "/v1/conversations", content=deep(64), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400, r.text
    assert "deep" not in r.json()["detail"]
    # Brackets inside strings do not nest.
    r = client.post("/v1/conversations", json={"system_prompt": '[\\"{' * 10_000})
    assert r.status_code == 201, r.text


@pytest.fixture(scope="module")
def finished_turn(client: httpx.Client, conversation: str) -> str:
    """A finished turn of the module's conversation (its id)."""
    r = client.post(TURNS.format(cid=conversation), json={"content": "hello"})
    assert r.status_code == 200, r.text
    assert "event: final" in r.text, r.text
    return str(r.text.split('"turn_id":"', 1)[1].split('"', 1)[0])


NOT_DECIMAL = ["²", "\u0661", "1e9", "+1", "-1", "0x1", "1_0", "1.0", "1 2", "", "9" * 17, "1e3"]


@pytest.mark.parametrize("value", NOT_DECIMAL, ids=repr)
def test_a_last_event_id_that_is_not_ascii_decimal_digits_is_refused(
    api: Served, client: httpx.Client, conversation: str, finished_turn: str, value: str
) -> None:
    # On the wire as a client may send it: latin-1 bytes where they exist, else UTF-8.
    latin = all(ord(c) < 256 for c in value)
    headers = {"Last-Event-ID": value.encode("latin-1" if latin else "utf-8")}
    before = event_count(api)
    for method, path in (
        ("GET", f"/v1/conversations/{conversation}/turns/{finished_turn}/events"),
        ("GET", f"/v1/conversations/{conversation}/stream"),
        ("POST", TURNS.format(cid=conversation)),
    ):
        body = {"content": "hi"} if method == "POST" else None
        r = client.request(method, path, headers=headers, json=body)
        assert_problem(r, 400, "invalid_request", "Last-Event-ID")
    assert event_count(api) == before


@pytest.mark.parametrize("value", NOT_DECIMAL, ids=repr)
def test_after_and_limit_that_are_not_ascii_decimal_digits_are_refused(
    client: httpx.Client, conversation: str, finished_turn: str, value: str
) -> None:
    events = f"/v1/conversations/{conversation}/turns/{finished_turn}/events"
    assert_problem(client.get(events, params={"after": value}), 400, "invalid_request", "after")
    r = client.get("/v1/conversations", params={"limit": value})
    assert_problem(r, 400, "invalid_request", "limit")


def test_decimal_numbers_are_read(
    client: httpx.Client, conversation: str, finished_turn: str
) -> None:
    events = f"/v1/conversations/{conversation}/turns/{finished_turn}/events"
    r = client.get(events, params={"after": "2"})
    assert r.status_code == 200, r.text
    assert r.text.startswith("id: 3\n"), r.text
    r = client.get(events, headers={"Last-Event-ID": "3"}, params={"after": "1"})
    assert r.text.startswith("id: 4\n"), r.text  # the header wins
    r = client.get("/v1/conversations", params={"limit": "1"})
    assert r.status_code == 200, r.text
    assert len(r.json()["items"]) == 1
