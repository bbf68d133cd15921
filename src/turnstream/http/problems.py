"""RFC 9457 problem+json for every error, registered once on the app."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from turnstream.errors import LimitExceeded, TurnstreamError

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


def handle_domain_error(_: Request[Any, Any, Any], exc: TurnstreamError) -> Response[Any]:
    headers = None
    if isinstance(exc, LimitExceeded):
        headers = {"Retry-After": str(exc.retry_after)}
    return problem(exc.status, exc.code, exc.title, exc.detail, headers, **exc.extra)


def handle_http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    code, title = _CODES.get(status, ("internal_error", "Internal error"))
    if status >= 500:
        return problem(status, code, title, "The server could not handle this request.")
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
    return problem(status, code, title, detail, headers or None, **extra)


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(
        500, "internal_error", "Internal error", "The server could not handle this request."
    )


EXCEPTION_HANDLERS: dict[Any, Any] = {
    TurnstreamError: handle_domain_error,
    HTTPException: handle_http_error,
    Exception: handle_unexpected,
}
