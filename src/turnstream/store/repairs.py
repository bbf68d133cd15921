"""Repairs: the events a reader could take only repaired, each noted once.

The log is never changed. A repair is what a reader (the relay, a projection) made of a
stored event it could not take as it is: a tenant that is no subject token, a text a
view cannot hold. Noting each once, by part and position, lets it be logged once and
counted across restarts and rebuilds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Composable


class RepairNotes:
    """The recorder's repairs table (``repairs_table``, created with the store)."""

    repairs_table: Composable

    def note_repairs(
        self, conn: psycopg.Connection[Any], part: str, repairs: Sequence[tuple[int, str]]
    ) -> list[tuple[int, str]]:
        """Note that ``part`` (``relay/<stream>``, ``projection/<name>``) took the events
        at these positions only repaired, for the reasons given; the ones not noted
        before come back (so each is logged once, across restarts and rebuilds).

        The log is never changed: a repair is what a reader made of an event that it
        could not take as it is (a tenant that is no subject token, a text with NUL).
        """
        if not repairs:
            return []
        with conn.cursor(row_factory=tuple_row) as cur:
            cur.execute(
                SQL(
                    "INSERT INTO {} (part, position, reason)"
                    " SELECT %s, p, r FROM unnest(%s::bigint[], %s::text[]) AS t(p, r)"
                    " ON CONFLICT DO NOTHING RETURNING position, reason"
                ).format(self.repairs_table),
                (part, [p for p, _ in repairs], [r for _, r in repairs]),
            )
            return [(int(p), str(r)) for p, r in cur.fetchall()]

    def repair_counts(self, conn: psycopg.Connection[Any]) -> dict[str, int]:
        """How many events each part took repaired (parts with none are absent)."""
        with conn.cursor(row_factory=tuple_row) as cur:
            cur.execute(
                SQL("SELECT part, count(*) FROM {} GROUP BY part").format(self.repairs_table)
            )
            return {str(part): int(n) for part, n in cur.fetchall()}
