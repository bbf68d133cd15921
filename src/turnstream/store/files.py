"""Files in PostgreSQL: their bytes once per tenant, in chunks, and an index of who owns
which.

An upload writes its bytes as chunks under a fresh ``blob_id`` while they arrive
(nothing is visible yet). Its end, in one transaction, checks the owner's storage
quota, makes the chunks the tenant's copy of those bytes (``file_blobs``, keyed by
their SHA-256), or drops them when the tenant holds the same bytes already, records
``file.uploaded`` in the log and adds the file's index row. An upload that fails or is
abandoned drops its chunks; chunks no blob refers to (a process that died mid-upload)
are swept after a grace period. Deleting a file records ``file.deleted`` and hides its
row; the bytes stay (the log says they were there, and another file may share them).

The index (``files``) is derived from the file events, written in the transactions
that store them, like the turn index.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

import psycopg
from eventsourcing.postgres import PostgresDatastore
from psycopg import ClientCursor
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Composable, Composed, Identifier

from turnstream.domain.files import File, FileRef
from turnstream.store.transactions import explicit_transaction

Row = tuple[UUID | str, int, str, bytes]

READ_CHUNKS = 16
"""Chunks read back per query while a file streams out (bounded memory)."""


class FileRow(NamedTuple):
    file_id: UUID
    tenant: str
    owner: str
    name: str
    media_type: str
    bytes: int
    sha256: str
    width: int | None
    height: int | None
    created_at: datetime
    deleted: bool
    version: int

    @classmethod
    def of(cls, uploaded: File.Uploaded) -> FileRow:
        """The index row a ``file.uploaded`` adds."""
        return cls(
            file_id=uploaded.originator_id,
            tenant=uploaded.tenant,
            owner=uploaded.owner,
            name=uploaded.name,
            media_type=uploaded.media_type,
            bytes=uploaded.bytes,
            sha256=uploaded.sha256,
            width=uploaded.width,
            height=uploaded.height,
            created_at=uploaded.timestamp,
            deleted=False,
            version=1,
        )

    @property
    def ref(self) -> FileRef:
        """The file as a message refers to it."""
        return FileRef(
            id=self.file_id,
            name=self.name,
            media_type=self.media_type,
            bytes=self.bytes,
            sha256=self.sha256,
            width=self.width,
            height=self.height,
        )


class Refused(NamedTuple):
    """An upload the storage quota refused: what the owner stores already."""

    stored_bytes: int


def file_tables(schema: str) -> list[Composed]:
    """The tables of files (created with the recorder's)."""
    s = Identifier(schema)
    return [
        SQL(
            "CREATE TABLE IF NOT EXISTS {}.file_chunks ("
            " blob_id uuid NOT NULL, seq int NOT NULL, data bytea NOT NULL,"
            " written_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (blob_id, seq))"
        ).format(s),
        SQL(
            "CREATE TABLE IF NOT EXISTS {}.file_blobs ("
            " tenant text NOT NULL, sha256 text NOT NULL, blob_id uuid NOT NULL UNIQUE,"
            " bytes bigint NOT NULL, created_at timestamptz NOT NULL DEFAULT now(),"
            " PRIMARY KEY (tenant, sha256))"
        ).format(s),
        SQL(
            "CREATE TABLE IF NOT EXISTS {}.files ("
            " file_id uuid PRIMARY KEY, tenant text NOT NULL, owner text NOT NULL,"
            " name text NOT NULL, media_type text NOT NULL, bytes bigint NOT NULL,"
            " sha256 text NOT NULL, width int, height int, created_at timestamptz NOT NULL,"
            " deleted boolean NOT NULL DEFAULT false, version int NOT NULL DEFAULT 1,"
            " position bigint NOT NULL)"
        ).format(s),
        SQL(
            "CREATE INDEX IF NOT EXISTS files_by_owner ON {}.files (tenant, owner, sha256)"
            " WHERE NOT deleted"
        ).format(s),
    ]


class FileBlobs:
    """The recorder's writes and reads of files."""

    datastore: PostgresDatastore
    lock_sql: Composed
    copy_events: Any
    """The recorder's COPY of events (see ``TurnstreamRecorder.copy_events``)."""

    def _t(self, name: str) -> Composable:
        return SQL("{}.{}").format(Identifier(self.datastore.schema), Identifier(name))

    def write_chunk(self, blob_id: UUID, seq: int, data: bytes) -> None:
        """One piece of an upload (autocommit: nothing refers to it until its end)."""
        with self.datastore.get_connection() as conn:
            conn.execute(
                SQL("INSERT INTO {} (blob_id, seq, data) VALUES (%s, %s, %s)").format(
                    self._t("file_chunks")
                ),
                (blob_id, seq, data),
            )

    def drop_chunks(self, blob_id: UUID) -> int:
        """Drop an unfinished upload's chunks (never a blob's); how many there were."""
        with self.datastore.get_connection() as conn:
            cur = conn.execute(
                SQL(
                    "DELETE FROM {c} WHERE blob_id = %s"
                    " AND NOT EXISTS (SELECT 1 FROM {b} WHERE blob_id = %s)"
                ).format(c=self._t("file_chunks"), b=self._t("file_blobs")),
                (blob_id, blob_id),
            )
            return cur.rowcount

    def sweep_chunks(self, older_than_s: float) -> int:
        """Drop chunks no blob refers to, written longer ago than ``older_than_s``
        (uploads whose process died); how many."""
        with self.datastore.get_connection() as conn:
            cur = conn.execute(
                SQL(
                    "DELETE FROM {c} WHERE written_at < now() - make_interval(secs => %s)"
                    " AND NOT EXISTS (SELECT 1 FROM {b} b WHERE b.blob_id = {c}.blob_id)"
                ).format(c=self._t("file_chunks"), b=self._t("file_blobs")),
                (older_than_s,),
            )
            return cur.rowcount

    def finish_upload(
        self,
        blob_id: UUID,
        uploaded: Row,
        row: FileRow,
        storage_limit: int,
    ) -> int | Refused:
        """End an upload (see the module): the log position of its ``file.uploaded``, or
        :class:`Refused` (and its chunks dropped) when the owner's stored bytes would pass
        ``storage_limit`` (0: no limit)."""
        files, blobs, chunks = self._t("files"), self._t("file_blobs"), self._t("file_chunks")
        with (
            self.datastore.get_connection() as conn,
            explicit_transaction(conn),
            ClientCursor(conn, row_factory=tuple_row) as cur,
        ):
            cur.execute(b"BEGIN")
            # One upload of an owner at a time decides against the quota.
            cur.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s), hashtext(%s))",
                (row.tenant, row.owner),
            )
            if storage_limit:
                stored = self._stored_bytes(cur, row.tenant, row.owner)
                cur.execute(
                    SQL(
                        "SELECT 1 FROM {} WHERE tenant = %s AND owner = %s AND sha256 = %s"
                        " AND NOT deleted LIMIT 1"
                    ).format(files),
                    (row.tenant, row.owner, row.sha256),
                )
                counted = cur.fetchone() is not None
                if not counted and stored + row.bytes > storage_limit:
                    cur.execute(b"ROLLBACK")
                    self.drop_chunks(blob_id)
                    return Refused(stored)
            cur.execute(
                SQL(
                    "INSERT INTO {} (tenant, sha256, blob_id, bytes) VALUES (%s, %s, %s, %s)"
                    " ON CONFLICT (tenant, sha256) DO NOTHING RETURNING blob_id"
                ).format(blobs),
                (row.tenant, row.sha256, blob_id, row.bytes),
            )
            if cur.fetchone() is None:  # the tenant holds these bytes already
                cur.execute(SQL("DELETE FROM {} WHERE blob_id = %s").format(chunks), (blob_id,))
            position = self.copy_events(cur, [uploaded])
            cur.execute(
                SQL(
                    "INSERT INTO {} (file_id, tenant, owner, name, media_type, bytes, sha256,"
                    " width, height, created_at, position)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                ).format(files),
                (*row[:10], position),
            )
            cur.execute(b"COMMIT")
            return int(position)

    def delete_file(self, file_id: UUID, deleted: Row, version: int) -> int | None:
        """Record ``file.deleted`` and hide the file: its log position, or None when it
        was deleted already (or its version moved: read again)."""
        with (
            self.datastore.get_connection() as conn,
            explicit_transaction(conn),
            ClientCursor(conn, row_factory=tuple_row) as cur,
        ):
            cur.execute(b"BEGIN")
            cur.execute(self.lock_sql)
            cur.execute(
                SQL(
                    "UPDATE {} SET deleted = true, version = version + 1"
                    " WHERE file_id = %s AND version = %s AND NOT deleted RETURNING 1"
                ).format(self._t("files")),
                (file_id, version),
            )
            if cur.fetchone() is None:
                cur.execute(b"ROLLBACK")
                return None
            position = self.copy_events(cur, [deleted], lock=False)
            cur.execute(b"COMMIT")
            return int(position)

    # Reads.

    def file_row(self, file_id: UUID) -> FileRow | None:
        rows = self.file_rows([file_id])
        return rows[0] if rows else None

    def file_rows(self, file_ids: Sequence[UUID]) -> list[FileRow]:
        """The index rows of these files (deleted ones too; missing ones left out)."""
        with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            cur.execute(
                SQL(
                    "SELECT file_id, tenant, owner, name, media_type, bytes, sha256, width,"
                    " height, created_at, deleted, version FROM {} WHERE file_id = ANY(%s)"
                ).format(self._t("files")),
                (list(file_ids),),
            )
            return [FileRow(*r) for r in cur.fetchall()]

    def stored_bytes(self, tenant: str, owner: str) -> int:
        """What an owner stores: the bytes of the distinct contents of their files."""
        with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            return self._stored_bytes(cur, tenant, owner)

    def _stored_bytes(self, cur: psycopg.Cursor[Any], tenant: str, owner: str) -> int:
        cur.execute(
            SQL(
                "SELECT coalesce(sum(bytes), 0) FROM (SELECT DISTINCT sha256, bytes FROM {}"
                " WHERE tenant = %s AND owner = %s AND NOT deleted) d"
            ).format(self._t("files")),
            (tenant, owner),
        )
        found = cur.fetchone()
        return int(found[0]) if found else 0

    def file_page(self, tenant: str, sha256: str, after: int = -1) -> list[tuple[int, bytes]]:
        """The next :data:`READ_CHUNKS` chunks (seq, data) of the tenant's bytes of that
        content, after chunk ``after``; fewer at the end."""
        with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            rows = cur.execute(
                SQL(
                    "SELECT c.seq, c.data FROM {b} b JOIN {c} c ON c.blob_id = b.blob_id"
                    " WHERE b.tenant = %s AND b.sha256 = %s AND c.seq > %s"
                    " ORDER BY c.seq LIMIT %s"
                ).format(b=self._t("file_blobs"), c=self._t("file_chunks")),
                (tenant, sha256, after, READ_CHUNKS),
            ).fetchall()
        return [(int(seq), bytes(data)) for seq, data in rows]

    def file_bytes(self, tenant: str, sha256: str) -> Iterator[bytes]:
        """All of the tenant's bytes of that content, chunk by chunk."""
        after = -1
        while True:
            page = self.file_page(tenant, sha256, after)
            for _, data in page:
                yield data
            if len(page) < READ_CHUNKS:
                return
            after = page[-1][0]

    def count_chunks(self, blob_id: UUID | None = None) -> int:
        """Chunks stored (of one upload, or of all): for operators and tests."""
        with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            if blob_id is None:
                found = cur.execute(SQL("SELECT count(*) FROM {}").format(self._t("file_chunks")))
            else:
                found = cur.execute(
                    SQL("SELECT count(*) FROM {} WHERE blob_id = %s").format(
                        self._t("file_chunks")
                    ),
                    (blob_id,),
                )
            row = found.fetchone()
            return int(row[0]) if row else 0
