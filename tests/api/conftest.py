"""The HTTP API against the service in the test's own process (real PostgreSQL, NATS).

Each test gets a fresh schema and NATS stream and servers on them (a cluster, when it
asks for several): uvicorn on threads of this process, with the relay and projection
workers in-process too. Nothing here is about processes; ``tests/e2e`` is.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.conftest import NatsTarget
from tests.support.inprocess import InProcessServer

ServerFactory = Callable[..., InProcessServer]


@pytest.fixture
def make_server(
    database_url: str, db_schema: str, nats_target: NatsTarget, tmp_path: Path
) -> Iterator[ServerFactory]:
    """Start servers on this test's schema and stream (stopped afterwards); ``env`` are
    ``TURNSTREAM_*`` settings. They share one schema, stream and JWT secret: a cluster."""
    started: list[InProcessServer] = []
    secret = secrets.token_urlsafe(32)

    def make(**env: str) -> InProcessServer:
        server = InProcessServer(
            database_url,
            db_schema,
            tmp_path / f"node{len(started)}",
            env_extra=nats_target.env() | env,
            secret=secret,
        )
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def server(make_server: ServerFactory) -> InProcessServer:
    return make_server(TURNSTREAM_DEMO_TOKENS="24", TURNSTREAM_DEMO_TOKENS_PER_S="0")


@pytest.fixture
def event_count(database_url: str, db_schema: str) -> Callable[[], int]:
    """How many events the store holds (to prove a rejected request stored nothing)."""

    def count() -> int:
        with psycopg.connect(database_url) as conn:
            query = sql.SQL("SELECT count(*) FROM {}.turnstream_events").format(
                sql.Identifier(db_schema)
            )
            row = conn.execute(query).fetchone()
            assert row is not None
            return int(row[0])

    return count
