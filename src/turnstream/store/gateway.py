"""The async face of the synchronous store: a bounded executor, and fast failure.

The eventsourcing library and psycopg's pool are synchronous. Store calls of requests
run on one bounded executor owned by the process, copying the caller's context
variables; while PostgreSQL is known to be away (see :class:`StoreGuard`) they fail at
once with ``ServiceUnavailable`` instead of waiting on the pool.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

import psycopg

from turnstream.domain.errors import ServiceUnavailable
from turnstream.store.application import TurnstreamApplication
from turnstream.store.guard import StoreGuard
from turnstream.store.recorder import STORE_OUTAGE

P = ParamSpec("P")
R = TypeVar("R")

STORE_THREADS = 16
"""Store calls in flight at once (the pool holds more connections than this)."""


class StoreGateway:
    """Runs store calls off the event loop; one per process."""

    def __init__(self, app: TurnstreamApplication, *, threads: int = STORE_THREADS) -> None:
        self.app = app
        self.executor = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="turnstream-store"
        )
        self.guard = StoreGuard(self._probe)

    async def run(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run a store call of a request. While PostgreSQL is away: ``ServiceUnavailable``
        at once, never a wait on the connection pool."""
        self.guard.check()
        try:
            return await self.run_unguarded(fn, *args, **kwargs)
        except STORE_OUTAGE as exc:
            self.guard.failed(exc)
            raise ServiceUnavailable("The event store is unavailable; try again.") from None

    async def queued(self, submit: Callable[P, Future[R]], *args: P.args, **kwargs: P.kwargs) -> R:
        """:meth:`run` for a call that a store thread of its own answers: ``submit``
        queues it there and returns its future (the start batcher's)."""
        self.guard.check()
        try:
            return await asyncio.wrap_future(submit(*args, **kwargs))
        except STORE_OUTAGE as exc:
            self.guard.failed(exc)
            raise ServiceUnavailable("The event store is unavailable; try again.") from None

    async def run_unguarded(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """:meth:`run` for a background worker that retries by itself (the relay)."""
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        call = functools.partial(ctx.run, fn, *args, **kwargs)
        return await loop.run_in_executor(self.executor, call)

    def _probe(self) -> None:
        """Raise unless PostgreSQL answers; once it does, the pool drops its dead
        connections (those it held when the store went away)."""
        with psycopg.connect(self.app.database_url, connect_timeout=3, autocommit=True) as conn:
            conn.execute("SELECT 1")
        self.app.store.datastore.pool.check()

    async def close(self) -> None:
        await self.guard.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
