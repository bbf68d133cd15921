"""Processes that start together make one schema's tables without tripping on each other.

``serve --workers`` starts its workers, its relay and its projections at once, and an
operator may start two relays; each makes the tables it needs if they are not there.
PostgreSQL's ``CREATE … IF NOT EXISTS`` and ``CREATE OR REPLACE`` race ("tuple
concurrently updated"), so the store takes one lock for them.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg import sql

from turnstream.projections.registry import PROJECTIONS, ensure_projections
from turnstream.store.application import TurnstreamApplication, open_application
from turnstream.store.limits import RateLimiter

STARTERS = 6


@pytest.fixture
def unmade_schema(database_url: str) -> Iterator[str]:
    """A schema name nothing has made yet (the starters make it), dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(name)))


def together(count: int, start: Callable[[], object]) -> list[BaseException]:
    """Run ``start`` in ``count`` threads released at once; the errors they raised."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run() -> None:
        barrier.wait()
        try:
            start()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_starters_released_at_once_all_make_the_same_schema(
    database_url: str, unmade_schema: str
) -> None:
    apps: list[TurnstreamApplication] = []

    def start() -> None:
        app = open_application(database_url, unmade_schema)
        apps.append(app)
        ensure_projections(app)
        with app.connect() as conn:
            RateLimiter(unmade_schema).create(conn)

    for _ in range(3):  # a race is a matter of chance: give it several
        errors = together(STARTERS, start)
        for app in apps:
            app.close()
        apps.clear()
        assert errors == []
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("drop schema {} cascade").format(sql.Identifier(unmade_schema)))


def test_every_starter_sees_one_registry_row_per_projection(
    database_url: str, unmade_schema: str
) -> None:
    actives: list[dict[str, int]] = []

    def start() -> None:
        app = open_application(database_url, unmade_schema)
        try:
            actives.append(ensure_projections(app))
        finally:
            app.close()

    assert together(STARTERS, start) == []
    assert actives == [dict.fromkeys(PROJECTIONS, 1)] * STARTERS
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            sql.SQL("select name, count(*) from {}.projections group by name").format(
                sql.Identifier(unmade_schema)
            )
        ).fetchall()
    assert dict(rows) == dict.fromkeys(PROJECTIONS, 1)
