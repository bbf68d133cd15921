"""Projections on the eventsourcing library's machinery, in generations.

A projection is the library's :class:`~eventsourcing.projection.Projection`: it names the
event topics it reads and turns each event into changes of its view. Its view is the
library's :class:`~eventsourcing.postgres.PostgresTrackingRecorder` plus the projection's
tables: every batch of changes is written in one transaction together with the tracking
record of the last event applied, so an event is applied exactly once, and a runner
that dies mid-batch resumes after the last committed batch.

Changes are SQL statements computed from the events alone (no reads, no clock, no
sequence), sent in one pipeline per batch: a view rebuilt from the log is identical, row
for row, to the view built live.

Generations: a projection's tables carry a generation suffix (``tree_messages__g2``).
Readers use plain SQL views (``tree_messages``) over the active generation, recorded in
the ``projections`` registry. A rebuild fills the next generation from the first event
while the active one keeps serving, and switches the views in the transaction of its
last batch.
"""

from __future__ import annotations

import hashlib
import re
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import psycopg
from eventsourcing.persistence import IntegrityError, Tracking
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from eventsourcing.projection import Projection
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Composed, Identifier

from turnstream.domain.events import DomainEvent

Op = tuple[str, Sequence[Any]]
"""One change of a view: a statement and its parameters."""

REGISTRY = "projections"
CHANNEL_SUFFIX = "_projections"
LOCK_CLASS = 0x70726F6A  # "proj"


_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")
"""What a PostgreSQL text value cannot hold: NUL, and lone surrogates (no UTF-8 form)."""
REPLACEMENT = "\ufffd"


def storable(ops: list[Op]) -> tuple[list[Op], bool]:
    """``ops`` with every text a view cannot hold made storable, and whether any was.

    The boundary refuses such text, but the log is forever: an event stored before it
    did (or a model's answer with a NUL) must not stop a view. The view holds the text
    with U+FFFD in place of each such character; the log keeps the original.
    """
    repaired = False
    out: list[Op] = []
    for statement, params in ops:
        if any(isinstance(p, str) and _UNSTORABLE.search(p) for p in params):
            params = [_UNSTORABLE.sub(REPLACEMENT, p) if isinstance(p, str) else p for p in params]
            repaired = True
        out.append((statement, params))
    return out, repaired


def table_name(table: str, generation: int) -> str:
    return f"{table}__g{generation}"


def tracking_name(projection: str, generation: int) -> str:
    return table_name(f"{projection}_tracking", generation)


def lock_key(schema: str, projection: str) -> int:
    """The advisory lock of the one runner that keeps a projection's active view."""
    digest = hashlib.blake2b(f"{schema}/{projection}".encode(), digest_size=4).digest()
    return (LOCK_CLASS << 32) | int.from_bytes(digest, "big")


def projection_part(name: str) -> str:
    """Projection ``name``'s name among the parts that note repairs."""
    return f"projection/{name}"


def channel(schema: str) -> str:
    """The NOTIFY channel where runners announce ``<projection> <position>``."""
    return f"{schema}{CHANNEL_SUFFIX}"


class ViewStore(PostgresTrackingRecorder):
    """One generation of a projection's view: its tables and its tracking table."""

    def __init__(
        self,
        datastore: PostgresDatastore,
        *,
        projection: type[BatchProjection],
        generation: int,
    ) -> None:
        super().__init__(datastore, tracking_table_name=tracking_name(projection.name, generation))
        self.generation = generation
        schema = Identifier(datastore.schema)
        self.tables = {
            table: SQL("{}.{}").format(schema, Identifier(table_name(table, generation)))
            for table in projection.tables
        }
        for table, columns in projection.tables.items():
            self.sql_create_statements.append(
                SQL("CREATE TABLE IF NOT EXISTS {} (" + columns + ")").format(self.tables[table])
            )
        for table, column in projection.added:
            self.sql_create_statements.append(
                SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS " + column).format(self.tables[table])
            )
        for n, (table, columns) in enumerate(projection.indexes):
            self.sql_create_statements.append(
                SQL("CREATE INDEX IF NOT EXISTS {} ON {} (" + columns + ")").format(
                    Identifier(f"{table_name(table, generation)}_ix{n}"), self.tables[table]
                )
            )

    def drop(self, conn: psycopg.Connection[Any]) -> None:
        """Drop this generation's tables (never the active one's: readers use it)."""
        schema = Identifier(self.datastore.schema)
        with conn.transaction():
            for table in self.tables.values():
                conn.execute(SQL("DROP TABLE IF EXISTS {}").format(table))
            conn.execute(
                SQL("DROP TABLE IF EXISTS {}.{}").format(
                    schema, Identifier(self.tracking_table_name)
                )
            )

    def track(self, conn: psycopg.Connection[Any], tracking: Tracking) -> None:
        """Record how far the view is, in the caller's transaction.

        The library's statement, which refuses a position at or below the one recorded,
        on a cursor of its own: inside a pipeline, a cursor that ran other statements
        may still hold one of their results when its ``fetchone()`` runs (psycopg reads
        the pipeline's results as they arrive), and the library's own ``_insert_tracking``
        then read an ``UPDATE 1`` as its answer (issue 10, seen on PostgreSQL 15).
        """
        with conn.cursor(row_factory=tuple_row) as cur:
            cur.execute(
                self.insert_tracking_statement,
                {
                    "application_name": tracking.application_name,
                    "notification_id": tracking.notification_id,
                },
                prepare=True,
            )
            if self.datastore.single_row_tracking and cur.fetchone() is None:
                msg = f"tracking {tracking.notification_id} is not past the view's position"
                raise IntegrityError(msg)


class BatchProjection(Projection[ViewStore]):
    """A projection whose events become SQL statements applied in batches.

    Subclasses set ``name``, ``topics``, ``tables`` (name → column definitions) and
    ``indexes``, and implement :meth:`changes`.
    """

    name: str = ""
    topics: tuple[str, ...] = ()
    tables: ClassVar[dict[str, str]] = {}
    indexes: ClassVar[tuple[tuple[str, str], ...]] = ()
    added: ClassVar[tuple[tuple[str, str], ...]] = ()
    """Columns added to a table after its first release (table, column definition; each
    also in ``tables``, last): a generation made before gets them where it is."""
    reads: ClassVar[tuple[str, ...]] = ()
    """Its tables that readers use, through views of the same name."""

    def __init__(self, view: ViewStore) -> None:
        super().__init__(view)
        self._tables = view.tables
        self._rendered: dict[str, str] = {}

    def q(self, template: str) -> str:
        """``template`` with ``{table}`` names made this generation's, rendered once: the
        same text each time, so psycopg caches it and prepares it on the server."""
        text = self._rendered.get(template)
        if text is None:
            text = self._rendered[template] = SQL(template).format(**self._tables).as_string()
        return text

    @abstractmethod
    def changes(self, event: DomainEvent, position: int) -> list[Op]:
        """The statements that apply ``event`` (stored at ``position``) to the view."""

    def storable_changes(self, event: DomainEvent, position: int) -> tuple[list[Op], bool]:
        """:meth:`changes`, made :func:`storable`; and whether they had to be."""
        return storable(self.changes(event, position))

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        """The library's entry point: one event in its own transaction."""
        with self.view.datastore.transaction(commit=True) as cursor:
            ops, _ = self.storable_changes(domain_event, tracking.notification_id)
            for statement, params in ops:
                cursor.execute(statement, params)
            self.view.track(cursor.connection, tracking)


def registry_sql(schema: str) -> Composed:
    return SQL(
        "CREATE TABLE IF NOT EXISTS {}.{} ("
        " name text PRIMARY KEY,"
        " generation integer NOT NULL,"
        " activated_at timestamptz NOT NULL DEFAULT now())"
    ).format(Identifier(schema), Identifier(REGISTRY))
