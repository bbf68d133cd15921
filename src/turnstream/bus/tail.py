"""``turnstream tail``: the relayed events as JSON lines, from any offset.

The stream holds only relay messages, so stream sequence *n* is the *n*-th relayed event
and ``Turnstream-Position`` grows with the sequence (with holes). tail reads with an
ordered push consumer: ephemeral, in memory, flow-controlled, and gone when tail exits.

Where it starts:

- ``--from-seq N``: the message with stream sequence N (or the first after it that the
  stream still holds);
- ``--since T``: JetStream's start-by-time (a duration back from now or a point in time);
- ``--position P``: the first message whose position is at least P, found by a binary
  search over stream sequences with direct message reads (``js.get_msg``, NATS 2.9+);
- otherwise the stream's first message.

Without ``--follow`` it stops once it has printed every matching message the stream held
when it started: at the message with the stream's last sequence at start, at a message
with no more pending, or straight away when the consumer has nothing to deliver.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import BinaryIO
from urllib.parse import urlsplit

import nats
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError, NotFoundError

from turnstream.bus.envelope import POSITION
from turnstream.domain.durations import duration_s
from turnstream.settings import Settings

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 8.0
"""The most tail waits for NATS (a couple of refused or unanswered attempts) before failing."""
IDLE_CHECK_S = 1.0
"""Without --follow: how long a quiet consumer waits before asking the server if it is done."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(2262, 1, 1, tzinfo=UTC)


class TailError(Exception):
    """tail cannot go on; the message is one line for the operator."""


@dataclass(frozen=True)
class StartAt:
    """Where reading starts: at most one of the three is set (none: the first message)."""

    seq: int | None = None
    time: datetime | None = None
    position: int | None = None


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """``30s``, ``10m``, ``2h``, ``1d`` back from ``now``, or an ISO-8601 time.

    A time without a UTC offset is local time, as ``date`` prints it.

    Raises:
        ValueError: ``text`` is neither.
    """
    text = text.strip()
    seconds = duration_s(text, bare_seconds=False)
    if seconds is not None:
        return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    try:
        when = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        msg = f"{text!r} is neither a duration (30s, 10m, 2h, 1d) nor an ISO-8601 time"
        raise ValueError(msg) from None
    if when.tzinfo is None:
        when = when.astimezone()  # local time
    return when.astimezone(UTC)


def nats_url(settings: Settings) -> str:
    """``TURNSTREAM_NATS_URL``, else the embedded server that ``serve`` runs in the data folder.

    Raises:
        TailError: neither is known.
    """
    if settings.nats.url:
        return settings.nats.url
    from turnstream.embedded import EmbeddedNats

    port_file = EmbeddedNats(settings.server.data_dir).port_file
    try:
        port = int(port_file.read_text().strip())
    except (OSError, ValueError):
        msg = (
            "TURNSTREAM_NATS_URL is not set and no embedded NATS has run in"
            f" {settings.server.data_dir}: set TURNSTREAM_NATS_URL (e.g. nats://127.0.0.1:4222)"
        )
        raise TailError(msg) from None
    return f"nats://127.0.0.1:{port}"


def _where(url: str) -> str:
    """The URL without credentials, for messages."""
    try:
        parts = urlsplit(url)
        port = parts.port or 4222
    except ValueError:
        return "(unparsable NATS URL)"
    return f"{parts.scheme}://{parts.hostname}:{port}"


async def connect(url: str, *, follow: bool) -> Client:
    """A connection to ``url``, or :class:`TailError` within :data:`CONNECT_TIMEOUT_S`.

    nats-py's first connect retries a refused connection forever when reconnects are
    unlimited, so it gets a bounded number of attempts and a deadline; a follower then
    reconnects without limit, since an outage must not end it.
    """

    async def quiet(exc: Exception) -> None:
        log.debug("NATS: %s", exc)

    try:
        nc: Client = await asyncio.wait_for(
            nats.connect(
                url,
                name="turnstream-tail",
                connect_timeout=2,
                allow_reconnect=True,
                max_reconnect_attempts=2,
                reconnect_time_wait=0.5,
                ping_interval=10,
                max_outstanding_pings=3,
                error_cb=quiet,
            ),
            CONNECT_TIMEOUT_S,
        )
    except (OSError, NatsError, TimeoutError) as exc:
        reason = str(exc).removeprefix("nats: ") or type(exc).__name__
        msg = f"cannot reach NATS at {_where(url)}: {reason}"
        raise TailError(msg) from None
    if follow:
        nc.options["max_reconnect_attempts"] = -1
    return nc


async def _position_after(js: JetStreamContext, stream: str, seq: int) -> tuple[int, int] | None:
    """(sequence, position) of the first message at or after ``seq``; None past the end."""
    try:
        raw = await js.get_msg(stream, seq, subject=">", next=True)
    except NotFoundError:
        return None
    headers = raw.headers or {}
    if raw.seq is None or POSITION not in headers:
        msg = f"message {raw.seq} of stream {stream} has no {POSITION} header"
        raise TailError(msg)
    return raw.seq, int(headers[POSITION])


async def seq_for_position(js: JetStreamContext, stream: str, position: int) -> int:
    """The sequence to start at so the first message read is the first with ``position``
    or more: the stream's last sequence + 1 when no message has.

    Positions grow with sequences, so "the first message at or after sequence s has a
    position >= P (or there is none)" is false, then true, as s grows: a binary search
    over [first, last + 1] finds where it turns, whatever sequences were deleted or have
    expired, with O(log n) reads.
    """
    state = (await js.stream_info(stream)).state
    lo, hi = max(state.first_seq, 1), state.last_seq + 1
    if state.messages == 0:
        return hi
    while lo < hi:
        mid = (lo + hi) // 2
        found = await _position_after(js, stream, mid)
        if found is None or found[1] >= position:
            hi = mid
        else:
            lo = found[0] + 1  # nothing between mid and found[0] to look at
    return lo


async def tail(
    nc: Client,
    stream: str,
    subject: str,
    start: StartAt,
    out: BinaryIO,
    *,
    follow: bool,
) -> int:
    """Write each matching message's body and a newline to ``out``; return how many.

    Raises:
        TailError: the stream is missing, the subject is refused, or NATS went away.
    """
    js = nc.jetstream(timeout=5)
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        text = f"no stream {stream} on NATS (TURNSTREAM_NATS_STREAM); has serve relayed yet?"
        raise TailError(text) from None
    except NoRespondersError:
        text = "NATS answers but JetStream does not (is the server run with -js?)"
        raise TailError(text) from None
    last_at_start = info.state.last_seq

    config = ConsumerConfig()
    floor: int | None = 0  # the sequence reading starts after; None: the server finds it
    if start.position is not None:
        config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
        config.opt_start_seq = await seq_for_position(js, stream, start.position)
    elif start.seq is not None:
        config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
        config.opt_start_seq = start.seq
    elif start.time is not None:
        config.deliver_policy = DeliverPolicy.BY_START_TIME
        # The server compares times as int64 nanoseconds since 1970, which overflow after
        # 2262: a later time would wrap round to the stream's first message.
        config.opt_start_time = min(max(start.time, _EPOCH), _LATEST)
        floor = None
    if config.opt_start_seq is not None:
        floor = config.opt_start_seq - 1
    try:
        sub = await js.subscribe(subject, stream=stream, ordered_consumer=True, config=config)
    except APIError as exc:
        text = f"cannot read {subject!r} from stream {stream}: {exc.description or exc}"
        raise TailError(text) from None
    printed = 0
    last_seen = 0

    async def done() -> bool:
        """Nothing matching is left up to the stream's last sequence at start."""
        after = last_seen or floor
        if after is None:
            return await _nothing_to_deliver(sub)
        return not await _more_to_come(js, stream, subject, after, last_at_start)

    try:
        if not follow and await done():
            return 0
        while True:
            try:
                msg = await sub.next_msg(timeout=IDLE_CHECK_S)
            except TimeoutError:  # nats-py's, a subclass: nothing came
                if nc.is_closed:
                    text = "the NATS connection closed"
                    raise TailError(text) from None
                if not follow and await done():
                    return printed
                continue
            meta = msg.metadata
            seq = meta.sequence.stream
            last_seen = seq
            if not follow and seq > last_at_start:
                return printed  # arrived after we started
            if start.position is not None and _position(msg.headers) < start.position:
                continue  # --follow from a position the stream has not reached yet
            out.write(msg.data + b"\n")
            printed += 1
            if sub.pending_msgs == 0:
                out.flush()
            if follow:
                continue
            if seq >= last_at_start:
                return printed
            if meta.num_pending == 0 and await done():
                return printed
    finally:
        with contextlib.suppress(Exception):
            out.flush()
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def _more_to_come(
    js: JetStreamContext, stream: str, subject: str, after: int, last: int
) -> bool:
    """Whether the stream holds a message on ``subject`` after sequence ``after``, up to
    ``last``: asked of the stream itself, so the end never rests on a consumer's count."""
    try:
        raw = await js.get_msg(stream, max(after + 1, 1), subject=subject, next=True)
    except NotFoundError:
        return False
    return raw.seq is not None and raw.seq <= last


async def _nothing_to_deliver(sub: JetStreamContext.PushSubscription) -> bool:
    """A new consumer (started by time) that has delivered nothing and has nothing pending."""
    try:
        info = await sub.consumer_info()
    except NatsError:  # e.g. the ordered consumer is being recreated: not known yet
        return False
    delivered = info.delivered
    nothing_delivered = delivered is None or delivered.consumer_seq == 0
    return nothing_delivered and not info.num_pending and not sub.pending_msgs


def _position(headers: dict[str, str] | None) -> int:
    return int((headers or {}).get(POSITION, "0"))


def run(
    settings: Settings,
    *,
    subject: str | None,
    start: StartAt,
    follow: bool,
    out: BinaryIO | None = None,
) -> int:
    """Tail until done (or, with ``follow``, until SIGINT/SIGTERM); the exit status."""
    stream_out = out or sys.stdout.buffer
    subject = subject or f"{settings.nats.subject_prefix}.>"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        url = nats_url(settings)
        nc = await connect(url, follow=follow)
        try:
            await tail(nc, settings.nats.stream, subject, start, stream_out, follow=follow)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 3)

    try:
        asyncio.run(main())
    except asyncio.CancelledError:
        pass  # SIGINT or SIGTERM: a normal end
    except TailError as exc:
        print(f"turnstream tail: {exc}", file=sys.stderr)
        return 1
    except NatsError as exc:
        print(f"turnstream tail: NATS: {str(exc).removeprefix('nats: ')}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, as cat does, and keep the
        # interpreter's final flush of stdout from failing again.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
