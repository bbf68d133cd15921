"""While PostgreSQL is away, store calls answer 503 at once; when it returns, they work.

Without this, a request during an outage waits on the connection pool (its time-out)
for each of the event store library's ten retries: a minute and more per request, and
the pool's own reconnection backs off to tens of seconds after PostgreSQL is back. The
first store call that fails marks the store down; from then on calls fail fast with
``ServiceUnavailable`` (503 with ``Retry-After``) while a watcher connects directly,
twice a second, and on its first success has the pool drop its dead connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from turnstream.domain.errors import ServiceUnavailable

log = logging.getLogger(__name__)

WATCH_EVERY_S = 0.5


class StoreGuard:
    """Whether the store is known to be down, and the watch for its return."""

    def __init__(self, probe: Callable[[], None], *, every_s: float = WATCH_EVERY_S) -> None:
        self._probe = probe
        """Connects and asks the store something; raises while it is away (a thread)."""
        self._every_s = every_s
        self._down_since: float | None = None
        self._watch: asyncio.Task[None] | None = None

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def check(self) -> None:
        """Raise ``ServiceUnavailable`` at once while the store is known to be down."""
        if self._down_since is not None:
            raise ServiceUnavailable("The event store is unavailable; try again.")

    def failed(self, exc: BaseException) -> None:
        """A store call failed for want of the store: fail fast until it is back."""
        if self._down_since is not None:
            return
        self._down_since = time.monotonic()
        log.warning("PostgreSQL unavailable (%s); store calls answer 503 until it is back", exc)
        self._watch = asyncio.get_running_loop().create_task(
            self._wait_for_return(), name="turnstream-store-watch"
        )

    async def _wait_for_return(self) -> None:
        while True:
            await asyncio.sleep(self._every_s)
            try:
                await asyncio.to_thread(self._probe)
            except Exception as exc:  # still away: whatever the probe raised says so
                log.debug("PostgreSQL still unavailable: %s", exc)
                continue
            assert self._down_since is not None
            log.warning("PostgreSQL is back after %.1f s", time.monotonic() - self._down_since)
            self._down_since = None
            return

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
