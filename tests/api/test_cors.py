"""CORS over real HTTP: off by default, preflights from the configured origins only, and
every answer to an allowed origin (its problem+json errors too) readable by the page."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.api.conftest import ServerFactory
from tests.api.test_bad_input import assert_problem
from tests.api.test_turn_stream import new_conversation, run_turn
from tests.support.server import Server

APP = "https://chat.example.com"
OTHER = "https://evil.example.net"


def preflight(
    server: Server, origin: str, method: str = "POST", headers: str = ""
) -> httpx.Response:
    request_headers = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers:
        request_headers["Access-Control-Request-Headers"] = headers
    return httpx.options(f"{server.base_url}/v1/conversations", headers=request_headers)


def listed(response: httpx.Response, header: str) -> set[str]:
    return {v.strip().lower() for v in response.headers.get(header, "").split(",") if v.strip()}


@pytest.fixture
def cors_server(make_server: ServerFactory) -> Server:
    return make_server(
        TURNSTREAM_CORS_ORIGINS=f"{APP}, https://admin.example.com/",
        TURNSTREAM_LIMIT_MESSAGES_PER_MINUTE="1",
        TURNSTREAM_DEMO_TOKENS="3",
        TURNSTREAM_DEMO_TOKENS_PER_S="0",
    )


def test_without_origins_configured_no_cors_header_is_sent(server: Server) -> None:
    answers = [
        preflight(server, APP, headers="authorization"),
        httpx.get(f"{server.base_url}/v1/models", headers={"Origin": APP} | server.headers()),
        httpx.get(f"{server.base_url}/v1/models", headers={"Origin": APP}),
    ]
    assert [r.status_code for r in answers] == [204, 200, 401]
    for r in answers:
        assert not [h for h in r.headers if h.lower().startswith("access-control-")], r.headers


def test_a_preflight_from_an_allowed_origin_allows_the_methods_and_headers(
    cors_server: Server,
) -> None:
    for origin in (APP, "https://admin.example.com"):  # a configured trailing / is dropped
        asked = "Authorization, Content-Type, Last-Event-ID, X-Guest-Token"
        r = preflight(cors_server, origin, "DELETE", asked)
        assert r.status_code == 204, r.text
        assert r.headers["access-control-allow-origin"] == origin
        assert listed(r, "access-control-allow-methods") >= {
            "get", "post", "patch", "delete", "options"
        }  # fmt: skip
        assert listed(r, "access-control-allow-headers") >= {
            "authorization", "content-type", "last-event-id", "x-guest-token"
        }  # fmt: skip
        assert "access-control-allow-credentials" not in r.headers  # bearer tokens, no cookies


def test_a_preflight_from_another_origin_or_for_other_headers_is_not_allowed(
    cors_server: Server,
) -> None:
    for r in (
        preflight(cors_server, OTHER, headers="authorization"),
        preflight(cors_server, APP + ".evil.example.net", headers="authorization"),
        preflight(cors_server, "http://chat.example.com", headers="authorization"),
    ):
        assert r.status_code == 400
        assert "access-control-allow-origin" not in r.headers
    # An allowed origin asking for a header the API does not read, or a method it has not.
    assert preflight(cors_server, APP, headers="X-Custom").status_code == 400
    assert preflight(cors_server, APP, "PUT").status_code == 400


def test_answers_and_errors_to_an_allowed_origin_are_readable_by_the_page(
    cors_server: Server,
) -> None:
    origin = {"Origin": APP}
    cid = new_conversation(cors_server)
    run_turn(cors_server, cid)  # the minute's one turn
    url = f"{cors_server.base_url}/v1/conversations"
    answers = {
        "ok": httpx.get(f"{url}/{cid}", headers=origin | cors_server.headers()),
        "unauthorized": httpx.get(url, headers=origin),
        "conversation_not_found": httpx.get(
            f"{url}/{uuid.uuid4()}", headers=origin | cors_server.headers()
        ),
        "rate_limited": httpx.post(
            f"{url}/{cid}/turns", json={"content": "again"}, headers=origin | cors_server.headers()
        ),
    }
    assert answers["ok"].status_code == 200
    assert_problem(answers["unauthorized"], 401, "unauthorized")
    assert_problem(answers["conversation_not_found"], 404, "conversation_not_found")
    assert_problem(answers["rate_limited"], 429, "rate_limited")
    for r in answers.values():
        assert r.headers["access-control-allow-origin"] == APP
        assert "origin" in listed(r, "vary")
        assert listed(r, "access-control-expose-headers") == {
            "retry-after",
            "x-vercel-ai-ui-message-stream",
        }
        assert "access-control-allow-credentials" not in r.headers
    assert answers["rate_limited"].headers["retry-after"]

    # Another origin's page gets the answer but no permission to read it.
    other = httpx.get(url, headers={"Origin": OTHER})
    assert_problem(other, 401, "unauthorized")
    assert "access-control-allow-origin" not in other.headers
