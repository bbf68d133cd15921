"""The embedded PostgreSQL and NATS servers, for real, in temp dirs.

For each server: it starts and answers; a restart on the same data folder keeps the data
(and the remembered port, or a new one when that port is taken); and a server left running
by an owner killed with SIGKILL is adopted by the next start() and really stopped by its
stop().
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import psutil
import psycopg
import pytest
from nats.js.api import StreamConfig

from turnstream.embedded import EmbeddedNats, EmbeddedPostgres

pytestmark = pytest.mark.timeout(120)

# Run in a child process that is then killed with SIGKILL: no atexit, no finally, no stop().
_OWNER = """
import json, sys, time
from pathlib import Path
from turnstream.embedded import EmbeddedNats, EmbeddedPostgres

kind, data_dir, out = sys.argv[1:4]
server = (EmbeddedPostgres if kind == "postgres" else EmbeddedNats)(Path(data_dir))
url = server.start()
tmp = Path(out + ".tmp")
tmp.write_text(json.dumps({"url": url, "pid": server.pid}))
tmp.rename(out)
time.sleep(600)
"""

Cleanup = Callable[[Callable[[], object]], None]


@pytest.fixture
def cleanup() -> Iterator[Cleanup]:
    """Register teardown calls, so a failing test never leaves a server running."""
    calls: list[Callable[[], object]] = []
    yield calls.append
    for call in reversed(calls):
        try:
            call()
        except Exception as exc:  # teardown must try every call
            warnings.warn(f"cleanup {call!r} failed: {exc!r}", stacklevel=1)


def _gone(pid: int) -> bool:
    """Exited; a zombie counts, since an orphan's reaper (PID 1) may never reap it."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not _gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _signal_if_alive(pid: int, sig: signal.Signals) -> Callable[[], None]:
    def send() -> None:
        if not _gone(pid):
            os.kill(pid, sig)
            _wait_gone(pid)

    return send


def _orphan_server(kind: str, data_dir: Path, tmp_path: Path, cleanup: Cleanup) -> dict[str, Any]:
    """Start a server from a child process, SIGKILL the child, return the server's url and pid."""
    out = tmp_path / f"{kind}-owner.json"
    child = subprocess.Popen([sys.executable, "-c", _OWNER, kind, str(data_dir), str(out)])
    try:
        deadline = time.monotonic() + 60
        while not out.exists():
            assert child.poll() is None, f"owner process exited with {child.returncode}"
            assert time.monotonic() < deadline, "owner process did not start the server"
            time.sleep(0.05)
        info: dict[str, Any] = json.loads(out.read_text())
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    # Fast shutdown for postgres, graceful for nats-server, should the test fail midway.
    cleanup(_signal_if_alive(info["pid"], signal.SIGINT if kind == "postgres" else signal.SIGTERM))
    assert not _gone(info["pid"]), "the server must outlive its killed owner"
    return info


def _query(url: str, query: str) -> Any:
    with psycopg.connect(url, connect_timeout=10) as conn:
        cur = conn.execute(query)
        # Several statements in one string: the cursor shows the first one's result.
        row = cur.fetchone() if cur.description else None
        conn.commit()
    return row[0] if row else None


# --------------------------------------------------------------------------- PostgreSQL


def test_postgres_answers_over_socket_url_and_tcp(tmp_path: Path, cleanup: Cleanup) -> None:
    # A long data folder: its socket path would overflow sun_path, so the short fallback
    # folder in the temp dir is exercised too.
    data_dir = tmp_path / ("d" * 100)
    pg = EmbeddedPostgres(data_dir)
    cleanup(pg.stop)

    url = pg.start()

    assert pg.socket_dir is not None
    assert len(str(pg.socket_dir)) < len(str(data_dir))
    assert _query(url, "select 1") == 1
    tcp = psycopg.connect(host="127.0.0.1", port=pg.port, user="postgres", dbname="postgres")
    with tcp:
        assert tcp.execute("select 1").fetchone() == (1,)
    assert (data_dir / "postgres.port").read_text().strip() == str(pg.port)
    assert pg.start() == url  # idempotent while running

    other = pg.ensure_database("turnstream")
    assert pg.ensure_database("turnstream") == other
    assert _query(other, "select current_database()") == "turnstream"

    pid = pg.pid
    assert pid is not None
    pg.stop()
    assert _wait_gone(pid)
    pg.stop()  # harmless the second time


def test_postgres_restart_keeps_data_and_port(tmp_path: Path, cleanup: Cleanup) -> None:
    pg = EmbeddedPostgres(tmp_path)
    cleanup(pg.stop)
    url = pg.start()
    port = pg.port
    _query(url, "create table kept (x int); insert into kept values (42)")
    pg.stop()

    again = EmbeddedPostgres(tmp_path)
    cleanup(again.stop)
    assert _query(again.start(), "select x from kept") == 42
    assert again.port == port  # remembered
    again.stop()

    # The remembered port is taken now: a new one is picked, and remembered.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        third = EmbeddedPostgres(tmp_path)
        cleanup(third.stop)
        assert _query(third.start(), "select x from kept") == 42
        assert third.port != port
        assert (tmp_path / "postgres.port").read_text().strip() == str(third.port)
        third.stop()


def test_postgres_adopts_server_of_killed_owner(tmp_path: Path, cleanup: Cleanup) -> None:
    data_dir = tmp_path / "data"
    orphan = _orphan_server("postgres", data_dir, tmp_path, cleanup)
    _query(orphan["url"], "create table kept (x int); insert into kept values (7)")

    pg = EmbeddedPostgres(data_dir)
    cleanup(pg.stop)
    url = pg.start()

    assert pg.pid == orphan["pid"]
    assert _query(url, "select x from kept") == 7
    pg.stop()
    assert _wait_gone(orphan["pid"])


# --------------------------------------------------------------------------- NATS


async def _account_streams(url: str) -> int:
    nc = await nats.connect(url, connect_timeout=5)
    try:
        info = await nc.jetstream().account_info()
        return int(info.streams)
    finally:
        await nc.close()


async def _create_stream(url: str, name: str) -> None:
    nc = await nats.connect(url, connect_timeout=5)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=name, subjects=[f"{name.lower()}.>"]))
        await js.publish(f"{name.lower()}.one", b"kept")
    finally:
        await nc.close()


async def _stream_messages(url: str, name: str) -> int:
    nc = await nats.connect(url, connect_timeout=5)
    try:
        info = await nc.jetstream().stream_info(name)
        return int(info.state.messages)
    finally:
        await nc.close()


def test_nats_starts_with_jetstream(tmp_path: Path, cleanup: Cleanup) -> None:
    server = EmbeddedNats(tmp_path)
    cleanup(server.stop)

    url = server.start()

    assert url == f"nats://127.0.0.1:{server.port}"
    assert asyncio.run(_account_streams(url)) == 0
    assert (tmp_path / "nats.port").read_text().strip() == str(server.port)
    assert server.start() == url  # idempotent while running
    pid = server.pid
    assert pid is not None
    server.stop()
    assert _wait_gone(pid)
    server.stop()  # harmless the second time


def test_nats_restart_keeps_streams(tmp_path: Path, cleanup: Cleanup) -> None:
    server = EmbeddedNats(tmp_path)
    cleanup(server.stop)
    url = server.start()
    port = server.port
    asyncio.run(_create_stream(url, "KEPT"))
    server.stop()

    again = EmbeddedNats(tmp_path)
    cleanup(again.stop)
    url = again.start()
    assert again.port == port  # remembered
    assert asyncio.run(_stream_messages(url, "KEPT")) == 1
    again.stop()


def test_nats_adopts_server_of_killed_owner(tmp_path: Path, cleanup: Cleanup) -> None:
    data_dir = tmp_path / "data"
    orphan = _orphan_server("nats", data_dir, tmp_path, cleanup)
    asyncio.run(_create_stream(orphan["url"], "ORPHAN"))

    server = EmbeddedNats(data_dir)
    cleanup(server.stop)
    url = server.start()

    assert server.pid == orphan["pid"]
    assert url == orphan["url"]
    assert asyncio.run(_stream_messages(url, "ORPHAN")) == 1
    server.stop()
    assert _wait_gone(orphan["pid"])
