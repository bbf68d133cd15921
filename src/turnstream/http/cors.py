"""CORS for browser front ends on other origins (``TURNSTREAM_CORS_ORIGINS``).

Litestar's own middleware does the work; this module says what it allows. Clients
authenticate with bearer tokens, never cookies, so credentials are not allowed: a
page on an allowed origin gets nothing a ``fetch`` with its own token would not.
"""

from __future__ import annotations

from typing import Literal

from litestar.config.cors import CORSConfig

from turnstream.settings import BrowserSettings

METHODS: list[Literal["GET", "POST", "PATCH", "DELETE", "OPTIONS"]] = [
    "GET",
    "POST",
    "PATCH",
    "DELETE",
    "OPTIONS",
]
REQUEST_HEADERS = [
    "Authorization",
    "Content-Type",
    "Last-Event-ID",
    "X-Guest-Token",
    "X-Turnstream-Tool-Approvals",
]
"""What a page may send: its token, its resume point, a guest token to claim, and
that its AI SDK client knows the approval chunks (`turnstream.http.routes.chat`)."""
EXPOSED_HEADERS = ["Retry-After", "x-vercel-ai-ui-message-stream"]
"""What a page may read of a response beyond the safelisted headers: when to retry a
429 or 503, and the marker the AI SDK's client looks for on its stream response."""


def cors_config(browsers: BrowserSettings) -> CORSConfig | None:
    """The app's CORS, or None (no CORS header at all) when no origin is configured.

    Every response to an allowed origin carries ``Access-Control-Allow-Origin``, its
    problem+json errors too (the middleware wraps the whole app), so a page can read
    why a request failed; a preflight from any other origin is refused.
    """
    origins = browsers.origins()
    if not origins:
        return None
    return CORSConfig(
        allow_origins=origins,
        allow_methods=list(METHODS),
        allow_headers=REQUEST_HEADERS,
        expose_headers=EXPOSED_HEADERS,
        allow_credentials=False,
    )
