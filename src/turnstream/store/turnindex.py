"""The turn index: which turns run, on which node, in which conversation.

Derived from the events in the transactions that write them (a start adds a row, a
terminal event closes it), so "is a turn running here?" and "whose runner died?" are
answered without scanning the log.
"""

from __future__ import annotations

from typing import Any, NamedTuple
from uuid import UUID

import psycopg
from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresDatastore
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Composable


class TurnIndexRow(NamedTuple):
    turn_id: UUID
    conversation_id: UUID
    node_id: UUID
    started_position: int
    ended: bool
    waiting: bool = False


class TurnIndexQueries:
    """The recorder's reads of the turn index and of a turn's events."""

    datastore: PostgresDatastore
    index_table: Composable
    events_table: Composable

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

    def turns_of(self, user_key: str) -> int:
        """How many turns a user (``tenant/user id``) has started in all."""
        with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            cur.execute(
                SQL("SELECT count(*) FROM {} WHERE user_key = %s").format(self.index_table),
                (user_key,),
            )
            row = cur.fetchone()
            return 0 if row is None else int(row[0])

    def add_reserve(self, turn_id: UUID, tokens: int) -> None:
        """Hold ``tokens`` more of an unended turn against its user's quotas."""
        with self.datastore.get_connection() as conn:
            conn.execute(
                SQL(
                    "UPDATE {} SET reserved_tokens = reserved_tokens + %s"
                    " WHERE turn_id = %s AND NOT ended"
                ).format(self.index_table),
                (tokens, turn_id),
            )

    def running_turn(self, conversation_id: UUID) -> UUID | None:
        return self._turn_of(conversation_id, SQL(" AND NOT ended"))

    def latest_turn(self, conversation_id: UUID) -> UUID | None:
        """The conversation's last started turn, running or not."""
        return self._turn_of(conversation_id, SQL(" ORDER BY started_position DESC LIMIT 1"))

    def _turn_of(self, conversation_id: UUID, rest: SQL) -> UUID | None:
        select = SQL("SELECT turn_id FROM {} WHERE conversation_id = %s").format(self.index_table)
        with self.datastore.get_connection() as conn, conn.cursor() as cur:
            cur.execute(select + rest, (conversation_id,))
            row = cur.fetchone()
            return None if row is None else row["turn_id"]

    def turn_row(self, turn_id: UUID) -> TurnIndexRow | None:
        with self.datastore.get_connection() as conn, conn.cursor() as cur:
            cur.execute(
                SQL(
                    "SELECT turn_id, conversation_id, node_id, started_position, ended, waiting"
                    " FROM {} WHERE turn_id = %s"
                ).format(self.index_table),
                (turn_id,),
            )
            row = cur.fetchone()
            return None if row is None else TurnIndexRow(**row)

    def running_nodes(self, exclude: UUID) -> list[UUID]:
        with self.datastore.get_connection() as conn, conn.cursor() as cur:
            cur.execute(
                SQL(
                    "SELECT DISTINCT node_id FROM {} WHERE NOT ended AND NOT waiting"
                    " AND node_id <> %s"
                ).format(self.index_table),
                (exclude,),
            )
            return [r["node_id"] for r in cur.fetchall()]

    def started_positions(
        self, conn: psycopg.Connection[Any], turn_ids: list[UUID]
    ) -> dict[UUID, int]:
        """Of these turns, those stored: their ``turn.started`` positions."""
        with conn.cursor(row_factory=tuple_row) as cur:
            cur.execute(
                SQL("SELECT turn_id, started_position FROM {} WHERE turn_id = ANY(%s)").format(
                    self.index_table
                ),
                (turn_ids,),
            )
            return {row[0]: int(row[1]) for row in cur.fetchall()}

    def running_turns_of(self, conn: psycopg.Connection[Any], node_id: UUID) -> list[UUID]:
        with conn.cursor(row_factory=tuple_row) as cur:
            cur.execute(
                SQL(
                    "SELECT turn_id FROM {} WHERE NOT ended AND NOT waiting AND node_id = %s"
                ).format(self.index_table),
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
