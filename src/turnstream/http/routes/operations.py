"""Liveness, readiness and metrics: what operators and orchestrators ask."""

from __future__ import annotations

import hmac
from typing import Any

import msgspec
from litestar import Request, Response, get

from turnstream.domain.errors import RETRY_OUTAGE_S, Unauthorized
from turnstream.http.problems import problem
from turnstream.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from turnstream.usecases.services import Services

NAMES = {"postgres": "PostgreSQL", "nats": "NATS", "projections": "the projections"}


class Health(msgspec.Struct, kw_only=True):
    status: str
    checks: dict[str, str] = msgspec.field(default_factory=dict)


def _unavailable(detail: str, **extra: Any) -> Response[Any]:
    """A probe's 503: how the service is, not what was wrong with a request (not counted)."""
    retry = {"Retry-After": str(RETRY_OUTAGE_S)}
    return problem(503, "service_unavailable", "Service unavailable", detail, retry, **extra)


def check_operator(token: str | None, authorization: str | None) -> None:
    """Unauthorized unless ``authorization`` is ``Bearer <token>`` (anyone, with no token).

    The metrics name models, tenants' load and the log's positions: with
    ``TURNSTREAM_METRICS_TOKEN`` set only the scraper that has it reads them. Compared in
    constant time, as bytes (``compare_digest`` refuses non-ASCII text).
    """
    if token is None:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.encode()
    ):
        msg = "/metrics needs 'Authorization: Bearer <the metrics token>'."
        raise Unauthorized(msg)


@get("/healthz", tags=["operations"], summary="Liveness")
async def healthz() -> Health:
    return Health(status="ok")


@get("/readyz", tags=["operations"], summary="Readiness: PostgreSQL and NATS answer")
async def readyz(request: Request[Any, Any, Any]) -> Response[Any]:
    services: Services = request.app.state.services
    checks = {name: "ok" if ok else "down" for name, ok in (await services.health.checks()).items()}
    down = [name for name, state in checks.items() if state != "ok"]
    if down:
        return _unavailable(" and ".join(NAMES[n] for n in down) + " not ready.", checks=checks)
    return Response(Health(status="ok", checks=checks))


@get(
    "/metrics",
    tags=["operations"],
    summary="Prometheus metrics: turns, streams, writer, relay and projection lag",
    media_type=METRICS_CONTENT_TYPE,
)
async def metrics(request: Request[Any, Any, Any]) -> Response[Any]:
    check_operator(request.app.state.metrics_token, request.headers.get("authorization"))
    services: Services = request.app.state.services
    try:
        figures = await services.health.figures()
    except Exception:  # the store is down: say so, as /readyz does
        return _unavailable("PostgreSQL not reachable.")
    body = services.metrics.render(figures.projections, figures.relayed, figures.repaired)
    return Response(body, media_type=METRICS_CONTENT_TYPE)
