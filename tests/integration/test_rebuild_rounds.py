"""Rebuilds, round after round, on every PostgreSQL at hand: each equals the live view.

A page's statements go to the server in one pipeline, and psycopg reads their results
as they arrive; the tracking record's ``RETURNING`` must be read from its own result,
whatever the server's version and speed (the library's ``_insert_tracking`` read an
earlier ``UPDATE``'s, in 4 of 5 rebuilds on PostgreSQL 15). So the test runs on the
embedded PostgreSQL and, when ``TURNSTREAM_TEST_DATABASE_URL`` names one, on that one
too (``.ci/run`` runs it so on the machine's own PostgreSQL).
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import tuple_row

from tests.conftest import DATABASE_URL_ENV, EMBEDDED_TEST_DATABASE
from tests.support.projections import view_rows, wait_caught_up
from turnstream.bootstrap import build_application
from turnstream.domain.conversation import Conversation
from turnstream.domain.events import DomainEvent
from turnstream.domain.turn import Turn, TurnUsage
from turnstream.embedded import EmbeddedPostgres
from turnstream.ids import uuid7
from turnstream.projections.rebuild import rebuild
from turnstream.projections.registry import PROJECTIONS, ensure_projections
from turnstream.projections.runner import ProjectionWorker
from turnstream.settings import Settings
from turnstream.store.application import TurnstreamApplication

ROUNDS = 4
CONVERSATIONS = 1500
TURNS = 3
START = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)

SERVERS = ["embedded"] + (["external"] if os.environ.get(DATABASE_URL_ENV) else [])


@pytest.fixture(scope="module", params=SERVERS)
def server_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A PostgreSQL of each kind: the embedded one (this module's own when the session
    uses an external one), and the external one when the session has it."""
    if request.param == "external":
        yield os.environ[DATABASE_URL_ENV]
        return
    if os.environ.get(DATABASE_URL_ENV):
        server = EmbeddedPostgres(Path(tmp_path_factory.mktemp("rebuild-pg")))
        server.start()
        try:
            yield server.ensure_database(EMBEDDED_TEST_DATABASE)
        finally:
            server.stop()
        return
    yield request.getfixturevalue("database_url")  # the session's, which is embedded


@pytest.fixture
def app(server_url: str) -> Iterator[TurnstreamApplication]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    application = build_application(Settings.from_env({}, database_schema=schema), server_url)
    ensure_projections(application)
    yield application
    application.close()
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def a_log() -> Iterator[DomainEvent]:
    """Conversations with turns that end every way, interleaved as live traffic is."""
    for n in range(CONVERSATIONS):
        at = START + timedelta(seconds=n)
        cid = uuid7()
        yield Conversation.Created(
            originator_id=cid, originator_version=1, timestamp=at, tenant="acme",
            owner=f"user-{n % 40}", model="demo",
        )  # fmt: skip
        parent = None
        for t in range(TURNS):
            tid, question, answer = uuid7(), uuid7(), uuid7()
            yield Turn.Started(
                originator_id=tid, originator_version=1, timestamp=at, conversation_id=cid,
                tenant="acme", user_id=f"user-{n % 40}", node_id=cid, mode="message",
                user_message_id=question, assistant_message_id=answer, parent_id=parent,
                model="demo", content=f"question {t}",
            )  # fmt: skip
            if t == 0:
                yield Turn.Titled(
                    originator_id=tid, originator_version=2, timestamp=at, title=f"chat {n}"
                )
            version = 3 if t == 0 else 2
            if (n + t) % 7 == 0:
                yield Turn.Failed(
                    originator_id=tid, originator_version=version, timestamp=at,
                    code="provider_error", message="no", text="partial",
                )  # fmt: skip
            else:
                yield Turn.Finished(
                    originator_id=tid, originator_version=version, timestamp=at,
                    status="completed", text=f"answer {t}",
                    usage=TurnUsage(prompt_tokens=10 + t, completion_tokens=20 + n % 5),
                )  # fmt: skip
            parent = answer


def write_log(app: TurnstreamApplication) -> int:
    events = list(a_log())
    with app.connect() as conn:
        for start in range(0, len(events), 5000):
            chunk = events[start : start + 5000]
            with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
                app.store.copy_events(cur, [app.encode_row(e) for e in chunk])
    return len(events)


def build_live(app: TurnstreamApplication, url: str) -> None:
    """The views as the live workers build them, page by page."""
    workers = [ProjectionWorker(app, projection) for projection in PROJECTIONS.values()]
    threads = [threading.Thread(target=w.run_forever) for w in workers]
    for thread in threads:
        thread.start()
    try:
        wait_caught_up(url, app.store.datastore.schema, timeout=120)
    finally:
        for worker in workers:
            worker.stop()
        for thread in threads:
            thread.join(30)


def test_every_rebuild_round_equals_the_views_built_live(
    app: TurnstreamApplication, server_url: str
) -> None:
    schema = app.store.datastore.schema
    count = write_log(app)
    build_live(app, server_url)
    live = view_rows(server_url, schema)
    assert len(live["tree_messages"]) == CONVERSATIONS * TURNS * 2
    for n in range(ROUNDS):
        for name in PROJECTIONS:
            result = rebuild(app, name)
            assert result.events >= count, result
        assert view_rows(server_url, schema) == live, f"round {n + 1}"
