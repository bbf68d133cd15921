from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import NatsTarget
from tests.support.cluster import cluster
from tests.support.server import Server

ServerFactory = Callable[..., Server]


@pytest.fixture
def make_server(
    database_url: str, db_schema: str, nats_target: NatsTarget, tmp_path: Path
) -> Iterator[ServerFactory]:
    """Start `turnstream serve` processes on this test's schema and stream (stopped
    afterwards): a cluster, when a test starts several."""
    with cluster(Server, database_url, db_schema, nats_target, tmp_path) as make:
        yield make


@pytest.fixture
def server(make_server: ServerFactory) -> Server:
    return make_server(TURNSTREAM_DEMO_TOKENS="24", TURNSTREAM_DEMO_TOKENS_PER_S="0")
