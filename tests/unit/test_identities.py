"""Tenant and user ids are checked whole; a tenant's subject token is reversible."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from turnstream.bus.envelope import tenant_of_token, tenant_token
from turnstream.domain.errors import Invalid, Unauthorized
from turnstream.domain.identities import is_tenant, is_user_id
from turnstream.http.auth import mint, verify
from turnstream.settings import Settings, SettingsError

SECRET = "s" * 32


@pytest.mark.parametrize("tenant", ["acme", "A-b_9", "x" * 64])
def test_tenant_ids(tenant: str) -> None:
    assert is_tenant(tenant)
    assert tenant_token(tenant) == tenant


@pytest.mark.parametrize("tenant", ["acme\n", "\nacme", "acme\r\n", "", "x" * 65, "a.b", "*", "é"])
def test_not_tenant_ids(tenant: str) -> None:
    assert not is_tenant(tenant)
    with pytest.raises(Invalid, match="tenant"):
        mint(SECRET, tenant=tenant, user="alice")


@pytest.mark.parametrize("user", ["alice", "auth0|5f7c", "émile@example.com", "x" * 255])
def test_user_ids(user: str) -> None:
    assert is_user_id(user)
    assert verify(SECRET, f"Bearer {mint(SECRET, tenant='acme', user=user)}").user_id == user


@pytest.mark.parametrize("user", ["", "a\x00", "a\n", "\u0085", "\ud800", "x" * 256])
def test_not_user_ids(user: str) -> None:
    assert not is_user_id(user)


def test_the_guest_tenant_setting_is_a_tenant_id() -> None:
    with pytest.raises(SettingsError, match="GUEST_TENANT"):
        Settings.from_env({"TURNSTREAM_GUEST_TENANT": "guests\n"})


def test_the_guest_tenants_setting_must_include_the_tenant_of_guests_who_name_none() -> None:
    # A POST /v1/guest without a body asks for GUEST_TENANT: refusing it would leave
    # the plain guest button of a front end answering 404 for no reason it could see.
    with pytest.raises(SettingsError, match="GUEST_TENANTS must include"):
        Settings.from_env({"TURNSTREAM_GUEST_TENANTS": "a,b"})
    both = {"TURNSTREAM_GUEST_TENANTS": "a, b", "TURNSTREAM_GUEST_TENANT": "b"}
    assert Settings.from_env(both).guests.allowed_tenants() == {"a", "b"}
    assert Settings.from_env({}).guests.allowed_tenants() == {"guests"}


def test_a_token_with_a_tenant_that_only_matches_before_a_newline_is_refused() -> None:
    import jwt

    token = jwt.encode({"sub": "a", "tenant": "acme\n", "exp": 2**40}, SECRET, algorithm="HS256")
    with pytest.raises(Unauthorized, match="tenant"):
        verify(SECRET, f"Bearer {token}")


# What NATS allows in a subject token: no whitespace, no '.', '*' or '>', not empty.
_FORBIDDEN_IN_TOKEN = set(" \t\r\n\f\v.*>")


@given(st.text())
def test_every_tenant_has_a_subject_token_that_decodes_back_to_it(tenant: str) -> None:
    token = tenant_token(tenant)
    assert token
    assert not set(token) & _FORBIDDEN_IN_TOKEN
    assert token.isascii()
    assert tenant_of_token(token) == tenant
    # An encoded token never names a real tenant.
    assert is_tenant(token) == is_tenant(tenant)


def test_a_variable_no_setting_reads_is_named_with_the_closest_setting(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import argparse
    import logging

    from turnstream.cli.common import settings_of, start_logging
    from turnstream.settings import unknown_variables

    env = {"TURNSTREAM_MAX_CONTENT_CHARS": "10", "TURNSTREAM_NATS_STREM": "X", "HOME": "/"}
    assert unknown_variables(env) == [
        ("TURNSTREAM_MAX_CONTENT_CHARS", "TURNSTREAM_LIMIT_MESSAGE_CHARS"),
        ("TURNSTREAM_NATS_STREM", "TURNSTREAM_NATS_STREAM"),
    ]
    assert unknown_variables({"TURNSTREAM_NATS_STREAM": "X"}) == []
    # At start, each is a warning (settings are read as ever, the unknown one ignored).
    monkeypatch.setenv("TURNSTREAM_MAX_CONTENT_CHARS", "10")
    settings = settings_of(argparse.Namespace())
    with caplog.at_level(logging.WARNING, logger="turnstream"):
        start_logging(settings)
    assert any(
        "TURNSTREAM_MAX_CONTENT_CHARS" in r.getMessage()
        and "TURNSTREAM_LIMIT_MESSAGE_CHARS" in r.getMessage()
        for r in caplog.records
    )
