"""Shared helpers of the benchmarks: a database, a fresh schema, progress, figures.

Not a benchmark itself. The benchmark scripts add ``bench/`` to nothing: they run as
``python bench/<name>.py`` and Python puts their folder first on ``sys.path``, so
``import _common`` finds this file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.sql import SQL, Identifier

ENV_DATABASE_URL = "TURNSTREAM_DATABASE_URL"


# The database.


def add_database_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("database")
    group.add_argument(
        "--database-url",
        default=None,
        help=f"PostgreSQL URL (default: ${ENV_DATABASE_URL}; if unset, an embedded "
        "PostgreSQL is started in a temporary folder for the run)",
    )
    group.add_argument(
        "--pg-data-dir",
        type=Path,
        default=None,
        help="with the embedded PostgreSQL: keep its cluster in this folder (reused by "
        "later runs, so initdb runs once) instead of a temporary one",
    )
    group.add_argument(
        "--keep-schema",
        action="store_true",
        help="do not drop the run's schema at the end (to inspect it)",
    )


def exit_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so servers are stopped and schemas dropped."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def database(url: str | None, pg_data_dir: Path | None = None) -> Iterator[str]:
    """The URL to benchmark against: the given one, the env's, or an embedded server's."""
    url = url or os.environ.get(ENV_DATABASE_URL) or None
    if url:
        yield url
        return
    from turnstream.embedded import EmbeddedPostgres

    temp = None if pg_data_dir is not None else tempfile.mkdtemp(prefix="turnstream-bench-pg-")
    data_dir = pg_data_dir if pg_data_dir is not None else Path(str(temp))
    server = EmbeddedPostgres(data_dir)
    log(f"starting an embedded PostgreSQL in {data_dir} ...")
    try:
        embedded_url = server.start()
        yield embedded_url
    finally:
        try:
            server.stop()
        finally:
            if temp is not None:
                shutil.rmtree(temp, ignore_errors=True)


def redact(url: str) -> str:
    """The URL without its password."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparseable url>"
    if info.get("password"):
        info["password"] = "***"
    return make_conninfo("", **info)


def new_schema_name(prefix: str = "bench") -> str:
    return f"{prefix}_{secrets.token_hex(4)}"


def drop_schema(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(Identifier(schema)))


@contextlib.contextmanager
def fresh_schema(url: str, *, keep: bool = False, prefix: str = "bench") -> Iterator[str]:
    """A schema name nobody uses (created by whoever needs it), dropped at the end."""
    schema = new_schema_name(prefix)
    try:
        yield schema
    finally:
        if keep:
            log(f"schema {schema} kept")
        else:
            try:
                drop_schema(url, schema)
            except psycopg.Error as exc:
                log(f"could not drop schema {schema}: {exc}")


def server_facts(url: str) -> dict[str, str]:
    """What about the server shapes write figures: version and durability settings."""
    names = ("server_version", "fsync", "synchronous_commit", "wal_level", "shared_buffers")
    facts: dict[str, str] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        for name in names:
            row = conn.execute(SQL("SHOW {}").format(Identifier(name))).fetchone()
            facts[name] = str(row[0]) if row else "?"
    return facts


def try_checkpoint(url: str) -> bool:
    """CHECKPOINT, so that each measured phase starts from the same WAL state."""
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
    except psycopg.Error:
        return False
    return True


# Progress.


class Progress:
    """A progress bar on stderr: ``rich`` when importable, else a line every few seconds."""

    def __init__(self, description: str, total: int, *, every_s: float = 2.0) -> None:
        self.description = description
        self.total = total
        self.every_s = every_s
        self._rich: Any = None
        self._task: Any = None
        self._last_line = 0.0
        self._t0 = 0.0

    def __enter__(self) -> Progress:
        self._t0 = time.perf_counter()
        try:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
            )
            from rich.progress import Progress as RichProgress
        except ImportError:
            log(f"{self.description}: 0/{self.total}")
            return self
        self._rich = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            refresh_per_second=4,
            transient=False,
        )
        self._rich.start()
        self._task = self._rich.add_task(self.description, total=self.total)
        return self

    def update(self, done: int) -> None:
        if self._rich is not None:
            self._rich.update(self._task, completed=done)
            return
        now = time.perf_counter()
        if now - self._last_line >= self.every_s:
            self._last_line = now
            log(f"{self.description}: {done}/{self.total} ({now - self._t0:.1f}s)")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._rich is not None:
            self._rich.stop()
        else:
            log(f"{self.description}: done ({time.perf_counter() - self._t0:.1f}s)")


# Figures.


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of already sorted values; nan when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize(values: Sequence[float]) -> dict[str, float]:
    """p50, p90, p99, max and mean of the values."""
    ordered = sorted(values)
    mean = sum(ordered) / len(ordered) if ordered else math.nan
    return {
        "p50": percentile(ordered, 50),
        "p90": percentile(ordered, 90),
        "p99": percentile(ordered, 99),
        "max": ordered[-1] if ordered else math.nan,
        "mean": mean,
    }


def rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else math.nan


def fmt(value: float | int | str | None, digits: int = 1) -> str:
    """A figure for a table: thousands separated, nan as '-'."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return f"{value:,}"
    if math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], title: str = "") -> None:
    """A plain, aligned table on stdout (first column left, the others right)."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    if title:
        print(title)
    print(line(headers))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))
    print()


def clean_json(value: Any) -> Any:
    """nan and inf become null (JSON has neither); floats are rounded for reading."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else round(value, 3)
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v) for v in value]
    return value


def emit_json(result: dict[str, Any]) -> None:
    """The machine-readable result: always the last line on stdout."""
    sys.stdout.flush()
    print(json.dumps(clean_json(result), separators=(",", ":")), flush=True)
