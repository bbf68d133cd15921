"""Every input the OpenAPI document names, driven with hostile values: never a 500.

Hypothesis picks an operation of the served document and one of its inputs (a JSON
body field, the whole body, a path id, a header, a query parameter, or the bearer
token) and gives it a hostile value: NUL, lone surrogates, newlines, subject wildcards,
10,000-deep nesting, huge numbers, other scripts' digits, long text. Everything else of
the request is valid. Every answer must be a 2xx or a 4xx problem+json that the
document lists for that operation; afterwards the relay and every projection must be
at the head of the log, with nothing repaired (the boundary let no poison in) and no
``internal_error`` counted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from tests.support.inprocess import Served, in_process_settings, serving
from tests.support.shared_server import a_place, bearer

EXAMPLES = 1000

HOSTILE_TEXT = [
    "\x00", "a\x00b", "acme\n", "\n", "\r\n", "\t", "*", ">", "a.b", "a.*.>", " ", "",
    "²", "\u0661\u0662", "1e9", "-1", "+1", "0x10", "9" * 40, "1" * 16, "\u202e", "\ufeff",
    "\u0085", "%00", "../../etc", "' OR 1=1 --", "\\", '"', "{}", "null", "🦄", "x" * 5000,
    "x" * 200_001, "\U0010ffff",
]  # fmt: skip


@dataclass(frozen=True)
class Raw:
    """JSON text put into a body as it is (too deep, or not JSON at all)."""

    text: bytes


DEEP = Raw(b"[" * 10_000 + b"]" * 10_000)
HOSTILE_JSON: list[Any] = [
    None, True, False, 0, -1, 10**40, -(10**40), 1.5e308, [], {}, [1, "a"],
    {"a": "\x00"}, ["\x00"], DEEP, Raw(b'{"a":' * 10_000 + b"1" + b"}" * 10_000),
    Raw(b'"\\ud800"'), Raw(b'"\\udfff x"'), Raw(b"[" * 64 + b"]" * 64),
]  # fmt: skip
HOSTILE_BODIES = [
    DEEP, Raw(b"[" * 10_000), Raw(b"{"), Raw(b"\x00"), Raw(b'"\\ud800"'), Raw(b"null"),
    Raw(b"[]"), Raw(b"1e999"), Raw(b"\xff\xfe"), Raw(b'{"content": "a", "content": "\\u0000"}'),
    Raw(b" " * 1000), Raw(b""),
]  # fmt: skip

text_values = st.one_of(st.sampled_from(HOSTILE_TEXT), st.text(max_size=40))
URL_MAX = 4000
"""The longest path id, query value or header sent: uvicorn reads at most 16 KiB of
request line and headers (a longer one is no request it can parse)."""
url_values = text_values.filter(lambda v: len(v) <= URL_MAX)
json_values = st.one_of(text_values, st.sampled_from(HOSTILE_JSON))

VALID_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/v1/conversations"): {},
    ("patch", "/v1/conversations/{cid}"): {"title": "Fine"},
    ("post", "/v1/conversations/{cid}/turns"): {"content": "Hello"},
    ("post", "/v1/guest"): {},
    ("post", "/v1/chat"): {
        "id": "hostile",
        "message": {"id": "m1", "role": "user", "parts": [{"type": "text", "text": "Hi"}]},
    },
}
FRESH = {("delete", "/v1/conversations/{cid}"), ("patch", "/v1/conversations/{cid}")}
FRESH_FILE = {("delete", "/v1/files/{fid}")}
"""Operations that change their conversation get one of their own."""


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    inputs: tuple[tuple[str, str], ...]
    """(where, name): where is path, query, header, body (a field), raw (the body), auth."""
    documented: frozenset[int]
    secured: bool


def operations(doc: dict[str, Any]) -> list[Operation]:
    found = []
    schemas = doc["components"]["schemas"]
    for path, item in doc["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, op in item.items():
            inputs = [(p["in"], p["name"]) for p in op.get("parameters", [])]
            content = op.get("requestBody", {}).get("content", {}).get("application/json")
            if content is not None:
                ref = content["schema"].get("$ref") or content["schema"]["oneOf"][0]["$ref"]
                body = schemas[ref.rsplit("/", 1)[1]]
                inputs += [("body", name) for name in body["properties"]]
                inputs += [("raw", "")]
            secured = op.get("security") is not None
            if secured:
                inputs.append(("auth", ""))
            documented = frozenset(int(s) for s in op["responses"])
            found.append(Operation(method, path, tuple(inputs), documented, secured))
    return found


def header_bytes(value: str) -> bytes:
    """A header value as a client sends it: latin-1 where it can, else UTF-8."""
    raw = value.encode("latin-1") if all(ord(c) < 256 for c in value) else value.encode()
    # A field value is visible characters, spaces and tabs (RFC 9110, 5.5): a control
    # character is no HTTP, and uvicorn's parser refuses it before any app sees it.
    assume(all((b >= 0x20 and b != 0x7F) or b == 0x09 for b in raw))
    assume(raw == raw.strip(b" \t"))  # the parser strips these anyway
    assume(len(raw) <= URL_MAX)
    return raw


def body_bytes(body: dict[str, Any]) -> bytes:
    parts = []
    for key, value in body.items():
        text = value.text if isinstance(value, Raw) else json.dumps(value).encode()
        parts.append(json.dumps(key).encode() + b": " + text)
    return b"{" + b", ".join(parts) + b"}"


@pytest.fixture(scope="module")
def api(database_url: str, nats_url: str) -> Iterator[Served]:
    with a_place(database_url, nats_url) as (schema, target):
        settings = in_process_settings(database_url, schema, target, guest_messages=1000)
        with serving(settings) as served:
            yield served


@dataclass
class World:
    """What valid requests need: the document, a conversation with a turn, a guest."""

    api: Served
    client: httpx.Client
    ops: list[Operation]
    cid: str
    tid: str
    fid: str
    guest_token: str

    def conversation(self) -> str:
        r = self.client.post("/v1/conversations", json={})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def file(self) -> str:
        r = self.client.post("/v1/files", files={"file": ("note.txt", b"A note.", "text/plain")})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])


@pytest.fixture(scope="module")
def world(api: Served) -> Iterator[World]:
    with httpx.Client(base_url=api.base_url, headers=api.headers(), timeout=60) as client:
        doc = client.get("/schema/openapi.json").json()
        r = client.post("/v1/conversations", json={})
        cid = r.json()["id"]
        r = client.post(f"/v1/conversations/{cid}/turns", json={"content": "Hello"})
        assert "event: final" in r.text, r.text
        tid = r.text.split('"turn_id":"', 1)[1].split('"', 1)[0]
        guest = httpx.post(f"{api.base_url}/v1/guest", json={}).json()["token"]
        world = World(api, client, operations(doc), cid, tid, "", guest)
        world.fid = world.file()
        yield world


def hostile_token(world: World, value: str, claim: str) -> str:
    claims = {"sub": "alice", "tenant": "acme", "exp": int(time.time()) + 600, claim: value}
    return jwt.encode(claims, world.api.container.jwt_secret, algorithm="HS256")


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_no_hostile_input_is_a_500(world: World, data: st.DataObject) -> None:
    op = data.draw(st.sampled_from(world.ops), label="operation")
    where, name = data.draw(st.sampled_from(op.inputs), label="input")
    cid = world.conversation() if (op.method, op.path) in FRESH else world.cid
    fid = world.file() if (op.method, op.path) in FRESH_FILE else world.fid
    path_params = {"cid": cid, "tid": world.tid, "fid": fid, "id": "hostile"}
    headers: dict[str, Any] = {}
    if name == "X-Guest-Token" or "claim" in op.path:
        headers["X-Guest-Token"] = world.guest_token
    query: dict[str, str] = {}
    body = dict(VALID_BODIES.get((op.method, op.path), {}))
    content: bytes | None = body_bytes(body) if (op.method, op.path) in VALID_BODIES else None
    if where == "path":
        value = data.draw(url_values, label="value")
        assume(value not in ("", ".", ".."))  # those name another resource (or none)
        path_params[name] = quote(value, safe="")
    elif where == "query":
        query[name] = data.draw(url_values, label="value")
    elif where == "header":
        headers[name] = header_bytes(data.draw(text_values, label="value"))
    elif where == "body":
        body[name] = data.draw(json_values, label="value")
        content = body_bytes(body)
    elif where == "raw":
        content = data.draw(st.sampled_from(HOSTILE_BODIES), label="body").text
    if where == "auth":
        value = data.draw(text_values, label="value")
        how = data.draw(st.sampled_from(["tenant", "sub", "raw"]), label="token")
        token = value if how == "raw" else hostile_token(world, value, how)
        headers["Authorization"] = header_bytes(f"Bearer {token}")
    url = op.path.format(**path_params)
    if content is not None:
        headers["Content-Type"] = "application/json"
    r = world.client.request(op.method, url, params=query, headers=headers, content=content)
    r.read()
    where_what = f"{op.method.upper()} {op.path} {where}:{name}"
    event(f"{where} → {r.status_code}")
    assert r.status_code < 500, (where_what, r.status_code, r.text[:500])
    if r.status_code >= 400:
        assert r.headers["content-type"].startswith("application/problem+json"), where_what
        problem = r.json()
        assert problem["code"], (where_what, problem)
        assert problem["detail"], (where_what, problem)
        assert r.status_code in op.documented, (where_what, r.status_code, problem)


def test_afterwards_the_relay_and_every_projection_are_at_the_head(
    world: World, api: Served
) -> None:
    # Runs after the property test in this module (pytest keeps the file's order).
    api.wait_at_head()
    with api.container.app.connect() as conn:
        assert api.container.app.store.repair_counts(conn) == {}
    metrics = httpx.get(f"{api.base_url}/metrics").text
    assert 'code="internal_error"' not in metrics
    # And the service still works for everyone.
    r = world.client.post("/v1/conversations", json={})
    assert r.status_code == 201, r.text
    r = httpx.get(f"{api.base_url}/v1/conversations", headers=bearer(api.token("acme", "bob")))
    assert r.status_code == 200, r.text
