"""`turnstream serve` with zero configuration: its own PostgreSQL, NATS and dev secret."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import nats
import psutil
import pytest

from tests.api.test_turn_stream import new_conversation, resume, run_turn
from tests.support.server import Frame, Server, parse_sse

pytestmark = pytest.mark.e2e


def postmaster_pid(data_dir: Path) -> int | None:
    pid_file = data_dir / "postgres" / "postmaster.pid"
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text().split()[0])
    return pid if psutil.pid_exists(pid) else None


def nats_pid(data_dir: Path) -> int | None:
    pid_file = data_dir / "nats.pid"
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text().split()[0])
    if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
        return None
    return pid


async def _stream_count(url: str) -> int:
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=3)
    try:
        return int((await nc.jetstream().stream_info("TURNSTREAM")).state.messages)
    finally:
        await nc.close()


def relayed(data_dir: Path, expected: int, timeout: float = 60) -> int:
    """The embedded stream's message count once it reaches ``expected`` (or the deadline)."""
    url = f"nats://127.0.0.1:{(data_dir / 'nats.port').read_text().strip()}"
    deadline = time.monotonic() + timeout
    while True:
        count = asyncio.run(_stream_count(url))
        if count >= expected or time.monotonic() > deadline:
            return count
        time.sleep(0.1)


def test_zero_config_serve_prints_a_dev_token_and_keeps_its_database(tmp_path: Path) -> None:
    data = tmp_path / "data"
    node = Server(
        None,
        "turnstream",
        data,
        secret=None,
        env_extra={
            "TURNSTREAM_DEMO_TOKENS": "12",
            "TURNSTREAM_DEMO_TOKENS_PER_S": "0",
            "TURNSTREAM_LOG_LEVEL": "INFO",
        },
    )
    try:
        node.start(timeout=120)
        # The printed dev token works; `turnstream token` signs with the same secret.
        printed = re.search(r"dev token .*:\n\s+(\S+)", node.log())
        assert printed is not None, node.log()
        headers = {"Authorization": f"Bearer {printed.group(1)}"}
        assert httpx.get(f"{node.base_url}/v1/models", headers=headers).status_code == 200
        # The printed hint pastes as it is: TOKEN is set, and expands in double quotes.
        assert f"TOKEN={printed.group(1)}" in node.log()
        assert '-H "Authorization: Bearer $TOKEN"' in node.log()
        # So is the playground's link, the token in its fragment (never sent to a server).
        link = re.search(r"playground:\n\s+(\S+)#token=(\S+)", node.log())
        assert link is not None, node.log()
        assert link.group(2) == printed.group(1)
        page = httpx.get(link.group(1))
        assert page.status_code == 200
        assert 'id="token"' in page.text
        # One log format for every line (uvicorn's own too): time, level, logger.
        logged = [line for line in node.log().splitlines() if " INFO " in line]
        assert any("uvicorn" in line for line in logged), node.log()
        assert all(
            re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO \S+: ", line) for line in logged
        )
        minted = subprocess.run(
            [
                sys.executable,
                "-m",
                "turnstream",
                "token",
                "--tenant",
                "acme",
                "--user",
                "alice",
                "--ttl",
                "10m",
                "--data-dir",
                str(data),
            ],
            capture_output=True,
            text=True,
            check=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("TURNSTREAM_")},
        ).stdout.strip()
        assert minted.count(".") == 2
        assert (
            httpx.get(
                f"{node.base_url}/v1/models", headers={"Authorization": f"Bearer {minted}"}
            ).status_code
            == 200
        )

        cid = new_conversation(node)
        frames = run_turn(node, cid, "remember me")
        answer = frames[-1].data["text"]
        pg = postmaster_pid(data)
        assert pg is not None
        assert nats_pid(data) is not None
        # The embedded NATS holds every stored event: the conversation and the turn's.
        events = 1 + len(frames)
        assert relayed(data, events) == events

        # A clean stop stops the embedded PostgreSQL and NATS too.
        node.stop()
        assert node.proc is not None
        assert node.proc.returncode == 0, node.log()
        assert postmaster_pid(data) is None
        assert nats_pid(data) is None

        # A restart finds the data again, in the store and in the stream (nothing twice).
        node.start(timeout=120)
        view = httpx.get(f"{node.base_url}/v1/conversations/{cid}", headers=node.headers())
        assert view.json()["messages"][1]["content"] == answer
        assert relayed(data, events) == events

        # kill -9 leaves PostgreSQL running; the next serve adopts it and ends the
        # orphaned turn.
        node.env_extra |= {"TURNSTREAM_DEMO_TOKENS": "400", "TURNSTREAM_DEMO_TOKENS_PER_S": "20"}
        node.stop()
        node.start(timeout=120)
        with httpx.stream(
            "POST",
            f"{node.base_url}/v1/conversations/{cid}/turns",
            json={"content": "long"},
            headers=node.headers(),
            timeout=60,
        ) as r:
            first = next(f for f in parse_sse(r.iter_lines()) if isinstance(f, Frame))
        survivor, nats_survivor = postmaster_pid(data), nats_pid(data)
        node.kill()
        assert postmaster_pid(data) == survivor
        assert nats_pid(data) == nats_survivor
        node.start(timeout=120)
        assert postmaster_pid(data) == survivor
        assert nats_pid(data) == nats_survivor
        frames = resume(node, cid, first.data["turn_id"], header=0)
        assert frames[-1].event == "error"
        assert frames[-1].data["code"] == "runner_lost"
        # The relay of the new process carries on where the stream ends: exactly once.
        events += len(frames)
        assert relayed(data, events) == events
    finally:
        node.stop()
    assert postmaster_pid(data) is None
    assert nats_pid(data) is None
