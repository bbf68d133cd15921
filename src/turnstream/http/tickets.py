"""Stream tickets: a browser's own ``EventSource`` cannot send ``Authorization``, so a
page trades its bearer token for a short-lived ticket it puts in the stream's URL.

A ticket opens a conversation's GET streams and nothing else: it is signed with a key
of its own, derived from the JWT secret for this purpose only, and carries an audience
and a type, so a ticket is never a bearer token and a bearer token never a ticket. It
names one conversation; on another's stream it answers 404, as if that one did not
exist. It sits in a URL, so it is short-lived and kept out of the access log
(:class:`RedactTickets`).

A GET stream route takes a :class:`StreamCaller` (``stream_caller``, the bearer
token's caller or the ticket's) and calls :meth:`StreamCaller.check_ticket_scope` with
its conversation's id once it knows it, before it reads anything.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import unquote_plus
from uuid import UUID

import jwt
from litestar import Request
from litestar.params import QueryParameter

from turnstream.domain.callers import Caller
from turnstream.domain.errors import ConversationNotFound, Unauthorized
from turnstream.http.auth import caller_of, verify

AUDIENCE = "turnstream:stream"
TYPE = "stream-ticket"
_PURPOSE = b"turnstream stream ticket"


def ticket_key(secret: str) -> bytes:
    """The tickets' signing key: HMAC-SHA256 of a fixed purpose under the JWT secret, so
    knowing a ticket's key gives nothing for bearer tokens and the other way round."""
    return hmac.new(secret.encode(), _PURPOSE, hashlib.sha256).digest()


def mint_ticket(secret: str, caller: Caller, conversation_id: UUID, ttl_s: int) -> tuple[str, int]:
    """A ticket for ``caller`` to read ``conversation_id``'s streams, and its expiry (epoch s)."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "typ": TYPE,
        "aud": AUDIENCE,
        "sub": caller.user_id,
        "tenant": caller.tenant,
        "cid": str(conversation_id),
        "iat": now,
        "exp": now + ttl_s,
    }
    if caller.guest:
        claims["guest"] = True
    if caller.roles:
        claims["roles"] = list(caller.roles)
    return jwt.encode(claims, ticket_key(secret), algorithm="HS256"), now + ttl_s


@dataclass(frozen=True)
class StreamCaller:
    """Who reads a stream, and the one conversation a ticket limits them to (None: a
    bearer token, which limits nothing)."""

    caller: Caller
    conversation_id: UUID | None = None

    def check_ticket_scope(self, conversation_id: UUID) -> Caller:
        """The caller, if they may read ``conversation_id`` by what they presented;
        another conversation than a ticket's is not found (as if it did not exist)."""
        if self.conversation_id is not None and self.conversation_id != conversation_id:
            raise ConversationNotFound(conversation_id)
        return self.caller


def verify_ticket(secret: str, ticket: str) -> StreamCaller:
    """The reader a ticket names, limited to its conversation; Unauthorized otherwise."""
    try:
        claims = jwt.decode(
            ticket,
            ticket_key(secret),
            algorithms=["HS256"],
            audience=AUDIENCE,
            options={"require": ["typ", "aud", "sub", "tenant", "cid", "exp"]},
        )
    except jwt.ExpiredSignatureError:
        msg = "The stream ticket has expired; ask for a new one."
        raise Unauthorized(msg) from None
    except jwt.InvalidTokenError:
        msg = "The stream ticket is not valid."
        raise Unauthorized(msg) from None
    try:
        conversation_id = UUID(str(claims["cid"]))
    except ValueError:
        conversation_id = None
    if claims["typ"] != TYPE or conversation_id is None:
        msg = "The stream ticket is not valid."
        raise Unauthorized(msg)
    return StreamCaller(caller_of(claims, "stream ticket"), conversation_id)


TicketParam = Annotated[
    str | None,
    QueryParameter(
        description=(
            "A stream ticket (POST /v1/conversations/{cid}/stream-tickets) in place of the"
            " bearer token, for an EventSource, which cannot send headers. The"
            " Authorization header wins when both are sent."
        ),
        max_length=4096,
    ),
]


async def provide_stream_caller(
    request: Request[Any, Any, Any], ticket: TicketParam = None
) -> StreamCaller:
    """The bearer token's caller when the request has an Authorization header (strict:
    a bad one is 401 even with a ticket), else the ticket's, else 401 as for no token."""
    secret: str = request.app.state.jwt_secret
    authorization = request.headers.get("authorization")
    if authorization is None and ticket:
        return verify_ticket(secret, ticket)
    return StreamCaller(verify(secret, authorization))


_QUERY_PAIR = re.compile(r"(?<=[?&])([^=&#\s]*)=([^&#\s]*)")


def _redacted(text: str) -> str:
    """``text`` with the value of every ``ticket`` query parameter (its name percent-
    encoded or not, as the router decodes it) replaced by ``***``."""
    return _QUERY_PAIR.sub(
        lambda m: f"{m[1]}=***" if unquote_plus(m[1]) == "ticket" else m[0], text
    )


class RedactTickets(logging.Filter):
    """Replaces stream tickets in access-log records with ``***``.

    uvicorn's access log prints each request's path with its query string (the record's
    args are ``(client, method, path_with_query, http_version, status)``); a ticket
    there would let whoever reads the log open the stream until it expires.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_redacted(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = _redacted(record.msg)
        return True
