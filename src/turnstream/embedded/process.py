"""What the embedded servers share: ports, locks, processes, accounts and errors.

Ports on 127.0.0.1 and the small files that remember them, a file lock per data folder,
checks that a pid is still our live server, running programs as another system account
(PostgreSQL refuses to run as root), the tail of a log file for error messages, and the
:class:`_Managed` base class whose ``with`` starts and stops a server.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import logging
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

import psutil  # type: ignore[import-untyped]

# The package's name, as before it was split into modules: log lines keep their origin.
logger = logging.getLogger("turnstream.embedded")

_HOST = "127.0.0.1"
_START_TIMEOUT = 60.0
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
