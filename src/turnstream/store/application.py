"""The event-sourced application: conversations and turns in one PostgreSQL log.

Everything here is synchronous (the eventsourcing library is); the async service runs
these calls on its bounded executor.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast
from uuid import UUID

import psycopg
from eventsourcing.application import Application
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Identifier

from turnstream.domain.conversation import Conversation, ConversationEvent
from turnstream.domain.errors import ConversationNotFound, FileNotFound
from turnstream.domain.events import DomainEvent
from turnstream.domain.files import File, FileEvent
from turnstream.domain.turn import Turn, TurnEvent
from turnstream.store.admission import Admission, Admitted
from turnstream.store.ddl import ddl_lock
from turnstream.store.mapper import MsgspecMapper, NullTranscoder, decode_event, encode_event
from turnstream.store.recorder import Row, TurnstreamRecorder, as_row

APP_NAME = "turnstream"


def event_store_env(database_url: str, schema: str, pool_size: int = 10) -> dict[str, str]:
    """The library's settings, rendered from ours and passed explicitly (never os.environ)."""
    info = conninfo_to_dict(database_url)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "APPLICATION_RECORDER_TOPIC": get_topic(TurnstreamRecorder),
        "MAPPER_TOPIC": get_topic(MsgspecMapper),
        "TRANSCODER_TOPIC": get_topic(NullTranscoder),
        "POSTGRES_DBNAME": str(info.get("dbname") or "postgres"),
        "POSTGRES_HOST": str(info.get("host") or "127.0.0.1"),
        "POSTGRES_PORT": str(info.get("port") or 5432),
        "POSTGRES_USER": str(info.get("user") or "postgres"),
        "POSTGRES_PASSWORD": str(info.get("password") or ""),
        "POSTGRES_SCHEMA": schema,
        "POSTGRES_POOL_SIZE": str(pool_size),
        "POSTGRES_MAX_OVERFLOW": str(pool_size * 2),
        "POSTGRES_CONNECT_TIMEOUT": "3",  # the pool's wait for a connection
        "CREATE_TABLE": "y",
    }


def open_application(database_url: str, schema: str) -> TurnstreamApplication:
    """The application over ``schema``, its schema and tables made first if need be."""
    with psycopg.connect(database_url, autocommit=True) as conn, ddl_lock(conn, schema):
        conn.execute(SQL("CREATE SCHEMA IF NOT EXISTS {}").format(Identifier(schema)))
        return TurnstreamApplication(event_store_env(database_url, schema), database_url)


class OwnConnection:
    """A long-lived worker's own connection (the writer's, the start batcher's): opened
    when first needed, and after :meth:`reset` (a failure) opened afresh next time."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]]) -> None:
        self._connect = connect
        self.current: psycopg.Connection[Any] | None = None

    def get(self) -> psycopg.Connection[Any]:
        if self.current is None or self.current.closed:
            self.current = self._connect()
        return self.current

    def reset(self) -> None:
        """Close it (also to stop); the next :meth:`get` connects again."""
        if self.current is not None:
            conn, self.current = self.current, None
            with contextlib.suppress(psycopg.Error):
                conn.close()


class TurnstreamApplication(Application[UUID]):
    name = APP_NAME

    def __init__(self, env: Mapping[str, str], database_url: str) -> None:
        super().__init__(env=dict(env))
        self.database_url = database_url

    @property
    def store(self) -> TurnstreamRecorder:
        return cast(TurnstreamRecorder, self.recorder)

    def connect(self) -> psycopg.Connection[Any]:
        """A dedicated connection (not from the pool) for a long-lived worker."""
        options = "-c search_path=" + self.store.datastore.schema
        kwargs: dict[str, Any] = {"connect_timeout": 10, "autocommit": True, "options": options}
        if not str(conninfo_to_dict(self.database_url).get("host", "")).startswith("/"):
            # TCP: notice a dead peer within seconds instead of hours.
            kwargs |= {
                "keepalives": 1,
                "keepalives_idle": 10,
                "keepalives_interval": 5,
                "keepalives_count": 3,
            }
        return psycopg.connect(self.database_url, **kwargs)

    def ping(self) -> bool:
        """Whether PostgreSQL answers a query on a pooled connection."""
        with self.store.datastore.get_connection() as conn:
            conn.execute("SELECT 1")
        return True

    # Conversations.

    def record(self, *events: DomainEvent) -> int:
        """Store events through the library; returns the log position of the last."""
        recordings = self.save(*events)
        return recordings[-1].notification.id if recordings else 0

    def conversation(self, conversation_id: UUID) -> Conversation:
        """The conversation, or ConversationNotFound (also once deleted)."""
        events = self.store.select_events(conversation_id)
        conversation = Conversation.fold(
            cast(ConversationEvent, self.mapper.to_domain_event(e)) for e in events
        )
        if conversation is None or conversation.deleted:
            raise ConversationNotFound(conversation_id)
        return conversation

    def file(self, file_id: UUID) -> File:
        """The file, folded from its events; FileNotFound if it has none, or is deleted."""
        events = self.store.select_events(file_id)
        file = File.fold(cast(FileEvent, self.mapper.to_domain_event(e)) for e in events)
        if file is None or file.deleted:
            raise FileNotFound(file_id)
        return file

    # Turns.

    def encode(self, event: DomainEvent) -> StoredEvent:
        return self.mapper.to_stored_event(event)

    def encode_row(self, event: DomainEvent) -> Row:
        """The event as a COPY row; skips the mapper when it neither compresses nor
        encrypts (the writer's hot path)."""
        if self.mapper.compressor is None and self.mapper.cipher is None:
            return (event.originator_id, event.originator_version, event.TOPIC, encode_event(event))
        return as_row(self.mapper.to_stored_event(event))

    def turn_events(
        self, turn_id: UUID, after: int = 0, limit: int | None = None
    ) -> list[TurnEvent]:
        stored = self.store.select_events(turn_id, gt=after or None, limit=limit)
        return [cast(TurnEvent, decode_event(e.topic, e.state)) for e in stored]

    def turn_ended(self, turn_id: UUID) -> bool:
        """Whether the turn's last stored event is terminal."""
        last = self.store.select_events(turn_id, desc=True, limit=1)
        return bool(last) and decode_event(last[0].topic, last[0].state).TERMINAL  # type: ignore[attr-defined]

    def turn(self, turn_id: UUID) -> Turn | None:
        return Turn.fold(self.turn_events(turn_id))

    def start_turn(
        self,
        conn: psycopg.Connection[Any],
        started: Turn.Started,
        admission: Admission | None = None,
    ) -> Admitted:
        """Record ``started`` as a new running turn if ``admission`` allows (no limits by
        default); IntegrityError when one runs already in its conversation."""
        if admission is None:
            admission = Admission(tenant=started.tenant, user_id=started.user_id)
        return self.store.start_turn(
            conn, self.encode(started), started.conversation_id, started.node_id, admission
        )

    def append_to_waiting(
        self,
        turn_id: UUID,
        events: Sequence[TurnEvent],
        *,
        take: UUID | None = None,
        end: bool = False,
    ) -> int | None:
        """Append a waiting turn's events (see ``TurnstreamRecorder.append_to_waiting``):
        the log position of the last, or None when the turn no longer waits."""
        rows = [self.encode_row(e) for e in events]
        with self.store.datastore.get_connection() as conn:
            return self.store.append_to_waiting(conn, turn_id, rows, take=take, end=end)

    def end_orphans(
        self,
        conn: psycopg.Connection[Any],
        node_id: UUID,
        lock_key: int,
        make_error: Any,
    ) -> list[TurnEvent]:
        """End the running turns of a dead node, if it is dead (its lock is free).

        ``make_error(turn) -> Turn.Failed`` builds the terminal event. Returns the events
        written. The node's advisory lock, taken for the transaction, keeps two nodes from
        ending the same turns; the table lock orders the writes with every other writer.
        """
        written: list[TurnEvent] = []
        try:
            with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
                cur.execute("SELECT pg_try_advisory_xact_lock(%s)", (lock_key,))
                row = cur.fetchone()
                if row is None or not row[0]:
                    return []
                cur.execute(self.store.lock_sql)
                for turn_id in self.store.running_turns_of(conn, node_id):
                    stored = self.store.turn_stored_events(conn, turn_id)
                    turn = Turn.fold(
                        cast(TurnEvent, decode_event(e.topic, e.state)) for e in stored
                    )
                    if turn is None or turn.ended:
                        continue
                    written.append(make_error(turn))
                if written:
                    self.store.copy_events(cur, [self.encode_row(e) for e in written], lock=False)
                    cur.execute(self.store.end_turns_sql, ([e.originator_id for e in written],))
        except psycopg.errors.UniqueViolation:
            # Another writer got there first (the runner was alive after all).
            return []
        return written
