"""The store's files: chunks of unfinished uploads are dropped (at once, or swept once
their process is gone), never a finished file's; the same bytes are kept once."""

from __future__ import annotations

import hashlib

from psycopg import sql

from tests.integration.test_writer import app as app  # the fixture
from turnstream.domain.files import File
from turnstream.ids import uuid7
from turnstream.store.application import TurnstreamApplication
from turnstream.store.files import FileRow


def finish(app: TurnstreamApplication, data: bytes, owner: str = "alice") -> FileRow:
    blob_id = uuid7()
    app.store.write_chunk(blob_id, 0, data[:5])
    app.store.write_chunk(blob_id, 1, data[5:])
    sha = hashlib.sha256(data).hexdigest()
    uploaded = File.upload(
        uuid7(), tenant="acme", owner=owner, name="a.txt", media_type="text/plain",
        size=len(data), sha256=sha,
    )  # fmt: skip
    row = FileRow(
        uploaded.originator_id, "acme", owner, "a.txt", "text/plain", len(data), sha,
        None, None, uploaded.timestamp, False, 1,
    )  # fmt: skip
    position = app.store.finish_upload(blob_id, app.encode_row(uploaded), row, 0)
    assert isinstance(position, int)
    return row


def age_chunks(app: TurnstreamApplication, seconds: int) -> None:
    with app.store.datastore.get_connection() as conn:
        conn.execute(
            sql.SQL(
                "UPDATE {}.file_chunks SET written_at = now() - make_interval(secs => %s)"
            ).format(sql.Identifier(app.store.datastore.schema)),
            (seconds,),
        )


def test_the_sweep_drops_only_chunks_no_file_holds_after_their_grace(
    app: TurnstreamApplication,
) -> None:
    row = finish(app, b"hello world")
    orphan = uuid7()
    app.store.write_chunk(orphan, 0, b"half an upl")
    assert app.store.sweep_chunks(3600) == 0  # too young: it may still be uploading
    age_chunks(app, 7200)
    assert app.store.sweep_chunks(3600) == 1
    assert app.store.count_chunks(orphan) == 0
    assert b"".join(app.store.file_bytes("acme", row.sha256)) == b"hello world"


def test_dropping_an_unfinished_upload_never_touches_a_finished_blob(
    app: TurnstreamApplication,
) -> None:
    row = finish(app, b"kept bytes!")
    blob = app.store.count_chunks()
    assert app.store.drop_chunks(uuid7()) == 0
    again = finish(app, b"kept bytes!", owner="bob")  # the same bytes: stored once
    assert again.sha256 == row.sha256
    assert app.store.count_chunks() == blob
    assert app.store.stored_bytes("acme", "bob") == len(b"kept bytes!")
    assert b"".join(app.store.file_bytes("acme", row.sha256)) == b"kept bytes!"
