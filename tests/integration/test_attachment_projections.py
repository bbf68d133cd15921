"""Files in the projections, on a real PostgreSQL: the tree's user messages list their
attachments, the conversation list counts them, usage sums each user's stored bytes
(each content once, deleted files not at all), and a rebuild gives the same views."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from uuid import UUID

import msgspec
import psycopg
import pytest
from psycopg import sql

from tests.support.events import a_started
from tests.support.projections import generations, view_rows
from turnstream.bootstrap import build_application
from turnstream.domain.conversation import Conversation
from turnstream.domain.files import File, FileRef
from turnstream.domain.progress import TurnProgress
from turnstream.domain.turn import TurnUsage
from turnstream.ids import uuid7
from turnstream.projections.reader import Reader
from turnstream.projections.rebuild import rebuild
from turnstream.projections.registry import PROJECTIONS, active_generation, ensure_projections
from turnstream.projections.runner import Batch
from turnstream.projections.views import conversation_page, conversation_view
from turnstream.settings import Settings
from turnstream.store.application import TurnstreamApplication

PNG, TEXT = "a1" * 32, "b2" * 32


@pytest.fixture
def app(database_url: str, db_schema: str) -> Iterator[TurnstreamApplication]:
    settings = Settings.from_env({}, database_url=database_url, database_schema=db_schema)
    application = build_application(settings, database_url)
    ensure_projections(application)
    yield application
    application.close()


def project(app: TurnstreamApplication) -> None:
    """Apply every event stored so far to each projection's active generation."""
    for projection in PROJECTIONS.values():
        with app.connect() as conn:
            batch = Batch(app, projection, active_generation(conn, app, projection.name))
            head, events = batch.next_page(conn, batch.position())
            if events and not batch.apply_active(conn, events, head):
                batch.apply(conn, events, head)


def upload(
    app: TurnstreamApplication,
    sha256: str,
    size: int,
    *,
    owner: str = "alice",
    tenant: str = "acme",
    name: str = "cat.png",
) -> File.Uploaded:
    image = name.endswith(".png")
    event = File.upload(
        uuid7(), tenant=tenant, owner=owner, name=name,
        media_type="image/png" if image else "text/plain", size=size, sha256=sha256,
        width=4 if image else None, height=3 if image else None,
    )  # fmt: skip
    app.record(event)
    return event


def delete(app: TurnstreamApplication, uploaded: File.Uploaded) -> None:
    app.record(File(uploaded).delete(by=uploaded.owner))


def a_conversation(app: TurnstreamApplication) -> UUID:
    cid = uuid7()
    app.record(
        Conversation.create(
            cid, tenant="acme", owner="alice", model="demo", title=None, system_prompt=None
        )
    )
    return cid


def a_turn(
    app: TurnstreamApplication, cid: UUID, parent: UUID | None, *files: File.Uploaded
) -> tuple[UUID, UUID]:
    """A finished turn whose user message attaches ``files``: (its question, its answer)."""
    refs = tuple(File(f).ref for f in files)
    started = a_started(conversation_id=cid, parent_id=parent, attachments=refs)
    progress = TurnProgress(started)
    drafts = [
        progress.append_text("seen"),
        progress.finish(finish_reason="stop", usage=TurnUsage()),
    ]
    app.record(started, *(d.event(v) for v, d in enumerate(drafts, 2) if d is not None))
    assert started.user_message_id is not None
    return started.user_message_id, started.assistant_message_id


def shown(ref: FileRef) -> dict[str, Any]:
    """A file as a message's view lists it (JSON)."""
    return {
        "id": str(ref.id), "name": ref.name, "media_type": ref.media_type, "bytes": ref.bytes,
        "width": ref.width, "height": ref.height,
    }  # fmt: skip


def test_user_messages_list_their_attachments_and_the_list_counts_them(
    app: TurnstreamApplication,
) -> None:
    cat, notes = upload(app, PNG, 68), upload(app, TEXT, 12, name="notes.txt")
    cid, plain = a_conversation(app), a_conversation(app)
    q1, a1 = a_turn(app, cid, None, cat, notes)
    q2, a2 = a_turn(app, cid, a1, cat)
    q3, _ = a_turn(app, cid, a2)
    a_turn(app, plain, None)
    project(app)

    reader = Reader(app)
    messages = reader.messages(cid)
    by_id = {m["id"]: m for m in messages}
    # The reader's rows (what a turn's admission hands the model again): dicts, ids UUIDs.
    cat_row = {"id": cat.originator_id, "name": "cat.png", "media_type": "image/png",
               "bytes": 68, "width": 4, "height": 3}  # fmt: skip
    notes_row = {"id": notes.originator_id, "name": "notes.txt", "media_type": "text/plain",
                 "bytes": 12, "width": None, "height": None}  # fmt: skip
    assert by_id[q1]["attachments"] == [cat_row, notes_row]
    assert by_id[q2]["attachments"] == [cat_row]
    assert by_id[q3]["attachments"] == []
    assert all(m["attachments"] == [] for m in messages if m["role"] == "assistant")
    assert reader.message(cid, q1) == by_id[q1]
    _, _, tree = reader.tree(cid)
    assert tree == messages

    # The conversation's view (GET conversation).
    row = reader.conversation(cid)
    assert row is not None
    view = msgspec.to_builtins(conversation_view(row, messages, None))
    listed = {m["id"]: m["attachments"] for m in view["messages"]}
    assert listed[str(q1)] == [shown(File(cat).ref), shown(File(notes).ref)]
    assert listed[str(q2)] == [shown(File(cat).ref)]
    assert listed[str(q3)] == []

    # The conversation list: the files of its user messages, over all its turns.
    page = msgspec.to_builtins(
        conversation_page(reader.conversations("acme", "alice", 10, None), 10)
    )
    counts = {i["id"]: i["attachment_count"] for i in page["items"]}
    assert counts == {str(cid): 3, str(plain): 0}


def test_stored_bytes_count_each_content_once_and_deleted_files_not_at_all(
    app: TurnstreamApplication,
) -> None:
    reader = Reader(app)
    first, again, notes = upload(app, PNG, 100), upload(app, PNG, 100), upload(app, TEXT, 30)
    upload(app, PNG, 100, owner="bob")  # another user's copy of the same content
    upload(app, TEXT, 30, tenant="other")  # another tenant's alice
    project(app)
    assert reader.stored("acme", "alice") == (3, 130)
    assert reader.stored("acme", "bob") == (1, 100)
    assert reader.stored("other", "alice") == (1, 30)
    assert reader.stored("acme", "nobody") == (0, 0)

    delete(app, first)  # the same bytes are still held by `again`
    project(app)
    assert reader.stored("acme", "alice") == (2, 130)
    delete(app, again)
    project(app)
    assert reader.stored("acme", "alice") == (1, 30)
    delete(app, notes)
    project(app)
    assert reader.stored("acme", "alice") == (0, 0)
    assert reader.stored("acme", "bob") == (1, 100)


def test_a_rebuild_gives_the_same_tree_list_and_storage(
    app: TurnstreamApplication, database_url: str, db_schema: str
) -> None:
    cat, notes = upload(app, PNG, 68), upload(app, TEXT, 12, name="notes.txt")
    twin = upload(app, PNG, 68)
    cid = a_conversation(app)
    _, answer = a_turn(app, cid, None, cat, notes)
    a_turn(app, cid, answer, twin)
    delete(app, cat)
    project(app)
    reader = Reader(app)
    live = view_rows(database_url, db_schema)
    before = reader.messages(cid), reader.conversations("acme", "alice", 10, None)
    assert any(m["attachments"] for m in before[0])
    assert reader.stored("acme", "alice") == (2, 80)

    for name in PROJECTIONS:
        rebuild(app, name)

    assert generations(database_url, db_schema) == {name: 2 for name in PROJECTIONS}
    assert view_rows(database_url, db_schema) == live
    assert (reader.messages(cid), reader.conversations("acme", "alice", 10, None)) == before
    assert reader.stored("acme", "alice") == (2, 80)


def test_a_generation_made_before_files_gets_their_columns_and_table_where_it_is(
    app: TurnstreamApplication, database_url: str, db_schema: str
) -> None:
    # As the previous version left it: no attachments, no attachment_count, no usage_files.
    schema = sql.Identifier(db_schema)
    with psycopg.connect(database_url, autocommit=True) as conn:
        for view, table, column in (
            ("tree_messages", "tree_messages__g1", "attachments"),
            ("conversation_list", "conversation_list__g1", "attachment_count"),
        ):
            conn.execute(sql.SQL("DROP VIEW {}.{}").format(schema, sql.Identifier(view)))
            conn.execute(
                sql.SQL("ALTER TABLE {}.{} DROP COLUMN {}").format(
                    schema, sql.Identifier(table), sql.Identifier(column)
                )
            )
            conn.execute(
                sql.SQL("CREATE VIEW {0}.{1} AS SELECT * FROM {0}.{2}").format(
                    schema, sql.Identifier(view), sql.Identifier(table)
                )
            )
        conn.execute(sql.SQL("DROP VIEW {}.usage_files").format(schema))
        conn.execute(sql.SQL("DROP TABLE {}.usage_files__g1").format(schema))
    ensure_projections(app)  # what a start of this version does
    assert generations(database_url, db_schema) == {name: 1 for name in PROJECTIONS}
    cat = upload(app, PNG, 68)
    cid = a_conversation(app)
    question, _ = a_turn(app, cid, None, cat)
    project(app)
    reader = Reader(app)
    message = reader.message(cid, question)
    assert message is not None
    assert [a["id"] for a in message["attachments"]] == [cat.originator_id]
    assert reader.conversations("acme", "alice", 10, None)[0]["attachment_count"] == 1
    assert reader.stored("acme", "alice") == (1, 68)
