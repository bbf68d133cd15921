"""Servers of one test on its schema and stream, sharing a JWT secret: a cluster."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

from tests.conftest import NatsTarget


class Startable(Protocol):
    def start(self) -> Any: ...
    def stop(self) -> None: ...


S = TypeVar("S", bound=Startable)


@contextlib.contextmanager
def cluster(
    kind: Callable[..., S], database_url: str, schema: str, target: NatsTarget, data_dir: Path
) -> Iterator[Callable[..., S]]:
    """A factory of started servers of ``kind`` (``env``: their ``TURNSTREAM_*``
    settings); every one is stopped at the end."""
    started: list[S] = []
    secret = secrets.token_urlsafe(32)

    def make(**env: str) -> S:
        server = kind(
            database_url,
            schema,
            data_dir / f"node{len(started)}",
            env_extra=target.env() | env,
            secret=secret,
        )
        started.append(server)
        server.start()
        return server

    try:
        yield make
    finally:
        for server in started:
            server.stop()
