"""The relay: every stored event onto JetStream, once, in position order.

How exactly-once holds without trusting JetStream's duplicate window:

- The stream only ever holds a prefix of the log, in order. Every publish carries
  ``Nats-Expected-Last-Sequence``: the message for the i-th event after the stream's
  last message expects that message's sequence + i - 1, and JetStream refuses it
  otherwise. A message lost in flight, a publish left over from a dead relay, or a
  second relay that thinks it leads can never store an event twice or out of order.
- On start, and after any error, the relay asks the stream where it stands: the
  ``Turnstream-Position`` header of its last message is the last relayed event. If
  retention already removed that message, a checkpoint in PostgreSQL (a stream
  sequence and its position, written after acks) plus the count of messages since
  maps the stream's last sequence back to a position exactly.
- One relay is active per store and stream: it holds a PostgreSQL advisory lock on its
  connection; standbys try every ``relay_takeover_s``, and the lock frees the moment the
  active relay's process dies.

Memory is bounded: one page of ``relay_batch`` events is read at a time, and at most two
pages of publishes wait for their acks before the next page is read (back-pressure).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from nats.js.errors import NotFoundError
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Identifier

from turnstream.bus.acks import AckInbox
from turnstream.bus.envelope import (
    EXPECTED_LAST_SEQ,
    MSG_ID,
    POSITION,
)
from turnstream.bus.messages import Message, Messages, RelayError
from turnstream.bus.nats import NatsLink
from turnstream.settings import NatsSettings, RelaySettings
from turnstream.store.application import TurnstreamApplication

log = logging.getLogger(__name__)

RELAY_LOCK_CLASS = 0x72656C79  # "rely"
OWNER_CACHE = 100_000
ACK_TIMEOUT_S = 10.0
PROGRESS_EVERY_S = 5.0


def relay_lock_key(schema: str, stream: str) -> int:
    """The advisory lock of the active relay of one store and stream (a bigint)."""
    digest = hashlib.blake2b(f"{schema}/{stream}".encode(), digest_size=4).digest()
    return (RELAY_LOCK_CLASS << 32) | int.from_bytes(digest, "big")


def relay_part(stream: str) -> str:
    """The relay of ``stream``'s name among the parts that note repairs."""
    return f"relay/{stream}"


def checkpointed_position(app: TurnstreamApplication, stream: str) -> int:
    """The log position of the last checkpoint of ``stream``'s relay (0 before its first).

    The relay may run in another process; its checkpoint is what any process can read.
    """
    query = SQL("SELECT position FROM {} WHERE stream = %s").format(app.store.relay_table)
    with app.store.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(query, (stream,)).fetchone()
    return 0 if row is None else int(row[0])


class ResyncNeeded(Exception):
    """The stream is not where this relay thought: read its state again."""


@dataclass
class RelayStatus:
    active: bool = False
    position: int = 0
    """The last event the stream is known to hold."""
    stream_seq: int = 0
    published: int = 0
    resyncs: int = 0
    last_error: str | None = None


class Relay:
    """Follows the store's notification log and publishes it on JetStream."""

    def __init__(
        self,
        app: TurnstreamApplication,
        link: NatsLink,
        *,
        relay: RelaySettings,
        nats: NatsSettings,
        run: Callable[..., Awaitable[Any]] | None = None,
    ) -> None:
        self.app = app
        self.link = link
        self.stream = nats.stream
        self.prefix = nats.subject_prefix
        self.batch = max(1, relay.batch)
        self.takeover_s = relay.takeover_s
        self.status = RelayStatus()
        self._run_sync = run
        self._draining = False
        store = app.store
        self._events = store.events_table
        self._checkpoints = store.relay_table
        self._channel = store.channel_name
        self._deltas_channel = store.deltas_channel
        self._lock_key = relay_lock_key(store.datastore.schema, self.stream)
        self._messages = Messages(app, self.prefix, relay_part(self.stream))

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._run_sync is not None:
            return await self._run_sync(fn, *args)
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    # The outer loop: lead or stand by, and start over after any failure.

    @property
    def draining(self) -> bool:
        return self._draining

    def drain(self) -> None:
        """Stop once the stream holds everything stored so far.

        A relay that finds another leading stops at once: that one publishes the rest.
        """
        self._draining = True

    async def run_forever(self) -> None:
        """Lead or stand by until cancelled, or until :meth:`drain` is done."""
        delay = 0.2
        while True:
            conn: psycopg.Connection[Any] | None = None
            try:
                await self.link.ready.wait()
                conn = await self._call(self.app.connect)
                if not await self._call(self._try_lead, conn):
                    await self._call(conn.close)
                    conn = None
                    if self._draining:
                        return
                    await asyncio.sleep(self.takeover_s)
                    continue
                log.info("relay active for stream %s", self.stream)
                self.status.active = True
                delay = 0.2
                await self._relay(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS, PostgreSQL or a refused publish: start over
                self.status.last_error = f"{type(exc).__name__}: {exc}"
                level = logging.ERROR if isinstance(exc, RelayError) else logging.WARNING
                log.log(level, "relay stopped (%s); resuming from the stream's state", exc)
                if conn is not None:
                    # Let go of the lead before the pause, so that this relay (or a
                    # standby) can take it at once rather than after a takeover period.
                    self.status.active = False
                    with contextlib.suppress(Exception):
                        await self._call(self._release, conn)
                    conn = None
                if self._draining:
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.takeover_s * 2)
            else:
                return  # _relay returns only once drained
            finally:
                self.status.active = False
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()

    def _release(self, conn: psycopg.Connection[Any]) -> None:
        with contextlib.suppress(Exception):
            conn.execute("SELECT pg_advisory_unlock(%s)", (self._lock_key,))
        with contextlib.suppress(Exception):
            conn.close()

    def _try_lead(self, conn: psycopg.Connection[Any]) -> bool:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self._lock_key,)).fetchone()
        if not (row and row[0]):
            return False
        conn.execute(SQL("LISTEN {}").format(Identifier(self._channel)))
        conn.execute(SQL("LISTEN {}").format(Identifier(self._deltas_channel)))
        return True

    # Where the stream stands.

    async def resume_point(self, conn: psycopg.Connection[Any]) -> tuple[int, int]:
        """(position, stream sequence) of the last event the stream holds."""
        js = self.link.js
        assert js is not None
        info = await js.stream_info(self.stream)
        last_seq = info.state.last_seq
        if last_seq == 0:
            return 0, 0
        try:
            last = await js.get_msg(self.stream, last_seq)
        except NotFoundError:
            last = None
        if last is not None and last.headers and POSITION in last.headers:
            position = int(last.headers[POSITION])
            stored = await self._call(self._event_id_at, conn, position)
            if stored != last.headers.get(MSG_ID):
                msg = (
                    f"stream {self.stream} ends with event {last.headers.get(MSG_ID)} at position"
                    f" {position}, but the store holds {stored or 'nothing'} there: the stream"
                    " belongs to another store; see README, 'Relay recovery'"
                )
                raise RelayError(msg)
            return position, last_seq
        # Retention removed the last message: count on from the checkpoint.
        checkpoint = await self._call(self._read_checkpoint, conn)
        if checkpoint is None or checkpoint[0] > last_seq:
            msg = (
                f"stream {self.stream} is at sequence {last_seq} but its last message is gone"
                " and no usable checkpoint exists; see README, 'Relay recovery'"
            )
            raise RelayError(msg)
        seq, position = checkpoint
        if seq == last_seq:
            return position, last_seq
        found = await self._call(self._nth_after, conn, position, last_seq - seq)
        if found is None:
            msg = f"stream {self.stream} holds more events than the store after {position}"
            raise RelayError(msg)
        return found, last_seq

    def _event_id_at(self, conn: psycopg.Connection[Any], position: int) -> str | None:
        row = conn.execute(
            SQL(
                "SELECT originator_id, originator_version FROM {} WHERE notification_id = %s"
            ).format(self._events),
            (position,),
        ).fetchone()
        return None if row is None else f"{row[0]}:{row[1]}"

    def _read_checkpoint(self, conn: psycopg.Connection[Any]) -> tuple[int, int] | None:
        row = conn.execute(
            SQL("SELECT stream_seq, position FROM {} WHERE stream = %s").format(self._checkpoints),
            (self.stream,),
        ).fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    def _write_checkpoint(self, conn: psycopg.Connection[Any], seq: int, position: int) -> None:
        conn.execute(
            SQL(
                "INSERT INTO {} (stream, stream_seq, position) VALUES (%s, %s, %s)"
                " ON CONFLICT (stream) DO UPDATE SET stream_seq = excluded.stream_seq,"
                " position = excluded.position, updated_at = now()"
            ).format(self._checkpoints),
            (self.stream, seq, position),
        )

    def _nth_after(self, conn: psycopg.Connection[Any], position: int, n: int) -> int | None:
        row = conn.execute(
            SQL(
                "SELECT notification_id FROM {} WHERE notification_id > %s"
                " ORDER BY notification_id OFFSET %s LIMIT 1"
            ).format(self._events),
            (position, n - 1),
        ).fetchone()
        return None if row is None else int(row[0])

    # Reading the store.

    def _next(self, conn: psycopg.Connection[Any], after: int, wait_s: float) -> list[Message]:
        """The next page after ``after``; with ``wait_s``, first block until the store
        notifies a commit (or ``wait_s`` passes). One call, so one thread hop a commit.

        A commit notified since the last page was read is in psycopg's backlog and ends
        the wait at once, so no commit waits for the timeout.
        """
        if wait_s:
            for _ in conn.notifies(timeout=wait_s, stop_after=1):
                pass
        return self._messages.after(conn, after, self.batch)

    # The inner loop, while leading.

    async def _relay(self, conn: psycopg.Connection[Any]) -> None:
        nc = self.link.nc
        assert nc is not None
        position, seq = await self.resume_point(conn)
        self.status.position, self.status.stream_seq = position, seq
        self.status.resyncs += 1
        log.info("relay resumes after position %d (stream sequence %d)", position, seq)
        acks = AckInbox(nc)
        await acks.open()
        inflight: deque[tuple[int, int]] = deque()
        window = 2 * self.batch
        read_at = position
        checkpoint: tuple[int, float] = (-1, 0.0)  # (stream sequence, when) last written
        report_at = (time.monotonic(), self.status.published)
        # A full page: the next is read (in a thread) while this one is published. A
        # short one held everything committed before it was read: publish it, then wait
        # for the next commit.
        fetch = asyncio.ensure_future(self._call(self._next, conn, read_at, 0.0))
        fetched_draining = self._draining
        try:
            while True:
                messages: list[Message] = await fetch
                if messages:
                    read_at = messages[-1][2]
                    caught_up = len(messages) < self.batch
                    if not caught_up:
                        fetch = asyncio.ensure_future(self._call(self._next, conn, read_at, 0.0))
                        fetched_draining = self._draining
                    for subject, body, pos, event_id in messages:
                        headers = {
                            MSG_ID: event_id,
                            POSITION: str(pos),
                            EXPECTED_LAST_SEQ: str(seq),
                        }
                        seq += 1
                        await acks.publish(subject, body, headers, seq)
                        inflight.append((seq, pos))
                    await self._settle(acks, inflight, window - self.batch)
                    report_at = self._report(report_at)
                    if not caught_up:
                        continue
                await self._settle(acks, inflight, 0)
                # Caught up: note where the stream stands, at most once a second.
                seq_now = self.status.stream_seq
                if seq_now and seq_now != checkpoint[0] and time.monotonic() - checkpoint[1] > 1:
                    await self._call(self._write_checkpoint, conn, seq_now, self.status.position)
                    checkpoint = (seq_now, time.monotonic())
                if fetched_draining:  # that page was read after drain() was asked
                    return
                if not self.link.connected:
                    msg = "NATS connection lost"
                    raise ConnectionError(msg)
                wait_s = 0.0 if self._draining else 0.5
                fetch = asyncio.ensure_future(self._call(self._next, conn, read_at, wait_s))
                fetched_draining = self._draining
        finally:
            with contextlib.suppress(Exception):
                await acks.close()
            # The connection is closed next: let the thread finish with it first.
            with contextlib.suppress(BaseException):
                await fetch

    def _report(self, last: tuple[float, int]) -> tuple[float, int]:
        """While catching up, a progress line every few seconds: where, how fast."""
        now = time.monotonic()
        if now - last[0] < PROGRESS_EVERY_S:
            return last
        published = self.status.published
        rate = (published - last[1]) / (now - last[0])
        log.info(
            "relay at position %d (stream sequence %d), %.0f events/s",
            self.status.position,
            self.status.stream_seq,
            rate,
        )
        return now, published

    async def _settle(self, acks: AckInbox, inflight: deque[tuple[int, int]], keep: int) -> None:
        """Wait for acks, oldest first, until at most ``keep`` publishes are in flight."""
        while len(inflight) > keep:
            seq, pos = inflight[0]
            ack = acks.poll(seq)  # a refused publish raises here
            if ack is None:
                # One wait for the oldest; the acks behind it are mostly in by then.
                try:
                    async with asyncio.timeout(ACK_TIMEOUT_S):
                        ack = await acks.take(seq)
                except TimeoutError:
                    msg = f"no ack for position {pos} within {ACK_TIMEOUT_S:g} s"
                    raise TimeoutError(msg) from None
            inflight.popleft()
            if ack.duplicate or ack.seq != seq:
                # The stream already held this event, or holds it elsewhere: whatever
                # follows is refused by its expected sequence; start over from the stream.
                answer = "a duplicate of" if ack.duplicate else "stored at"
                msg = f"position {pos}: the stream called it {answer} sequence {ack.seq}"
                msg += f", where this relay expected a new message at {seq}"
                raise ResyncNeeded(msg)
            self.status.position, self.status.stream_seq = pos, seq
            self.status.published += 1
