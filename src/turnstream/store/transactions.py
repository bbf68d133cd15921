"""Explicit transactions on an autocommit connection, and what their failures mean."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
from eventsourcing.persistence import IntegrityError


@contextlib.contextmanager
def explicit_transaction(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Around statements that BEGIN and COMMIT themselves on an autocommit connection:
    on any failure, roll back what is open (the connection stays usable), and report a
    unique violation as the library's ``IntegrityError`` naming its constraint."""
    try:
        yield
    except BaseException as exc:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE and not conn.closed:
            with contextlib.suppress(psycopg.Error):
                conn.execute("ROLLBACK")
        if isinstance(exc, psycopg.errors.UniqueViolation):
            raise IntegrityError(str(exc.diag.constraint_name)) from None
        raise
