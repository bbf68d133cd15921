"""The projections' registry: which generation of each is active, and the SQL around it.

Readers query plain SQL views that name the active generation's tables; a rebuild fills
the next generation and repoints the views in the transaction of its last page. The
active worker's pages are guarded by a function that refuses a generation that is no
longer the active one.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Identifier, Literal

from turnstream.projections.base import (
    REGISTRY,
    BatchProjection,
    ViewStore,
    registry_sql,
    table_name,
    tracking_name,
)
from turnstream.projections.conversation_list import ConversationList
from turnstream.projections.tree import MessageTree
from turnstream.projections.usage import UsageCounters
from turnstream.store.application import TurnstreamApplication
from turnstream.store.ddl import ddl_lock

PROJECTIONS: dict[str, type[BatchProjection]] = {
    p.name: p for p in (MessageTree, ConversationList, UsageCounters)
}


def registry_table(app: TurnstreamApplication) -> Any:
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


GENERATION_CHANGED = "TSGEN"
"""The SQLSTATE of :func:`guard_sql`'s function when the generation is no longer active."""


def guard_sql(app: TurnstreamApplication) -> Any:
    """A function that raises unless a projection's generation is the active one, and
    holds the registry row (shared) until the transaction ends, so that a rebuild's
    activation waits for the page being applied. As a statement of its own it lets the
    check travel in the same round trip as the page it guards."""
    return SQL(
        "CREATE OR REPLACE FUNCTION {}.projection_guard(p_name text, p_generation integer)"
        " RETURNS void LANGUAGE plpgsql AS $$ BEGIN"
        " PERFORM 1 FROM {} WHERE name = p_name AND generation = p_generation FOR SHARE;"
        " IF NOT FOUND THEN RAISE EXCEPTION 'projection % is not at generation %',"
        " p_name, p_generation USING ERRCODE = {}; END IF; END $$"
    ).format(
        Identifier(app.store.datastore.schema), registry_table(app), Literal(GENERATION_CHANGED)
    )


def ensure_projections(app: TurnstreamApplication) -> dict[str, int]:
    """Create the registry and a first generation of each projection; the active ones."""
    schema = app.store.datastore.schema
    with app.connect() as conn, ddl_lock(conn, schema):
        conn.execute(registry_sql(schema))
        with conn.transaction():
            conn.execute(SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(registry_table(app)))
            conn.execute(guard_sql(app))
            rows = conn.execute(
                SQL("SELECT name, generation FROM {}").format(registry_table(app))
            ).fetchall()
            active = {str(r[0]): int(r[1]) for r in rows}
            for name, projection in PROJECTIONS.items():
                if name in active:
                    if _lacks_additions(conn, app, projection, active[name]):
                        # Tables or columns this version added, on a generation made
                        # before: add them and re-make the views. Only then: ALTER TABLE,
                        # CREATE TABLE and CREATE
                        # VIEW lock out every reader, and readers may hold their locks
                        # while they wait for this very worker to start.
                        gen = active[name]
                        view = ViewStore(app.store.datastore, projection=projection, generation=gen)
                        view.create_table()
                        conn.execute(activate_sql(app, projection, gen))
                    continue
                ViewStore(app.store.datastore, projection=projection, generation=1).create_table()
                conn.execute(
                    SQL("INSERT INTO {} (name, generation) VALUES (%s, 1)").format(
                        registry_table(app)
                    ),
                    (name,),
                )
                conn.execute(activate_sql(app, projection, 1))
                active[name] = 1
    return active


def _lacks_additions(
    conn: psycopg.Connection[Any],
    app: TurnstreamApplication,
    projection: type[BatchProjection],
    generation: int,
) -> bool:
    """Whether generation ``generation`` or its views lack a table of ``tables`` (one
    added after the generation was made, as ``usage_files``) or a column of ``added``."""
    schema = app.store.datastore.schema
    relations = [table_name(t, generation) for t in projection.tables] + list(projection.reads)
    with conn.cursor(row_factory=tuple_row) as cur:
        rows = cur.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = %s AND table_name = ANY(%s)",
            (schema, relations),
        ).fetchall()
    if set(relations) - {str(r[0]) for r in rows}:
        return True
    if not projection.added:
        return False
    wanted = {(t, c.split()[0]) for t, c in projection.added}
    wanted |= {(table_name(t, generation), c) for t, c in wanted}
    with conn.cursor(row_factory=tuple_row) as cur:
        rows = cur.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = %s AND (table_name, column_name) IN"
            " (SELECT * FROM unnest(%s::text[], %s::text[]))",
            (schema, [t for t, _ in wanted], [c for _, c in wanted]),
        ).fetchall()
    found = {(str(r[0]), str(r[1])) for r in rows}
    return bool(wanted - found)


def first_value(conn: psycopg.Connection[Any], query: Any, params: tuple[Any, ...] = ()) -> Any:
    """The first column of the first row (any connection: dict rows or tuples)."""
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(query, params).fetchone()
    return None if row is None else row[0]


def active_generation(conn: psycopg.Connection[Any], app: TurnstreamApplication, name: str) -> int:
    generation = first_value(
        conn, SQL("SELECT generation FROM {} WHERE name = %s").format(registry_table(app)), (name,)
    )
    if generation is None:
        msg = f"projection {name!r} is not registered"
        raise LookupError(msg)
    return int(generation)


def log_head(conn: psycopg.Connection[Any], app: TurnstreamApplication) -> int:
    query = SQL("SELECT coalesce(max(notification_id), 0) FROM {}").format(app.store.events_table)
    return int(first_value(conn, query))
