"""What the relay publishes for each stored event: its subject and its envelope's bytes.

A page of the log is read in binary (bytea as bytes), and each event becomes a message
whose body embeds the stored state byte for byte. An event's subject and envelope need
its aggregate's tenant and conversation (none for a file), which only the aggregate's
first event holds:
they are cached per aggregate (looked up for the events whose first came before the
page). Every stored event is published, whatever it holds: one whose tenant is not a
subject token goes out on the encoded token, and is noted once as a repair.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any, NamedTuple
from uuid import UUID

import msgspec
import psycopg
from psycopg.rows import tuple_row
from psycopg.sql import SQL

from turnstream.bus.envelope import (
    FILE_TOPICS,
    TOPIC_TYPES,
    TURN_TOPICS,
    conversation_subject,
    file_subject,
    turn_subject,
)
from turnstream.domain.identities import is_tenant
from turnstream.store.application import TurnstreamApplication

log = logging.getLogger("turnstream.bus.relay")

OWNER_CACHE = 100_000
"""Aggregates whose subject the relay remembers (their first event need not be read)."""


class RelayError(Exception):
    """The stream and the store disagree in a way the relay cannot repair by itself."""


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
    conversation_id: str | None
    """None for a file (a file is its owner's, not a conversation's)."""
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
    conversation_id: str | None
    turn_id: str | None
    seq: int
    position: int
    occurred_at: str
    data: msgspec.Raw


_head = msgspec.json.Decoder(_Head)
_wire = msgspec.json.Encoder()


class Messages:
    """Builds the relay's messages from pages of the log."""

    def __init__(self, app: TurnstreamApplication, prefix: str, repair_part: str) -> None:
        self.app = app
        self.prefix = prefix
        self.repair_part = repair_part
        self._owners: OrderedDict[UUID, _Owner] = OrderedDict()
        events = app.store.events_table
        self._page_sql = SQL(
            "SELECT notification_id, originator_id, originator_version, topic, state"
            " FROM {} WHERE notification_id > %s ORDER BY notification_id LIMIT %s"
        ).format(events)
        self._page_query: bytes | None = None
        self._owner_sql = SQL(
            "SELECT originator_id, topic, state FROM {}"
            " WHERE originator_id = ANY(%s) AND originator_version = 1"
        ).format(events)

    def after(self, conn: psycopg.Connection[Any], position: int, limit: int) -> list[Message]:
        """The messages of the next ``limit`` events after ``position``, in order."""
        rows = self.page(conn, position, limit)
        return self.build(conn, rows) if rows else []

    def page(self, conn: psycopg.Connection[Any], after: int, limit: int) -> list[StoredRow]:
        # The query sees every commit notified so far: drop those notifications (psycopg
        # keeps the ones that arrive outside notifies() in a backlog; keep it small).
        for _ in conn.notifies(timeout=0):
            pass
        # Binary results: bytea arrives as bytes, without hex decoding.
        if self._page_query is None:  # rendered once: composing costs a page's worth
            self._page_query = self._page_sql.as_bytes(conn)
        with conn.cursor(row_factory=tuple_row, binary=True) as cur:
            cur.execute(self._page_query, (after, limit))
            return [StoredRow(r[0], r[1], r[2], r[3], bytes(r[4])) for r in cur.fetchall()]

    def _lookup_owners(self, conn: psycopg.Connection[Any], ids: list[UUID]) -> None:
        with conn.cursor(row_factory=tuple_row) as cur:
            cur.execute(self._owner_sql, (ids,))
            for originator_id, topic, state in cur.fetchall():
                head = _head.decode(state)
                if head.tenant is not None:
                    self._remember(originator_id, topic, head)

    def _remember(self, aggregate_id: UUID, topic: str, first: _Head) -> _Owner:
        """Note what the subject and envelope of an aggregate's events need, from its
        first (of topic ``topic``: a turn's, a file's or a conversation's)."""
        assert first.tenant is not None
        text = str(aggregate_id)
        encoded = not is_tenant(first.tenant)
        if topic in FILE_TOPICS:
            subject = file_subject(self.prefix, first.tenant, aggregate_id, "")
            owner = _Owner(first.tenant, None, None, text, subject, encoded)
        elif topic in TURN_TOPICS:
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

    def build(self, conn: psycopg.Connection[Any], rows: list[StoredRow]) -> list[Message]:
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
                owner: _Owner | None = self._remember(row.originator_id, row.topic, head)
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
        for position, _ in self.app.store.note_repairs(conn, self.repair_part, encoded):
            log.warning(
                "event at position %d: its tenant is not a subject token; published on %s",
                position,
                subjects[position],
            )
