"""The HTTP API (Litestar): the contract's routes under ``/v1``, auth, problem+json.

The app is an adapter over the use cases: each route reads its input strictly, calls
one use case, and writes its answer (JSON, or an SSE stream). The use cases come in
ready-made (:class:`~turnstream.usecases.services.Services`); the app's lifespan starts
and stops the node's runtime around them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from litestar import Litestar, Router
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin
from litestar.openapi.spec import (
    Components,
    OpenAPI,
    OpenAPIFormat,
    OpenAPIMediaType,
    OpenAPIType,
    RequestBody,
    Schema,
    SecurityScheme,
)

from turnstream.http.bodies import BODIES, StrictRequest
from turnstream.http.clients import parse_networks
from turnstream.http.cors import cors_config
from turnstream.http.dependencies import provide_caller, provide_services
from turnstream.http.problems import EXCEPTION_HANDLERS, document_problems
from turnstream.http.routes import (
    chat,
    conversations,
    files,
    operations,
    playground,
    tools,
    turns,
    usage,
)
from turnstream.http.tickets import provide_stream_caller
from turnstream.settings import BrowserSettings, GuestSettings, ServerSettings, SseSettings
from turnstream.usecases.files import Files
from turnstream.usecases.services import Services

Hook = Callable[[], Awaitable[None]]


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
    # POST /v1/files reads its multipart body itself (streamed), so Litestar sees none.
    item = (openapi.paths or {}).get("/v1/files")
    if item is not None and item.post is not None:
        item.post.request_body = RequestBody(
            required=True,
            description="One field `file`: the file (its type is read from its content).",
            content={
                "multipart/form-data": OpenAPIMediaType(
                    schema=Schema(
                        type=OpenAPIType.OBJECT,
                        required=["file"],
                        properties={
                            "file": Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)
                        },
                    )
                )
            },
        )
    document_problems(openapi)
    schemas = openapi.components.schemas or {}
    for body in BODIES:
        if body.__struct_config__.forbid_unknown_fields and body.__name__ in schemas:
            schemas[body.__name__].additional_properties = False  # unknown fields are a 400


DEFAULT_FILES = 10
"""Files a chat body makes room for when the files per message are not limited."""


def chat_body_bytes(max_body_bytes: int, files: Files) -> int | None:
    """The largest ``POST /v1/chat`` body: the others' limit, and room for a message's
    files as base64 data URLs (what ``useChat`` sends); None when files have no size
    limit, as uploads then have none."""
    if not files.max_bytes:
        return None
    per_file = -(-files.max_bytes // 3) * 4 + 1024  # base64, and the URL's header
    return max_body_bytes + (files.per_message or DEFAULT_FILES) * per_file


def create_app(
    services: Services,
    *,
    jwt_secret: str,
    server: ServerSettings,
    guests: GuestSettings,
    sse: SseSettings,
    browsers: BrowserSettings,
    on_startup: Hook | None = None,
    on_shutdown: Hook | None = None,
) -> Litestar:
    """The Litestar app over ``services``; ``on_startup``/``on_shutdown`` run the node."""
    chat_body = chat_body_bytes(server.max_body_bytes, services.files)
    v1 = Router(
        path="/v1",
        route_handlers=[
            *conversations.ROUTES,
            *turns.ROUTES,
            *tools.ROUTES,
            Router(path="/", route_handlers=chat.ROUTES, request_max_body_size=chat_body),
            *usage.ROUTES,
            *files.ROUTES,
        ],
        dependencies={
            "caller": Provide(provide_caller),
            "stream_caller": Provide(provide_stream_caller),
            "services": Provide(provide_services),
        },
        security=[{"bearer": []}],
    )
    app = Litestar(
        route_handlers=[
            operations.healthz,
            operations.readyz,
            operations.metrics,
            v1,
            *(playground.ROUTES if browsers.playground else []),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        request_class=StrictRequest,
        on_startup=[on_startup] if on_startup else [],
        on_shutdown=[on_shutdown] if on_shutdown else [],
        request_max_body_size=server.max_body_bytes,
        cors_config=cors_config(browsers),
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
        logging_config=None,  # the process's one log format is set by its entry point
    )
    _finish_openapi(app.openapi_schema)
    app.state.services = services
    app.state.jwt_secret = jwt_secret
    app.state.trusted_proxies = parse_networks(server.trusted_proxies)
    app.state.guests = guests
    app.state.sse = sse
    app.state.metrics = services.metrics
    app.state.metrics_token = server.metrics_token
    app.state.stream_ticket_ttl_s = browsers.stream_ticket_ttl_s
    return app
