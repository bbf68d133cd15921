"""The embedded PostgreSQL server: :class:`EmbeddedPostgres`.

:class:`EmbeddedPostgres` creates a cluster in the data folder once and starts, adopts
and stops its server; ``postmaster.pid`` tells what server runs on a cluster. What is
about the installation and the cluster's files rather than one server is in
:mod:`.pginstall`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import time
from pathlib import Path
from typing import Literal
from urllib.parse import quote

import psutil  # type: ignore[import-untyped]
import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from turnstream.embedded.pginstall import (
    _init_cluster,
    _Postmaster,
    _prepare_socket_dir,
    _read_postmaster_pid,
    postgres_bin_dir,
)
from turnstream.embedded.process import (
    _HOST,
    _START_TIMEOUT,
    EmbeddedServerError,
    _Account,
    _choose_port,
    _chown_tree,
    _ensure_system_user,
    _file_lock,
    _grant_read_tree,
    _grant_traverse,
    _live_process,
    _log_since,
    _Managed,
    _run,
    _size,
    _wait_gone,
    _write_port,
)

# The package's name, as before it was split into modules: log lines keep their origin.
logger = logging.getLogger("turnstream.embedded")

PG_SYSTEM_USER = "turnstream-pg"
"""The system account PostgreSQL runs as when turnstream runs as root (postgres refuses root)."""

_STOP_TIMEOUT = 60.0


class EmbeddedPostgres(_Managed):
    """A real PostgreSQL server whose cluster lives in ``data_dir / "postgres"``.

    The cluster is created once (``initdb`` with trust authentication, UTF-8, superuser
    ``postgres``) and reused on every later start. The server listens on 127.0.0.1 on a
    remembered port (``data_dir / "postgres.port"``) and on a Unix socket; it logs to
    ``data_dir / "postgres.log"``. As root, PostgreSQL runs as the system user
    :data:`PG_SYSTEM_USER`, created if needed.

    Usage::

        with EmbeddedPostgres(path) as pg:
            url = pg.ensure_database("turnstream")
    """

    def __init__(self, data_dir: Path | str, *, bin_dir: Path | None = None) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.pgdata = self.data_dir / "postgres"
        self.log_file = self.data_dir / "postgres.log"
        self.port_file = self.data_dir / "postgres.port"
        self._lock_file = self.data_dir / ".postgres.lock"
        self._bin_dir = bin_dir
        self._account: _Account | None = None
        self._pid: int | None = None
        self._port: int | None = None
        self._socket_dir: Path | None = None
        self.adopted = False
        """Whether :meth:`start` found the server already running (another process's)."""

    # ----------------------------------------------------------------- public API

    def start(self) -> str:
        """Start (or adopt an already running) server; return a URL of database ``postgres``."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with _file_lock(self._lock_file):
            if self._pid is not None and self._live() is not None:
                return self.url
            self._account = self._prepare_account()
            running = self._find_adoptable()
            self.adopted = running is not None
            if running is not None:
                logger.info(
                    "reusing PostgreSQL (pid %d, port %s) left running in %s",
                    running.pid,
                    running.port,
                    self.pgdata,
                )
            else:
                staging = self.data_dir / "postgres.initdb"
                _init_cluster(self.pgdata, staging, self._account, self._bin)
                running = self._start_server()
            if running.port is None:
                raise EmbeddedServerError(
                    f"PostgreSQL (pid {running.pid}) does not report its port", self.log_file
                )
            self._pid, self._port, self._socket_dir = running.pid, running.port, running.socket_dir
            _write_port(self.port_file, running.port)
        logger.info("PostgreSQL ready at %s", self.url)
        return self.url

    def stop(self, mode: Literal["fast", "immediate"] = "fast") -> None:
        """Stop the server (``pg_ctl -m fast``) if this object started or adopted it.

        ``immediate``: abort at once, as a crash would (the next start recovers).
        """
        with _file_lock(self._lock_file):
            pid = self._pid
            if pid is None:
                return
            if self._live() is not None:
                if self._account is not None:
                    # Someone may have taken the search bit away meanwhile (pytest, for one,
                    # resets its base temp dir to 0700 at each session start).
                    with contextlib.suppress(OSError):
                        _grant_traverse(self.data_dir, self._account)
                stop_cmd: list[str | Path] = [self._bin("pg_ctl"), "-D", self.pgdata]
                stop_cmd += ["-m", mode, "-w", "-t", str(int(_STOP_TIMEOUT)), "stop"]
                code, out = _run(stop_cmd, self._account, timeout=_STOP_TIMEOUT + 30)
                # pg_ctl also fails when the server died on its own meanwhile: only a
                # server that is still there is an error.
                if code != 0 and self._live() is not None:
                    # E.g. pgdata became unreadable: SIGINT is what "-m fast" sends anyway.
                    logger.warning("pg_ctl stop failed (%s); sending SIGINT to %d", out, pid)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGINT)
                    if not _wait_gone(pid, _STOP_TIMEOUT):
                        raise EmbeddedServerError(
                            f"PostgreSQL pid {pid} did not stop: pg_ctl said ({code}) "
                            f"{out.strip()}",
                            self.log_file,
                        )
            # pg_ctl returns once postmaster.pid is gone; the process itself exits just after.
            _wait_gone(pid, 10)
            self._pid = None
            if self._socket_dir is not None and self._socket_dir != self.pgdata:
                # Our short folder in the temp dir; postgres removed its socket files on exit.
                with contextlib.suppress(OSError):
                    self._socket_dir.rmdir()
            logger.info("PostgreSQL in %s stopped", self.pgdata)

    def ensure_database(self, name: str) -> str:
        """Create database ``name`` unless it exists; return its URL (server must be started)."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            if conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone():
                return self.url_for(name)
            # A concurrent caller may create it between our check and our CREATE.
            with contextlib.suppress(pg_errors.DuplicateDatabase, pg_errors.UniqueViolation):
                conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
        return self.url_for(name)

    def url_for(self, database: str = "postgres", *, tcp: bool = False) -> str:
        """A libpq URL of ``database`` as user ``postgres``; Unix socket unless ``tcp``."""
        port = self.port
        db = quote(database, safe="")
        if tcp or self._socket_dir is None:
            return f"postgresql://postgres@{_HOST}:{port}/{db}"
        return (
            f"postgresql://postgres@/{db}?host={quote(str(self._socket_dir), safe='/')}&port={port}"
        )

    @property
    def url(self) -> str:
        """The URL ``start()`` returned (database ``postgres``, Unix socket)."""
        return self.url_for("postgres")

    @property
    def tcp_url(self) -> str:
        """A URL of database ``postgres`` over TCP on 127.0.0.1."""
        return self.url_for("postgres", tcp=True)

    @property
    def port(self) -> int:
        """The TCP port on 127.0.0.1 (also the Unix socket's number)."""
        if self._port is None or self._pid is None:
            raise EmbeddedServerError("EmbeddedPostgres is not started")
        return self._port

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while started, else None."""
        return self._pid

    @property
    def socket_dir(self) -> Path | None:
        """The folder of the server's Unix socket while started."""
        return self._socket_dir if self._pid is not None else None

    def __repr__(self) -> str:
        return f"EmbeddedPostgres({str(self.data_dir)!r}, pid={self._pid}, port={self._port})"

    # ----------------------------------------------------------------- internals

    def _bin(self, program: str) -> Path:
        if self._bin_dir is None:
            self._bin_dir = postgres_bin_dir()
        return self._bin_dir / program

    def _live(self) -> psutil.Process | None:
        return None if self._pid is None else _live_process(self._pid, "postgres", self.pgdata)

    def _prepare_account(self) -> _Account | None:
        """As root, get the account postgres runs as and give it access to what it needs."""
        if os.geteuid() != 0:
            return None
        account = _ensure_system_user(PG_SYSTEM_USER)
        _grant_read_tree(self._bin("postgres").parent.parent, account)
        _grant_traverse(self.data_dir, account)
        # pg_ctl's shell (running as the account) appends to the log: it must own it.
        self.log_file.touch(exist_ok=True)
        os.chown(self.log_file, account.uid, account.gid)
        if self.pgdata.exists() and self.pgdata.stat().st_uid != account.uid:
            # E.g. a cluster made by an earlier non-root run: postgres insists on owning it all.
            logger.warning("changing owner of %s to %s", self.pgdata, account.name)
            _chown_tree(self.pgdata, account)
        return account

    def _find_running(self) -> _Postmaster | None:
        """A live server on our pgdata (waiting while it starts or stops), else None."""
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            info = _read_postmaster_pid(self.pgdata)
            if info is None:
                return None
            if _live_process(info.pid, "postgres", self.pgdata) is None:
                # Stale file of a dead server: pg_ctl start handles it, so leave it alone.
                logger.info("postmaster.pid in %s is stale (pid %d is gone)", self.pgdata, info.pid)
                return None
            if info.status == "ready" and info.port is not None:
                return info
            if time.monotonic() >= deadline:
                raise EmbeddedServerError(
                    f"PostgreSQL pid {info.pid} in {self.pgdata} did not become ready "
                    f"(status {info.status!r})",
                    self.log_file,
                )
            time.sleep(0.1)

    def _find_adoptable(self) -> _Postmaster | None:
        """A running server on our pgdata that answers a query; None if there is none.

        A server whose postmaster is dying (e.g. just killed) can still look alive for a
        moment: only one that answers is adopted, otherwise we wait for it to go away.
        """
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            running = self._find_running()
            if running is None:
                return None
            try:
                url = f"postgresql://postgres@{_HOST}:{running.port}/postgres"
                with psycopg.connect(url, connect_timeout=3) as conn:
                    conn.execute("select 1")
            except psycopg.Error as exc:
                if time.monotonic() >= deadline:
                    raise EmbeddedServerError(
                        f"PostgreSQL pid {running.pid} in {self.pgdata} runs but does not "
                        f"answer: {exc}",
                        self.log_file,
                    ) from exc
                time.sleep(0.2)
            else:
                return running

    def _start_server(self) -> _Postmaster:
        socket_dir = _prepare_socket_dir(self.pgdata, self._account)
        if '"' in str(socket_dir):
            raise EmbeddedServerError(f'PostgreSQL socket folder may not contain ": {socket_dir}')
        deadline = time.monotonic() + _START_TIMEOUT
        fresh_port = False
        while True:
            port = _choose_port(self.port_file, fresh=fresh_port)
            settings = {
                "listen_addresses": _HOST,
                "port": str(port),
                # Double quotes keep a folder with spaces or commas one list entry.
                "unix_socket_directories": f'"{socket_dir}"',
                "max_connections": "200",
                "shared_buffers": "128MB",
            }
            # pg_ctl hands -o to a shell, hence the quoting of each name=value.
            options = " ".join(f"-c {shlex.quote(f'{k}={v}')}" for k, v in settings.items())
            offset = _size(self.log_file)
            logger.info("starting PostgreSQL in %s on port %d", self.pgdata, port)
            start_cmd: list[str | Path] = [self._bin("pg_ctl"), "-D", self.pgdata]
            start_cmd += ["-l", self.log_file, "-w", "-t", str(int(_START_TIMEOUT))]
            start_cmd += ["-o", options, "start"]
            code, out = _run(start_cmd, self._account, timeout=_START_TIMEOUT + 30)
            if code == 0:
                running = self._find_running()
                if running is None:
                    raise EmbeddedServerError(
                        "pg_ctl reported a start but no server is running", self.log_file
                    )
                return running
            new_log = _log_since(self.log_file, offset)
            if "could not bind" in new_log or "already in use" in new_log:
                # Someone took the port between our check and the server's bind.
                logger.warning("port %d was taken while PostgreSQL started; retrying", port)
                fresh_port = True
            elif 'postmaster.pid" already exists' in new_log or "is still in use" in new_log:
                # A killed predecessor is not fully gone yet: postgres counts its unreaped
                # (zombie) postmaster as running, and its children may still hold shared
                # memory. Both clear up within moments once its parent reaps it.
                logger.info("previous PostgreSQL in %s is still exiting; retrying", self.pgdata)
                time.sleep(0.5)
            else:
                deadline = 0.0
            if time.monotonic() >= deadline:
                raise EmbeddedServerError(
                    f"pg_ctl start failed ({code}): {out.strip()}", self.log_file
                )
