"""Uploads: a file's type is its content's, every limit answers its own problem and
stores nothing, the same bytes are kept once, and a file is its owner's alone.

One server for the module (uploads do not interfere: each test counts what it adds);
the storage quota has a second one, with the quota on.
"""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from tests.support.files import elf, jpeg, multipart, pixel_bomb, png, zip_bomb
from tests.support.inprocess import InProcessServer
from tests.support.shared_server import served

MiB = 1024 * 1024


@dataclass
class Place:
    server: InProcessServer
    db: psycopg.Connection[Any]

    def client(self, tenant: str = "acme", user: str = "alice", **kw: Any) -> httpx.Client:
        token = self.server.token(tenant, user, **kw)
        return httpx.Client(
            base_url=self.server.base_url + "/v1",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )

    def count(self, table: str, where: str = "", *params: Any) -> int:
        query = sql.SQL("SELECT count(*) FROM {}.{}").format(
            sql.Identifier(self.server.schema), sql.Identifier(table)
        )
        if where:
            query += sql.SQL(" WHERE " + where)  # the tests' own constant conditions
        row = self.db.execute(query, params).fetchone()
        assert row is not None
        return int(row[0])

    def stored(self) -> tuple[int, int, int, int]:
        """Files, blobs, chunks and events: what an upload may add."""
        return (
            self.count("files"),
            self.count("file_blobs"),
            self.count("file_chunks"),
            self.count("turnstream_events"),
        )


def _place(database_url: str, nats_url: str, data_dir: Path, **env: str) -> Iterator[Place]:
    with (
        served(database_url, nats_url, data_dir, **env) as server,
        psycopg.connect(database_url, autocommit=True) as db,
    ):
        yield Place(server, db)


@pytest.fixture(scope="module")
def place(
    database_url: str, nats_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Place]:
    yield from _place(database_url, nats_url, tmp_path_factory.mktemp("files"))


@pytest.fixture(scope="module")
def quota_place(
    database_url: str, nats_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Place]:
    yield from _place(
        database_url,
        nats_url,
        tmp_path_factory.mktemp("files-quota"),
        TURNSTREAM_LIMIT_STORAGE_BYTES=str(100_000),
    )


def upload(
    client: httpx.Client, content: bytes, name: str = "f", mime: str = "x/y"
) -> httpx.Response:
    return client.post("/files", files={"file": (name, content, mime)})


def assert_problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert body["code"] == code
    assert "Traceback" not in r.text
    assert "SELECT" not in r.text
    return body


# Upload and read back.


def test_an_upload_reads_back_byte_equal_with_its_content_type(place: Place) -> None:
    content = png(40, 30)
    with place.client() as c:
        r = upload(c, content, "photo.png", "image/png")
        assert r.status_code == 201, r.text
        meta = r.json()
        assert meta["media_type"] == "image/png"
        assert (meta["bytes"], meta["width"], meta["height"]) == (len(content), 40, 30)
        assert meta["sha256"] == hashlib.sha256(content).hexdigest()
        assert meta["name"] == "photo.png"
        got = c.get(f"/files/{meta['id']}")
        assert got.status_code == 200
        assert got.content == content
        assert got.headers["content-type"] == "image/png"
        assert got.headers["x-content-type-options"] == "nosniff"
        assert got.headers["content-disposition"].startswith('attachment; filename="photo.png"')
        assert c.get(f"/files/{meta['id']}/meta").json() == meta


def test_a_large_text_streams_in_and_out_in_chunks(place: Place) -> None:
    content = "".join(f"line {i}: été, naïve, 東京\n" for i in range(200_000)).encode()
    assert 4 * MiB < len(content) < 10 * MiB
    before = place.count("file_chunks")
    with place.client() as c:
        r = upload(c, content, "notes.md", "application/octet-stream")
        assert r.status_code == 201, r.text
        assert r.json()["media_type"] == "text/markdown"
        assert place.count("file_chunks") - before == -(-len(content) // (256 * 1024))
        assert c.get(f"/files/{r.json()['id']}").content == content


@pytest.mark.parametrize(
    ("name", "content", "media_type"),
    [
        ("a.pdf", png(), "image/png"),  # a PNG named .pdf is a PNG
        ("scan.png", jpeg(), "image/jpeg"),
        ("doc.txt", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "application/pdf"),
        ("data.json", b' {"a": [1, 2]}', "application/json"),
        ("not-json.json", b"hello", "text/plain"),
        ("table.csv", "a,b\n1,é\n".encode(), "text/csv"),
        ("README", b"# Title\n", "text/plain"),
    ],
    ids=[
        "png-named-pdf",
        "jpeg-named-png",
        "pdf-named-txt",
        "json",
        "text-named-json",
        "csv",
        "plain",
    ],
)
def test_the_content_decides_the_type_never_the_name(
    place: Place, name: str, content: bytes, media_type: str
) -> None:
    with place.client() as c:
        r = upload(c, content, name, "application/x-whatever")
        assert r.status_code == 201, r.text
        assert r.json()["media_type"] == media_type
        assert c.get(f"/files/{r.json()['id']}").headers["content-type"].startswith(media_type)


# Refusals: each with its status and code, and nothing stored.


@pytest.mark.parametrize(
    ("name", "content", "status", "code"),
    [
        ("cat.png", elf(), 415, "unsupported_media_type"),
        ("archive.txt", zip_bomb(), 415, "unsupported_media_type"),
        ("bomb.png", pixel_bomb(), 413, "image_too_large"),
        ("half.png", png()[:40], 415, "unsupported_media_type"),
        ("utf16.txt", "hello".encode("utf-16"), 415, "unsupported_media_type"),
        ("empty.txt", b"", 415, "unsupported_media_type"),
        ("big.txt", b"a" * (10 * MiB + 1), 413, "file_too_large"),
    ],
    ids=[
        "renamed-executable",
        "zip-bomb",
        "pixel-bomb",
        "truncated-png",
        "utf16",
        "empty",
        "too-big",
    ],
)
def test_a_refused_upload_stores_nothing(
    place: Place, name: str, content: bytes, status: int, code: str
) -> None:
    before = place.stored()
    with place.client() as c:
        assert_problem(upload(c, content, name, "image/png"), status, code)
    assert place.stored() == before


def test_a_streamed_upload_past_the_limit_stops_at_the_limit(place: Place) -> None:
    """Without a Content-Length (chunked), the bytes are counted as they arrive."""
    body, content_type = multipart(b"a" * (12 * MiB), "big.txt")
    sent = 0

    def pieces() -> Iterator[bytes]:
        nonlocal sent
        for i in range(0, len(body), 64 * 1024):
            sent += 64 * 1024
            yield body[i : i + 64 * 1024]

    before = place.stored()
    with place.client() as c:
        r = c.post("/files", content=pieces(), headers={"content-type": content_type})
    assert_problem(r, 413, "file_too_large")
    assert place.stored() == before


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (multipart(b"hello")[0][:-8], multipart(b"")[1], 400),  # no closing boundary
        (multipart(b"hello", field="other")[0], multipart(b"")[1], 400),
        (b"hello", "text/plain", 415),
        (b"--x\r\ngarbage", "multipart/form-data", 400),  # no boundary parameter
    ],
    ids=["truncated-body", "no-file-field", "not-multipart", "no-boundary"],
)
def test_a_malformed_upload_is_refused_and_stores_nothing(
    place: Place, body: bytes, content_type: str, status: int
) -> None:
    before = place.stored()
    with place.client() as c:
        r = c.post("/files", content=body, headers={"content-type": content_type})
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert place.stored() == before


def test_a_client_that_disconnects_mid_upload_leaves_no_chunk(place: Place) -> None:
    body, content_type = multipart(b"b" * (3 * MiB), "gone.txt")
    host, port = place.server.base_url.removeprefix("http://").split(":")
    token = place.server.token("acme", "alice")
    before = place.stored()
    head = (
        f"POST /v1/files HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head + body[: 2 * MiB])  # several chunks' worth, then gone
        deadline = time.monotonic() + 20
        while place.count("file_chunks") == before[2] and time.monotonic() < deadline:
            time.sleep(0.05)  # until the server has written some chunks
        assert place.count("file_chunks") > before[2], "the upload never reached the store"
    deadline = time.monotonic() + 20
    while place.stored() != before and time.monotonic() < deadline:
        time.sleep(0.05)  # the server notices the disconnect and drops what it wrote
    assert place.stored() == before


# Stored once; owned.


def test_the_same_bytes_twice_are_stored_once(place: Place) -> None:
    content = png(17, 9, (1, 2, 3))
    files, blobs, chunks, _ = place.stored()
    with place.client() as c, place.client("acme", "bob") as bob:
        first = upload(c, content, "one.png").json()
        second = upload(c, content, "two.png").json()
        third = upload(bob, content, "bobs.png").json()
    assert len({first["id"], second["id"], third["id"]}) == 3
    assert first["sha256"] == second["sha256"] == third["sha256"]
    assert place.stored()[:3] == (files + 3, blobs + 1, chunks + 1)
    with place.client("other", "alice") as other:  # another tenant keeps its own copy
        upload(other, content, "one.png")
    assert place.stored()[1:3] == (blobs + 2, chunks + 2)


def test_another_users_or_tenants_file_is_not_found_everywhere(place: Place) -> None:
    with place.client() as c:
        meta = upload(c, b"secret notes\n", "secret.txt").json()
    fid = meta["id"]
    missing = "01900000-0000-7000-8000-000000000000"
    strangers = [("acme", "bob", False), ("other", "alice", False), ("other", "root", True)]
    routes = [("GET", f"/files/{fid}"), ("GET", f"/files/{fid}/meta"), ("DELETE", f"/files/{fid}")]
    for tenant, user, admin in strangers:
        with place.client(tenant, user, admin=admin) as them:
            for method, path in routes:
                theirs = them.request(method, path)
                nothing = them.request(method, path.replace(fid, missing))
                body = assert_problem(theirs, 404, "file_not_found")
                assert body["detail"] == nothing.json()["detail"].replace(missing, fid)
    with place.client("acme", "boss", admin=True) as admin_c:  # an admin reads their tenant's
        assert admin_c.get(f"/files/{fid}").content == b"secret notes\n"
    with place.client() as c:
        assert c.get(f"/files/{fid}/meta").status_code == 200  # nothing changed


def test_a_deleted_file_is_hidden_and_the_log_keeps_both_facts(place: Place) -> None:
    with place.client() as c:
        fid = upload(c, b"to be deleted\n", "gone.txt").json()["id"]
        assert c.delete(f"/files/{fid}").status_code == 204
        for path in (f"/files/{fid}", f"/files/{fid}/meta"):
            assert_problem(c.get(path), 404, "file_not_found")
        assert_problem(c.delete(f"/files/{fid}"), 404, "file_not_found")
    topics = [
        row[0]
        for row in place.db.execute(
            sql.SQL(
                "SELECT topic FROM {}.turnstream_events WHERE originator_id = %s"
                " ORDER BY originator_version"
            ).format(sql.Identifier(place.server.schema)),
            (fid,),
        )
    ]
    assert topics == ["turnstream.file.uploaded.v1", "turnstream.file.deleted.v1"]


# The storage quota.


def test_the_storage_quota_counts_each_content_once_and_frees_on_delete(
    quota_place: Place,
) -> None:
    with quota_place.client("acme", "quota") as c:
        a = upload(c, b"a" * 60_000, "a.txt")
        assert a.status_code == 201
        again = upload(c, b"a" * 60_000, "a-again.txt")  # the same bytes: not counted twice
        assert again.status_code == 201
        before = quota_place.stored()
        body = assert_problem(upload(c, b"b" * 50_000, "b.txt"), 429, "quota_exhausted")
        assert body["stored_bytes"] == 60_000
        assert quota_place.stored() == before
        assert c.delete(f"/files/{a.json()['id']}").status_code == 204
        # still stored by the other file of the same bytes
        assert_problem(upload(c, b"b" * 50_000, "b.txt"), 429, "quota_exhausted")
        assert c.delete(f"/files/{again.json()['id']}").status_code == 204
        assert upload(c, b"b" * 50_000, "b.txt").status_code == 201
    with quota_place.client("acme", "someone-else") as other:  # a quota is per user
        assert upload(other, b"c" * 90_000, "c.txt").status_code == 201
