"""``serve --workers N``: N HTTP processes on one port, one relay and one set of projections.

One process's event loop and GIL bound what a node streams; a second core needs a
second process. Each worker is a whole node of its own (its node id, lease, group
writer, turn runners and recovery: a turn belongs to the process that runs it, and
cancel and follow reach it over NATS as they reach another node's), except that the
relay and the projection workers run once, beside the workers, as supervised children
of this process.

The listening sockets are made here, one per worker, all bound to the one port with
``SO_REUSEPORT``: the kernel spreads new connections over them, and a worker that dies
and is started again finds its socket still listening, its backlog kept. The store's
tables are made here too, before any worker starts, so that N workers never race to
create them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from dataclasses import dataclass, field
from typing import Any

from turnstream.bootstrap import build_application, start_servers
from turnstream.bootstrap.children import SupervisedChild
from turnstream.http.auth import resolve_secret
from turnstream.projections.registry import ensure_projections
from turnstream.settings import Settings
from turnstream.store.limits import RateLimiter

BACKLOG = 2048
"""Each socket's listen backlog (uvicorn's default)."""
STOP_MARGIN_S = 10.0
"""How much longer than the turns' shutdown grace a worker is given to stop."""


@dataclass
class WorkerPool:
    """The workers, relay and projections of ``serve --workers N``, and what they share."""

    settings: Settings
    database_url: str
    nats_url: str
    jwt_secret: str
    dev_secret: bool
    sockets: list[socket.socket]
    embedded: list[Any] = field(default_factory=list)
    children: list[SupervisedChild] = field(default_factory=list)

    def start(self) -> None:
        """Start the relay, the projections and the workers (inside a running loop)."""
        settings = self.settings
        env = os.environ | settings.to_env(
            database_url=self.database_url, nats_url=self.nats_url, workers="1"
        )
        if settings.relay.enabled:
            self.children.append(SupervisedChild(env, command=("relay",)))
        if settings.projections.enabled:
            self.children.append(SupervisedChild(env, command=("projections", "run")))
        stop_s = settings.turns.shutdown_grace_s + STOP_MARGIN_S
        for sock in self.sockets:
            fd = sock.fileno()
            self.children.append(
                SupervisedChild(
                    env, command=("serve", "--fd", str(fd)), stop_timeout_s=stop_s, pass_fds=(fd,)
                )
            )
        for child in self.children:
            child.start()

    @property
    def workers(self) -> list[SupervisedChild]:
        return [child for child in self.children if child.command[0] == "serve"]

    async def stop(self) -> None:
        """The workers first (their turns finish or are interrupted, their writers
        flush), then the relay publishes what they stored, then the projections."""
        for child in self.children:
            child.retire()
        await asyncio.gather(*(worker.stop() for worker in self.workers))
        for child in self.children:
            await child.stop()

    def close(self) -> None:
        """Close the sockets; stop the embedded servers this process started."""
        for sock in self.sockets:
            sock.close()
        for server in reversed(self.embedded):
            with contextlib.suppress(Exception):
                server.stop()


def listening_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` sockets listening on ``host:port`` together (``SO_REUSEPORT``); an
    address already in use by anything else fails here, before any worker starts."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.set_inheritable(True)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def prepare_store(settings: Settings, database_url: str) -> None:
    """The event store's, the projections' and the limits' tables, made once."""
    app = build_application(settings, database_url)
    try:
        ensure_projections(app)
        with app.connect() as conn:
            RateLimiter(settings.store.schema).create(conn)
    finally:
        app.close()


def bootstrap_workers(settings: Settings) -> WorkerPool:
    """The pool for ``settings.server.workers`` workers, with its sockets, its store's
    tables and its database and NATS (embedded ones if no URL is set) made ready."""
    server = settings.server
    sockets = listening_sockets(server.host, server.port, server.workers)
    embedded: list[Any] = []
    try:
        database_url, nats_url, embedded = start_servers(settings)
        prepare_store(settings, database_url)
        secret, dev = resolve_secret(server.jwt_secret, server.data_dir)
    except BaseException:
        for sock in sockets:
            sock.close()
        for started in reversed(embedded):
            started.stop()
        raise
    return WorkerPool(settings, database_url, nats_url, secret, dev, sockets, embedded)
