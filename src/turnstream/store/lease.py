"""A node's lease: a PostgreSQL advisory lock held for as long as the node lives.

Every turn records the node that runs it. A node whose lock is free is dead (its
connection closed when its process died), so its running turns are orphans that
another node may end; the lock, taken for the transaction, also keeps two nodes from
ending the same turns at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from uuid import UUID

import psycopg

from turnstream.domain.turn import Turn, TurnEvent
from turnstream.store.application import TurnstreamApplication

log = logging.getLogger(__name__)

LOCK_CLASS = 0x7475726E  # "turn": the advisory-lock namespace of node leases


def node_lock_key(node_id: UUID) -> int:
    """The advisory lock a node holds for as long as it lives (a positive bigint)."""
    return (LOCK_CLASS << 32) | int.from_bytes(node_id.bytes[:4], "big")


class NodeLease:
    """This node's lease, on a connection of its own."""

    def __init__(self, app: TurnstreamApplication, node_id: UUID) -> None:
        self.app = app
        self.node_id = node_id
        self._conn: psycopg.Connection[Any] | None = None

    def take(self) -> None:
        self._conn = self.app.connect()
        self._conn.execute("SELECT pg_advisory_lock(%s)", (node_lock_key(self.node_id),))

    def keep(self) -> None:
        """Check the lease; take it again if its connection was lost."""
        try:
            if self._conn is None or self._conn.closed:
                raise psycopg.OperationalError("lease connection closed")
            self._conn.execute("SELECT 1")
        except psycopg.Error:
            log.warning("node lease lost; taking it again")
            if self._conn is not None:
                self._conn.close()
            self.take()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


class OrphanSweeper:
    """Ends the running turns of dead nodes, on a connection of its own (reopened after
    a failure)."""

    def __init__(self, app: TurnstreamApplication, node_id: UUID) -> None:
        self.app = app
        self.node_id = node_id
        self._conn: psycopg.Connection[Any] | None = None

    def sweep(self, make_error: Callable[[Turn], TurnEvent]) -> list[TurnEvent]:
        """End each running turn of every node whose lease is free; the ends written.

        ``make_error(turn)`` is the end of an orphaned turn (``Turn.lose_runner``).
        """
        written: list[TurnEvent] = []
        try:
            if self._conn is None or self._conn.closed:
                self._conn = self.app.connect()
            for node_id in self.app.store.running_nodes(exclude=self.node_id):
                written += self.app.end_orphans(
                    self._conn, node_id, node_lock_key(node_id), make_error
                )
        except BaseException:
            self.close()
            raise
        return written

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None
