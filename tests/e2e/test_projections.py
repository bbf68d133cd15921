"""The projections: rebuilt from the log, they equal the views built live; a runner
killed mid-batch resumes with no event applied twice."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import pytest
from psycopg import sql

from tests.api.test_bad_input import assert_problem
from tests.api.test_turn_rules import first_frame, post_turn
from tests.api.test_turn_stream import new_conversation, resume
from tests.e2e.conftest import ServerFactory
from tests.e2e.test_relay_process import wait_for
from tests.support.fake_openai import FakeOpenAI
from tests.support.fake_openai import fake_openai as fake_openai  # the fixture
from tests.support.projections import (
    ProjectionsProcess,
    counted_usage,
    generations,
    log_usage,
    projections_cli,
    view_rows,
    wait_caught_up,
)
from tests.support.server import Server

pytestmark = pytest.mark.e2e


def _models(tmp_path: Path, fake: FakeOpenAI) -> str:
    path = tmp_path / "models.toml"
    path.write_text(
        f"""
[[models]]
id = "remote"
provider = "openai"
base_url = "{fake.base_url}"
model = "remote-model"
"""
    )
    return str(path)


def _get(server: Server, path: str, **headers: Any) -> dict[str, Any]:
    r = httpx.get(f"{server.base_url}{path}", headers=server.headers(**headers), timeout=30)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _answer(server: Server, cid: str, body: dict[str, Any], **who: str) -> list[Any]:
    frames = post_turn(server, cid, body) if not who else _post_as(server, cid, body, **who)
    assert frames[-1].event == "final", frames[-1]
    return frames


def _post_as(server: Server, cid: str, body: dict[str, Any], tenant: str, user: str) -> list[Any]:
    from tests.api.test_turn_stream import frames_of

    with httpx.stream(
        "POST",
        f"{server.base_url}/v1/conversations/{cid}/turns",
        json=body,
        headers=server.headers(tenant, user),
        timeout=60,
    ) as r:
        assert r.status_code == 200, r.read()
        return frames_of(r)


def mixed_traffic(server: Server, fake: FakeOpenAI) -> None:
    """Every mode, a cancel, a provider error, renames and a delete, for two tenants."""
    cid = new_conversation(server, system_prompt="Be brief.")
    _answer(server, cid, {"content": "first"})
    second = _answer(server, cid, {"content": "second"})
    started = second[0].data
    _answer(server, cid, {"mode": "retry", "message_id": started["assistant_message_id"]})
    edited = _answer(
        server,
        cid,
        {"mode": "edit", "message_id": started["user_message_id"], "content": "second, again"},
    )
    _answer(server, cid, {"mode": "continue", "message_id": edited[0].data["assistant_message_id"]})
    renamed = httpx.patch(
        f"{server.base_url}/v1/conversations/{cid}",
        json={"title": "Renamed by hand"},
        headers=server.headers(),
    )
    assert renamed.status_code == 200, renamed.text

    # A cancelled turn and a failed one, from the OpenAI-compatible model.
    remote = new_conversation(server, model="remote")
    fake.script(chunks=[f"w{i} " for i in range(200)], delay_s=0.05)
    running = first_frame(server, remote, {"content": "a long one"})
    tid = running.data["turn_id"]
    cancel = httpx.post(
        f"{server.base_url}/v1/conversations/{remote}/turns/{tid}/cancel",
        headers=server.headers(),
    )
    assert cancel.status_code == 202
    assert resume(server, remote, tid)[-1].data["status"] == "interrupted"
    fake.script(status=500, error_message="boom")
    failed = post_turn(server, remote, {"content": "this fails"}, last_event_id=None)
    assert failed[-1].event == "error"

    # Another user in another tenant, and a deleted conversation.
    other = new_conversation(server)
    _answer(server, other, {"content": "to be deleted"})
    deleted = httpx.delete(f"{server.base_url}/v1/conversations/{other}", headers=server.headers())
    assert deleted.status_code == 204
    r = httpx.post(
        f"{server.base_url}/v1/conversations",
        json={"title": "globex"},
        headers=server.headers("globex", "bob"),
    )
    assert r.status_code == 201
    _answer(server, r.json()["id"], {"content": "hi from bob"}, tenant="globex", user="bob")


def test_a_rebuild_after_mixed_traffic_equals_the_views_built_live(
    make_server: ServerFactory,
    fake_openai: FakeOpenAI,
    database_url: str,
    db_schema: str,
    tmp_path: Path,
) -> None:
    server = make_server(
        TURNSTREAM_MODELS=_models(tmp_path, fake_openai),
        TURNSTREAM_DEMO_TOKENS="16",
        TURNSTREAM_DEMO_TOKENS_PER_S="0",
    )
    mixed_traffic(server, fake_openai)
    wait_caught_up(database_url, db_schema)
    live = view_rows(database_url, db_schema)
    # message, message, retry, edit, continue: 2+2+1+2+0; two remote turns; bob's turn.
    assert len(live["tree_messages"]) == 7 + 4 + 2
    assert {r[7] for r in live["tree_messages"]} >= {"complete", "interrupted", "failed"}
    before = _get(server, "/v1/conversations")

    done = projections_cli(database_url, db_schema, tmp_path / "cli", "rebuild")

    assert done.returncode == 0, done.stderr
    for name in ("tree", "conversations", "usage"):
        assert f"rebuilt {name}: " in done.stdout
    assert "events/s" in done.stdout
    assert generations(database_url, db_schema) == {"tree": 2, "conversations": 2, "usage": 2}
    assert view_rows(database_url, db_schema) == live
    assert _get(server, "/v1/conversations") == before


def test_a_rebuild_under_traffic_switches_over_and_matches_a_quiet_rebuild(
    make_server: ServerFactory, database_url: str, db_schema: str, tmp_path: Path
) -> None:
    server = make_server(TURNSTREAM_DEMO_TOKENS="20", TURNSTREAM_DEMO_TOKENS_PER_S="400")
    conversations = [new_conversation(server) for _ in range(4)]
    for cid in conversations:
        _answer(server, cid, {"content": "warm up"})
    stop = threading.Event()
    problems: list[str] = []
    turns: list[str] = []

    def traffic(cid: str) -> None:
        while not stop.is_set():
            try:
                post_turn(server, cid, {"content": "more"})
                turns.append(cid)
                r = httpx.get(f"{server.base_url}/v1/conversations/{cid}", headers=server.headers())
                if r.status_code != 200:
                    problems.append(r.text)
            except (httpx.HTTPError, AssertionError) as exc:
                problems.append(repr(exc))

    threads = [threading.Thread(target=traffic, args=(cid,)) for cid in conversations]
    for thread in threads:
        thread.start()
    try:
        during = projections_cli(database_url, db_schema, tmp_path / "cli", "rebuild")
        # Traffic goes on after the switch: the service's worker follows generation 2.
        seen = len(turns)
        while len(turns) < seen + 8 and not problems:
            threading.Event().wait(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert during.returncode == 0, during.stderr
    assert not problems, problems[:3]
    wait_caught_up(database_url, db_schema)
    assert generations(database_url, db_schema) == {"tree": 2, "conversations": 2, "usage": 2}
    kept_live = view_rows(database_url, db_schema)
    assert len(kept_live["tree_messages"]) == 2 * (len(conversations) + len(turns))

    quiet = projections_cli(database_url, db_schema, tmp_path / "cli", "rebuild")

    assert quiet.returncode == 0, quiet.stderr
    assert generations(database_url, db_schema) == {"tree": 3, "conversations": 3, "usage": 3}
    assert view_rows(database_url, db_schema) == kept_live


def _waiting_on(database_url: str, table: str) -> list[int]:
    """Backends blocked on a lock while writing ``table``."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query ILIKE %s",
            (f"%{table}%",),
        ).fetchall()
    return [int(r[0]) for r in rows]


def _gone(database_url: str, pids: list[int]) -> bool:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)
        ).fetchone()
    return row is not None and row[0] == 0


def test_a_runner_killed_mid_batch_resumes_and_applies_no_event_twice(
    make_server: ServerFactory, database_url: str, db_schema: str, tmp_path: Path
) -> None:
    # The projections run in a process of their own, so that it alone can be killed.
    server = make_server(
        TURNSTREAM_PROJECTIONS="false",
        TURNSTREAM_DEMO_TOKENS="10",
        TURNSTREAM_DEMO_TOKENS_PER_S="0",
    )
    runner = ProjectionsProcess(database_url, db_schema, tmp_path / "runner").start()
    try:
        cid = new_conversation(server)
        for n in range(3):
            _answer(server, cid, {"content": f"counted {n}"})
        wait_caught_up(database_url, db_schema)
        assert counted_usage(database_url, db_schema, "day")[0] == 3

        counters = sql.Identifier(
            db_schema, f"usage_counters__g{generations(database_url, db_schema)['usage']}"
        )
        with psycopg.connect(database_url) as blocker:
            # Hold the counters: the usage worker's next batch stops inside its transaction.
            blocker.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(counters))
            for n in range(2):
                _answer(server, cid, {"content": f"blocked {n}"})
            deadline = threading.Event()
            blocked: list[int] = []
            for _ in range(600):
                blocked = _waiting_on(database_url, "usage_counters__g")
                if blocked or deadline.wait(0.05):
                    break
            assert blocked, "the usage worker never reached the locked table"
            runner.kill()
            blocker.rollback()
        for _ in range(600):
            if _gone(database_url, blocked):
                break
            threading.Event().wait(0.05)
        assert counted_usage(database_url, db_schema, "day")[0] == 3  # the batch rolled back

        runner = ProjectionsProcess(database_url, db_schema, tmp_path / "runner2").start()
        wait_caught_up(database_url, db_schema)
    finally:
        runner.stop()

    expected = log_usage(database_url, db_schema)
    assert expected[0] == 5
    assert counted_usage(database_url, db_schema, "day") == expected
    assert counted_usage(database_url, db_schema, "week") == expected
    view = _get(server, f"/v1/conversations/{cid}")
    assert len(view["messages"]) == 10
    assert all(m["status"] == "complete" for m in view["messages"])


def _metric(server: Server, name: str, projection: str) -> float:
    r = httpx.get(f"{server.base_url}/metrics", timeout=30)  # no token: /metrics is open
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    line = f'{name}{{projection="{projection}"}} '
    values = [float(x[len(line) :]) for x in r.text.splitlines() if x.startswith(line)]
    assert len(values) == 1, r.text
    return values[0]


def test_reads_wait_for_the_projections_and_status_and_metrics_show_their_lag(
    make_server: ServerFactory, database_url: str, db_schema: str, tmp_path: Path
) -> None:
    server = make_server(
        TURNSTREAM_PROJECTIONS="false",
        TURNSTREAM_PROJECTION_WAIT_S="1",
        TURNSTREAM_DEMO_TOKENS="8",
        TURNSTREAM_DEMO_TOKENS_PER_S="0",
    )
    cid = new_conversation(server, title="Waiting")

    # Nothing keeps the views: a read cannot see the new conversation, and says so.
    r = httpx.get(f"{server.base_url}/v1/conversations/{cid}", headers=server.headers())
    assert_problem(r, 503, "service_unavailable")
    assert _metric(server, "turnstream_projection_lag_events", "tree") > 0
    status = projections_cli(database_url, db_schema, tmp_path / "cli", "status", "--json")
    assert status.returncode == 0, status.stderr
    rows = {row["name"]: row for row in map(json.loads, status.stdout.splitlines())}
    assert set(rows) == {"tree", "conversations", "usage"}
    assert rows["tree"]["position"] == 0
    assert rows["tree"]["lag"] == rows["tree"]["head"] > 0

    # A node of the same cluster that waits long enough for a runner to start and catch
    # up, however busy the machine (the first node gives up after 1 s, on purpose).
    server = make_server(
        TURNSTREAM_PROJECTIONS="false",
        TURNSTREAM_PROJECTION_WAIT_S="60",
        TURNSTREAM_DEMO_TOKENS="8",
        TURNSTREAM_DEMO_TOKENS_PER_S="0",
    )
    runner = ProjectionsProcess(database_url, db_schema, tmp_path / "runner").start()
    try:
        assert _get(server, f"/v1/conversations/{cid}")["title"] == "Waiting"
        _answer(server, cid, {"content": "now it works"})
        assert len(_get(server, f"/v1/conversations/{cid}")["messages"]) == 2
        # Idle, the workers record that they have read past the tokens too: no lag left.
        for name in ("tree", "conversations", "usage"):
            for _ in range(200):
                if _metric(server, "turnstream_projection_lag_events", name) == 0:
                    break
                threading.Event().wait(0.05)
            assert _metric(server, "turnstream_projection_lag_events", name) == 0
            assert _metric(server, "turnstream_projection_generation", name) == 1
    finally:
        runner.stop()
    status = projections_cli(database_url, db_schema, tmp_path / "cli", "status")
    assert status.returncode == 0, status.stderr
    assert "tree" in status.stdout
    assert "lag" in status.stdout


def projection_children(pid: int) -> list[psutil.Process]:
    return [
        child
        for child in psutil.Process(pid).children()
        if "projections" in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE
    ]


def test_serves_projection_child_is_restarted_and_follows_its_parent(
    make_server: ServerFactory,
) -> None:
    server = make_server(TURNSTREAM_DEMO_TOKENS="8", TURNSTREAM_DEMO_TOKENS_PER_S="0")
    assert server.proc is not None
    (child,) = projection_children(server.proc.pid)
    cid = new_conversation(server)
    _answer(server, cid, {"content": "before"})

    child.kill()
    child.wait(10)
    wait_for(lambda: len(projection_children(server.proc.pid)) == 1, "a new projections child")
    (second,) = projection_children(server.proc.pid)
    assert second.pid != child.pid
    _answer(server, cid, {"content": "after"})
    assert len(_get(server, f"/v1/conversations/{cid}")["messages"]) == 4

    server.kill()
    wait_for(
        lambda: not second.is_running() or second.status() == psutil.STATUS_ZOMBIE,
        "the projections child to exit with serve",
    )
