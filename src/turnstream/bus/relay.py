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
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple
from uuid import UUID

import msgspec
import psycopg
from nats.js.api import PubAck
from nats.js.errors import NotFoundError
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Identifier

from turnstream.bus.envelope import (
    EXPECTED_LAST_SEQ,
    MSG_ID,
    POSITION,
    TOPIC_TYPES,
    TURN_TOPICS,
    conversation_subject,
    turn_subject,
)
from turnstream.bus.nats import NatsLink
from turnstream.domain.application import TurnstreamApplication
from turnstream.identities import is_tenant

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


class StoredRow(NamedTuple):
    position: int
    originator_id: UUID
    version: int
    topic: str
    state: bytes


Message = tuple[str, bytes, int, str]
"""What the relay publishes for one event: subject, body, position, msg id."""


class _Head(msgspec.Struct):
    """The few fields of a stored event the envelope needs (msgspec skips the rest)."""

    timestamp: str
    tenant: str | None = None
    conversation_id: UUID | None = None


class _Owner(NamedTuple):
    """An aggregate's place in the subjects, as text, from its first event."""

    tenant: str
    conversation_id: str
    turn_id: str | None
    id: str
    subject: str
    """The subject of its events, up to their type."""
    encoded: bool = False
    """Whether the tenant had to be encoded to be a subject token (see ``tenant_token``)."""


class _Wire(msgspec.Struct):
    """The envelope as the relay writes it (ids already text; ``data`` the stored bytes)."""

    id: str
    type: str
    tenant: str
    conversation_id: str
    turn_id: str | None
    seq: int
    position: int
    occurred_at: str
    data: msgspec.Raw


_head = msgspec.json.Decoder(_Head)
_wire = msgspec.json.Encoder()


class ResyncNeeded(Exception):
    """The stream is not where this relay thought: read its state again."""


class RelayError(Exception):
    """The stream and the store disagree in a way the relay cannot repair by itself."""


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
        run: Callable[..., Awaitable[Any]] | None = None,
    ) -> None:
        self.app = app
        self.link = link
        self.settings = link.settings
        self.stream = self.settings.nats_stream
        self.prefix = self.settings.nats_subject_prefix
        self.batch = max(1, self.settings.relay_batch)
        self.takeover_s = self.settings.relay_takeover_s
        self.status = RelayStatus()
        self._run_sync = run
        self._owners: OrderedDict[UUID, _Owner] = OrderedDict()
        self._draining = False
        store = app.store
        self._events = store.events_table
        self._checkpoints = store.relay_table
        self._channel = store.channel_name
        self._lock_key = relay_lock_key(store.datastore.schema, self.stream)
        self._page_sql = SQL(
            "SELECT notification_id, originator_id, originator_version, topic, state"
            " FROM {} WHERE notification_id > %s ORDER BY notification_id LIMIT %s"
        ).format(self._events)
        self._owner_sql = SQL(
            "SELECT originator_id, topic, state FROM {}"
            " WHERE originator_id = ANY(%s) AND originator_version = 1"
        ).format(self._events)

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

    def _page(self, conn: psycopg.Connection[Any], after: int) -> list[StoredRow]:
        # The query sees every commit notified so far: drop those notifications (psycopg
        # keeps the ones that arrive outside notifies() in a backlog; keep it small).
        for _ in conn.notifies(timeout=0):
            pass
        # Binary results: bytea arrives as bytes, without hex decoding.
        with conn.cursor(row_factory=tuple_row, binary=True) as cur:
            cur.execute(self._page_sql, (after, self.batch))
            return [StoredRow(r[0], r[1], r[2], r[3], bytes(r[4])) for r in cur.fetchall()]

    def _wait(self, conn: psycopg.Connection[Any], timeout: float) -> None:
        """Block until the store notifies a commit (or the timeout passes).

        A commit notified since the last page read is in psycopg's backlog and ends
        the wait at once, so no commit waits for the timeout.
        """
        for _ in conn.notifies(timeout=timeout, stop_after=1):
            pass

    def _lookup_owners(self, conn: psycopg.Connection[Any], ids: list[UUID]) -> None:
        with conn.cursor(row_factory=tuple_row) as cur:
            cur.execute(self._owner_sql, (ids,))
            for originator_id, topic, state in cur.fetchall():
                head = _head.decode(state)
                if head.tenant is not None:
                    self._remember(originator_id, topic in TURN_TOPICS, head)

    def _remember(self, aggregate_id: UUID, is_turn: bool, first: _Head) -> _Owner:
        """Note what the subject and envelope of an aggregate's events need, from its first."""
        assert first.tenant is not None
        text = str(aggregate_id)
        encoded = not is_tenant(first.tenant)
        if is_turn:
            assert first.conversation_id is not None
            conversation_id = str(first.conversation_id)
            subject = turn_subject(
                self.prefix, first.tenant, first.conversation_id, aggregate_id, ""
            )
            owner = _Owner(first.tenant, conversation_id, text, text, subject, encoded)
        else:
            subject = conversation_subject(self.prefix, first.tenant, aggregate_id, "")
            owner = _Owner(first.tenant, text, None, text, subject, encoded)
        owners = self._owners
        owners[aggregate_id] = owner
        if len(owners) > OWNER_CACHE:
            owners.popitem(last=False)
        return owner

    # Building messages.

    def _messages(self, conn: psycopg.Connection[Any], rows: list[StoredRow]) -> list[Message]:
        """(subject, body, position, msg id) for each row, in order.

        Every stored event is published, whatever it holds: one whose tenant is not a
        subject token goes out on the encoded token, and is noted once as a repair.
        """
        owners = self._owners
        encoded: list[tuple[int, str]] = []
        missing = [r.originator_id for r in rows if r.version > 1 and r.originator_id not in owners]
        if missing:
            self._lookup_owners(conn, list(dict.fromkeys(missing)))
        out: list[Message] = []
        for row in rows:
            kind = TOPIC_TYPES.get(row.topic)
            if kind is None:
                msg = f"event at position {row.position} has an unknown topic {row.topic!r}"
                raise RelayError(msg)
            state = row.state
            head = _head.decode(state)
            if row.version == 1 and head.tenant is not None:
                owner: _Owner | None = self._remember(
                    row.originator_id, row.topic in TURN_TOPICS, head
                )
            else:
                owner = owners.get(row.originator_id)
            if owner is None:
                msg = f"event at position {row.position}: no first event for {row.originator_id}"
                raise RelayError(msg)
            if owner.encoded:
                encoded.append((row.position, "subject"))
            event_id = f"{owner.id}:{row.version}"
            body = _wire.encode(
                _Wire(
                    id=event_id,
                    type=kind,
                    tenant=owner.tenant,
                    conversation_id=owner.conversation_id,
                    turn_id=owner.turn_id,
                    seq=row.version,
                    position=row.position,
                    occurred_at=head.timestamp,
                    data=msgspec.Raw(state),
                )
            )
            out.append((owner.subject + kind, body, row.position, event_id))
        if encoded:
            self._note_encoded(conn, encoded, out)
        return out

    def _note_encoded(
        self, conn: psycopg.Connection[Any], encoded: list[tuple[int, str]], out: list[Message]
    ) -> None:
        subjects = {position: subject for subject, _, position, _ in out}
        for position, _ in self.app.store.note_repairs(conn, relay_part(self.stream), encoded):
            log.warning(
                "event at position %d: its tenant is not a subject token; published on %s",
                position,
                subjects[position],
            )

    # The inner loop, while leading.

    async def _relay(self, conn: psycopg.Connection[Any]) -> None:
        js = self.link.js
        assert js is not None
        position, seq = await self.resume_point(conn)
        self.status.position, self.status.stream_seq = position, seq
        self.status.resyncs += 1
        log.info("relay resumes after position %d (stream sequence %d)", position, seq)
        inflight: deque[tuple[asyncio.Future[PubAck], int, int]] = deque()
        window = 2 * self.batch
        read_at = position
        checkpoint: tuple[int, float] = (-1, 0.0)  # (stream sequence, when) last written
        report_at = (time.monotonic(), self.status.published)
        # The next page is read (in a thread) while this one is published.
        fetch = asyncio.ensure_future(self._call(self._fetch, conn, read_at))
        try:
            while True:
                messages: list[Message] = await fetch
                if not messages:
                    await self._settle(inflight, 0)
                    # Caught up: note where the stream stands, at most once a second.
                    seq_now = self.status.stream_seq
                    if (
                        seq_now
                        and seq_now != checkpoint[0]
                        and time.monotonic() - checkpoint[1] > 1
                    ):
                        await self._call(
                            self._write_checkpoint, conn, seq_now, self.status.position
                        )
                        checkpoint = (seq_now, time.monotonic())
                    if self._draining:
                        return
                    if not self.link.connected:
                        msg = "NATS connection lost"
                        raise ConnectionError(msg)
                    await self._call(self._wait, conn, 0.5)
                    fetch = asyncio.ensure_future(self._call(self._fetch, conn, read_at))
                    continue
                read_at = messages[-1][2]
                fetch = asyncio.ensure_future(self._call(self._fetch, conn, read_at))
                for subject, body, pos, event_id in messages:
                    headers = {
                        MSG_ID: event_id,
                        POSITION: str(pos),
                        EXPECTED_LAST_SEQ: str(seq),
                    }
                    future = await js.publish_async(subject, body, headers=headers)
                    seq += 1
                    inflight.append((future, seq, pos))
                await self._settle(inflight, window - self.batch)
                report_at = self._report(report_at)
        finally:
            for future, _, _ in inflight:
                future.cancel()
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

    def _fetch(self, conn: psycopg.Connection[Any], after: int) -> list[Message]:
        rows = self._page(conn, after)
        return self._messages(conn, rows) if rows else []

    async def _settle(
        self, inflight: deque[tuple[asyncio.Future[PubAck], int, int]], keep: int
    ) -> None:
        """Wait for acks, oldest first, until at most ``keep`` publishes are in flight."""
        while len(inflight) > keep:
            future, seq, pos = inflight[0]
            if not future.done():
                # One wait for the oldest; the acks behind it are mostly in by then.
                done, _ = await asyncio.wait((future,), timeout=ACK_TIMEOUT_S)
                if not done:
                    msg = f"no ack for position {pos} within {ACK_TIMEOUT_S:g} s"
                    raise TimeoutError(msg)
            inflight.popleft()
            ack = future.result()  # a refused publish raises here
            if ack.duplicate or ack.seq != seq:
                # The stream already held this event, or holds it elsewhere: whatever
                # follows is refused by its expected sequence; start over from the stream.
                answer = "a duplicate of" if ack.duplicate else "stored at"
                msg = f"position {pos}: the stream called it {answer} sequence {ack.seq}"
                msg += f", where this relay expected a new message at {seq}"
                raise ResyncNeeded(msg)
            self.status.position, self.status.stream_seq = pos, seq
            self.status.published += 1
