"""Probes of the projections' views, and `turnstream projections` processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import psycopg
from psycopg import sql

from turnstream.domain.turn import Turn
from turnstream.projections.registry import PROJECTIONS

Rows = dict[str, list[tuple[Any, ...]]]


def cli_env(database_url: str, schema: str, data_dir: Path) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TURNSTREAM_")} | {
        "TURNSTREAM_DATABASE_URL": database_url,
        "TURNSTREAM_DATABASE_SCHEMA": schema,
        "TURNSTREAM_DATA_DIR": str(data_dir),
        "TURNSTREAM_LOG_LEVEL": "WARNING",
    }


def projections_cli(
    database_url: str, schema: str, data_dir: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """Run `turnstream projections ARGS` to its end."""
    return subprocess.run(
        [sys.executable, "-m", "turnstream", "projections", *args],
        env=cli_env(database_url, schema, data_dir),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def generations(database_url: str, schema: str) -> dict[str, int]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            sql.SQL("SELECT name, generation FROM {}.projections").format(sql.Identifier(schema))
        ).fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


def view_rows(database_url: str, schema: str) -> Rows:
    """Every row of every table of every projection's active generation, sorted."""
    active = generations(database_url, schema)
    rows: Rows = {}
    with psycopg.connect(database_url) as conn:
        for name, projection in PROJECTIONS.items():
            for table in projection.tables:
                physical = f"{table}__g{active[name]}"
                query = sql.SQL("SELECT * FROM {}.{}").format(
                    sql.Identifier(schema), sql.Identifier(physical)
                )
                rows[table] = sorted(conn.execute(query).fetchall(), key=repr)
    return rows


def pending(database_url: str, schema: str) -> dict[str, int | None]:
    """Per projection: the last event of its topics that its view has not applied."""
    result: dict[str, int | None] = {}
    with psycopg.connect(database_url) as conn:
        for name, projection in PROJECTIONS.items():
            row = conn.execute(
                sql.SQL(
                    "SELECT max(notification_id) FROM {s}.turnstream_events WHERE topic = ANY(%s)"
                    " AND notification_id > (SELECT coalesce(max(notification_id), 0)"
                    " FROM {s}.{t} WHERE application_name = 'turnstream')"
                ).format(s=sql.Identifier(schema), t=sql.Identifier(f"{name}_tracking")),
                (list(projection.topics),),
            ).fetchone()
            result[name] = None if row is None else row[0]
    return result


def wait_caught_up(database_url: str, schema: str, timeout: float = 60.0) -> None:
    """Until every projection has applied every event of its topics stored so far."""
    deadline = time.monotonic() + timeout
    while True:
        behind = {k: v for k, v in pending(database_url, schema).items() if v is not None}
        if not behind:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"projections still behind: {behind}")
        time.sleep(0.05)


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Terminal(msgspec.Struct):
    usage: _Usage | None = None


def log_usage(database_url: str, schema: str) -> tuple[int, int, int]:
    """(turns started, prompt tokens, completion tokens), read from the log itself."""
    with psycopg.connect(database_url) as conn:
        table = sql.SQL("{}.turnstream_events").format(sql.Identifier(schema))
        started = conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE topic = %s").format(table),
            (Turn.Started.TOPIC,),
        ).fetchone()
        states = conn.execute(
            sql.SQL("SELECT state FROM {} WHERE topic = ANY(%s)").format(table),
            ([Turn.Finished.TOPIC, Turn.Failed.TOPIC],),
        ).fetchall()
    prompt = completion = 0
    for (state,) in states:
        usage = msgspec.json.decode(bytes(state), type=_Terminal).usage
        if usage is not None:
            prompt += usage.prompt_tokens
            completion += usage.completion_tokens
    assert started is not None
    return int(started[0]), prompt, completion


def counted_usage(database_url: str, schema: str, period: str) -> tuple[int, int, int]:
    """(turns, prompt tokens, completion tokens) summed over the usage view's ``period`` rows."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            sql.SQL(
                "SELECT coalesce(sum(turns), 0), coalesce(sum(prompt_tokens), 0),"
                " coalesce(sum(completion_tokens), 0) FROM {}.usage_counters WHERE period = %s"
            ).format(sql.Identifier(schema)),
            (period,),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


@dataclass
class ProjectionsProcess:
    """A `turnstream projections run` process, to be killed mid-batch."""

    database_url: str
    schema: str
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ProjectionsProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with (self.data_dir / "projections.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "turnstream", "projections", "run"],
                env=cli_env(self.database_url, self.schema, self.data_dir),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
