"""How far each projection is, and whether a worker leads each (for readiness)."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg.sql import SQL, Identifier

from turnstream.projections.base import lock_key, projection_part
from turnstream.projections.registry import PROJECTIONS, active_generation, first_value, log_head
from turnstream.store.application import APP_NAME, TurnstreamApplication


def workers_lead(app: TurnstreamApplication) -> bool:
    """Whether a worker (of any node) leads each projection, so reads can catch up."""
    keys = [lock_key(app.store.datastore.schema, name) for name in PROJECTIONS]
    with app.store.datastore.get_connection() as conn:
        row = conn.execute(
            "SELECT count(DISTINCT (classid::bigint << 32) | objid::bigint) AS n"
            " FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1"
            " AND ((classid::bigint << 32) | objid::bigint) = ANY(%s)",
            (keys,),
        ).fetchone()
    return row is not None and int(row["n"]) == len(keys)


@dataclass
class ProjectionStatus:
    name: str
    generation: int
    position: int
    head: int
    repaired: int = 0
    """Events whose text the view holds repaired (see ``storable``), each counted once."""

    @property
    def lag(self) -> int:
        return max(0, self.head - self.position)


def status(app: TurnstreamApplication) -> list[ProjectionStatus]:
    schema = Identifier(app.store.datastore.schema)
    result = []
    with app.store.datastore.get_connection() as conn:
        head = log_head(conn, app)
        repaired = app.store.repair_counts(conn)
        for name in PROJECTIONS:
            gen = active_generation(conn, app, name)
            position = first_value(
                conn,
                SQL(
                    "SELECT coalesce(max(notification_id), 0) FROM {}.{}"
                    " WHERE application_name = %s"
                ).format(schema, Identifier(f"{name}_tracking")),
                (APP_NAME,),
            )
            count = repaired.get(projection_part(name), 0)
            result.append(ProjectionStatus(name, gen, int(position), head, count))
    return result
