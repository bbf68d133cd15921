"""Turns that wait for tool results or approvals, in the store: taken up by one node,
or ended, in one transaction that checks they still wait.

A waiting turn has no runner and no writer: its answers, the node that takes it up
and its end (a cancel, a wait past its time) are appended here, under the event
table's lock like every write, and only while the index still says it waits. Two nodes
answering at once: one appends, the other's version conflicts (``IntegrityError``) or
finds the turn no longer waiting (None), and reads again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.postgres import PostgresDatastore
from psycopg import ClientCursor
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Composable, Composed

from turnstream.store.transactions import explicit_transaction

Row = tuple[UUID | str, int, str, bytes]


class WaitingTurns:
    """The recorder's writes and reads of waiting turns."""

    datastore: PostgresDatastore
    index_table: Composable
    lock_sql: Composed
    end_turns_sql: Composed
    copy_events: Callable[..., int]
    """The recorder's COPY of events (see ``TurnstreamRecorder.copy_events``)."""

    def append_to_waiting(
        self,
        conn: psycopg.Connection[Any],
        turn_id: UUID,
        events: Sequence[Row],
        *,
        take: UUID | None = None,
        end: bool = False,
    ) -> int | None:
        """Append events to a turn that waits (no runner holds it), in one transaction:
        a result or a decision that leaves it waiting; with ``take``, the node that runs
        it next takes it; with ``end``, its end. The log position of the last event, or
        None if the turn no longer waits (another node took it up, or it ended).

        A concurrent append of the same version is ``IntegrityError``: read, try again.
        """
        still = take is None and not end
        with explicit_transaction(conn), ClientCursor(conn, row_factory=tuple_row) as cur:
            cur.execute(b"BEGIN")
            cur.execute(self.lock_sql)
            cur.execute(self._claim_sql(), (still, take, turn_id))
            if cur.fetchone() is None:
                cur.execute(b"ROLLBACK")
                return None
            position = self.copy_events(cur, events, lock=False)
            if end:
                cur.execute(self.end_turns_sql, ([turn_id],))
            cur.execute(b"COMMIT")
            return position

    def expired_waits(self, limit: int = 100) -> list[UUID]:
        """Turns that have waited past their ``wait_until``."""
        with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            cur.execute(
                SQL(
                    "SELECT turn_id FROM {} WHERE waiting AND NOT ended AND wait_until < now()"
                    " ORDER BY wait_until LIMIT %s"
                ).format(self.index_table),
                (limit,),
            )
            return [r[0] for r in cur.fetchall()]

    def _claim_sql(self) -> Composed:
        return SQL(
            "UPDATE {} SET waiting = %s, node_id = COALESCE(%s, node_id)"
            " WHERE turn_id = %s AND waiting AND NOT ended RETURNING turn_id"
        ).format(self.index_table)
