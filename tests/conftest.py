"""Real services for the test suite: PostgreSQL and NATS JetStream, never mocks.

Each service is obtained the first way that works, in this order:

1. ``TURNSTREAM_TEST_DATABASE_URL`` / ``TURNSTREAM_TEST_NATS_URL``, if set (e.g. in CI
   with service containers);
2. a throwaway testcontainers container, if a Docker engine answers;
3. the embedded servers turnstream itself runs (:mod:`turnstream.embedded`), in a session
   temp dir, stopped at the end of the session.

Services start lazily: a run that asks for neither fixture starts nothing, and NATS is
started only if some test asks for ``nats_url``.

The suite runs on two pytest-xdist workers, and each worker is a session of its own: it
starts its own embedded servers (in its own temp dir, on free ports of their own), and
every test's schema and NATS stream has a random name, so workers never share either.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import Any, Literal
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql

from turnstream.embedded import (
    EmbeddedNats,
    EmbeddedPostgres,
    nats_server_version,
    postgres_version,
)

DATABASE_URL_ENV = "TURNSTREAM_TEST_DATABASE_URL"
NATS_URL_ENV = "TURNSTREAM_TEST_NATS_URL"
POSTGRES_IMAGE = "postgres:17-alpine"
NATS_IMAGE = "nats:2.10-alpine"
# The embedded cluster's database for tests; "postgres" stays the admin database.
EMBEDDED_TEST_DATABASE = "turnstream_test"

Source = Literal["env", "docker", "embedded"]


@functools.cache
def _docker_answers() -> bool:
    """Whether a Docker engine answers a ping within a couple of seconds.

    Any failure (no SDK, no socket, a hung daemon) means no Docker: the embedded servers
    are a fine fallback, so this must never fail or stall the session.
    """
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def _source(env_var: str) -> Source:
    if os.environ.get(env_var):
        return "env"
    if _docker_answers():
        return "docker"
    return "embedded"


def _where(url: str) -> str:
    """host:port/path of a URL, without credentials, for the report header."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "(unparsable URL)"
    return f"{parts.hostname}:{port}{parts.path}"


def _describe(service: Literal["postgres", "nats"]) -> str:
    env_var = DATABASE_URL_ENV if service == "postgres" else NATS_URL_ENV
    source = _source(env_var)
    if source == "env":
        return f"from ${env_var} ({_where(os.environ[env_var])})"
    if source == "docker":
        image = POSTGRES_IMAGE if service == "postgres" else NATS_IMAGE
        return f"testcontainers ({image})"
    try:
        version = (
            f"PostgreSQL {postgres_version()}"
            if service == "postgres"
            else f"nats-server {nats_server_version()}"
        )
    except Exception as exc:
        return f"embedded (unavailable: {exc})"
    return f"embedded ({version})"


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Say up front which way each service will be obtained (they start on first use)."""
    return [
        f"postgres: {_describe('postgres')}",
        f"nats: {_describe('nats')}, started only if a test needs it",
    ]


def _docker_postgres() -> Any:
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:  # testcontainers before the "community" split
        from testcontainers.postgres import PostgresContainer
    # driver=None: a plain libpq URL, not an SQLAlchemy "postgresql+psycopg2://" one.
    return PostgresContainer(POSTGRES_IMAGE, driver=None)


def _docker_nats() -> Any:
    from testcontainers.core.container import DockerContainer

    return DockerContainer(NATS_IMAGE).with_command("-js").with_exposed_ports(4222)


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A libpq URL of a real PostgreSQL database for the whole session."""
    source = _source(DATABASE_URL_ENV)
    if source == "env":
        yield os.environ[DATABASE_URL_ENV]
        return
    if source == "docker":
        container = _docker_postgres()
        try:
            container.start()
        except Exception as exc:
            # E.g. Docker answers but cannot pull the image (no registry access).
            warnings.warn(
                f"PostgreSQL container failed ({exc!r}); using embedded PostgreSQL",
                stacklevel=1,
            )
            with contextlib.suppress(Exception):
                container.stop()
        else:
            try:
                yield container.get_connection_url()
            finally:
                container.stop()
            return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("postgres"))
    server.start()
    try:
        yield server.ensure_database(EMBEDDED_TEST_DATABASE)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A ``nats://`` URL of a real NATS server with JetStream for the whole session."""
    source = _source(NATS_URL_ENV)
    if source == "env":
        yield os.environ[NATS_URL_ENV]
        return
    if source == "docker":
        from testcontainers.core.waiting_utils import wait_for_logs

        container = _docker_nats()
        try:
            container.start()
            wait_for_logs(container, "Server is ready", timeout=60)
        except Exception as exc:
            warnings.warn(
                f"NATS container failed ({exc!r}); using embedded nats-server", stacklevel=1
            )
            with contextlib.suppress(Exception):
                container.stop()
        else:
            try:
                host = container.get_container_host_ip()
                yield f"nats://{host}:{container.get_exposed_port(4222)}"
            finally:
                container.stop()
            return
    server = EmbeddedNats(tmp_path_factory.mktemp("nats"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def db_schema(database_url: str) -> Iterator[str]:
    """A fresh, empty schema in ``database_url`` for one test, dropped with everything in it."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("create schema {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            # A test that leaks a connection holding locks must fail its teardown, not hang
            # the session.
            conn.execute("set lock_timeout = '30s'")
            conn.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(name)))


@dataclasses.dataclass(frozen=True)
class NatsTarget:
    """A NATS server and a stream name and subject prefix that belong to one test."""

    url: str
    stream: str
    prefix: str

    def env(self) -> dict[str, str]:
        """The `turnstream serve` settings that point at this server, stream and prefix."""
        return {
            "TURNSTREAM_NATS_URL": self.url,
            "TURNSTREAM_NATS_STREAM": self.stream,
            "TURNSTREAM_NATS_SUBJECT_PREFIX": self.prefix,
        }


async def _delete_stream(url: str, stream: str) -> None:
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=2)
    try:
        with contextlib.suppress(NotFoundError):
            await nc.jetstream().delete_stream(stream)
    finally:
        await nc.close()


@pytest.fixture
def nats_target(nats_url: str) -> Iterator[NatsTarget]:
    """This test's own stream and subject prefix on the session's NATS, deleted afterwards."""
    tag = uuid.uuid4().hex[:10]
    target = NatsTarget(url=nats_url, stream=f"TS_{tag.upper()}", prefix=f"ts_{tag}")
    yield target
    with contextlib.suppress(Exception):
        asyncio.run(_delete_stream(nats_url, target.stream))


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
