"""Keeping projections up to date, and rebuilding them while they serve.

:class:`ProjectionWorker` keeps one projection's active view: it reads the events of the
projection's topics after its tracking position, in pages, and applies each page in one
transaction with its tracking record (see ``base``). One worker per projection is active
per store, the holder of an advisory lock; others stand by and take over within
``takeover_s``.

:func:`rebuild` fills the projection's next generation from the first event, then, in
the transaction of its last page, makes it the active one (the registry row and the
readers' SQL views); the active worker notices at its next page and follows the new
generation from its position. The old generation is dropped afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any, cast

import psycopg
from eventsourcing.persistence import Notification, Tracking
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Identifier

from turnstream.domain.events import DomainEvent
from turnstream.projections.base import (
    REGISTRY,
    BatchProjection,
    Op,
    ViewStore,
    channel,
    lock_key,
    projection_part,
    registry_sql,
    tracking_name,
)
from turnstream.projections.conversation_list import ConversationList
from turnstream.projections.tree import MessageTree
from turnstream.projections.usage import UsageCounters
from turnstream.store.application import APP_NAME, TurnstreamApplication

log = logging.getLogger(__name__)

PROJECTIONS: dict[str, type[BatchProjection]] = {
    p.name: p for p in (MessageTree, ConversationList, UsageCounters)
}
PAGE = 1000
STOP_CHECK_S = 0.25
"""How often an idle worker looks whether it was asked to stop."""
ADVANCE_EVERY_S = 1.0
"""How often an idle worker records that it has read past events it does not use."""


class GenerationChanged(Exception):
    """A rebuild made another generation active: follow it."""


def _registry(app: TurnstreamApplication) -> Any:
    return SQL("{}.{}").format(Identifier(app.store.datastore.schema), Identifier(REGISTRY))


def activate_sql(app: TurnstreamApplication, projection: type[BatchProjection], gen: int) -> Any:
    """The readers' views over generation ``gen`` of ``projection``."""
    schema = Identifier(app.store.datastore.schema)
    statements = [
        SQL("CREATE OR REPLACE VIEW {}.{} AS SELECT * FROM {}.{}").format(
            schema, Identifier(table), schema, Identifier(f"{table}__g{gen}")
        )
        for table in projection.reads
    ]
    statements.append(
        SQL("CREATE OR REPLACE VIEW {}.{} AS SELECT * FROM {}.{}").format(
            schema,
            Identifier(f"{projection.name}_tracking"),
            schema,
            Identifier(tracking_name(projection.name, gen)),
        )
    )
    return SQL("; ").join(statements)


def ensure_projections(app: TurnstreamApplication) -> dict[str, int]:
    """Create the registry and a first generation of each projection; the active ones."""
    schema = app.store.datastore.schema
    with app.connect() as conn:
        conn.execute(registry_sql(schema))
        with conn.transaction():
            conn.execute(SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(_registry(app)))
            rows = conn.execute(
                SQL("SELECT name, generation FROM {}").format(_registry(app))
            ).fetchall()
            active = {str(r[0]): int(r[1]) for r in rows}
            for name, projection in PROJECTIONS.items():
                if name in active:
                    continue
                ViewStore(app.store.datastore, projection=projection, generation=1).create_table()
                conn.execute(
                    SQL("INSERT INTO {} (name, generation) VALUES (%s, 1)").format(_registry(app)),
                    (name,),
                )
                conn.execute(activate_sql(app, projection, 1))
                active[name] = 1
    return active


def first_value(conn: psycopg.Connection[Any], query: Any, params: tuple[Any, ...] = ()) -> Any:
    """The first column of the first row (any connection: dict rows or tuples)."""
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(query, params).fetchone()
    return None if row is None else row[0]


def active_generation(conn: psycopg.Connection[Any], app: TurnstreamApplication, name: str) -> int:
    generation = first_value(
        conn, SQL("SELECT generation FROM {} WHERE name = %s").format(_registry(app)), (name,)
    )
    if generation is None:
        msg = f"projection {name!r} is not registered"
        raise LookupError(msg)
    return int(generation)


class Batch:
    """One generation of one projection, and how to apply a page of events to it."""

    def __init__(
        self,
        app: TurnstreamApplication,
        projection: type[BatchProjection],
        generation: int,
        *,
        page: int = PAGE,
    ) -> None:
        self.app = app
        self.page = page
        self.projection_class = projection
        self.name = projection.name
        self.generation = generation
        self.view = ViewStore(app.store.datastore, projection=projection, generation=generation)
        self.projection = projection(self.view)
        self._check = SQL("SELECT generation FROM {} WHERE name = %s FOR SHARE").format(
            _registry(app)
        )
        self._channel = channel(app.store.datastore.schema)

    def position(self) -> int:
        return self.view.max_tracking_id(APP_NAME) or 0

    def read(self, after: int, head: int) -> list[tuple[DomainEvent, int]]:
        """The next page of this projection's events after ``after``, up to ``head``."""
        notifications: Sequence[Notification] = self.app.store.select_notifications(
            after,
            self.page,
            stop=head,
            topics=self.projection_class.topics,
            inclusive_of_start=False,
        )
        return [
            (cast(DomainEvent, self.app.mapper.to_domain_event(n)), n.id) for n in notifications
        ]

    def apply(
        self,
        conn: psycopg.Connection[Any],
        events: list[tuple[DomainEvent, int]],
        position: int,
        *,
        rebuilding: bool = False,
        activate: bool = False,
    ) -> None:
        """Apply ``events`` and record ``position`` in one transaction.

        The active worker checks that its generation is still the active one (under a
        share lock of the registry row, which a rebuild's activation waits for), and
        announces its position to readers. A rebuild fills a generation that is not
        active yet; its last page (``activate``) makes it the active one.
        """
        changes: list[Op] = []
        repairs: list[tuple[int, str]] = []
        for event, at in events:
            ops, repaired = self.projection.storable_changes(event, at)
            changes += ops
            if repaired:
                repairs.append((at, "text"))
        with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
            if activate:
                cur.execute(
                    SQL(
                        "UPDATE {} SET generation = %s, activated_at = now() WHERE name = %s"
                    ).format(_registry(self.app)),
                    (self.generation, self.name),
                )
                cur.execute(activate_sql(self.app, self.projection_class, self.generation))
            elif not rebuilding:
                cur.execute(self._check, (self.name,))
                row = cur.fetchone()
                if row is None or int(row[0]) != self.generation:
                    raise GenerationChanged
            noted = self.app.store.note_repairs(conn, projection_part(self.name), repairs)
            with conn.pipeline():
                for statement, params in changes:
                    cur.execute(statement, params)
                self.view.track(conn, Tracking(APP_NAME, position))
            if activate or not rebuilding:
                # Delivered at commit: readers waiting for this position stop waiting.
                cur.execute("SELECT pg_notify(%s, %s)", (self._channel, f"{self.name} {position}"))
        for at, _ in noted:
            log.warning(
                "projection %s: the event at position %d holds text a view cannot hold (NUL);"
                " its view holds it with U+FFFD, the log keeps the original",
                self.name,
                at,
            )


def log_head(conn: psycopg.Connection[Any], app: TurnstreamApplication) -> int:
    query = SQL("SELECT coalesce(max(notification_id), 0) FROM {}").format(app.store.events_table)
    return int(first_value(conn, query))


class ProjectionWorker:
    """Keeps one projection's active view up to date (when it holds the lead)."""

    def __init__(
        self,
        app: TurnstreamApplication,
        projection: type[BatchProjection],
        *,
        takeover_s: float = 2.0,
    ) -> None:
        self.app = app
        self.projection = projection
        self.name = projection.name
        self.takeover_s = takeover_s
        self.stopping = threading.Event()
        self._lock_key = lock_key(app.store.datastore.schema, self.name)

    def stop(self) -> None:
        self.stopping.set()

    def run_forever(self) -> None:
        """Lead or stand by until :meth:`stop`; start over after any failure."""
        delay = 0.2
        while not self.stopping.is_set():
            conn: psycopg.Connection[Any] | None = None
            try:
                conn = self.app.connect()
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self._lock_key,)).fetchone()
                if not (row and row[0]):
                    conn.close()
                    conn = None
                    self.stopping.wait(self.takeover_s)
                    continue
                delay = 0.2
                self._follow(conn)
            except GenerationChanged:
                delay = 0.0
            except Exception as exc:  # PostgreSQL trouble: start over
                log.warning("projection %s stopped (%s); starting over", self.name, exc)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
            if delay:
                self.stopping.wait(delay)
                delay = min(delay * 2, self.takeover_s * 2)

    def _wait(self, conn: psycopg.Connection[Any], seconds: float) -> None:
        """Until a commit that may hold events of this projection, or ``seconds``.

        Commits of text deltas only (most of them, while answers stream) are notified on
        a channel of their own, which this worker does not listen to: those events are
        never read here.
        """
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0 and not self.stopping.is_set():
            # In slices, so that a stop is seen at once (a child's stop waits for it).
            slice_s = min(remaining, STOP_CHECK_S)
            if list(conn.notifies(timeout=slice_s, stop_after=1)):
                return

    def _follow(self, conn: psycopg.Connection[Any]) -> None:
        store = self.app.store
        conn.execute(SQL("LISTEN {}").format(Identifier(store.channel_name)))
        conn.execute(SQL("LISTEN {}").format(Identifier(channel(store.datastore.schema))))
        batch = Batch(self.app, self.projection, active_generation(conn, self.app, self.name))
        position = batch.position()
        log.info(
            "projection %s active: generation %d from %d", self.name, batch.generation, position
        )
        recorded = time.monotonic()
        while not self.stopping.is_set():
            for _ in conn.notifies(timeout=0):
                pass  # what they announce, the reads below see
            head = log_head(conn, self.app)
            events = batch.read(position, head) if head > position else []
            if events:
                last = head if len(events) < batch.page else events[-1][1]
                batch.apply(conn, events, last)
            elif head > position and time.monotonic() - recorded >= ADVANCE_EVERY_S:
                last = head
                batch.apply(conn, [], last)
            else:
                wait = ADVANCE_EVERY_S if head > position else 5.0
                if active_generation(conn, self.app, self.name) != batch.generation:
                    raise GenerationChanged
                self._wait(conn, wait)
                continue
            recorded = time.monotonic()
            position = last
            if events and last == head:
                # Caught up: wait for the next commit at once. One since the notifies
                # above were drained is already queued on this connection; and the
                # apply just checked the generation.
                self._wait(conn, 5.0)
