"""Turns over SSE: start one (its stream is the answer), follow one, resume, cancel."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from litestar import Request, Response, get, post
from litestar.openapi import ResponseSpec
from litestar.response import Stream
from litestar.status_codes import HTTP_202_ACCEPTED, HTTP_204_NO_CONTENT

from turnstream.domain.callers import Caller
from turnstream.domain.modes import TurnRequest
from turnstream.http.dependencies import (
    EVENT_STREAM,
    LastEventId,
    client_of,
    count_param,
    resume_from,
    stream_deadline,
    turn_sse,
)
from turnstream.http.params import MAX_SEQ
from turnstream.http.tickets import StreamCaller
from turnstream.usecases.services import Services


@post(
    "/conversations/{cid:uuid}/turns",
    tags=["turns"],
    summary="Start a turn; the response is its SSE stream",
    status_code=200,
    media_type=EVENT_STREAM,
)
async def start_turn(
    request: Request[Any, Any, Any],
    services: Services,
    caller: Caller,
    cid: UUID,
    data: TurnRequest,
    last_event_id: LastEventId = None,
) -> Stream:
    after = resume_from(last_event_id)
    turn = await services.turns.start(caller, cid, data, client=client_of(request))
    events = services.follower.follow(caller.tenant, cid, turn.turn_id, after, turn.known)
    return turn_sse(request, events)


@get(
    "/conversations/{cid:uuid}/turns/{tid:uuid}/events",
    tags=["turns"],
    summary="A turn's events after Last-Event-ID or ?after=, then live",
    media_type=EVENT_STREAM,
)
async def turn_events(
    request: Request[Any, Any, Any],
    services: Services,
    stream_caller: StreamCaller,
    cid: UUID,
    tid: UUID,
    last_event_id: LastEventId = None,
    after: Annotated[
        str | None,
        count_param("The last seq the client has.", minimum=0, maximum=MAX_SEQ),
    ] = None,
) -> Stream:
    caller = stream_caller.check_ticket_scope(cid)
    start = resume_from(last_event_id, after)
    await services.conversations.turn(caller, cid, tid, read=True)
    until = stream_deadline(request)
    events = services.follower.follow(caller.tenant, cid, tid, start, until=until)
    return turn_sse(request, events, resumable=True)


@get(
    "/conversations/{cid:uuid}/stream",
    tags=["turns"],
    summary="The active turn's events; 204 when none is running",
    media_type=EVENT_STREAM,
    responses={204: ResponseSpec(None, description="No turn is running.")},
)
async def active_stream(
    request: Request[Any, Any, Any],
    services: Services,
    stream_caller: StreamCaller,
    cid: UUID,
    last_event_id: LastEventId = None,
) -> Response[Any]:
    caller = stream_caller.check_ticket_scope(cid)
    start = resume_from(last_event_id)
    turn_id = await services.conversations.active_turn(caller, cid, start)
    if turn_id is None:
        return Response(None, status_code=HTTP_204_NO_CONTENT)
    until = stream_deadline(request)
    events = services.follower.follow(caller.tenant, cid, turn_id, start, until=until)
    return turn_sse(request, events, resumable=True)


@post(
    "/conversations/{cid:uuid}/turns/{tid:uuid}/cancel",
    tags=["turns"],
    summary="Cancel a running turn (idempotent)",
    status_code=HTTP_202_ACCEPTED,
)
async def cancel_turn(services: Services, caller: Caller, cid: UUID, tid: UUID) -> dict[str, str]:
    await services.control.cancel(caller, cid, tid)
    return {"turn_id": str(tid), "status": "cancelling"}


ROUTES = [start_turn, turn_events, active_stream, cancel_turn]
