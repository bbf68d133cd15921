"""Stream tickets' signatures and the access-log filter that keeps them out of logs."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest
from uvicorn.protocols.utils import get_path_with_query_string

from turnstream.cli.common import start_logging
from turnstream.domain.callers import Caller
from turnstream.domain.errors import ConversationNotFound, Unauthorized
from turnstream.http.auth import mint, verify
from turnstream.http.tickets import RedactTickets, mint_ticket, verify_ticket
from turnstream.settings import Settings

SECRET = "unit-test-secret-0123456789abcdef"
CID = uuid.UUID("0190f0e0-0000-7000-8000-000000000001")


def test_a_ticket_rebuilds_its_caller_and_is_limited_to_its_conversation() -> None:
    admin = Caller(user_id="ann", tenant="acme", roles=("admin",))
    guest = Caller(user_id="guest-1", tenant="guests", guest=True)
    for caller in (admin, guest):
        ticket, _ = mint_ticket(SECRET, caller, CID, ttl_s=60)
        reader = verify_ticket(SECRET, ticket)
        assert reader.caller == caller
        assert reader.check_ticket_scope(CID) == caller
        with pytest.raises(ConversationNotFound):
            reader.check_ticket_scope(uuid.uuid4())


def test_tickets_and_bearer_tokens_are_never_taken_for_each_other() -> None:
    ticket, _ = mint_ticket(SECRET, Caller(user_id="a", tenant="t"), CID, ttl_s=60)
    with pytest.raises(Unauthorized):
        verify(SECRET, f"Bearer {ticket}")
    with pytest.raises(Unauthorized):
        verify_ticket(SECRET, mint(SECRET, tenant="t", user="a"))
    with pytest.raises(Unauthorized):
        verify_ticket(SECRET + "x", ticket)  # another service's secret


def access_record(path: str, query: bytes) -> logging.LogRecord:
    """An access-log record as uvicorn makes one (its format, its args)."""
    scope = {"raw_path": path.encode(), "query_string": query}
    return logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        0,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:50000", "GET", get_path_with_query_string(scope), "1.1", 200),
        None,
    )


@pytest.mark.parametrize(
    ("query", "logged"),
    [
        (b"ticket=eyJ.abc.def", "?ticket=***"),
        (b"after=3&ticket=eyJ.abc.def", "?after=3&ticket=***"),
        (b"ticket=eyJ.abc.def&after=3", "?ticket=***&after=3"),
        (b"ticket=a&ticket=b", "?ticket=***&ticket=***"),
        (b"%74icket=eyJ.abc.def", "?%74icket=***"),
        (b"after=3", "?after=3"),
        (b"not_a_ticket=x&xticket=y", "?not_a_ticket=x&xticket=y"),
    ],
)
def test_the_filter_replaces_tickets_in_uvicorns_access_records(query: bytes, logged: str) -> None:
    record = access_record("/v1/conversations/c/stream", query)
    assert RedactTickets().filter(record)
    line = record.getMessage()
    assert line == f'127.0.0.1:50000 - "GET /v1/conversations/c/stream{logged} HTTP/1.1" 200'
    assert "eyJ" not in line


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root, access = logging.getLogger(), logging.getLogger("uvicorn.access")
    kept = (root.level, list(root.handlers), list(access.filters))
    yield
    root.setLevel(kept[0])
    root.handlers[:] = kept[1]
    access.filters[:] = kept[2]


@pytest.mark.usefixtures("restored_logging")
def test_serves_logging_setup_keeps_tickets_out_of_the_access_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings.from_env({})
    start_logging(settings)
    start_logging(settings)  # once only, however often it runs
    access = logging.getLogger("uvicorn.access")
    assert sum(isinstance(f, RedactTickets) for f in access.filters) == 1
    # Only the access log's line is looked at (start_logging warns of TURNSTREAM_TEST_*
    # variables, which are none of the service's, when the suite runs with them).
    caplog.clear()

    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        record = access_record("/v1/conversations/c/stream", b"ticket=eyJ.secret.sig")
        access.info(record.msg, *record.args)  # as uvicorn logs it
    assert caplog.messages == [
        '127.0.0.1:50000 - "GET /v1/conversations/c/stream?ticket=*** HTTP/1.1" 200'
    ]
