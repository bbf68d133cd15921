"""Rate limits shared by every node, in PostgreSQL.

A per-minute limit is a GCRA ("generic cell rate algorithm") kept in PostgreSQL: one
row per key holds its theoretical arrival time. A limit of N per minute lets a burst
of N through, then one each 60/N seconds; a refused request learns exactly when the
next one will pass (``Retry-After``). The rows are counters, not facts: they are
updated in place, and the ones in the past are deleted (nothing depends on them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import psycopg
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Composable, Composed, Identifier

from turnstream.store.ddl import ddl_lock

WINDOW_S = 60.0


def rate_table(schema: str) -> Composed:
    """The table of the rate limits' cells in ``schema``."""
    return SQL("{}.{}").format(Identifier(schema), Identifier("rate_limits"))


def take_statement(table: Composable) -> Composed:
    """One cell from each key whose arrival time stays within the window; the keys that
    gave one come back (params ``keys``, sorted, ``step`` and ``window``). One statement:
    row locks held for its duration only, taken in key order (no deadlock)."""
    return SQL(
        "INSERT INTO {t} AS r (key, tat)"
        " SELECT key, now() + %(step)s FROM unnest(%(keys)s::text[]) AS k(key) ORDER BY key"
        " ON CONFLICT (key) DO UPDATE SET tat = greatest(r.tat, now()) + %(step)s"
        " WHERE greatest(r.tat, now()) + %(step)s - now() <= %(window)s"
        " RETURNING key"
    ).format(t=table)


def cell_params(keys: Sequence[str], per_minute: int) -> dict[str, Any]:
    return {
        "keys": sorted(set(keys)),
        "step": timedelta(seconds=WINDOW_S / per_minute),
        "window": timedelta(seconds=WINDOW_S),
    }


class RateLimiter:
    """Per-minute limits on keys (``user:…``, ``addr:…``), atomically across nodes.

    A turn's start takes its cells in the statement that records it (see the store's
    admission); other requests (guest tokens) take theirs with :meth:`take`.
    """

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self.table = rate_table(schema)
        self.create_sql = SQL(
            "CREATE TABLE IF NOT EXISTS {} (key text PRIMARY KEY, tat timestamptz NOT NULL)"
        ).format(self.table)
        self._take = take_statement(self.table)
        self._wait = SQL(
            "SELECT max(extract(epoch FROM (tat + %(step)s - %(window)s - now()))) FROM {t}"
            " WHERE key = ANY(%(keys)s::text[])"
        ).format(t=self.table)
        self._forget = SQL("DELETE FROM {t} WHERE tat < now()").format(t=self.table)

    def create(self, conn: psycopg.Connection[Any]) -> None:
        with ddl_lock(conn, self.schema):
            conn.execute(self.create_sql)

    def take(self, conn: psycopg.Connection[Any], keys: Sequence[str], per_minute: int) -> int:
        """Count one request against every key: 0 if all allow it, else the seconds
        until all will. A refused request still counts against the keys that allowed
        it: every attempt counts, as a client that keeps trying is the one to slow."""
        params = cell_params(keys, per_minute)
        with conn.cursor(row_factory=tuple_row) as cur:
            if len(cur.execute(self._take, params).fetchall()) == len(params["keys"]):
                return 0
        return self.wait(conn, keys, per_minute)

    def wait(self, conn: psycopg.Connection[Any], keys: Sequence[str], per_minute: int) -> int:
        """Seconds until every key allows a request again (at least 1)."""
        with conn.cursor(row_factory=tuple_row) as cur:
            row = cur.execute(self._wait, cell_params(keys, per_minute)).fetchone()
        return max(1, math.ceil(float(row[0]))) if row and row[0] is not None else 1

    def forget_past(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(self._forget)
