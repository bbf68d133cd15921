"""``POST /v1/guest`` only for the tenants that want guests: any other is answered
exactly as guests off are (the same 404), and costs the address nothing."""

from __future__ import annotations

from typing import Any

import httpx
import jwt

from tests.api.conftest import ServerFactory
from tests.api.test_bad_input import assert_problem
from tests.support.server import Server


def ask(server: Server, body: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/guest", json=body)


def tenant_of(r: httpx.Response) -> str:
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    claims = jwt.decode(body["token"], options={"verify_signature": False})
    assert claims["tenant"] == body["tenant"]
    assert claims["guest"] is True
    return str(body["tenant"])


def test_by_default_only_the_guest_tenant_has_guests(make_server: ServerFactory) -> None:
    off = make_server(TURNSTREAM_DEMO_TOKENS_PER_S="0")
    guests_off = assert_problem(ask(off), 404, "not_found")
    assert_problem(ask(off, {"tenant": "acme"}), 404, "not_found")

    server = make_server(
        TURNSTREAM_GUEST_MESSAGES="2",
        TURNSTREAM_GUEST_TENANT="lobby",
        TURNSTREAM_LIMIT_MESSAGES_PER_MINUTE="2",  # guest tokens share the address's limit
    )
    refused = [ask(server, {"tenant": t}) for t in ("acme", "guests", "lobby-2", "LOBBY")]
    for r in refused:
        # Word for word what guests off answer: nothing says the tenant exists.
        assert assert_problem(r, 404, "not_found") == guests_off
    # The refusals cost the address nothing: its two tokens a minute are still there.
    assert tenant_of(ask(server)) == "lobby"
    assert tenant_of(ask(server, {"tenant": "lobby"})) == "lobby"
    assert_problem(ask(server), 429, "rate_limited")


def test_guest_tenants_lists_the_tenants_that_want_guests(make_server: ServerFactory) -> None:
    server = make_server(
        TURNSTREAM_GUEST_MESSAGES="1",
        TURNSTREAM_GUEST_TENANTS="a, b",
        TURNSTREAM_GUEST_TENANT="a",
    )
    assert tenant_of(ask(server, {"tenant": "a"})) == "a"
    assert tenant_of(ask(server, {"tenant": "b"})) == "b"
    assert tenant_of(ask(server)) == "a"  # no body: the guest tenant, which is listed
    assert tenant_of(ask(server, {})) == "a"
    for other in ("c", "guests", "ab"):
        assert_problem(ask(server, {"tenant": other}), 404, "not_found")
    # A tenant that is no tenant id is still the bad request it was.
    assert_problem(ask(server, {"tenant": "a b"}), 400, "invalid_request")
