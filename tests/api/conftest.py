"""The HTTP API against the service in the test's own process (real PostgreSQL, NATS).

Each test gets a fresh schema and NATS stream and servers on them (a cluster, when it
asks for several): uvicorn on threads of this process, with the relay and projection
workers in-process too. Nothing here is about processes; ``tests/e2e`` is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import NatsTarget
from tests.support.cluster import cluster
from tests.support.inprocess import InProcessServer

ServerFactory = Callable[..., InProcessServer]


@pytest.fixture
def make_server(
    database_url: str, db_schema: str, nats_target: NatsTarget, tmp_path: Path
) -> Iterator[ServerFactory]:
    """Start servers on this test's schema and stream (stopped afterwards); ``env`` are
    ``TURNSTREAM_*`` settings. Several make a cluster."""
    with cluster(InProcessServer, database_url, db_schema, nats_target, tmp_path) as make:
        yield make


@pytest.fixture
def server(make_server: ServerFactory) -> InProcessServer:
    return make_server(TURNSTREAM_DEMO_TOKENS="24", TURNSTREAM_DEMO_TOKENS_PER_S="0")
