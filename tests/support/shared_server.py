"""One server for a whole test module, on its own schema and NATS stream.

The per-test fixtures of ``tests/e2e/conftest.py`` give every test a fresh schema, stream
and server; a table-driven module (hundreds of cells against the same resources) shares
one of each instead, so it runs in seconds. Everything is removed afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql

from tests.conftest import NatsTarget, _delete_stream
from tests.support.inprocess import InProcessServer


@contextlib.contextmanager
def a_place(database_url: str, nats_url: str) -> Iterator[tuple[str, NatsTarget]]:
    """A fresh schema and NATS stream (with its own subject prefix); removed on exit."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    tag = uuid.uuid4().hex[:10]
    target = NatsTarget(url=nats_url, stream=f"TS_{tag.upper()}", prefix=f"ts_{tag}")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("create schema {}").format(sql.Identifier(schema)))
    try:
        yield schema, target
    finally:
        with contextlib.suppress(Exception):
            asyncio.run(_delete_stream(nats_url, target.stream))
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("set lock_timeout = '30s'")
            conn.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(schema)))


@contextlib.contextmanager
def served(
    database_url: str, nats_url: str, data_dir: Path, **env: str
) -> Iterator[InProcessServer]:
    """A started (in-process) server on a fresh schema and stream; stopped and dropped
    on exit."""
    with a_place(database_url, nats_url) as (schema, target):
        server = InProcessServer(database_url, schema, data_dir, env_extra=target.env() | env)
        try:
            server.start()
            yield server
        finally:
            server.stop()


def count_events(database_url: str, schema: str, originator_id: str | None = None) -> int:
    """How many events the store holds (of one aggregate, if given)."""
    query = sql.SQL("SELECT count(*) FROM {}.turnstream_events").format(sql.Identifier(schema))
    params: tuple[Any, ...] = ()
    if originator_id is not None:
        query += sql.SQL(" WHERE originator_id = %s")
        params = (originator_id,)
    with psycopg.connect(database_url) as conn:
        row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def problem_shape(r: httpx.Response) -> tuple[int, str, str, frozenset[str]]:
    """What a client can tell apart in a problem answer: status, media type, code, keys."""
    body = r.json() if r.headers.get("content-type", "").endswith("json") else {}
    return (
        r.status_code,
        r.headers.get("content-type", "").split(";")[0],
        str(body.get("code")),
        frozenset(body),
    )
