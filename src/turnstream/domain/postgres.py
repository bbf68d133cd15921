"""The PostgreSQL recorder: the library's application recorder plus a COPY batch path.

The library's insert takes an EXCLUSIVE lock on the events table so that notification
ids are issued in commit order; it then costs about 1 ms per call and serializes every
writer. This recorder keeps the lock (and so the ordering) but writes a whole group
commit with one binary COPY. In the same transaction it keeps the turn index: which
turns run, on which node, in which conversation. The index is derived from the events
(``Started`` adds a row, a terminal event closes it) and exists so that "is a turn
running here?" and "whose runner died?" are answered without scanning the log.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, NamedTuple
from uuid import UUID

import psycopg
from eventsourcing.persistence import IntegrityError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from psycopg import ClientCursor
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Identifier, Literal


def _last_value(cur: psycopg.Cursor[Any]) -> int:
    """The single value of the one result with rows among a multi-statement query's."""
    while True:
        if cur.pgresult is not None and cur.pgresult.ntuples:
            row = cur.fetchone()
            assert row is not None
            return int(row[0])
        if not cur.nextset():
            return 0


DELTAS_ONLY = "deltas"
"""The payload of a commit's notification when it holds only token and reasoning deltas."""

Row = tuple[UUID | str, int, str, bytes]
"""A stored event as COPY writes it: originator id, version, topic, state."""


def as_row(event: StoredEvent) -> Row:
    return (event.originator_id, event.originator_version, event.topic, event.state)


class TurnIndexRow(NamedTuple):
    turn_id: UUID
    conversation_id: UUID
    node_id: UUID
    started_position: int
    ended: bool


class TurnstreamRecorder(PostgresApplicationRecorder):
    def __init__(
        self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events"
    ) -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        schema = Identifier(self.datastore.schema)
        self.index_table = SQL("{}.{}").format(schema, Identifier(f"{events_table_name}_turns"))
        self.events_table = SQL("{}.{}").format(schema, Identifier(events_table_name))
        self.relay_table = SQL("{}.{}").format(schema, Identifier(f"{events_table_name}_relay"))
        self.sql_create_statements.extend(
            [
                # The relay's checkpoint: a stream sequence and the position it holds.
                SQL(
                    "CREATE TABLE IF NOT EXISTS {} ("
                    " stream text PRIMARY KEY,"
                    " stream_seq bigint NOT NULL,"
                    " position bigint NOT NULL,"
                    " updated_at timestamptz NOT NULL DEFAULT now())"
                ).format(self.relay_table),
                SQL(
                    "CREATE TABLE IF NOT EXISTS {} ("
                    " turn_id uuid PRIMARY KEY,"
                    " conversation_id uuid NOT NULL,"
                    " node_id uuid NOT NULL,"
                    " started_position bigint NOT NULL,"
                    " ended boolean NOT NULL DEFAULT false)"
                ).format(self.index_table),
                # One running turn per conversation, enforced where the facts are written.
                SQL(
                    "CREATE UNIQUE INDEX IF NOT EXISTS {} ON {} (conversation_id) WHERE NOT ended"
                ).format(Identifier(f"{events_table_name}_turns_running"), self.index_table),
                SQL(
                    "CREATE INDEX IF NOT EXISTS {} ON {} (conversation_id, started_position)"
                ).format(Identifier(f"{events_table_name}_turns_by_conv"), self.index_table),
                SQL("CREATE INDEX IF NOT EXISTS {} ON {} (node_id) WHERE NOT ended").format(
                    Identifier(f"{events_table_name}_turns_by_node"), self.index_table
                ),
            ]
        )
        self._copy_sql = SQL(
            "COPY {} (originator_id, originator_version, topic, state) FROM STDIN (FORMAT BINARY)"
        ).format(self.events_table)
        self.lock_sql = SQL("LOCK TABLE {} IN EXCLUSIVE MODE; NOTIFY {}").format(
            self.events_table, Identifier(self.channel_name)
        )
        self._begin_sql = SQL("BEGIN; ") + self.lock_sql
        # A commit of text deltas only says so: the projections skip those, and wake
        # only for the events they read (the relay wakes for every commit).
        self._begin_deltas_sql = SQL(
            "BEGIN; LOCK TABLE {} IN EXCLUSIVE MODE; NOTIFY {}, {}"
        ).format(self.events_table, Identifier(self.channel_name), Literal(DELTAS_ONLY))
        self._end_sql = SQL(
            "UPDATE {ix} SET ended = true WHERE turn_id = ANY(%s::uuid[]);"
            " SELECT max(notification_id) FROM {ev}; COMMIT"
        ).format(ix=self.index_table, ev=self.events_table)
        self._start_sql = self.lock_sql + SQL(
            "; WITH e AS (INSERT INTO {ev} (originator_id, originator_version, topic, state)"
            " VALUES (%s, %s, %s, %s) RETURNING notification_id)"
            " INSERT INTO {ix} (turn_id, conversation_id, node_id, started_position)"
            " SELECT %s, %s, %s, notification_id FROM e RETURNING started_position"
        ).format(ev=self.events_table, ix=self.index_table)

    # The write paths.

    def copy_events(
        self,
        cur: psycopg.Cursor[Any],
        events: Sequence[Row],
        *,
        lock: bool = True,
        position: bool = True,
    ) -> int:
        """COPY the events (taking the table lock unless held); the last notification id."""
        if lock:
            cur.execute(self.lock_sql)
        with cur.copy(self._copy_sql) as copy:
            copy.set_types(["uuid", "int8", "text", "bytea"])
            for event_row in events:
                copy.write_row(event_row)
        if not position:
            return 0
        cur.execute(SQL("SELECT max(notification_id) FROM {}").format(self.events_table))
        row = cur.fetchone()
        assert row is not None
        return int(row[0])

    def start_turn(
        self,
        conn: psycopg.Connection[Any],
        event: StoredEvent,
        conversation_id: UUID,
        node_id: UUID,
    ) -> int:
        """Record a turn's first event and open its index row, in one round trip.

        The statements go as one simple query, which PostgreSQL runs as one implicit
        transaction: the table lock is held for server time only, never while this
        client waits for its turn on the GIL. Raises ``IntegrityError`` naming the
        constraint when the conversation already has a running turn, or when this turn
        id exists (an idempotent retry); nothing is then stored.
        """
        try:
            with ClientCursor(conn, row_factory=tuple_row) as cur:
                cur.execute(
                    self._start_sql,
                    (
                        event.originator_id,
                        event.originator_version,
                        event.topic,
                        event.state,
                        event.originator_id,
                        conversation_id,
                        node_id,
                    ),
                )
                return _last_value(cur)
        except psycopg.errors.UniqueViolation as exc:
            raise IntegrityError(str(exc.diag.constraint_name)) from None

    def append_batch(
        self,
        conn: psycopg.Connection[Any],
        events: Sequence[Row],
        ended: Sequence[UUID],
        *,
        deltas_only: bool = False,
    ) -> int:
        """One group commit: the events (any turns, in order) and the turns they end.

        Three round trips: BEGIN with the lock, the COPY, and the index update with
        the commit. ``conn`` must be in autocommit mode (transactions are explicit).
        """
        try:
            with ClientCursor(conn, row_factory=tuple_row) as cur:
                cur.execute(self._begin_deltas_sql if deltas_only else self._begin_sql)
                self.copy_events(cur, events, lock=False, position=False)
                cur.execute(self._end_sql, (list(ended),))
                return _last_value(cur)
        except BaseException as exc:
            if (
                conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
                and not conn.closed
            ):
                with contextlib.suppress(psycopg.Error):
                    conn.execute("ROLLBACK")
            if isinstance(exc, psycopg.errors.UniqueViolation):
                raise IntegrityError(str(exc.diag.constraint_name)) from None
            raise

    # The turn index.

    def last_version(self, originator_id: UUID) -> int:
        """The version of an aggregate's last stored event (0 if it has none)."""
        with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            cur.execute(
                SQL(
                    "SELECT originator_version FROM {} WHERE originator_id = %s"
                    " ORDER BY originator_version DESC LIMIT 1"
                ).format(self.events_table),
                (originator_id,),
            )
            row = cur.fetchone()
            return 0 if row is None else int(row[0])

    def running_turn(self, conversation_id: UUID) -> UUID | None:
        with self.datastore.get_connection() as conn, conn.cursor() as cur:
            cur.execute(
                SQL("SELECT turn_id FROM {} WHERE conversation_id = %s AND NOT ended").format(
                    self.index_table
                ),
                (conversation_id,),
            )
            row = cur.fetchone()
            return None if row is None else row["turn_id"]

    def turn_row(self, turn_id: UUID) -> TurnIndexRow | None:
        with self.datastore.get_connection() as conn, conn.cursor() as cur:
            cur.execute(
                SQL(
                    "SELECT turn_id, conversation_id, node_id, started_position, ended"
                    " FROM {} WHERE turn_id = %s"
                ).format(self.index_table),
                (turn_id,),
            )
            row = cur.fetchone()
            return None if row is None else TurnIndexRow(**row)

    def running_nodes(self, exclude: UUID) -> list[UUID]:
        with self.datastore.get_connection() as conn, conn.cursor() as cur:
            cur.execute(
                SQL("SELECT DISTINCT node_id FROM {} WHERE NOT ended AND node_id <> %s").format(
                    self.index_table
                ),
                (exclude,),
            )
            return [r["node_id"] for r in cur.fetchall()]

    def running_turns_of(self, conn: psycopg.Connection[Any], node_id: UUID) -> list[UUID]:
        with conn.cursor(row_factory=tuple_row) as cur:
            cur.execute(
                SQL("SELECT turn_id FROM {} WHERE NOT ended AND node_id = %s").format(
                    self.index_table
                ),
                (node_id,),
            )
            return [r[0] for r in cur.fetchall()]

    def turn_stored_events(self, conn: psycopg.Connection[Any], turn_id: UUID) -> list[StoredEvent]:
        with conn.cursor(row_factory=tuple_row) as cur:
            cur.execute(
                SQL(
                    "SELECT originator_id, originator_version, topic, state FROM {}"
                    " WHERE originator_id = %s ORDER BY originator_version"
                ).format(self.events_table),
                (turn_id,),
            )
            return [StoredEvent(r[0], r[1], r[2], bytes(r[3])) for r in cur.fetchall()]
