"""examples/analytics_consumer.py: exact counts through a crash, a restart and a full replay.

The consumer reads a stream filled by a real `turnstream serve`; the expected counts come
from the turns' own SSE frames, not from NATS.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import NatsTarget
from tests.e2e.conftest import ServerFactory
from tests.support.jetstream import wait_relayed
from tests.support.server import Frame, Server, parse_sse

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "analytics_consumer.py"
CRASHED = 3


def start_conversation(server: Server, tenant: str, model: str) -> str:
    r = httpx.post(
        f"{server.base_url}/v1/conversations",
        json={"model": model},
        headers=server.headers(tenant=tenant, user="u"),
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def run_turn(server: Server, tenant: str, cid: str) -> list[Frame]:
    with httpx.stream(
        "POST",
        f"{server.base_url}/v1/conversations/{cid}/turns",
        json={"content": "Count me."},
        headers=server.headers(tenant=tenant, user="u"),
        timeout=60,
    ) as r:
        assert r.status_code == 200, r.read()
        return [f for f in parse_sse(r.iter_lines()) if isinstance(f, Frame)]


def add_usage(
    expected: dict[tuple[str, str], dict[str, int]], tenant: str, frames: list[Frame]
) -> None:
    """What the consumer must count for one turn, from its frames."""
    started, final = frames[0], frames[-1]
    assert (started.event, final.event) == ("turn.started", "final")
    row = expected[(tenant, started.data["model"])]
    row["turns"] += 1
    row["completed"] += final.data["status"] == "completed"
    row["prompt_tokens"] += final.data["usage"]["prompt_tokens"]
    row["completion_tokens"] += final.data["usage"]["completion_tokens"]
    row["streamed_chars"] += len("".join(f.data["text"] for f in frames if f.event == "token"))


def consumer(target: NatsTarget, db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURNSTREAM_")}
    return subprocess.run(
        [sys.executable, str(EXAMPLE), "--db", str(db), "--ack-wait", "1", *args],
        env=env | target.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def run_until_idle(target: NatsTarget, db: Path, *args: str) -> dict[str, int]:
    """One batch run; what it did (applied, duplicates, ignored, rejected)."""
    proc = consumer(target, db, "--until-idle", *args)
    assert proc.returncode == 0, proc.stderr
    tally: dict[str, int] = json.loads(proc.stdout.splitlines()[-1])
    return tally


def usage(target: NatsTarget, db: Path) -> dict[tuple[str, str], dict[str, int]]:
    proc = consumer(target, db, "--report")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    return {
        (r.pop("tenant"), r.pop("model")): {k: v for k, v in r.items() if k != "failed"}
        for r in rows
    }


def applied_ids(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT count(*) FROM applied").fetchone()
    return int(row[0])


def test_usage_counts_stay_exact_through_a_crash_before_ack_a_restart_and_a_replay(
    make_server: ServerFactory,
    nats_target: NatsTarget,
    database_url: str,
    db_schema: str,
    tmp_path: Path,
) -> None:
    # A second demo model, so counts split per model too.
    models = tmp_path / "models.toml"
    models.write_text('[[models]]\nid = "demo-b"\nprovider = "demo"\n')
    server = make_server(
        TURNSTREAM_MODELS=str(models),
        TURNSTREAM_DEMO_TOKENS="24",
        TURNSTREAM_DEMO_TOKENS_PER_S="0",
    )
    expected: dict[tuple[str, str], dict[str, Any]] = defaultdict(
        lambda: dict.fromkeys(
            ("turns", "completed", "prompt_tokens", "completion_tokens", "streamed_chars"), 0
        )
    )

    # Four turns: two tenants, two models; all relayed.
    plan = [("acme", "demo"), ("acme", "demo"), ("acme", "demo-b"), ("globex", "demo")]
    conversations = {key: start_conversation(server, *key) for key in dict.fromkeys(plan)}
    for tenant, model in plan:
        add_usage(expected, tenant, run_turn(server, tenant, conversations[(tenant, model)]))
    wait_relayed(nats_target.url, nats_target.stream, nats_target.prefix, database_url, db_schema)
    db = tmp_path / "analytics.sqlite3"

    # The consumer crashes after committing its first batch, before acking it.
    proc = consumer(nats_target, db, "--batch", "5", "--crash-after", "5")
    assert proc.returncode == CRASHED, proc.stderr
    crashed = json.loads(proc.stdout.splitlines()[-1])
    assert crashed["applied"] >= 1  # the first turn's turn_started at least

    # Restarted, it gets that batch again: skipped as duplicates, counted once.
    tally = run_until_idle(nats_target, db)
    assert tally["duplicates"] >= crashed["applied"]
    assert tally["rejected"] == 0
    assert usage(nats_target, db) == expected
    applied = applied_ids(db)
    assert applied == crashed["applied"] + tally["applied"]

    # Run again: the durable consumer resumes after its last ack; nothing is applied.
    assert run_until_idle(nats_target, db)["applied"] == 0
    assert usage(nats_target, db) == expected

    # A new consumer name replays the whole stream into the same database: every event is
    # a duplicate, and the counts do not move.
    replay = run_until_idle(nats_target, db, "--durable", "analytics-replay")
    assert replay["applied"] == 0
    assert replay["duplicates"] >= applied
    assert usage(nats_target, db) == expected

    # A new turn later is counted by the next run, once.
    add_usage(expected, "globex", run_turn(server, "globex", conversations[("globex", "demo")]))
    wait_relayed(nats_target.url, nats_target.stream, nats_target.prefix, database_url, db_schema)
    assert run_until_idle(nats_target, db)["applied"] >= 3
    assert usage(nats_target, db) == expected
