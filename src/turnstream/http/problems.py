"""RFC 9457 problem+json for every error, registered once on the app."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.spec import (
    OpenAPI,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Reference,
    Schema,
)

from turnstream.bus.nats import BROKER_OUTAGE
from turnstream.domain.errors import (
    Conflict,
    ConversationFull,
    ConversationNotFound,
    FileNotFound,
    FileTooLarge,
    ImageTooLarge,
    InputTooLong,
    Invalid,
    LimitExceeded,
    LoginRequired,
    MessageNotFound,
    ModelUnavailable,
    NotFound,
    PayloadTooLarge,
    QuotaExhausted,
    ServiceUnavailable,
    ToolCallAnswered,
    ToolCallNotPending,
    TooManyAttachments,
    TooManyTurns,
    TurnInProgress,
    TurnNotFound,
    TurnNotWaiting,
    TurnstreamError,
    Unauthorized,
    UnknownModel,
    UnknownToolCall,
    UnsupportedAttachment,
    UnsupportedMediaType,
)
from turnstream.store.recorder import STORE_OUTAGE

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


@dataclass(frozen=True)
class Answer:
    """How an error is answered: its status, its problem title, and when it happens."""

    status: int
    title: str
    when: str


ERRORS: dict[type[TurnstreamError], Answer] = {
    Invalid: Answer(
        400, "Invalid request", "the request is not valid (the detail says which part)"
    ),
    UnknownModel: Answer(400, "Unknown model", "the request names a model not configured"),
    Unauthorized: Answer(401, "Unauthorized", "no valid bearer token"),
    NotFound: Answer(
        404, "Not found", "nothing by that path (or no guests for that tenant, or none at all)"
    ),
    ConversationNotFound: Answer(
        404,
        "Conversation not found",
        "no conversation of the caller's by that id; another user's or tenant's answers the same",
    ),
    TurnNotFound: Answer(404, "Turn not found", "no turn by that id in the conversation"),
    MessageNotFound: Answer(404, "Message not found", "no message by that id in the conversation"),
    FileNotFound: Answer(
        404,
        "File not found",
        "no file of the caller's by that id (deleted, another user's or tenant's)",
    ),
    TooManyAttachments: Answer(
        400, "Too many attachments", "a message with more files than the limit"
    ),
    Conflict: Answer(409, "Conflict", "the request conflicts with the state"),
    TurnInProgress: Answer(
        409, "A turn is in progress", "the conversation has a running turn (its `turn_id`)"
    ),
    ToolCallNotPending: Answer(
        409, "Tool call not pending", "the call waits for the other kind of answer"
    ),
    UnknownToolCall: Answer(409, "Unknown tool call", "the turn made no call by that id"),
    ToolCallAnswered: Answer(
        409, "Tool call answered", "the call has its result (or decision) already"
    ),
    TurnNotWaiting: Answer(
        409, "Turn not waiting", "the turn has ended, or is running and waits for nothing"
    ),
    ModelUnavailable: Answer(
        410, "Model unavailable", "the conversation's model is no longer served"
    ),
    PayloadTooLarge: Answer(413, "Payload too large", "a message longer than the limit"),
    FileTooLarge: Answer(413, "File too large", "an upload of more bytes than the limit"),
    ImageTooLarge: Answer(
        413, "Image too large", "an image of more pixels than the limit (a decompression bomb)"
    ),
    UnsupportedMediaType: Answer(
        415,
        "Unsupported media type",
        "a file whose content is not of an allowed type, whatever its name",
    ),
    UnsupportedAttachment: Answer(
        422, "Unsupported attachment", "an attachment the model cannot take (an image, no vision)"
    ),
    InputTooLong: Answer(422, "Input too long", "the turn's input is more than the model takes"),
    ConversationFull: Answer(
        422, "Conversation full", "the conversation holds the most messages it may"
    ),
    LimitExceeded: Answer(429, "Too many requests", "more requests a minute than allowed"),
    TooManyTurns: Answer(
        429, "Too many running turns", "the caller has the most turns running it may"
    ),
    QuotaExhausted: Answer(
        429, "Quota exhausted", "the day's or the week's tokens, or the stored bytes, are used up"
    ),
    LoginRequired: Answer(429, "Login required", "a guest has sent every message it may"),
    ServiceUnavailable: Answer(
        503,
        "Service unavailable",
        "PostgreSQL, NATS or the read model is not available now",
    ),
}
"""The one table from the domain's errors to their answers. An error not listed is
answered as its nearest listed base class is."""

INTERNAL = Answer(500, "Internal error", "a fault of the service")

_FRAMEWORK: dict[int, tuple[str, str]] = {
    400: ("invalid_request", "Invalid request"),
    401: ("unauthorized", "Unauthorized"),
    403: ("forbidden", "Forbidden"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    406: ("not_acceptable", "Not acceptable"),
    413: ("payload_too_large", "Payload too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
    429: ("rate_limited", "Too many requests"),
    503: ("service_unavailable", "Service unavailable"),
}
"""Litestar's own errors (routing, body size, validation) by status: the same codes."""


def answer_for(exc: TurnstreamError) -> Answer:
    """The answer of ``exc``'s class, or of its nearest listed base class."""
    for cls in type(exc).__mro__:
        answer = ERRORS.get(cls)
        if answer is not None:
            return answer
    return INTERNAL


def problem(
    status: int,
    code: str,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response[dict[str, Any]]:
    body = {
        "type": f"https://turnstream.dev/problems/{code.replace('_', '-')}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        **extra,
    }
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _counted(
    request: Request[Any, Any, Any], response: Response[dict[str, Any]]
) -> Response[dict[str, Any]]:
    """``response``, counted by its code in the app's ``turnstream_rejected_requests``.

    Every error of a request passes here, also those raised before its handler runs
    (401 from auth, 404 and 405 from routing). The probes' own 503s (``/readyz``,
    ``/metrics``) say how the service is, not what was wrong with a request: not counted.
    """
    request.app.state.metrics.rejected.labels(response.content["code"]).inc()
    return response


def handle_domain_error(request: Request[Any, Any, Any], exc: TurnstreamError) -> Response[Any]:
    headers: dict[str, str] = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    answer = answer_for(exc)
    if answer.status == 401:
        headers["WWW-Authenticate"] = "Bearer"  # RFC 9110: a 401 names its scheme
    return _counted(
        request,
        problem(answer.status, exc.code, answer.title, exc.detail, headers or None, **exc.extra),
    )


def handle_outage(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """PostgreSQL or NATS is away (whichever library noticed): 503, try again shortly."""
    broker = isinstance(exc, BROKER_OUTAGE)
    log.warning(
        "%s %s: %s unavailable (%s: %s)",
        request.method,
        request.url.path,
        "NATS" if broker else "PostgreSQL",
        type(exc).__name__,
        exc,
    )
    what = "The message broker" if broker else "The event store"
    return handle_domain_error(request, ServiceUnavailable(f"{what} is unavailable; try again."))


def handle_http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    code, title = _FRAMEWORK.get(status, ("internal_error", "Internal error"))
    if status >= 500:
        detail = "The server could not handle this request."
        return _counted(request, problem(status, code, title, detail))
    detail = exc.detail if isinstance(exc.detail, str) else title
    extra: dict[str, Any] = {}
    if isinstance(exc, ValidationException) and isinstance(exc.extra, list):
        extra["errors"] = [
            {k: v for k, v in e.items() if k in ("key", "message", "source")}
            for e in exc.extra
            if isinstance(e, dict)
        ]
        detail = (
            "; ".join(f"{e.get('key') or 'body'}: {e.get('message')}" for e in extra["errors"])
            or "The request is not valid."
        )
    headers = {k: v for k, v in (exc.headers or {}).items() if k.lower() == "allow"}
    return _counted(request, problem(status, code, title, detail, headers or None, **extra))


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    detail = "The server could not handle this request."
    return _counted(request, problem(500, "internal_error", "Internal error", detail))


EXCEPTION_HANDLERS: dict[Any, Any] = {
    TurnstreamError: handle_domain_error,
    HTTPException: handle_http_error,
    **dict.fromkeys(STORE_OUTAGE + BROKER_OUTAGE, handle_outage),
    Exception: handle_unexpected,
}
"""The one table from errors to answers. Litestar picks the entry of the error's
nearest class, so an outage error is a 503 whichever of its classes it is."""


def problem_descriptions() -> dict[int, str]:
    """Each status's OpenAPI description: the codes that answer with it, and when
    (derived from :data:`ERRORS`, so the document never drifts from the answers)."""
    whens: dict[int, list[str]] = defaultdict(list)
    for cls, answer in ERRORS.items():
        whens[answer.status].append(f"`{cls.code}`: {answer.when}")
    described = {status: "; ".join(parts) + "." for status, parts in whens.items()}
    described[400] += " Also malformed JSON and wrong or unknown fields (`invalid_request`)."
    described[404] += " Also a path that names nothing (`not_found`)."
    described[413] += " Also a body larger than the limit (`payload_too_large`)."
    for status in (429, 503):
        described[status] += " Retry after `Retry-After` seconds."
    return described


# Answers beyond those every operation's shape implies (see document_problems).
_EXTRA_PROBLEMS: dict[tuple[str, str], set[int]] = {
    ("get", "/readyz"): {503},
    ("get", "/metrics"): {401, 503},  # 401: with TURNSTREAM_METRICS_TOKEN set
    ("post", "/v1/conversations/{cid}/turns"): {409, 410, 413, 422, 429},
    ("post", "/v1/chat"): {409, 410, 413, 422, 429},  # a turn's start, or the answers to one
    ("post", "/v1/guest"): {404, 429},
    # An upload refused by its content, its size or the storage quota.
    ("post", "/v1/files"): {400, 413, 415, 422, 429},
    # An answer the turn does not wait for; the turn's model gone when it goes on.
    ("post", "/v1/conversations/{cid}/turns/{tid}/tool-results"): {409, 410},
    ("post", "/v1/conversations/{cid}/turns/{tid}/approvals"): {409, 410},
}


def document_problems(openapi: OpenAPI) -> None:
    """Document every operation's problem+json answers in the app's OpenAPI document.

    Litestar documents only a 400 with its own body shape; every error here is RFC 9457
    problem+json. An operation under ``/v1`` can answer 503 (store or read model not
    available), 401 when it needs a token, 400 when it takes parameters or a body, 413
    when it takes a body, 404 when its path names something; ``_EXTRA_PROBLEMS`` adds the
    rest (a turn's limits and conflicts).
    """
    descriptions = problem_descriptions()
    components = openapi.components
    components.schemas = dict(components.schemas or {})
    components.schemas["Problem"] = Schema(
        type=OpenAPIType.OBJECT,
        title="Problem",
        description="An RFC 9457 problem; `code` is the stable, machine-readable part.",
        required=["code", "detail", "status", "title", "type"],
        properties={
            "type": Schema(type=OpenAPIType.STRING),
            "title": Schema(type=OpenAPIType.STRING),
            "status": Schema(type=OpenAPIType.INTEGER),
            "detail": Schema(type=OpenAPIType.STRING),
            "code": Schema(type=OpenAPIType.STRING),
        },
    )
    content = {PROBLEM_JSON: OpenAPIMediaType(schema=Reference("#/components/schemas/Problem"))}
    retry_after: dict[str, OpenAPIHeader | Reference] = {
        "Retry-After": OpenAPIHeader(
            schema=Schema(type=OpenAPIType.STRING), description="Seconds to wait.", required=True
        )
    }
    for path, item in (openapi.paths or {}).items():
        for method in ("get", "put", "post", "delete", "patch"):
            operation: Operation | None = getattr(item, method, None)
            if operation is None:
                continue
            statuses = set(_EXTRA_PROBLEMS.get((method, path), ()))
            if path.startswith("/v1/"):
                statuses.add(503)
                if operation.security:
                    statuses.add(401)
                if operation.parameters or operation.request_body:
                    statuses.add(400)
                if operation.request_body:
                    statuses.add(413)
                if "{" in path:
                    statuses.add(404)
            responses = dict(operation.responses or {})
            for status in sorted(statuses):
                responses[str(status)] = OpenAPIResponse(
                    description=descriptions[status],
                    content=content,
                    headers=retry_after if status in (429, 503) else None,
                )
            operation.responses = responses
