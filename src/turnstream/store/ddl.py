"""One maker of a schema's tables at a time."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg

DDL_LOCK = "turnstream.ddl"


@contextlib.contextmanager
def ddl_lock(conn: psycopg.Connection[Any], schema: str) -> Iterator[None]:
    """Hold the schema's DDL lock on ``conn`` (autocommit) while its tables are made.

    PostgreSQL's ``IF NOT EXISTS`` and ``OR REPLACE`` are not safe against each other:
    processes that start together (``serve --workers``, two relays, a projections
    worker) fail with "tuple concurrently updated" or a duplicate key in the catalogue.
    One at a time, each finds the others' tables made.
    """
    key = (DDL_LOCK, schema)
    conn.execute("SELECT pg_advisory_lock(hashtext(%s), hashtext(%s))", key)
    try:
        yield
    finally:
        if not conn.closed:
            conn.execute("SELECT pg_advisory_unlock(hashtext(%s), hashtext(%s))", key)
