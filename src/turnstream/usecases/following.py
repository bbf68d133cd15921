"""Following a turn: its frames after a seq from the store, then live until its end.

A reader subscribes (to this node's bus, and to NATS when the turn runs elsewhere)
before it reads the store, so nothing committed in between is missed, and drops by
``seq`` what the store read already gave, so nothing is sent twice. Live frames come
from this node's writer when the turn runs here, else from NATS (the relay's
messages), with a store read as a safety net; with NATS away, the store is polled.

A reader gets the turn's events, and None for "nothing for a while" (a keep-alive):
each wire format (the SSE frames, the AI SDK's UI message stream) is an adapter of the
HTTP part that encodes them, over this one way of following a turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from uuid import UUID

import msgspec
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from turnstream.bus.envelope import decode_envelope, event_of, turn_wildcard
from turnstream.bus.local import Frame, LocalBus, frame
from turnstream.bus.nats import NatsLink
from turnstream.domain.errors import ServiceUnavailable
from turnstream.domain.turn import TurnEvent
from turnstream.metrics import Metrics
from turnstream.settings import SseSettings, TurnSettings
from turnstream.store.application import TurnstreamApplication
from turnstream.store.gateway import StoreGateway

log = logging.getLogger(__name__)


async def _get(queue: asyncio.Queue[Frame], within_s: float) -> Frame:
    """The next frame, or TimeoutError after ``within_s``. (``asyncio.timeout`` rather
    than ``wait_for``, which on 3.11 makes a task of every wait: once per frame.)"""
    async with asyncio.timeout(max(within_s, 0.0)):
        return await queue.get()


class Follower:
    def __init__(
        self,
        *,
        app: TurnstreamApplication,
        gateway: StoreGateway,
        bus: LocalBus,
        link: NatsLink | None,
        metrics: Metrics,
        sse: SseSettings,
        turns: TurnSettings,
        subject_prefix: str,
    ) -> None:
        self.app = app
        self.gateway = gateway
        self.bus = bus
        self.link = link
        self.metrics = metrics
        self.ping_every_s = sse.ping_interval_s
        self.remote_poll_s = turns.remote_poll_interval_s
        self.store_poll_s = turns.store_poll_interval_s
        self.prefix = subject_prefix

    async def follow(
        self,
        tenant: str,
        conversation_id: UUID,
        turn_id: UUID,
        after: int = 0,
        known: Sequence[TurnEvent] = (),
        *,
        until: float | None = None,
    ) -> AsyncIterator[TurnEvent | None]:
        """The turn's events after ``after``, then live until its terminal event; None
        after ``ping_interval_s`` without one (the adapter sends a keep-alive).

        ``known``: committed events of the turn the caller holds (a start's
        ``turn.started``); those that continue ``after`` are sent without a store read,
        one round trip less before a new turn's first frame.
        ``until``: a ``time.monotonic()`` deadline; the reader stops there, wherever the
        turn is (a stream that ends on purpose, resumed by its client).
        """
        run, bus = self.gateway.run, self.bus
        queue = bus.subscribe(turn_id)
        remote = await self._subscribe_remote(tenant, conversation_id, turn_id, queue)
        last = after
        last_sent = time.monotonic()
        self.metrics.open_streams.inc()
        try:
            held: Sequence[TurnEvent] = [e for e in known if e.originator_version > last]
            while True:
                from_store = not (held and held[0].originator_version == last + 1)
                events = await run(self.app.turn_events, turn_id, last) if from_store else held
                held = []
                for event in events:
                    yield event
                    last = event.originator_version
                    if event.TERMINAL:
                        return
                if not from_store and not bus.is_running(turn_id):
                    continue  # it ended before this reader subscribed: read the rest
                if events:
                    last_sent = time.monotonic()
                elif not bus.is_running(turn_id) and await run(self.app.turn_ended, turn_id):
                    return  # the client already has the terminal frame
                # Live: frames from the local writer, or a store poll for a turn
                # that runs elsewhere (or whose runner is gone).
                while True:
                    now = time.monotonic()
                    if until is not None and now >= until:
                        return
                    wait = self.ping_every_s - (now - last_sent)
                    if not bus.is_running(turn_id):
                        live = remote is not None and self.link is not None and self.link.connected
                        wait = min(wait, self.remote_poll_s if live else self.store_poll_s)
                    if until is not None:
                        wait = min(wait, until - now)
                    try:
                        item = queue.get_nowait() if queue.qsize() else await _get(queue, wait)
                    except TimeoutError:
                        if time.monotonic() - last_sent >= self.ping_every_s:
                            yield None
                            last_sent = time.monotonic()
                        if not bus.is_running(turn_id):
                            break  # poll the store
                        continue
                    if item.seq <= last:
                        continue
                    if item.seq != last + 1:
                        break  # a gap (should not happen): fill it from the store
                    yield item.event
                    last = item.seq
                    last_sent = time.monotonic()
                    if item.terminal:
                        return
        except ServiceUnavailable:
            # The store went away: end the stream; the client resumes from its last id.
            log.info("stream of turn %s ended after seq %d: no store", turn_id, last)
        finally:
            self.metrics.open_streams.dec()
            bus.unsubscribe(turn_id, queue)
            if remote is not None:
                with contextlib.suppress(Exception):
                    await remote.unsubscribe()

    async def _subscribe_remote(
        self, tenant: str, conversation_id: UUID, turn_id: UUID, queue: asyncio.Queue[Frame]
    ) -> Subscription | None:
        """Feed ``queue`` from NATS when the turn runs on another node (None otherwise)."""
        link = self.link
        if self.bus.is_running(turn_id) or link is None or link.nc is None or not link.connected:
            return None

        async def deliver(msg: Msg) -> None:
            try:
                event = event_of(decode_envelope(msg.data))
            except (msgspec.DecodeError, msgspec.ValidationError, KeyError):
                log.warning("ignoring a malformed message on %s", msg.subject)
                return
            queue.put_nowait(frame(event))  # type: ignore[arg-type]

        subject = turn_wildcard(self.prefix, tenant, conversation_id, turn_id)
        sub: Subscription | None = None
        try:
            sub = await link.nc.subscribe(subject, cb=deliver)
            # The server has the subscription before the store is read: nothing relayed
            # in between can slip past both.
            await link.nc.flush(timeout=2)
        except Exception as exc:  # NATS trouble: the reader falls back to store polling
            log.debug("no live NATS feed for turn %s: %s", turn_id, exc)
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            return None
        return sub
