"""What a caller has used this UTC day and ISO week, the bytes their files hold, the
limits that apply, and guests."""

from __future__ import annotations

from datetime import date

from turnstream.domain.callers import Caller
from turnstream.domain.errors import NotFound
from turnstream.domain.events import utcnow
from turnstream.domain.identities import check_tenant
from turnstream.domain.periods import period_bounds, period_starts
from turnstream.projections.views import (
    GuestAllowance,
    StorageUsage,
    UsageLimits,
    UsagePeriod,
    UsageReport,
)
from turnstream.settings import GuestSettings, LimitSettings
from turnstream.store.admission import user_key
from turnstream.store.application import TurnstreamApplication
from turnstream.store.gateway import StoreGateway
from turnstream.usecases.conversations import ReadModel
from turnstream.usecases.limits import Limits

GUESTS_OFF = "Guest tokens are not offered here."


class Usage:
    def __init__(
        self,
        *,
        app: TurnstreamApplication,
        gateway: StoreGateway,
        reads: ReadModel,
        limits: Limits,
        limit_settings: LimitSettings,
        guests: GuestSettings,
    ) -> None:
        self.app = app
        self.run = gateway.run
        self.reads = reads
        self.limits = limits
        self.limit_settings = limit_settings
        self.guests = guests

    async def report(self, caller: Caller) -> UsageReport:
        """The caller's usage this UTC day and ISO week, with the limits and resets, and
        the bytes their files hold."""
        await self.reads.caught_up("usage")
        day, week = period_starts(utcnow())
        rows = await self.run(self.reads.reader.usage, caller.tenant, caller.user_id, day, week)
        files, stored = await self.run(self.reads.reader.stored, caller.tenant, caller.user_id)
        totals = {r["period"]: r for r in rows}
        limits = self.limit_settings

        def period(name: str, start: date, limit: int) -> UsagePeriod:
            row = totals.get(name, {})
            prompt = int(row.get("prompt_tokens") or 0)
            completion = int(row.get("completion_tokens") or 0)
            begins, resets = period_bounds(name, start)
            return UsagePeriod(
                start=begins,
                resets_at=resets,
                turns=int(row.get("turns") or 0),
                prompt_tokens=prompt,
                completion_tokens=completion,
                total_tokens=prompt + completion,
                limit_tokens=limit or None,
                remaining_tokens=max(0, limit - prompt - completion) if limit else None,
            )

        guest = None
        if caller.guest:
            used = await self.run(self.app.store.turns_of, user_key(caller.tenant, caller.user_id))
            allowed = self.guests.messages
            guest = GuestAllowance(messages=allowed, used=used, remaining=max(0, allowed - used))
        return UsageReport(
            day=period("day", day, limits.daily_tokens),
            week=period("week", week, limits.weekly_tokens),
            limits=UsageLimits(
                messages_per_minute=limits.messages_per_minute or None,
                message_chars=limits.message_chars or None,
                conversation_messages=limits.conversation_messages or None,
                concurrent_turns=limits.concurrent_turns or None,
                daily_tokens=limits.daily_tokens or None,
                weekly_tokens=limits.weekly_tokens or None,
            ),
            guest=guest,
            storage=StorageUsage(bytes=stored, files=files),
        )

    async def guest_allowed(self, client: str, tenant: str) -> None:
        """Whether ``client`` may have a guest token of ``tenant`` now: guests on, the
        tenant one that wants guests (``TURNSTREAM_GUEST_TENANTS``), within the limit.

        A tenant that wants none is answered exactly as guests off are, so the answer
        tells a visitor nothing about which tenants exist; neither counts against the
        address's limit.
        """
        if not self.guests.messages:
            raise NotFound(GUESTS_OFF)
        check_tenant(tenant)
        if tenant not in self.guests.allowed_tenants():
            raise NotFound(GUESTS_OFF)
        await self.limits.guest_allowed(client)
