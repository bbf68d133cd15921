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

from collections.abc import Sequence
from typing import Any, NamedTuple
from uuid import UUID

import psycopg
from eventsourcing.persistence import IntegrityError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Identifier


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
        self.sql_create_statements.extend(
            [
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

    # The write paths.

    def copy_events(
        self, cur: psycopg.Cursor[Any], events: Sequence[StoredEvent], *, lock: bool = True
    ) -> int:
        """COPY the events under the table lock; returns the last notification id."""
        if lock:
            cur.execute(self.lock_sql)
        with cur.copy(self._copy_sql) as copy:
            copy.set_types(["uuid", "int8", "text", "bytea"])
            for e in events:
                copy.write_row((e.originator_id, e.originator_version, e.topic, e.state))
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
        """Record a turn's first event and open its index row, in one transaction.

        Raises ``IntegrityError`` naming the running turn when the conversation already
        has one, or when this turn id exists (an idempotent retry).
        """
        try:
            with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
                position = self.copy_events(cur, [event])
                cur.execute(
                    SQL(
                        "INSERT INTO {} (turn_id, conversation_id, node_id, started_position)"
                        " VALUES (%s, %s, %s, %s)"
                    ).format(self.index_table),
                    (event.originator_id, conversation_id, node_id, position),
                )
                return position
        except psycopg.errors.UniqueViolation as exc:
            raise IntegrityError(str(exc.diag.constraint_name)) from None

    def append_batch(
        self,
        conn: psycopg.Connection[Any],
        events: Sequence[StoredEvent],
        ended: Sequence[UUID],
    ) -> int:
        """One group commit: the events (any turns, in order) and the turns they end."""
        try:
            with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
                position = self.copy_events(cur, events)
                if ended:
                    cur.execute(
                        SQL("UPDATE {} SET ended = true WHERE turn_id = ANY(%s)").format(
                            self.index_table
                        ),
                        (list(ended),),
                    )
                return position
        except psycopg.errors.UniqueViolation as exc:
            raise IntegrityError(str(exc.diag.constraint_name)) from None

    # The turn index.

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

    def conversation_turns(self, conversation_id: UUID) -> list[TurnIndexRow]:
        with self.datastore.get_connection() as conn, conn.cursor() as cur:
            cur.execute(
                SQL(
                    "SELECT turn_id, conversation_id, node_id, started_position, ended"
                    " FROM {} WHERE conversation_id = %s ORDER BY started_position"
                ).format(self.index_table),
                (conversation_id,),
            )
            return [TurnIndexRow(**r) for r in cur.fetchall()]

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
