"""Reading the projections' active views, and knowing how far they are.

Readers use the plain SQL views that name the active generation (see ``base``).
Read your writes: :meth:`Reader.pending` says which log position a view must reach to
hold every relevant event committed so far; :class:`Positions` follows the positions the
workers announce (LISTEN), so a reader waits for exactly that, never for a clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

import psycopg
from psycopg.rows import dict_row, tuple_row
from psycopg.sql import SQL, Composable, Identifier

from turnstream.projections.attachments import with_attachments
from turnstream.projections.base import channel
from turnstream.projections.registry import PROJECTIONS
from turnstream.projections.tree_steps import with_parts
from turnstream.projections.usage import STORED
from turnstream.store.application import APP_NAME, TurnstreamApplication

log = logging.getLogger(__name__)


class ListCursor(NamedTuple):
    updated_at: datetime
    id: UUID


def render(statement: Composable) -> bytes:
    """A statement's text, once (identifiers are ASCII: no connection's encoding needed)."""
    return statement.as_bytes(None)


class Reader:
    """Synchronous queries of the views (the service runs them on its executor)."""

    def __init__(self, app: TurnstreamApplication) -> None:
        self.app = app
        schema = Identifier(app.store.datastore.schema)

        def view(name: str) -> Any:
            return SQL("{}.{}").format(schema, Identifier(name))

        def pending_sql(name: str, only: Any) -> Any:
            """The view's position, and the last relevant event after it (``only``:
            a further condition on those events, or nothing)."""
            return SQL(
                "WITH t AS (SELECT coalesce(max(notification_id), 0) AS p FROM {}"
                " WHERE application_name = %s)"
                " SELECT t.p, (SELECT max(notification_id) FROM {} e"
                " WHERE e.notification_id > t.p AND e.topic = ANY(%s){}) FROM t"
            ).format(view(f"{name}_tracking"), app.store.events_table, only)

        of_conversation = SQL(
            " AND (e.originator_id = %s OR e.originator_id IN"
            " (SELECT turn_id FROM {} WHERE conversation_id = %s))"
        ).format(app.store.index_table)
        self._topics = {name: list(p.topics) for name, p in PROJECTIONS.items()}
        # Every statement rendered once: composing one on each call cost a turn's start
        # about as much Python as its reads.
        self._pending = {name: render(pending_sql(name, SQL(""))) for name in PROJECTIONS}
        self._pending_of = {
            name: render(pending_sql(name, of_conversation)) for name in PROJECTIONS
        }
        self._conversation = render(
            SQL("SELECT * FROM {} WHERE id = %s AND NOT deleted").format(view("tree_conversations"))
        )
        self._messages = render(
            SQL("SELECT * FROM {} WHERE conversation_id = %s ORDER BY ordinal").format(
                view("tree_messages")
            )
        )
        self._message = render(
            SQL("SELECT * FROM {} WHERE id = %s AND conversation_id = %s").format(
                view("tree_messages")
            )
        )
        # The step and call rows of a conversation (or of one of its messages), in log
        # order: one query for all its messages' parts.
        parts = SQL(
            "SELECT message_id, turn_id, position, step, NULL::text AS call_id, text, reasoning,"
            " NULL::text AS name, NULL::jsonb AS arguments, NULL::text AS kind,"
            " NULL::text AS server, NULL::text AS approval_state, NULL::text AS approval_by,"
            " NULL::text AS approval_reason, NULL::jsonb AS output, NULL::boolean AS is_error"
            " FROM {steps} WHERE conversation_id = %s{only}"
            " UNION ALL SELECT message_id, turn_id, position, step, call_id, NULL, NULL, name,"
            " arguments, kind, server, approval_state, approval_by, approval_reason, output,"
            " is_error FROM {calls} WHERE conversation_id = %s{only}"
            " ORDER BY position, step"
        )
        steps, calls = view("tree_steps"), view("tree_tool_calls")
        self._parts = render(parts.format(steps=steps, calls=calls, only=SQL("")))
        self._message_parts = render(
            parts.format(steps=steps, calls=calls, only=SQL(" AND message_id = %s"))
        )
        columns = SQL(
            "SELECT id, title, model, created_at, updated_at, message_count, active_turn_id,"
            " attachment_count FROM {}"
        ).format(view("conversation_list"))
        order = SQL(" ORDER BY updated_at DESC, id DESC LIMIT %s")
        self._list_first = render(columns + SQL(" WHERE tenant = %s AND owner = %s") + order)
        self._list_after = render(
            columns
            + SQL(" WHERE tenant = %s AND owner = %s AND (updated_at, id) < (%s, %s)")
            + order
        )
        self._usage = render(
            SQL(
                "SELECT period, period_start, sum(turns) AS turns,"
                " sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens"
                " FROM {} WHERE tenant = %s AND user_id = %s AND (period, period_start) IN"
                " (('day', %s), ('week', %s)) GROUP BY period, period_start"
            ).format(view("usage_counters"))
        )
        self._stored = render(SQL(STORED).format(usage_files=view("usage_files")))

    def _rows(self, query: Any, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        with (
            self.app.store.datastore.get_connection() as conn,
            conn.cursor(row_factory=dict_row) as cur,
        ):
            cur.execute(query, params)
            return cur.fetchall()

    def pending(self, name: str, conversation_id: UUID | None = None) -> tuple[int, int | None]:
        """(the view's position, the last relevant event after it, or None); with
        ``conversation_id``, of that conversation and its turns only: what a read of it
        must wait for, and nothing of anyone else's."""
        params: tuple[Any, ...] = (APP_NAME, self._topics[name])
        query = self._pending[name]
        if conversation_id is not None:
            params += (conversation_id, conversation_id)
            query = self._pending_of[name]
        with (
            self.app.store.datastore.get_connection() as conn,
            conn.cursor(row_factory=tuple_row) as cur,
        ):
            cur.execute(query, params)
            row = cur.fetchone()
            assert row is not None
            return int(row[0]), None if row[1] is None else int(row[1])

    def tree(
        self, conversation_id: UUID, *, pending: bool = True
    ) -> tuple[int | None, dict[str, Any] | None, list[dict[str, Any]]]:
        """A conversation's tree in one round trip: (with ``pending``, what the tree view
        still lacks of it, as :meth:`pending`; its row, or None; its messages, each with
        its ``parts`` and ``attachments``). A turn's start reads this: a round trip on a
        busy node also waits for the GIL."""
        with (
            self.app.store.datastore.get_connection() as conn,
            conn.cursor(row_factory=tuple_row) as lag,
            conn.cursor(row_factory=dict_row) as rows,
            conn.cursor(row_factory=dict_row) as messages,
            conn.cursor(row_factory=dict_row) as parts,
        ):
            with conn.pipeline():
                if pending:
                    params = (APP_NAME, self._topics["tree"], conversation_id, conversation_id)
                    lag.execute(self._pending_of["tree"], params)
                rows.execute(self._conversation, (conversation_id,))
                messages.execute(self._messages, (conversation_id,))
                parts.execute(self._parts, (conversation_id, conversation_id))
            behind = None
            if pending:
                row = lag.fetchone()
                assert row is not None
                behind = None if row[1] is None else int(row[1])
            found = with_parts(messages.fetchall(), parts.fetchall())
            return behind, rows.fetchone(), with_attachments(found)

    def _with_parts(
        self, query: bytes, params: tuple[Any, ...], parts: bytes, parts_params: tuple[Any, ...]
    ) -> list[dict[str, Any]]:
        """Messages and their parts' rows, in one round trip."""
        with (
            self.app.store.datastore.get_connection() as conn,
            conn.cursor(row_factory=dict_row) as messages,
            conn.cursor(row_factory=dict_row) as rows,
        ):
            with conn.pipeline():
                messages.execute(query, params)
                rows.execute(parts, parts_params)
            return with_attachments(with_parts(messages.fetchall(), rows.fetchall()))

    def conversation(self, conversation_id: UUID) -> dict[str, Any] | None:
        rows = self._rows(self._conversation, (conversation_id,))
        return rows[0] if rows else None

    def messages(self, conversation_id: UUID) -> list[dict[str, Any]]:
        """A conversation's messages in order, each with its ``parts`` and its
        ``attachments`` (see ``attachments.of_row``)."""
        cid = conversation_id
        return self._with_parts(self._messages, (cid,), self._parts, (cid, cid))

    def message(self, conversation_id: UUID, message_id: UUID) -> dict[str, Any] | None:
        cid, mid = conversation_id, message_id
        rows = self._with_parts(self._message, (mid, cid), self._message_parts, (cid, mid) * 2)
        return rows[0] if rows else None

    def conversations(
        self, tenant: str, owner: str, limit: int, after: ListCursor | None
    ) -> list[dict[str, Any]]:
        if after is None:
            return self._rows(self._list_first, (tenant, owner, limit))
        return self._rows(self._list_after, (tenant, owner, after.updated_at, after.id, limit))

    def usage(self, tenant: str, user_id: str, day: Any, week: Any) -> list[dict[str, Any]]:
        return self._rows(self._usage, (tenant, user_id, day, week))

    def stored(self, tenant: str, user_id: str) -> tuple[int, int]:
        """(the user's files, their stored bytes: each distinct content once)."""
        row = self._rows(self._stored, (tenant, user_id))[0]
        return int(row["files"]), int(row["bytes"])


class Positions:
    """The positions the projections' workers announce, for readers to wait on.

    One LISTEN connection per process. After a (re)connect the positions are read from
    the views; a waiter that hears nothing for a second checks the view itself, so a
    lost notification costs at most that second.
    """

    def __init__(self, app: TurnstreamApplication, reader: Reader) -> None:
        self.app = app
        self.reader = reader
        self.known: dict[str, int] = {}
        self._tick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="turnstream-positions")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def _announce(self, name: str, position: int) -> None:
        self.known[name] = position
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()

    async def _listen(self) -> None:
        schema = self.app.store.datastore.schema
        delay = 0.2
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.app.database_url, autocommit=True, connect_timeout=10
                )
                async with conn:
                    await conn.execute(SQL("LISTEN {}").format(Identifier(channel(schema))))
                    for name in PROJECTIONS:
                        position, _ = await asyncio.to_thread(self.reader.pending, name)
                        self._announce(name, position)
                    delay = 0.2
                    async for notify in conn.notifies():
                        name, _, value = notify.payload.partition(" ")
                        if name in PROJECTIONS and value.isdigit():
                            self._announce(name, int(value))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # PostgreSQL trouble: waiters fall back to queries
                log.warning("projection positions: %s; listening again", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def wait(self, name: str, position: int, within_s: float) -> bool:
        """Whether ``name``'s view reached ``position`` within ``within_s`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        while self.known.get(name, 0) < position:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            tick = self._tick
            try:
                await asyncio.wait_for(tick.wait(), min(remaining, 1.0))
            except TimeoutError:
                reached, _ = await asyncio.to_thread(self.reader.pending, name)
                if reached >= position:
                    self.known[name] = max(self.known.get(name, 0), reached)
        return True
