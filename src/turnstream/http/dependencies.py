"""What every route is handed: the caller (from the bearer token), the use cases, the
client's address, and the strictly read resume point of a stream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from litestar import Request
from litestar.params import HeaderParameter, QueryParameter
from litestar.response import Stream

from turnstream.domain.callers import Caller
from turnstream.http.auth import verify
from turnstream.http.clients import client_address
from turnstream.http.params import MAX_SEQ, decimal
from turnstream.http.sse import HEADERS
from turnstream.usecases.services import Services

EVENT_STREAM = "text/event-stream"


async def provide_caller(request: Request[Any, Any, Any]) -> Caller:
    return verify(request.app.state.jwt_secret, request.headers.get("authorization"))


async def provide_services(request: Request[Any, Any, Any]) -> Services:
    services: Services = request.app.state.services
    return services


def client_of(request: Request[Any, Any, Any]) -> str:
    """The client's address (behind trusted proxies, the one they forward)."""
    peer = request.client.host if request.client is not None else None
    return client_address(
        peer, request.headers.get("x-forwarded-for"), request.app.state.trusted_proxies
    )


def count_param(description: str, *, header: str | None = None, **bounds: int) -> Any:
    """A header or query parameter that is a number (read by :func:`decimal`, not by
    Litestar, which would take ``1e9`` as 10⁹); documented as the integer it is."""
    kind = HeaderParameter if header else QueryParameter
    return kind(
        name=header,
        description=description,
        max_length=32,
        schema_extra={"type": "integer", "oneOf": None, "maxLength": None, **bounds},
    )


LastEventId = Annotated[
    str | None,
    count_param(
        "The id of the last frame the client has: the stream resumes after it.",
        header="Last-Event-ID",
        minimum=0,
        maximum=MAX_SEQ,
    ),
]


def resume_from(last_event_id: str | None, after: str | None = None) -> int:
    """``Last-Event-ID`` (it wins) or ``?after=``: the last seq the client has. Both are
    read strictly when given, also the one that does not win."""
    seq = 0 if after is None else decimal(after, "after")
    if last_event_id is not None:
        return decimal(last_event_id.strip(" \t"), "Last-Event-ID")
    return seq


def sse(frames: AsyncIterator[bytes]) -> Stream:
    return Stream(frames, media_type=EVENT_STREAM, headers=HEADERS)
