"""The limits a turn starts under, and which one refused it.

The store counts a start against its limits in the very statement that records it (see
``Admission`` in the store's recorder), so no concurrency gets past one. This module
says what the limits of a start are, and, when the store refused it, which limit did
and when to try again.
"""

from __future__ import annotations

import logging
import math
from datetime import date
from uuid import UUID

from turnstream.domain.callers import Caller
from turnstream.domain.errors import (
    LimitExceeded,
    LoginRequired,
    QuotaExhausted,
    ServiceUnavailable,
    TooManyTurns,
)
from turnstream.domain.events import utcnow
from turnstream.domain.periods import period_bounds, period_starts
from turnstream.domain.turn import Turn
from turnstream.settings import GuestSettings, LimitSettings, ModelConfig, ModelSettings
from turnstream.store.admission import Admission, Admitted, user_key
from turnstream.store.application import TurnstreamApplication
from turnstream.store.gateway import StoreGateway
from turnstream.store.limits import RateLimiter

log = logging.getLogger(__name__)

RETRY_SOON_S = 5
"""Retry-After when running turns hold a limit: they end within seconds, not a reset."""


class Limits:
    def __init__(
        self,
        *,
        app: TurnstreamApplication,
        gateway: StoreGateway,
        limiter: RateLimiter,
        limits: LimitSettings,
        guests: GuestSettings,
        models: ModelSettings,
    ) -> None:
        self.app = app
        self.run = gateway.run
        self.limiter = limiter
        self.limits = limits
        self.guests = guests
        self.demo_tokens = models.demo_tokens

    def output_worth(self, model: ModelConfig, estimate: int) -> int:
        """The most output tokens a turn on ``model`` may produce (for the quotas)."""
        if model.max_output_tokens is not None:
            return model.max_output_tokens
        if model.provider == "demo":
            return self.demo_tokens * 2  # its answer and its reasoning
        return max(0, model.context_window - estimate)

    async def reserve_step(self, turn_id: UUID, model: ModelConfig, estimate: int) -> None:
        """Hold a further model step's worth of a running turn against the quotas (each
        step after the first reads the whole input again, and may answer at length).
        Best effort: a store that is away is logged, and the step goes on."""
        if not (self.limits.daily_tokens or self.limits.weekly_tokens):
            return
        worth = estimate + self.output_worth(model, estimate)
        try:
            await self.run(self.app.store.add_reserve, turn_id, worth)
        except ServiceUnavailable:
            log.warning("turn %s: its next step's tokens could not be reserved", turn_id)

    def admission(
        self, caller: Caller, started: Turn.Started, worth: int, client: str
    ) -> Admission:
        """The limits of this start: counted with the start itself (see the store)."""
        limits = self.limits
        day, week = period_starts(started.timestamp)
        return Admission(
            tenant=caller.tenant,
            user_id=caller.user_id,
            reserve=worth,
            max_running=limits.concurrent_turns,
            max_turns=self.guests.messages if caller.guest else 0,
            quota_day=limits.daily_tokens,
            quota_week=limits.weekly_tokens,
            day=day,
            week=week,
            per_minute=limits.messages_per_minute,
            rate_keys=(f"user:{user_key(caller.tenant, caller.user_id)}", f"addr:{client}"),
        )

    async def refusal(self, a: Admission, f: Admitted) -> LimitExceeded:
        """Which limit refused a turn, with when to try again."""
        if a.max_turns and f.turns >= a.max_turns:
            return LoginRequired(
                f"A guest may send {a.max_turns} messages; sign in to go on.",
                retry_after=self.guests.token_ttl_s,
                limit=a.max_turns,
            )
        if a.per_minute and f.rate_taken < len(set(a.rate_keys)):
            retry_after = await self.run(self._wait, a.rate_keys, a.per_minute)
            return LimitExceeded(
                f"At most {a.per_minute} messages a minute; try again in {retry_after} s.",
                retry_after=retry_after,
                limit=a.per_minute,
            )
        if a.max_running and f.running >= a.max_running:
            return TooManyTurns(
                f"At most {a.max_running} turns may run at once; wait for one to end.",
                retry_after=RETRY_SOON_S,
                limit=a.max_running,
            )
        for quota, used, start, period, name in (
            (a.quota_day, f.used_day, a.day, "day", "daily"),
            (a.quota_week, f.used_week, a.week, "week", "weekly"),
        ):
            if quota and used + f.pending >= quota:
                assert start is not None
                return self._quota_refusal(quota, used, start, period, name)
        return TooManyTurns("The turn could not be admitted; try again.", retry_after=1)

    @staticmethod
    def _quota_refusal(
        quota: int, used: int, start: date, period: str, name: str
    ) -> QuotaExhausted:
        _, resets = period_bounds(period, start)
        if used >= quota:
            wait = max(1, math.ceil((resets - utcnow()).total_seconds()))
            detail = (
                f"The {name} quota of {quota} tokens is used up until {resets:%Y-%m-%d %H:%M} UTC."
            )
        else:
            wait = RETRY_SOON_S
            detail = (
                f"The {name} quota of {quota} tokens is held by turns still running;"
                " try again when they end."
            )
        return QuotaExhausted(
            detail, retry_after=wait, limit=quota, used=used, resets_at=resets.isoformat()
        )

    async def guest_allowed(self, client: str) -> None:
        """Guest tokens are handed out under the per-address rate limit."""
        per_minute = self.limits.messages_per_minute
        if per_minute:
            retry_after = await self.run(self._take, [f"guest:{client}"], per_minute)
            if retry_after:
                raise LimitExceeded(
                    f"At most {per_minute} guest sessions a minute from one address.",
                    retry_after=retry_after,
                    limit=per_minute,
                )

    def forget_past(self) -> None:
        """Delete the rate-limit cells of the past (nothing depends on them)."""
        with self.app.store.datastore.get_connection() as conn:
            self.limiter.forget_past(conn)

    def create_tables(self) -> None:
        with self.app.connect() as conn:
            self.limiter.create(conn)

    def _take(self, keys: list[str], per_minute: int) -> int:
        with self.app.store.datastore.get_connection() as conn:
            return self.limiter.take(conn, keys, per_minute)

    def _wait(self, keys: tuple[str, ...], per_minute: int) -> int:
        with self.app.store.datastore.get_connection() as conn:
            return self.limiter.wait(conn, keys, per_minute)
