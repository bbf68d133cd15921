"""The whole service in the test's own process: uvicorn on a thread, real HTTP on loopback.

Built by the same composition root as ``turnstream serve`` (``bootstrap`` and
``http_app``), with the relay and the projection workers in-process (no child
processes), against the test's PostgreSQL schema and NATS stream. Requests cross a
real socket and uvicorn's real HTTP parser, so headers arrive as a client sends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import uvicorn

from tests.conftest import NatsTarget
from turnstream.bootstrap import Container, bootstrap, http_app
from turnstream.bus.envelope import POSITION
from turnstream.http.auth import mint
from turnstream.projections.status import status as projection_status
from turnstream.settings import Settings


@dataclass
class Served:
    container: Container
    base_url: str

    @property
    def settings(self) -> Settings:
        return self.container.settings

    def token(self, tenant: str = "acme", user: str = "alice", **kw: Any) -> str:
        return mint(self.container.jwt_secret, tenant=tenant, user=user, **kw)

    def headers(self, tenant: str = "acme", user: str = "alice") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(tenant, user)}"}

    def wait_at_head(self, timeout: float = 60.0) -> int:
        """Wait until the relay's stream and every projection hold the log's head;
        returns the head. Fails with both sides' positions if they do not in time."""
        deadline = time.monotonic() + timeout
        while True:
            statuses = projection_status(self.container.app)
            head = statuses[0].head
            relayed = asyncio.run(last_relayed(self.container.nats_url, self.settings.nats.stream))
            if relayed >= head and all(s.position >= head for s in statuses):
                return head
            assert time.monotonic() < deadline, (head, relayed, statuses)
            time.sleep(0.05)


async def last_relayed(url: str, stream: str) -> int:
    """The log position of the stream's last message (0 when it is empty)."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        if not info.state.last_seq:
            return 0
        message = await js.get_msg(stream, info.state.last_seq)
        return int((message.headers or {})[POSITION])
    finally:
        await nc.close()


def in_process_settings(
    database_url: str, schema: str, nats: NatsTarget, **overrides: Any
) -> Settings:
    """Settings for a service in the test process: everything in it, fast demo turns."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "database_schema": schema,
        "nats_url": nats.url,
        "nats_stream": nats.stream,
        "nats_subject_prefix": nats.prefix,
        "jwt_secret": secrets.token_urlsafe(32),
        "relay_process": False,
        "projections_process": False,
        "relay_takeover_s": 0.2,
        "runner_check_interval_s": 0.5,
        "demo_tokens": 8,
        "demo_tokens_per_s": 0.0,
        "shutdown_grace_s": 0.0,
        "log_level": "WARNING",
    }
    return Settings.from_env({}, **(values | overrides))


@contextlib.contextmanager
def serving(settings: Settings, timeout: float = 60.0) -> Iterator[Served]:
    """The service on a free loopback port until the block ends; ready when yielded."""
    container = bootstrap(settings)
    app = http_app(container)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # log_config=None: the test process keeps its own logging (pytest captures it).
    config = uvicorn.Config(app, lifespan="on", log_config=None, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True
    )
    thread.start()
    served = Served(container, f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert thread.is_alive(), "the in-process server stopped while starting"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{served.base_url}/readyz", timeout=5).status_code == 200:
                    break
            assert time.monotonic() < deadline, "the in-process server did not become ready"
            time.sleep(0.05)
        yield served
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
        container.close()


@dataclass
class InProcessServer:
    """``tests.support.server.Server``'s interface, for the service in this process.

    The same ``TURNSTREAM_*`` settings as a served process gets (``env_extra`` over the
    test defaults), but the relay and the projection workers run in-process too.
    Restartable on the same schema, like a process.
    """

    database_url: str
    schema: str
    data_dir: Path
    env_extra: dict[str, str] = field(default_factory=dict)
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    served: Served | None = None
    _running: contextlib.ExitStack | None = None

    @property
    def base_url(self) -> str:
        assert self.served is not None, "not started"
        return self.served.base_url

    def token(self, tenant: str = "acme", user: str = "alice", **kw: Any) -> str:
        return mint(self.secret, tenant=tenant, user=user, **kw)

    def headers(self, tenant: str = "acme", user: str = "alice") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(tenant, user)}"}

    def settings(self) -> Settings:
        env = {
            "TURNSTREAM_DATABASE_URL": self.database_url,
            "TURNSTREAM_DATABASE_SCHEMA": self.schema,
            "TURNSTREAM_DATA_DIR": str(self.data_dir),
            "TURNSTREAM_JWT_SECRET": self.secret,
            "TURNSTREAM_RUNNER_CHECK_INTERVAL_S": "0.5",
            "TURNSTREAM_RELAY_PROCESS": "false",
            "TURNSTREAM_PROJECTIONS_PROCESS": "false",
            "TURNSTREAM_SHUTDOWN_GRACE_S": "0",
            "TURNSTREAM_LOG_LEVEL": "WARNING",
        }
        return Settings.from_env(env | self.env_extra)

    def start(self) -> InProcessServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        stack = contextlib.ExitStack()
        self.served = stack.enter_context(serving(self.settings()))
        self._running = stack
        return self

    def stop(self) -> None:
        if self._running is not None:
            running, self._running = self._running, None
            running.close()

    def log(self) -> str:
        """A served process's log; in-process the test's own log capture has it."""
        return ""
