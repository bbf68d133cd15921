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
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing import persistence
from eventsourcing.persistence import IntegrityError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from psycopg import ClientCursor
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Identifier

from turnstream.store.admission import (
    Admission,
    Admitted,
    Shape,
    admitted,
    shape_of,
    start_sql,
    start_statement,
    start_values,
)
from turnstream.store.files import FileBlobs, file_tables
from turnstream.store.limits import rate_table
from turnstream.store.repairs import RepairNotes
from turnstream.store.transactions import explicit_transaction
from turnstream.store.turnindex import TurnIndexQueries
from turnstream.store.waiting import WaitingTurns

STORE_OUTAGE: tuple[type[Exception], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    persistence.OperationalError,
    persistence.InterfaceError,
)
"""What PostgreSQL being away looks like: the driver's errors (a pool time-out among
them) and the library's, which wrap them. Never a client's fault: 503, retry later."""


def _last_value(cur: psycopg.Cursor[Any]) -> int:
    """The single value of the one result with rows among a multi-statement query's."""
    while True:
        if cur.pgresult is not None and cur.pgresult.ntuples:
            row = cur.fetchone()
            assert row is not None
            return int(row[0])
        if not cur.nextset():
            return 0


DELTAS_SUFFIX = "_deltas"
"""A commit of token and reasoning deltas only is notified on the events channel's name
with this suffix: the relay listens there too, the projections (which never read those
events) do not, so neither their PostgreSQL backends nor their threads wake for them."""

Row = tuple[UUID | str, int, str, bytes]
"""A stored event as COPY writes it: originator id, version, topic, state."""

Start = tuple[StoredEvent, UUID, UUID, Admission]
"""A turn's start to record: its first event, its conversation, its node, its limits."""

SMALL_BATCH = 128
"""Group commits of up to this many events go in one pipelined round trip; larger
ones by COPY, which is faster per event."""


Pause = tuple[UUID, datetime]
"""A turn a commit pauses, and when its wait runs out."""


def _pauses(paused: Sequence[Pause]) -> tuple[list[UUID], list[datetime]]:
    return [p[0] for p in paused], [p[1] for p in paused]


def as_row(event: StoredEvent) -> Row:
    return (event.originator_id, event.originator_version, event.topic, event.state)


class TurnstreamRecorder(
    TurnIndexQueries, WaitingTurns, RepairNotes, FileBlobs, PostgresApplicationRecorder
):
    def __init__(
        self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events"
    ) -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        schema = Identifier(self.datastore.schema)
        self.index_table = SQL("{}.{}").format(schema, Identifier(f"{events_table_name}_turns"))
        # The usage view's counters and tracking, and the rate limits' cells: the quotas
        # and rate limits are read and taken in a turn's start statement.
        self.usage_counters = SQL("{}.{}").format(schema, Identifier("usage_counters"))
        self.usage_tracking = SQL("{}.{}").format(schema, Identifier("usage_tracking"))
        self.rate_table = rate_table(self.datastore.schema)
        self.events_table = SQL("{}.{}").format(schema, Identifier(events_table_name))
        self.relay_table = SQL("{}.{}").format(schema, Identifier(f"{events_table_name}_relay"))
        self.repairs_table = SQL("{}.{}").format(schema, Identifier(f"{events_table_name}_repairs"))
        self.sql_create_statements.extend(
            [
                # Events the relay or a projection could take only repaired (see
                # note_repairs); one row per part and event, so each is counted once.
                SQL(
                    "CREATE TABLE IF NOT EXISTS {} ("
                    " part text NOT NULL,"
                    " position bigint NOT NULL,"
                    " reason text NOT NULL,"
                    " noted_at timestamptz NOT NULL DEFAULT now(),"
                    " PRIMARY KEY (part, position))"
                ).format(self.repairs_table),
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
                # Admission (limits and quotas): whose turn it is, the tokens it may
                # use at most, and the position by which its end was stored.
                SQL(
                    "ALTER TABLE {} ADD COLUMN IF NOT EXISTS user_key text,"
                    " ADD COLUMN IF NOT EXISTS reserved_tokens bigint NOT NULL DEFAULT 0,"
                    " ADD COLUMN IF NOT EXISTS ended_position bigint"
                ).format(self.index_table),
                # A turn that waits for tool results or approvals: no runner holds it
                # (recovery leaves it alone) until whichever node takes it up, or
                # until ``wait_until``, when it ends with tool_timeout.
                SQL(
                    "ALTER TABLE {} ADD COLUMN IF NOT EXISTS waiting boolean NOT NULL"
                    " DEFAULT false, ADD COLUMN IF NOT EXISTS wait_until timestamptz"
                ).format(self.index_table),
                SQL("CREATE INDEX IF NOT EXISTS {} ON {} (wait_until) WHERE waiting").format(
                    Identifier(f"{events_table_name}_turns_waiting"), self.index_table
                ),
                SQL("CREATE INDEX IF NOT EXISTS {} ON {} (user_key, ended_position)").format(
                    Identifier(f"{events_table_name}_turns_by_user"), self.index_table
                ),
                SQL("CREATE INDEX IF NOT EXISTS {} ON {} (user_key) WHERE NOT ended").format(
                    Identifier(f"{events_table_name}_turns_running_by_user"), self.index_table
                ),
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
        self.sql_create_statements.extend(file_tables(self.datastore.schema))
        # The group commit's statements, rendered once (composing them on every commit
        # cost a tenth of the writer's time; they have no parameters of their own).
        self._copy_sql = (
            SQL(
                "COPY {} (originator_id, originator_version, topic, state)"
                " FROM STDIN (FORMAT BINARY)"
            )
            .format(self.events_table)
            .as_bytes(None)
        )
        self.lock_sql = SQL("LOCK TABLE {} IN EXCLUSIVE MODE; NOTIFY {}").format(
            self.events_table, Identifier(self.channel_name)
        )
        self._begin_sql = (SQL("BEGIN; ") + self.lock_sql).as_bytes(None)
        self._last_sql = (
            SQL("SELECT max(notification_id) FROM {}").format(self.events_table).as_bytes(None)
        )
        self._start_sql: dict[Shape, bytes] = {}
        self._start_statement: dict[Shape, bytes] = {}
        self.deltas_channel = self.channel_name + DELTAS_SUFFIX
        self._begin_deltas_sql = (
            SQL("BEGIN; LOCK TABLE {} IN EXCLUSIVE MODE; NOTIFY {}")
            .format(self.events_table, Identifier(self.deltas_channel))
            .as_bytes(None)
        )
        self._end_sql = (
            SQL(
                "UPDATE {ix} SET ended = true, ended_position = (SELECT max(notification_id)"
                " FROM {ev}) WHERE turn_id = ANY(%s::uuid[]);"
                " UPDATE {ix} SET waiting = true, wait_until = u.t FROM unnest(%s::uuid[],"
                " %s::timestamptz[]) AS u(i, t) WHERE turn_id = u.i;"
                " SELECT max(notification_id) FROM {ev}; COMMIT"
            )
            .format(ix=self.index_table, ev=self.events_table)
            .as_bytes(None)
        )
        # A small group commit goes in one round trip (see append_batch).
        self._lock_only_sql = (
            SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(self.events_table).as_bytes(None)
        )
        self._notify_sql = SQL("NOTIFY {}").format(Identifier(self.channel_name)).as_bytes(None)
        self._notify_deltas_sql = (
            SQL("NOTIFY {}").format(Identifier(self.deltas_channel)).as_bytes(None)
        )
        self._insert_sql = (
            SQL(
                "WITH i AS (INSERT INTO {ev} (originator_id, originator_version, topic, state)"
                " SELECT u.i, u.v, u.t, u.s FROM unnest(%s::uuid[], %s::int8[], %s::text[],"
                " %s::bytea[]) WITH ORDINALITY AS u(i, v, t, s, n) ORDER BY u.n"
                " RETURNING notification_id),"
                " m AS (SELECT max(notification_id) AS p FROM i),"
                " e AS (UPDATE {ix} SET ended = true, ended_position = (SELECT p FROM m)"
                " WHERE turn_id = ANY(%s::uuid[])),"
                " w AS (UPDATE {ix} SET waiting = true, wait_until = u.t FROM unnest("
                "%s::uuid[], %s::timestamptz[]) AS u(i, t) WHERE turn_id = u.i)"
                " SELECT p FROM m"
            )
            .format(ix=self.index_table, ev=self.events_table)
            .as_bytes(None)
        )
        self.end_turns_sql = SQL(
            "UPDATE {ix} SET ended = true, ended_position = (SELECT max(notification_id)"
            " FROM {ev}) WHERE turn_id = ANY(%s::uuid[])"
        ).format(ix=self.index_table, ev=self.events_table)

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
        cur.execute(self._last_sql)
        row = cur.fetchone()
        assert row is not None
        return int(row[0])

    def start_turn(
        self,
        conn: psycopg.Connection[Any],
        event: StoredEvent,
        conversation_id: UUID,
        node_id: UUID,
        admission: Admission,
    ) -> Admitted:
        """Record a turn's first event and open its index row, if ``admission`` allows.

        The statements go as one simple query, which PostgreSQL runs as one implicit
        transaction: the table lock is held for server time only, never while this
        client waits for its turn on the GIL. The same lock orders every start, so the
        limits hold exactly under any concurrency: each start sees every turn started
        before it. Raises ``IntegrityError`` naming the constraint when the conversation
        already has a running turn, or when this turn id exists (an idempotent retry);
        nothing is then stored, nor when a limit refuses the turn.
        """
        shape = shape_of(admission)
        query = self._start_sql.get(shape)
        if query is None:  # composing it costs more than the rest of the start's Python
            query = self._start_sql[shape] = start_sql(self, shape).as_bytes(conn)
        params = start_values(event, conversation_id, node_id, admission)
        try:
            with ClientCursor(conn, row_factory=tuple_row) as cur:
                cur.execute(query, params)
                while cur.pgresult is None or not cur.pgresult.ntuples:
                    if not cur.nextset():  # pragma: no cover - the query always answers
                        raise RuntimeError("the start query returned no row")
                row = cur.fetchone()
                assert row is not None
                return admitted(row)
        except psycopg.errors.UniqueViolation as exc:
            raise IntegrityError(str(exc.diag.constraint_name)) from None

    def start_turns(self, conn: psycopg.Connection[Any], starts: Sequence[Start]) -> list[Admitted]:
        """Record several starts (see :meth:`start_turn`) in one transaction and one round
        trip: BEGIN, the lock, the notification, each start's statement in order (each
        sees those before it, so the limits hold as if they ran one by one), COMMIT.

        If any conflicts (``IntegrityError``), none is stored: the caller then records
        them one by one to learn which. ``conn`` must be in autocommit mode.
        """
        cursors = []
        try:
            with explicit_transaction(conn), conn.cursor() as cur, conn.pipeline():
                cur.execute(b"BEGIN")
                cur.execute(self._lock_only_sql)
                cur.execute(self._notify_sql)
                for event, conversation_id, node_id, admission in starts:
                    shape = shape_of(admission)
                    query = self._start_statement.get(shape)
                    if query is None:
                        query = start_statement(self, shape).as_bytes(conn)
                        self._start_statement[shape] = query
                    one = conn.cursor(row_factory=tuple_row)
                    cursors.append(one)
                    one.execute(query, start_values(event, conversation_id, node_id, admission))
                cur.execute(b"COMMIT")
            results = []
            for one in cursors:
                row = one.fetchone()
                assert row is not None  # every start statement answers one row
                results.append(admitted(row))
            return results
        finally:
            for one in cursors:
                one.close()

    def _append_pipelined(
        self,
        conn: psycopg.Connection[Any],
        events: Sequence[Row],
        ended: Sequence[UUID],
        paused: Sequence[Pause],
        deltas_only: bool,
    ) -> int:
        ids = [i if type(i) is UUID else UUID(str(i)) for i, _, _, _ in events]
        columns = (ids, [r[1] for r in events], [r[2] for r in events], [r[3] for r in events])
        with conn.cursor() as cur, conn.cursor(binary=True) as out:
            with conn.pipeline():  # sent together; the results are read at its end
                cur.execute(b"BEGIN")
                cur.execute(self._lock_only_sql)
                cur.execute(self._notify_deltas_sql if deltas_only else self._notify_sql)
                out.execute(self._insert_sql, (*columns, list(ended), *_pauses(paused)))
                cur.execute(b"COMMIT")
            row = out.fetchone()
        assert row is not None
        return int(row[0])

    def append_batch(
        self,
        conn: psycopg.Connection[Any],
        events: Sequence[Row],
        ended: Sequence[UUID],
        *,
        paused: Sequence[Pause] = (),
        deltas_only: bool = False,
    ) -> int:
        """One group commit: the events (any turns, in order), the turns they end, and
        those they pause (each with the time its wait runs out).

        Up to ``SMALL_BATCH`` events, one round trip: BEGIN, the lock, the notification,
        one statement that inserts the events (binary arrays) and closes the turns they
        end, and COMMIT, pipelined. A larger batch takes three: BEGIN with the lock, a
        binary COPY, and the index update with the commit. Each round trip is a wait
        for the GIL on a busy node as well as for PostgreSQL. ``conn`` must be in
        autocommit mode (transactions are explicit).
        """
        with explicit_transaction(conn):
            if len(events) <= SMALL_BATCH:
                return self._append_pipelined(conn, events, ended, paused, deltas_only)
            with ClientCursor(conn, row_factory=tuple_row) as cur:
                cur.execute(self._begin_deltas_sql if deltas_only else self._begin_sql)
                self.copy_events(cur, events, lock=False, position=False)
                cur.execute(self._end_sql, (list(ended), *_pauses(paused)))
                return _last_value(cur)
