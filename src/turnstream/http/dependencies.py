"""What every route is handed: the caller (from the bearer token), the use cases, the
client's address, and the strictly read resume point of a stream."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from litestar import Request
from litestar.params import HeaderParameter, QueryParameter
from litestar.response import Stream

from turnstream.domain.callers import Caller
from turnstream.domain.turn import TurnEvent
from turnstream.http.auth import verify
from turnstream.http.clients import client_address
from turnstream.http.params import MAX_SEQ, decimal
from turnstream.http.sse import HEADERS, sse_frames
from turnstream.settings import SseSettings
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


def sse_settings(request: Request[Any, Any, Any]) -> SseSettings:
    settings: SseSettings = request.app.state.sse
    return settings


def stream_deadline(request: Request[Any, Any, Any]) -> float | None:
    """When a resumable GET stream ends on purpose (``TURNSTREAM_SSE_MAX_STREAM_S``), as a
    ``time.monotonic()`` deadline; None: it runs to the turn's end."""
    max_s = sse_settings(request).max_stream_s
    return time.monotonic() + max_s if max_s > 0 else None


RETRY_MS = 250
"""How soon a browser reconnects after a stream that ended on purpose."""


def turn_sse(
    request: Request[Any, Any, Any],
    events: AsyncIterator[TurnEvent | None],
    *,
    resumable: bool = False,
) -> Stream:
    """A followed turn as SSE frames. ``resumable``: a GET stream an ``EventSource``
    reconnects to by itself, which therefore may end on purpose and says how soon to
    come back."""
    settings = sse_settings(request)
    retry = RETRY_MS if resumable and settings.max_stream_s > 0 else None
    return sse(sse_frames(events, padding=settings.padding, retry_ms=retry))
