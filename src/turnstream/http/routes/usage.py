"""The caller's usage and limits, and guest tokens."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from litestar import Request, get, post

from turnstream.domain.callers import Caller
from turnstream.http.auth import mint
from turnstream.http.bodies import GuestRequest
from turnstream.http.dependencies import client_of
from turnstream.ids import uuid7
from turnstream.projections.views import UsageReport
from turnstream.settings import GuestSettings
from turnstream.usecases.services import Services


class GuestToken(msgspec.Struct, kw_only=True):
    token: str
    tenant: str
    user_id: str
    expires_at: datetime
    messages: int
    """The messages this guest may send before signing in."""


@get("/usage", tags=["usage"], summary="The caller's usage today and this week, and the limits")
async def get_usage(services: Services, caller: Caller) -> UsageReport:
    return await services.usage.report(caller)


@post(
    "/guest",
    tags=["guests"],
    summary="A guest token (when the tenant wants guests)",
    status_code=201,
)
async def new_guest(
    request: Request[Any, Any, Any], services: Services, data: GuestRequest | None = None
) -> GuestToken:
    guests: GuestSettings = request.app.state.guests
    tenant = data.tenant if data is not None and data.tenant else guests.tenant
    await services.usage.guest_allowed(client_of(request), tenant)
    user_id = f"guest-{uuid7()}"
    ttl = guests.token_ttl_s
    token = mint(request.app.state.jwt_secret, tenant=tenant, user=user_id, ttl_s=ttl, guest=True)
    return GuestToken(
        token=token,
        tenant=tenant,
        user_id=user_id,
        expires_at=datetime.now(UTC) + timedelta(seconds=ttl),
        messages=guests.messages,
    )


ROUTES = [get_usage, new_guest]
