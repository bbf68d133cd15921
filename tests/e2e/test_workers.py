"""``serve --workers N``: N HTTP processes on one port beside one relay and one set of
projections; a worker that dies is started again while the port keeps answering."""

from __future__ import annotations

import signal
import socket
import time

import httpx
import psutil
import pytest

from tests.api.test_turn_stream import new_conversation, resume, run_turn
from tests.e2e.conftest import ServerFactory
from tests.support.server import Server

pytestmark = pytest.mark.e2e

FAST = {"TURNSTREAM_DEMO_TOKENS": "24", "TURNSTREAM_DEMO_TOKENS_PER_S": "0"}


def children(server: Server) -> dict[str, list[psutil.Process]]:
    """serve's children by kind: ``worker``, ``relay``, ``projections``."""
    assert server.proc is not None
    kinds: dict[str, list[psutil.Process]] = {"worker": [], "relay": [], "projections": []}
    for child in psutil.Process(server.proc.pid).children():
        cmdline = child.cmdline()
        kind = "worker" if "--fd" in cmdline else "relay" if "relay" in cmdline else "projections"
        kinds[kind].append(child)
    return kinds


def until(what: str, check: object, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"no {what} within {timeout_s} s"
        time.sleep(0.05)


def healthz(port: int) -> socket.socket:
    """A connection that has had one answer to GET /healthz, kept open."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
    answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    return sock


def serving(worker: psutil.Process, port: int) -> int:
    """How many connections to ``port`` this worker holds."""
    return sum(
        1
        for conn in worker.net_connections(kind="tcp")
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_ESTABLISHED
    )


def test_workers_share_the_port_beside_one_relay_and_one_set_of_projections(
    make_server: ServerFactory,
) -> None:
    server = make_server(TURNSTREAM_WORKERS="2", **FAST)
    until("two workers", lambda: len(children(server)["worker"]) == 2)
    kinds = children(server)
    assert len(kinds["relay"]) == 1
    assert len(kinds["projections"]) == 1

    # The kernel spreads connections over both workers' sockets (odds 2 in 2^24 that one
    # worker gets all 24 by chance).
    held = [healthz(server.port) for _ in range(24)]
    try:
        counts = [serving(worker, server.port) for worker in kinds["worker"]]
        assert sum(counts) == 24
        assert all(counts), counts
    finally:
        for sock in held:
            sock.close()

    # A turn, whichever worker runs it, reaches the projections (the read model) and
    # its stream resumes exactly, whichever worker the resume lands on.
    cid = new_conversation(server)
    frames = run_turn(server, cid)
    assert frames[-1].event == "final"
    assert frames[-1].data["status"] == "completed"
    again = resume(server, cid, frames[-1].data["turn_id"], header=frames[3].id)
    assert [(f.id, f.data) for f in again] == [(f.id, f.data) for f in frames[4:]]
    view = httpx.get(f"{server.base_url}/v1/conversations/{cid}", headers=server.headers())
    assert view.status_code == 200, view.text
    texts = [m.get("content") for m in view.json()["messages"]]
    assert frames[-1].data["text"] in texts, texts


def test_a_killed_worker_is_started_again_and_the_port_keeps_answering(
    make_server: ServerFactory,
) -> None:
    server = make_server(TURNSTREAM_WORKERS="2", **FAST)
    until("two workers", lambda: len(children(server)["worker"]) == 2)
    victim = children(server)["worker"][0]
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    # Every connection is answered: the dead worker's socket stays open in serve, so a
    # connection it would take waits in its backlog for the worker started again.
    for _ in range(16):
        healthz(server.port).close()
    until(
        "a new worker",
        lambda: (
            len(children(server)["worker"]) == 2
            and victim.pid not in [w.pid for w in children(server)["worker"]]
        ),
    )
    assert server.proc is not None
    pids = [p.pid for kind in children(server).values() for p in kind]
    server.stop()  # SIGTERM: the workers, then the relay, then the projections
    assert server.proc.returncode == 0, server.log()
    assert not [pid for pid in pids if psutil.pid_exists(pid)]
    assert "Fatal Python error" not in server.log()
