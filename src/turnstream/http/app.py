"""The HTTP API (Litestar): routes of the contract, auth, SSE and problem+json."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from litestar import Litestar, Request, Response, Router, delete, get, patch, post
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import ScalarRenderPlugin
from litestar.openapi.spec import Components, OpenAPI, RequestBody, SecurityScheme
from litestar.params import HeaderParameter, Parameter, QueryParameter
from litestar.response import Stream
from litestar.status_codes import HTTP_202_ACCEPTED, HTTP_204_NO_CONTENT

from turnstream.auth import Caller, mint, verify
from turnstream.bus.relay import checkpointed_position
from turnstream.errors import RETRY_OUTAGE_S, Invalid, Unauthorized
from turnstream.http.bodies import StrictRequest
from turnstream.http.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from turnstream.http.problems import EXCEPTION_HANDLERS, document_problems, problem
from turnstream.http.sse import HEADERS
from turnstream.identities import TENANT_PATTERN, check_tenant
from turnstream.ids import uuid7
from turnstream.limits import client_address, parse_networks
from turnstream.projections.runner import status as projection_status
from turnstream.projections.views import (
    ConversationPage,
    ConversationSummary,
    ConversationView,
    UsageReport,
)
from turnstream.service import ChatService, TurnRequest
from turnstream.strict import MAX_SEQ, decimal

EVENT_STREAM = "text/event-stream"


class NewConversation(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    model: str | None = None
    title: Annotated[str, msgspec.Meta(max_length=1000)] | None = None
    system_prompt: Annotated[str, msgspec.Meta(max_length=100_000)] | None = None


class ConversationPatch(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    title: Annotated[str, msgspec.Meta(max_length=1000)]


class NewTurn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    content: str | None = None
    mode: Literal["message", "retry", "edit", "continue"] = "message"
    parent_id: UUID | None = None
    message_id: UUID | None = None
    request_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    model: Annotated[str, msgspec.Meta(max_length=200)] | None = None


class GuestRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    tenant: Annotated[str, msgspec.Meta(pattern=TENANT_PATTERN)] | None = None
    """The tenant whose guest this is (the configured guest tenant by default)."""


class GuestToken(msgspec.Struct, kw_only=True):
    token: str
    tenant: str
    user_id: str
    expires_at: datetime
    messages: int
    """The messages this guest may send before signing in."""


class ModelInfo(msgspec.Struct, kw_only=True):
    id: str
    provider: str
    context_window: int
    supports: list[str]
    default: bool


class ModelList(msgspec.Struct, kw_only=True):
    data: list[ModelInfo]


class Health(msgspec.Struct, kw_only=True):
    status: str
    checks: dict[str, str] = msgspec.field(default_factory=dict)


def _service(request: Request[Any, Any, Any]) -> ChatService:
    service: ChatService = request.app.state.service
    return service


async def provide_caller(request: Request[Any, Any, Any]) -> Caller:
    return verify(request.app.state.jwt_secret, request.headers.get("authorization"))


async def provide_service(request: Request[Any, Any, Any]) -> ChatService:
    return _service(request)


def _resume_from(last_event_id: str | None, after: str | None = None) -> int:
    """``Last-Event-ID`` (it wins) or ``?after=``: the last seq the client has."""
    if last_event_id is not None:
        return decimal(last_event_id.strip(" \t"), "Last-Event-ID")
    return 0 if after is None else decimal(after, "after")


def _count_param(description: str, *, header: str | None = None, **bounds: int) -> Any:
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
    _count_param(
        "The id of the last frame the client has: the stream resumes after it.",
        header="Last-Event-ID",
        minimum=0,
        maximum=MAX_SEQ,
    ),
]


def _client(request: Request[Any, Any, Any]) -> str:
    """The client's address (behind trusted proxies, the one they forward)."""
    peer = request.client.host if request.client is not None else None
    return client_address(
        peer, request.headers.get("x-forwarded-for"), request.app.state.trusted_proxies
    )


def _sse(frames: AsyncIterator[bytes]) -> Stream:
    return Stream(frames, media_type=EVENT_STREAM, headers=HEADERS)


@get("/healthz", tags=["operations"], summary="Liveness")
async def healthz() -> Health:
    return Health(status="ok")


@get("/readyz", tags=["operations"], summary="Readiness: PostgreSQL and NATS answer")
async def readyz(request: Request[Any, Any, Any]) -> Response[Any]:
    service = _service(request)
    ready = service.ready()
    checks = {
        "postgres": "ok" if ready and await service.check_store() else "down",
        "nats": "ok" if ready and await service.check_nats() else "down",
    }
    if service.settings.projections:
        checks["projections"] = "ok" if ready and await service.check_projections() else "down"
    down = [name for name, state in checks.items() if state != "ok"]
    if down:
        names = {"postgres": "PostgreSQL", "nats": "NATS", "projections": "the projections"}
        return problem(
            503,
            "service_unavailable",
            "Service unavailable",
            " and ".join(names[n] for n in down) + " not ready.",
            {"Retry-After": str(RETRY_OUTAGE_S)},
            checks=checks,
        )
    return Response(Health(status="ok", checks=checks))


@get(
    "/metrics",
    tags=["operations"],
    summary="Prometheus metrics: turns, streams, writer, relay and projection lag",
    media_type=METRICS_CONTENT_TYPE,
)
async def metrics(request: Request[Any, Any, Any]) -> Response[Any]:
    service = _service(request)
    try:
        relayed = await service.run(
            checkpointed_position, service.app, service.settings.nats_stream
        )
        projections = await service.run(projection_status, service.app)
        repaired = await service.run(service.repaired)
    except Exception:  # the store is down: say so, as /readyz does
        return problem(
            503,
            "service_unavailable",
            "Service unavailable",
            "PostgreSQL not reachable.",
            {"Retry-After": str(RETRY_OUTAGE_S)},
        )
    body = service.metrics.render(projections, relayed, repaired)
    return Response(body, media_type=METRICS_CONTENT_TYPE)


@get("/models", tags=["models"], summary="The configured models")
async def list_models(service: ChatService, caller: Caller) -> ModelList:
    return ModelList(
        data=[
            ModelInfo(
                id=m.id,
                provider=m.provider,
                context_window=m.context_window,
                supports=list(m.supports),
                default=m.default
                or (m.id == "demo" and not any(x.default for x in service.models.values())),
            )
            for m in service.models.values()
        ]
    )


@post("/conversations", tags=["conversations"], summary="Create a conversation")
async def create_conversation(
    service: ChatService, caller: Caller, data: NewConversation
) -> ConversationSummary:
    return await service.create_conversation(
        caller, model=data.model, title=data.title, system_prompt=data.system_prompt
    )


@get(
    "/conversations",
    tags=["conversations"],
    summary="The caller's conversations, newest activity first (cursor pagination)",
)
async def list_conversations(
    service: ChatService,
    caller: Caller,
    limit: Annotated[
        str | None, _count_param("Conversations per page (20).", minimum=1, maximum=100)
    ] = None,
    cursor: Annotated[str | None, Parameter(query="cursor", max_length=200)] = None,
) -> ConversationPage:
    count = 20 if limit is None else decimal(limit, "limit", minimum=1, maximum=100)
    return await service.list_conversations(caller, count, cursor)


@get("/conversations/{cid:uuid}", tags=["conversations"], summary="A conversation and its messages")
async def get_conversation(service: ChatService, caller: Caller, cid: UUID) -> ConversationView:
    return await service.conversation_view(caller, cid)


@patch("/conversations/{cid:uuid}", tags=["conversations"], summary="Rename a conversation")
async def rename_conversation(
    service: ChatService, caller: Caller, cid: UUID, data: ConversationPatch
) -> ConversationView:
    await service.rename(caller, cid, data.title)
    return await service.conversation_view(caller, cid)


@delete(
    "/conversations/{cid:uuid}",
    tags=["conversations"],
    summary="Delete a conversation",
    status_code=HTTP_204_NO_CONTENT,
)
async def delete_conversation(service: ChatService, caller: Caller, cid: UUID) -> None:
    await service.delete(caller, cid)


@post(
    "/conversations/{cid:uuid}/turns",
    tags=["turns"],
    summary="Start a turn; the response is its SSE stream",
    status_code=200,
    media_type=EVENT_STREAM,
)
async def start_turn(
    request: Request[Any, Any, Any],
    service: ChatService,
    caller: Caller,
    cid: UUID,
    data: NewTurn,
    last_event_id: LastEventId = None,
) -> Stream:
    after = _resume_from(last_event_id)
    turn_id = await service.start_turn(
        caller,
        cid,
        TurnRequest(
            content=data.content,
            mode=data.mode,
            parent_id=data.parent_id,
            message_id=data.message_id,
            request_id=data.request_id,
            model=data.model,
            client=_client(request),
        ),
    )
    return _sse(service.follow(caller.tenant, cid, turn_id, after))


@get(
    "/conversations/{cid:uuid}/turns/{tid:uuid}/events",
    tags=["turns"],
    summary="A turn's events after Last-Event-ID or ?after=, then live",
    media_type=EVENT_STREAM,
)
async def turn_events(
    service: ChatService,
    caller: Caller,
    cid: UUID,
    tid: UUID,
    last_event_id: LastEventId = None,
    after: Annotated[
        str | None,
        _count_param("The last seq the client has.", minimum=0, maximum=MAX_SEQ),
    ] = None,
) -> Stream:
    start = _resume_from(last_event_id, after)
    await service.check_turn(caller, cid, tid, read=True)
    return _sse(service.follow(caller.tenant, cid, tid, start))


@get(
    "/conversations/{cid:uuid}/stream",
    tags=["turns"],
    summary="The active turn's events; 204 when none is running",
    media_type=EVENT_STREAM,
    responses={204: ResponseSpec(None, description="No turn is running.")},
)
async def active_stream(
    service: ChatService, caller: Caller, cid: UUID, last_event_id: LastEventId = None
) -> Response[Any]:
    start = _resume_from(last_event_id)
    turn_id = await service.active_turn(caller, cid)
    if turn_id is None:
        return Response(None, status_code=HTTP_204_NO_CONTENT)
    return _sse(service.follow(caller.tenant, cid, turn_id, start))


@post(
    "/conversations/{cid:uuid}/turns/{tid:uuid}/cancel",
    tags=["turns"],
    summary="Cancel a running turn (idempotent)",
    status_code=HTTP_202_ACCEPTED,
)
async def cancel_turn(service: ChatService, caller: Caller, cid: UUID, tid: UUID) -> dict[str, str]:
    await service.cancel(caller, cid, tid)
    return {"turn_id": str(tid), "status": "cancelling"}


@post(
    "/conversations/{cid:uuid}/claim",
    tags=["conversations"],
    summary="Move a guest's conversation to the signed-in caller",
    status_code=200,
)
async def claim_conversation(
    request: Request[Any, Any, Any],
    service: ChatService,
    caller: Caller,
    cid: UUID,
    guest_token: Annotated[
        str,
        HeaderParameter(
            name="X-Guest-Token",
            description="The guest token the conversation was made with.",
            max_length=4096,
        ),
    ],
) -> ConversationView:
    try:
        guest = verify(request.app.state.jwt_secret, f"Bearer {guest_token}")
    except Unauthorized as exc:
        raise Invalid(f"X-Guest-Token: {exc.detail}") from None
    await service.claim(caller, guest, cid)
    return await service.conversation_view(caller, cid)


@get("/usage", tags=["usage"], summary="The caller's usage today and this week, and the limits")
async def get_usage(service: ChatService, caller: Caller) -> UsageReport:
    return await service.usage(caller)


@post(
    "/guest",
    tags=["guests"],
    summary="A guest token (when guests are enabled)",
    status_code=201,
)
async def new_guest(
    request: Request[Any, Any, Any], service: ChatService, data: GuestRequest | None = None
) -> GuestToken:
    await service.guest_allowed(_client(request))
    settings = service.settings
    tenant = check_tenant(data.tenant) if data is not None and data.tenant else None
    tenant = tenant or settings.guest_tenant
    user_id = f"guest-{uuid7()}"
    ttl = settings.guest_token_ttl_s
    token = mint(request.app.state.jwt_secret, tenant=tenant, user=user_id, ttl_s=ttl, guest=True)
    return GuestToken(
        token=token,
        tenant=tenant,
        user_id=user_id,
        expires_at=datetime.now(UTC) + timedelta(seconds=ttl),
        messages=settings.guest_messages,
    )


def _finish_openapi(openapi: OpenAPI) -> None:
    """Say in the OpenAPI document what Litestar cannot infer from the handlers."""
    # POST /v1/guest is public and its body optional; Litestar adds the router's bearer
    # requirement (a handler's security=[] adds nothing) and marks every body required.
    item = (openapi.paths or {}).get("/v1/guest")
    guest = item.post if item is not None else None
    if guest is not None:
        guest.security = None
        if isinstance(guest.request_body, RequestBody):
            guest.request_body.required = False
    document_problems(openapi)
    schemas = openapi.components.schemas or {}
    for body in (NewConversation, ConversationPatch, NewTurn, GuestRequest):
        if body.__struct_config__.forbid_unknown_fields and body.__name__ in schemas:
            schemas[body.__name__].additional_properties = False  # unknown fields are a 400


def create_app(service: ChatService, jwt_secret: str, max_body_bytes: int) -> Litestar:
    """The Litestar app around a started-or-not service; its lifespan starts and stops it."""

    async def on_startup(app: Litestar) -> None:
        await service.start()

    async def on_shutdown(app: Litestar) -> None:
        await service.stop()

    v1 = Router(
        path="/v1",
        route_handlers=[
            list_models,
            create_conversation,
            list_conversations,
            get_conversation,
            rename_conversation,
            delete_conversation,
            start_turn,
            turn_events,
            active_stream,
            cancel_turn,
            claim_conversation,
            get_usage,
            new_guest,
        ],
        dependencies={"caller": Provide(provide_caller), "service": Provide(provide_service)},
        security=[{"bearer": []}],
    )
    app = Litestar(
        route_handlers=[healthz, readyz, metrics, v1],
        exception_handlers=EXCEPTION_HANDLERS,
        request_class=StrictRequest,
        on_startup=[on_startup],
        on_shutdown=[on_shutdown],
        request_max_body_size=max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="turnstream",
            version="1",
            description="Event-sourced chat backend: turns as append-only event streams.",
            path="/schema",
            render_plugins=[ScalarRenderPlugin()],
            components=Components(
                security_schemes={
                    "bearer": SecurityScheme(type="http", scheme="bearer", bearer_format="JWT")
                }
            ),
        ),
        debug=False,
    )
    _finish_openapi(app.openapi_schema)
    app.state.service = service
    app.state.jwt_secret = jwt_secret
    app.state.trusted_proxies = parse_networks(service.settings.trusted_proxies)
    app.state.metrics = service.metrics
    return app
