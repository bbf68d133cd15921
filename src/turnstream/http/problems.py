"""RFC 9457 problem+json for every error, registered once on the app."""

from __future__ import annotations

import logging
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
from turnstream.domain.postgres import STORE_OUTAGE
from turnstream.errors import ServiceUnavailable, TurnstreamError

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

_CODES = {
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
    headers = None
    if exc.retry_after is not None:
        headers = {"Retry-After": str(exc.retry_after)}
    return _counted(
        request, problem(exc.status, exc.code, exc.title, exc.detail, headers, **exc.extra)
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
    code, title = _CODES.get(status, ("internal_error", "Internal error"))
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


_PROBLEM_DESCRIPTIONS = {
    400: "The request is not valid (`invalid_request`, `unknown_model`).",
    401: "No valid bearer token (`unauthorized`).",
    404: "Nothing of this caller's by that id (`conversation_not_found`, `turn_not_found`,"
    " `message_not_found`); another user's or tenant's things answer the same.",
    409: "A turn is running in this conversation (`turn_in_progress`, with its `turn_id`).",
    410: "The conversation's model is no longer served (`model_unavailable`).",
    413: "The body or the message is too large (`payload_too_large`).",
    422: "The input does not fit (`input_too_long`, `conversation_full`).",
    429: "A rate limit or quota (`rate_limited`, `quota_exhausted`, `too_many_turns`,"
    " `login_required`); retry after `Retry-After` seconds.",
    503: "PostgreSQL, NATS or the read model is not available now (`service_unavailable`);"
    " retry after `Retry-After` seconds.",
}
# Answers beyond those every operation's shape implies (see document_problems).
_EXTRA_PROBLEMS: dict[tuple[str, str], set[int]] = {
    ("get", "/readyz"): {503},
    ("get", "/metrics"): {503},
    ("post", "/v1/conversations/{cid}/turns"): {409, 410, 413, 422, 429},
    ("post", "/v1/guest"): {404, 429},
}


def document_problems(openapi: OpenAPI) -> None:
    """Document every operation's problem+json answers in the app's OpenAPI document.

    Litestar documents only a 400 with its own body shape; every error here is RFC 9457
    problem+json. An operation under ``/v1`` can answer 503 (store or read model not
    available), 401 when it needs a token, 400 when it takes parameters or a body, 413
    when it takes a body, 404 when its path names something; ``_EXTRA_PROBLEMS`` adds the
    rest (a turn's limits and conflicts).
    """
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
                    description=_PROBLEM_DESCRIPTIONS[status],
                    content=content,
                    headers=retry_after if status in (429, 503) else None,
                )
            operation.responses = responses
