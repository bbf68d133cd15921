"""The process's NATS connection and the JetStream stream the relay writes to.

The connection is made in the background and kept for the process's life: the service
starts, serves and stores turns while NATS is down (the store is the source of truth),
and the relay and cross-node readers resume when it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig, StreamInfo
from nats.js.errors import NotFoundError

from turnstream.settings import NatsSettings

log = logging.getLogger(__name__)

BROKER_OUTAGE: tuple[type[Exception], ...] = (
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionDrainingError,
    nats.errors.NoServersError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.TimeoutError,
)
"""What NATS being away looks like to a request: 503, retry later."""


def stream_config(nats: NatsSettings) -> StreamConfig:
    """The contract's stream: ``<prefix>.>``, limits retention, on disk.

    Only fields NATS 2.9 knows are set, so the same config works on 2.9 and 2.10+.
    """
    return StreamConfig(
        name=nats.stream,
        description="turnstream: every stored event, in commit order",
        subjects=[f"{nats.subject_prefix}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        num_replicas=nats.replicas,
        max_age=nats.max_age_s or None,
        max_bytes=nats.max_bytes or -1,
        duplicate_window=nats.duplicate_window_s,
    )


_COMPARED = ("subjects", "num_replicas", "max_age", "max_bytes", "duplicate_window", "discard")


async def ensure_stream(js: JetStreamContext, nats: NatsSettings) -> StreamInfo:
    """Create the stream, or update it where its settings differ from ours."""
    wanted = stream_config(nats)
    try:
        info = await js.stream_info(wanted.name or "")
    except NotFoundError:
        log.info("creating JetStream stream %s", wanted.name)
        return await js.add_stream(wanted)
    have = info.config
    diff = [
        name
        for name in _COMPARED
        if _norm(name, getattr(have, name)) != _norm(name, getattr(wanted, name))
    ]
    if not diff:
        return info
    log.info("updating JetStream stream %s: %s", wanted.name, ", ".join(diff))
    return await js.update_stream(wanted)


def _norm(name: str, value: Any) -> Any:
    if name in ("max_age", "duplicate_window"):
        return round(float(value or 0), 3)
    if name == "max_bytes":
        return -1 if value in (None, 0) else value
    if name == "subjects":
        return sorted(value or [])
    return value


def servers_of(url: str) -> list[str]:
    """The server URLs of a setting that may list a cluster's nodes, comma-separated."""
    return [part.strip() for part in url.split(",") if part.strip()]


class NatsLink:
    """One NATS connection for the process, made in the background and kept.

    ``ready`` is set once connected with the stream in place.
    """

    def __init__(self, url: str, nats: NatsSettings, *, name: str = "turnstream") -> None:
        self.url = url
        self.settings = nats
        self.name = name
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._connect(), name="turnstream-nats")

    @property
    def connected(self) -> bool:
        return self.ready.is_set() and self.nc is not None and self.nc.is_connected

    async def _connect(self) -> None:
        async def disconnected() -> None:
            log.warning("NATS disconnected; the store keeps every event until it returns")

        async def reconnected() -> None:
            log.info("NATS reconnected")

        async def error(exc: Exception) -> None:
            log.debug("NATS: %s", exc)

        # With max_reconnect_attempts=-1 the first connect also waits for the server.
        self.nc = await nats.connect(
            servers_of(self.url),
            name=self.name,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=2,
            ping_interval=5,
            max_outstanding_pings=2,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            error_cb=error,
        )
        self.js = self.nc.jetstream(timeout=5)  # the relay publishes with bus.acks
        delay = 0.2
        while True:
            try:
                await ensure_stream(self.js, self.settings)
                break
            except Exception as exc:  # any API failure: keep trying, the service runs on
                log.warning("JetStream stream %s not ready: %s", self.settings.stream, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        log.info("NATS ready at %s (stream %s)", self.url, self.settings.stream)
        self.ready.set()

    async def ping(self) -> bool:
        """NATS answers now (for /readyz)."""
        if not self.connected or self.nc is None:
            return False
        try:
            await self.nc.flush(timeout=2)
        except Exception:  # any failure means "not reachable"; the probe says no more
            return False
        return True

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.drain(), 3)
            if not self.nc.is_closed:
                with contextlib.suppress(Exception):
                    await self.nc.close()
