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
    BatchProjection,
    Op,
    ViewStore,
    channel,
    lock_key,
    projection_part,
)
from turnstream.projections.registry import (
    GENERATION_CHANGED,
    activate_sql,
    active_generation,
    registry_table,
)
from turnstream.store.application import APP_NAME, TurnstreamApplication

log = logging.getLogger(__name__)

PAGE = 1000
STOP_CHECK_S = 0.25
"""How often an idle worker looks whether it was asked to stop."""
ADVANCE_EVERY_S = 1.0
"""How often an idle worker records that it has read past events it does not use."""


class GenerationChanged(Exception):
    """A rebuild made another generation active: follow it."""


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
            registry_table(app)
        )
        self._channel = channel(app.store.datastore.schema)
        events = app.store.events_table
        self._next_sql = (
            SQL(
                "WITH h AS (SELECT coalesce(max(notification_id), 0) AS head FROM {ev})"
                " SELECT h.head, e.notification_id, e.originator_id, e.originator_version,"
                " e.topic, e.state FROM h LEFT JOIN LATERAL (SELECT * FROM {ev}"
                " WHERE notification_id > %s AND notification_id <= h.head AND topic = ANY(%s)"
                " ORDER BY notification_id LIMIT %s) e ON true"
            )
            .format(ev=events)
            .as_bytes(None)
        )
        self._guard = (
            SQL("SELECT {}.projection_guard(%s, %s)")
            .format(Identifier(app.store.datastore.schema))
            .as_bytes(None)
        )
        self._notify = b"SELECT pg_notify(%s, %s)"
        self._topics = list(projection.topics)

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

    def next_page(
        self, conn: psycopg.Connection[Any], after: int
    ) -> tuple[int, list[tuple[DomainEvent, int]]]:
        """The log's head, and the next page of this projection's events after
        ``after`` up to it: one statement, so one snapshot and one round trip."""
        with conn.cursor(row_factory=tuple_row, binary=True) as cur:
            cur.execute(self._next_sql, (after, self._topics, self.page))
            rows = cur.fetchall()
        head = int(rows[0][0])
        to_domain = self.app.mapper.to_domain_event
        events: list[tuple[DomainEvent, int]] = []
        for _, at, originator_id, version, topic, state in rows:
            if at is None:  # the head's row alone: no event after ``after``
                continue
            n = Notification(originator_id, version, topic, bytes(state), at)
            events.append((cast(DomainEvent, to_domain(n)), int(at)))
        return head, events

    def apply_active(
        self, conn: psycopg.Connection[Any], events: list[tuple[DomainEvent, int]], position: int
    ) -> bool:
        """:meth:`apply` for the active worker in one round trip: the generation guard,
        the changes, the tracking record and the announcement, pipelined in one
        transaction. False (nothing applied) when an event needs a repair noted: the
        caller then uses :meth:`apply`. Raises GenerationChanged as :meth:`apply` does."""
        changes: list[Op] = []
        for event, at in events:
            ops, repaired = self.projection.storable_changes(event, at)
            if repaired:
                return False
            changes += ops
        try:
            with conn.pipeline(), conn.transaction(), conn.cursor() as cur:
                cur.execute(self._guard, (self.name, self.generation))
                for statement, params in changes:
                    cur.execute(statement, params)
                self.view.track(conn, Tracking(APP_NAME, position))
                # Delivered at commit: readers waiting for this position stop waiting.
                cur.execute(self._notify, (self._channel, f"{self.name} {position}"))
        except psycopg.Error as exc:
            if exc.sqlstate == GENERATION_CHANGED:
                raise GenerationChanged from None
            raise
        return True

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
                    ).format(registry_table(self.app)),
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
            head, events = batch.next_page(conn, position)
            if events:
                last = head if len(events) < batch.page else events[-1][1]
                if not batch.apply_active(conn, events, last):
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
