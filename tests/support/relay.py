"""Standalone `turnstream relay` processes, and probes of the stream and the relay lock."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import nats
import psycopg
from nats.js.errors import NotFoundError

from turnstream.bus.relay import relay_lock_key

# A relay that takes its own advisory lock (keyed by its pid) instead of the shared one: it
# always leads, next to any other relay. It runs the real `turnstream relay` otherwise.
_ROGUE = """
import os, sys
import turnstream.bus.relay as relay
relay.relay_lock_key = lambda schema, stream: os.getpid()
from turnstream.cli import main
sys.exit(main(["relay"]))
"""


@dataclass
class RelayProcess:
    """One `python -m turnstream relay` process (or a rogue one that ignores the lock)."""

    env_extra: dict[str, str]
    data_dir: Path
    rogue: bool = False
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    _runs: int = field(default=0, repr=False)

    def start(self) -> RelayProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TURNSTREAM_")} | {
            "TURNSTREAM_DATA_DIR": str(self.data_dir),
            "TURNSTREAM_LOG_LEVEL": "INFO",
            **self.env_extra,
        }
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._runs += 1
        self.log_path = self.data_dir / f"relay-{self._runs}.log"
        args = ["-c", _ROGUE] if self.rogue else ["-m", "turnstream", "relay"]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, *args], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def pause(self) -> None:
        """SIGSTOP: frozen (as in a long VM or GC pause), its connections and lock kept."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def wait_log(self, pattern: str, *, after: int = 0, timeout: float = 60.0) -> re.Match[str]:
        """The first match of ``pattern`` in the log past character ``after``, once it is there."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.log()[after:])
            if found is not None:
                return found
            if time.monotonic() > deadline or not self.alive():
                msg = f"relay {self.pid} never logged {pattern!r}:\n{self.log()[after:]}"
                raise AssertionError(msg)
            time.sleep(0.1)

    def kill(self) -> None:
        """kill -9: no finally, no drain, publishes may still be in flight."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused process cannot act on SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


async def _stream_count(url: str, stream: str) -> int:
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=2)
    try:
        try:
            info = await nc.jetstream().stream_info(stream)
        except NotFoundError:
            return 0
        return int(info.state.messages)
    finally:
        await nc.close()


def stream_count(url: str, stream: str) -> int:
    """How many messages the stream holds now (0 if it does not exist yet)."""
    return asyncio.run(_stream_count(url, stream))


async def _wait_stream_above(
    url: str, stream: str, above: int, timeout: float, alive: list[RelayProcess]
) -> int:
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=2)
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + timeout
        while True:
            try:
                count = int((await js.stream_info(stream)).state.messages)
            except NotFoundError:
                count = 0
            if count > above:
                return count
            for relay in alive:
                if not relay.alive():
                    msg = f"relay {relay.pid} exited:\n{relay.log()}"
                    raise AssertionError(msg)
            if time.monotonic() > deadline:
                msg = f"stream {stream} stayed at {count} messages (waited for > {above})"
                raise AssertionError(msg)
            await asyncio.sleep(0.005)
    finally:
        await nc.close()


def wait_stream_above(
    url: str,
    stream: str,
    above: int,
    *,
    timeout: float = 60.0,
    alive: list[RelayProcess] | None = None,
) -> int:
    """Poll the stream's message count closely; return it once it exceeds ``above``.

    Fails the test if ``timeout`` passes first, or as soon as a relay in ``alive`` exits.
    """
    return asyncio.run(_wait_stream_above(url, stream, above, timeout, alive or []))


def relay_lock_holders(database_url: str, schema: str, stream: str) -> list[int]:
    """Backend pids holding the relay's advisory lock (as PostgreSQL reports a bigint key:
    classid = high 32 bits, objid = low 32 bits, objsubid = 1)."""
    key = relay_lock_key(schema, stream)
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND classid::bigint = %s AND objid::bigint = %s AND objsubid = 1",
            (key >> 32, key & 0xFFFFFFFF),
        ).fetchall()
    return [int(r[0]) for r in rows]


def wait_lock_holder(
    database_url: str,
    schema: str,
    stream: str,
    *,
    other_than: int | None = None,
    timeout: float = 60.0,
) -> int:
    """The backend pid holding the relay lock, once one (other than ``other_than``) does."""
    deadline = time.monotonic() + timeout
    while True:
        holders = relay_lock_holders(database_url, schema, stream)
        assert len(holders) <= 1, holders
        if holders and holders[0] != other_than:
            return holders[0]
        if time.monotonic() > deadline:
            msg = f"no relay took the lock (holders {holders}, previous {other_than})"
            raise AssertionError(msg)
        time.sleep(0.05)
