"""What an upload costs: time and memory of ``Files.upload`` against a bare write of the
same bytes, in one run.

The upload is the use case itself (content sniffing, SHA-256, 256 KiB chunks through
the store gateway, the finishing transaction with its event), fed 64 KiB pieces as the
multipart parser hands them over. The baseline writes the same bytes as one ``bytea``
row with psycopg (no checks, no chunks, no event). Memory is the peak Python
allocation during the upload (tracemalloc), as a share of the file's size: it shows
that an upload holds a chunk or two, never the file.

    python bench/uploads.py [--mib 10] [--repeat 5] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator, Sequence

import psycopg
from psycopg.sql import SQL, Identifier

import _common as common
from turnstream.bootstrap import build_application
from turnstream.domain.callers import Caller
from turnstream.settings import LimitSettings, Settings
from turnstream.store.application import TurnstreamApplication
from turnstream.store.gateway import StoreGateway
from turnstream.usecases.files import Files

PIECE = 64 * 1024


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_database_args(parser)
    parser.add_argument("--mib", type=int, default=10, help="size of each file (MiB)")
    parser.add_argument("--repeat", type=int, default=5, help="uploads of each kind")
    return parser.parse_args(argv)


def content(mib: int, k: int) -> bytes:
    """Distinct text of ``mib`` MiB (distinct, so that no upload is a duplicate)."""
    line = f"upload {k}: the quick brown fox jumps over the lazy dog\n".encode()
    return (line * (mib * 1024 * 1024 // len(line) + 1))[: mib * 1024 * 1024]


async def pieces(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), PIECE):
        yield data[i : i + PIECE]


async def one_upload(files: Files, data: bytes) -> tuple[float, int]:
    """Seconds and peak bytes allocated (beyond what was before) of one upload."""
    caller = Caller(tenant="bench", user_id=f"u{len(data)}")
    tracemalloc.start()
    tracemalloc.reset_peak()
    start = time.perf_counter()
    await files.upload(caller, "bench.txt", pieces(data))
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return elapsed, peak


def bare_write(url: str, schema: str, data: bytes) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        table = SQL("{}.bench_bare").format(Identifier(schema))
        conn.execute(SQL("CREATE TABLE IF NOT EXISTS {} (data bytea)").format(table))
        start = time.perf_counter()
        conn.execute(SQL("INSERT INTO {} VALUES (%s)").format(table), (data,))
        return time.perf_counter() - start


async def measure(
    app: TurnstreamApplication, url: str, schema: str, args: argparse.Namespace
) -> dict[str, float]:
    gateway = StoreGateway(app)
    limits = LimitSettings(file_bytes=(args.mib + 1) * 1024 * 1024)
    files = Files(app=app, gateway=gateway, limits=limits)
    upload_s, peaks, bare_s = [], [], []
    for k in range(args.repeat):
        data = content(args.mib, k)
        elapsed, peak = await one_upload(files, data)
        upload_s.append(elapsed)
        peaks.append(peak)
        bare_s.append(bare_write(url, schema, data))
        common.log(f"  upload {k + 1}: {elapsed:.3f} s, peak {peak / 1024:.0f} KiB")
    gateway.executor.shutdown()
    size = args.mib * 1024 * 1024
    upload, bare = statistics.median(upload_s), statistics.median(bare_s)
    return {
        "mib": args.mib,
        "upload_s": round(upload, 4),
        "upload_mib_per_s": round(args.mib / upload, 1),
        "bare_insert_s": round(bare, 4),
        "ratio_to_bare": round(upload / bare, 2),
        "peak_kib": round(statistics.median(peaks) / 1024),
        "peak_share_of_file": round(statistics.median(peaks) / size, 3),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    common.exit_on_sigterm()
    with common.database(args.database_url, args.pg_data_dir) as url:
        common.log(f"database {common.redact(url)}")
        with common.fresh_schema(url, keep=args.keep_schema) as schema:
            app = build_application(Settings.from_env({}, database_schema=schema), url)
            try:
                result = asyncio.run(measure(app, url, schema, args))
            finally:
                app.close()
    common.log(
        f"{args.mib} MiB upload: {result['upload_s']} s ({result['upload_mib_per_s']} MiB/s),"
        f" {result['ratio_to_bare']}x a bare INSERT of the bytes;"
        f" peak memory {result['peak_kib']} KiB ({result['peak_share_of_file']:.1%} of the file)"
    )
    common.emit_json({"bench": "uploads", **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
