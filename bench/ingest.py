"""Ingest: token events per second through turnstream's write path, against raw PostgreSQL.

Builds the application in a fresh schema, opens ``--turns`` turns (a ``Turn.Started``
each, recorded the way the service records it), then producer threads submit
``--drafts`` token drafts round-robin across the turns into a ``GroupWriter`` as fast as
they can, and the run waits until ``on_commit`` has reported every one. Then, in the same
run, the very rows the writer stored are read back and written again into identical
fresh tables with raw binary COPY and with raw ``INSERT … SELECT unnest(…)``, in
transactions of ``--raw-batch`` rows, for the comparison.

Run ``python bench/ingest.py --help`` for the options; see bench/README.md.
"""

from __future__ import annotations

import argparse
import random
import statistics
import string
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast
from uuid import UUID

import psycopg
from psycopg.sql import SQL, Identifier

from _common import (
    Progress,
    add_database_args,
    database,
    emit_json,
    exit_on_sigterm,
    fmt,
    fresh_schema,
    log,
    print_table,
    rate,
    redact,
    server_facts,
    summarize,
    try_checkpoint,
)
from turnstream.bootstrap import build_application
from turnstream.domain.progress import DeltaDraft, ReasoningDraft, TextDraft
from turnstream.domain.turn import Turn, TurnEvent
from turnstream.ids import uuid7
from turnstream.settings import Settings
from turnstream.store.application import TurnstreamApplication
from turnstream.store.mapper import decode_event
from turnstream.store.writer import GroupWriter

TOKEN_TOPICS = [Turn.TokensAppended.TOPIC, Turn.ReasoningAppended.TOPIC]
EVENT_OF: dict[type[DeltaDraft], type[TurnEvent]] = {
    TextDraft: Turn.TokensAppended,
    ReasoningDraft: Turn.ReasoningAppended,
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Token events per second through turnstream's group-commit writer, "
        "compared with raw COPY and raw INSERT..unnest of the same rows in the same run.",
    )
    parser.add_argument("--turns", type=int, default=200, help="concurrent turns (default 200)")
    parser.add_argument(
        "--drafts", type=int, default=200_000, help="token drafts in total (default 200000)"
    )
    parser.add_argument(
        "--producers", type=int, default=1, help="producer threads submitting (default 1)"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="pace the producers to this many drafts/s in total (default 0: as fast as possible)",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="send only token drafts, so consecutive drafts of a turn in one batch merge "
        "into one event (fewer, larger rows; compare drafts_per_s then). By default "
        "token and reasoning drafts alternate within each turn, nothing merges, and the "
        "writer stores one event per draft: rows against rows, like for like with COPY",
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=None,
        help="GroupWriter max_batch (default: the settings' writer_max_batch)",
    )
    parser.add_argument(
        "--raw-batch",
        type=int,
        default=1000,
        help="rows per transaction of the raw baselines (default 1000)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="repetitions, each in its own fresh schema; figures are medians (default 5)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the token texts")
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="give up waiting for commits after this"
    )
    add_database_args(parser)
    args = parser.parse_args(argv)
    args.no_merge = not args.merge
    if min(args.turns, args.drafts, args.producers, args.raw_batch, args.repeat) < 1:
        parser.error("--turns, --drafts, --producers, --raw-batch and --repeat must be positive")
    return args


# Token texts.


def make_tokens(count: int, seed: int) -> list[str]:
    """``count`` token texts of 1 to 12 characters, shaped roughly like BPE tokens."""
    rng = random.Random(seed)
    letters = string.ascii_lowercase
    # Lengths of the word part: short pieces are common, long ones rare (mean about 4).
    lengths = list(range(1, 12))
    weights = [10, 14, 16, 15, 12, 9, 7, 5, 4, 3, 2]
    pool: list[str] = []
    for _ in range(8192):
        kind = rng.random()
        if kind < 0.08:
            pool.append(rng.choice(".,;:!?'\"()-"))
            continue
        if kind < 0.10:
            pool.append(rng.choice(("\n", "\n\n", " \n", "  ")))
            continue
        word = "".join(rng.choices(letters, k=rng.choices(lengths, weights)[0]))
        if rng.random() < 0.1:
            word = word.capitalize()
        pool.append((" " + word) if rng.random() < 0.7 else word)
    return rng.choices(pool, k=count)


# The write path.


@dataclass
class CommitLog:
    """What on_commit reported: kept small, on the writer thread."""

    total_chars: int
    chars: int = 0
    events: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    first_commit: float = 0.0
    last_commit: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)

    def on_commit(self, events: Sequence[TurnEvent], position: int) -> None:
        now = time.perf_counter()
        chars = 0
        for event in events:
            text = getattr(event, "text", None)
            if text is not None:
                chars += len(text)
        if not self.batch_sizes:
            self.first_commit = now
        self.batch_sizes.append(len(events))
        self.events += len(events)
        self.chars += chars
        self.last_commit = now
        if self.chars >= self.total_chars:
            self.done.set()


def lost(turn_id: UUID) -> None:
    log(f"turn {turn_id} reported lost (should not happen in this benchmark)")


def open_turns(app: TurnstreamApplication, count: int) -> list[UUID]:
    """Record a Turn.Started per turn as the turn starter does (pooled connection, start_turn)."""
    node_id = uuid7()
    turn_ids: list[UUID] = []
    for i in range(count):
        turn_id = uuid7()
        started = Turn.start(
            turn_id,
            conversation_id=uuid7(),
            tenant="bench",
            user_id=f"user-{i}",
            node_id=node_id,
            mode="message",
            user_message_id=uuid7(),
            assistant_message_id=uuid7(),
            parent_id=None,
            model="demo",
            content="Tell me about event sourcing.",
        )
        with app.store.datastore.get_connection() as conn:
            app.start_turn(conn, started)
        turn_ids.append(turn_id)
    return turn_ids


def producer(
    writer: GroupWriter,
    work: list[tuple[UUID, type[DeltaDraft], str]],
    drafts_per_s: float,
    started: threading.Barrier,
    finished: list[float],
) -> None:
    submit = writer.submit
    started.wait()
    if drafts_per_s <= 0:
        for turn_id, cls, text in work:
            submit(cls(turn_id=turn_id, text=text))
    else:
        interval = 1.0 / drafts_per_s
        t0 = time.perf_counter()
        for i, (turn_id, cls, text) in enumerate(work):
            # An absolute schedule, checked before every draft: a late wake-up is made
            # up at once instead of shifting every later draft.
            delay = t0 + i * interval - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            submit(cls(turn_id=turn_id, text=text))
    finished.append(time.perf_counter())


@dataclass
class WriteResult:
    open_s: float
    submit_s: float
    elapsed_s: float
    commits: CommitLog
    writer_batches: int
    writer_drafts: int
    writer_failures: int


def run_write_path(
    args: argparse.Namespace,
    app: TurnstreamApplication,
    settings: Settings,
    tokens: list[str],
) -> tuple[WriteResult, list[UUID], list[list[tuple[type[TurnEvent], str]]]]:
    log(f"opening {args.turns} turns ...")
    t0 = time.perf_counter()
    turn_ids = open_turns(app, args.turns)
    open_s = time.perf_counter() - t0

    # Draft i goes to turn i % T; producer k owns the turns t with t % P == k, so each
    # turn's drafts are submitted in order by one thread (and the stored text is known).
    per_turn: list[list[tuple[type[TurnEvent], str]]] = [[] for _ in turn_ids]
    work: list[list[tuple[UUID, type[DeltaDraft], str]]] = [[] for _ in range(args.producers)]
    for i, text in enumerate(tokens):
        t = i % args.turns
        cls: type[DeltaDraft] = TextDraft
        if args.no_merge and len(per_turn[t]) % 2 == 1:
            cls = ReasoningDraft
        per_turn[t].append((EVENT_OF[cls], text))
        work[t % args.producers].append((turn_ids[t], cls, text))

    commits = CommitLog(total_chars=sum(len(t) for t in tokens))
    max_batch = args.max_batch or settings.writer.max_batch
    writer = GroupWriter(app, commits.on_commit, lost, max_batch=max_batch)
    for turn_id in turn_ids:
        writer.open_turn(turn_id, 1)
    writer.start()
    try:
        try_checkpoint(app.database_url)
        barrier = threading.Barrier(args.producers + 1)
        finished: list[float] = []
        threads = [
            threading.Thread(
                target=producer,
                args=(writer, share, args.rate / args.producers, barrier, finished),
                name=f"producer-{k}",
                daemon=True,  # an interrupted run does not wait for them
            )
            for k, share in enumerate(work)
        ]
        for thread in threads:
            thread.start()
        with Progress("token drafts committed", args.drafts) as progress:
            barrier.wait()
            t_start = time.perf_counter()
            deadline = t_start + args.timeout
            while not commits.done.wait(0.25):
                progress.update(int(args.drafts * commits.chars / commits.total_chars))
                if time.perf_counter() > deadline:
                    msg = f"not all drafts committed within {args.timeout}s"
                    raise TimeoutError(msg)
            progress.update(args.drafts)
        elapsed_s = commits.last_commit - t_start
        for thread in threads:
            thread.join()
        submit_s = max(finished) - t_start
    finally:
        writer.stop(timeout=10.0)
    result = WriteResult(
        open_s=open_s,
        submit_s=submit_s,
        elapsed_s=elapsed_s,
        commits=commits,
        writer_batches=writer.stats.batches,
        writer_drafts=writer.stats.drafts,
        writer_failures=writer.stats.failures,
    )
    return result, turn_ids, per_turn


# Reading back and checking.

Row = tuple[UUID, int, str, bytes]


def read_back(url: str, schema: str) -> list[Row]:
    """The token rows the writer stored, in log (notification id) order."""
    with psycopg.connect(url) as conn, conn.cursor(binary=True) as cur:
        cur.execute(
            SQL(
                "SELECT originator_id, originator_version, topic, state FROM {}.{}"
                " WHERE topic = ANY(%s) ORDER BY notification_id"
            ).format(Identifier(schema), Identifier("turnstream_events")),
            (TOKEN_TOPICS,),
        )
        return [(r[0], r[1], r[2], bytes(r[3])) for r in cur]


def verify(
    rows: list[Row], turn_ids: list[UUID], per_turn: list[list[tuple[type[TurnEvent], str]]]
) -> str:
    """Every turn's stored text is its drafts' texts in order, versions 2, 3, … no gap."""
    texts: dict[UUID, list[str]] = {t: [] for t in turn_ids}
    versions: dict[UUID, list[int]] = {t: [] for t in turn_ids}
    for originator_id, version, topic, state in rows:
        event = decode_event(topic, state)
        texts[originator_id].append(cast(Any, event).text)
        versions[originator_id].append(version)
    for index, turn_id in enumerate(turn_ids):
        expected = "".join(text for _, text in per_turn[index])
        if "".join(texts[turn_id]) != expected:
            return f"MISMATCH: turn {turn_id} text differs"
        got = sorted(versions[turn_id])
        if got != list(range(2, 2 + len(got))):
            return f"MISMATCH: turn {turn_id} versions are not 2..{1 + len(got)}"
    return "ok"


# The raw baselines.


def create_raw_table(conn: psycopg.Connection[Any], schema: str, table: str) -> None:
    """The library's events table, column for column, constraint for constraint."""
    conn.execute(
        SQL(
            "CREATE TABLE {}.{} ("
            "originator_id uuid NOT NULL, "
            "originator_version bigint NOT NULL, "
            "topic text, "
            "state bytea, "
            "notification_id bigserial, "
            "PRIMARY KEY (originator_id, originator_version)) "
            "WITH (autovacuum_enabled = true, autovacuum_vacuum_threshold = 100000000, "
            "autovacuum_vacuum_scale_factor = 0.5, autovacuum_analyze_threshold = 1000, "
            "autovacuum_analyze_scale_factor = 0.01)"
        ).format(Identifier(schema), Identifier(table))
    )
    conn.execute(
        SQL("CREATE UNIQUE INDEX {} ON {}.{} (notification_id ASC)").format(
            Identifier(f"{table}_notification_id_idx"), Identifier(schema), Identifier(table)
        )
    )


def raw_copy(url: str, schema: str, rows: list[Row], batch: int) -> float:
    table = "raw_copy"
    with psycopg.connect(url, autocommit=True) as conn:
        create_raw_table(conn, schema, table)
        copy_sql = SQL(
            "COPY {}.{} (originator_id, originator_version, topic, state)"
            " FROM STDIN (FORMAT BINARY)"
        ).format(Identifier(schema), Identifier(table))
        try_checkpoint(url)
        t0 = time.perf_counter()
        with conn.cursor() as cur:
            for start in range(0, len(rows), batch):
                with conn.transaction(), cur.copy(copy_sql) as copy:
                    copy.set_types(["uuid", "int8", "text", "bytea"])
                    for row in rows[start : start + batch]:
                        copy.write_row(row)
        elapsed = time.perf_counter() - t0
        check_count(conn, schema, table, len(rows))
    return elapsed


def raw_unnest(url: str, schema: str, rows: list[Row], batch: int) -> float:
    table = "raw_unnest"
    with psycopg.connect(url, autocommit=True) as conn:
        create_raw_table(conn, schema, table)
        insert_sql = SQL(
            "INSERT INTO {}.{} (originator_id, originator_version, topic, state)"
            " SELECT * FROM unnest(%s::uuid[], %s::int8[], %s::text[], %s::bytea[])"
        ).format(Identifier(schema), Identifier(table))
        try_checkpoint(url)
        t0 = time.perf_counter()
        with conn.cursor() as cur:
            for start in range(0, len(rows), batch):
                chunk = rows[start : start + batch]
                params = (
                    [r[0] for r in chunk],
                    [r[1] for r in chunk],
                    [r[2] for r in chunk],
                    [r[3] for r in chunk],
                )
                with conn.transaction():
                    cur.execute(insert_sql, params)
        elapsed = time.perf_counter() - t0
        check_count(conn, schema, table, len(rows))
    return elapsed


def check_count(conn: psycopg.Connection[Any], schema: str, table: str, expected: int) -> None:
    row = conn.execute(
        SQL("SELECT count(*) FROM {}.{}").format(Identifier(schema), Identifier(table))
    ).fetchone()
    if row is None or row[0] != expected:
        msg = f"{table}: {row[0] if row else None} rows, expected {expected}"
        raise RuntimeError(msg)


# Main.


@dataclass
class RunResult:
    """The figures of one repetition (its own fresh schema)."""

    write: WriteResult
    stored: int
    check: str
    copy_s: float
    unnest_s: float

    @property
    def events_per_s(self) -> float:
        return rate(self.stored, self.write.elapsed_s)

    def drafts_per_s(self, drafts: int) -> float:
        return rate(drafts, self.write.elapsed_s)

    @property
    def copy_rows_per_s(self) -> float:
        return rate(self.stored, self.copy_s)

    @property
    def unnest_rows_per_s(self) -> float:
        return rate(self.stored, self.unnest_s)

    @property
    def batches(self) -> int:
        return len(self.write.commits.batch_sizes)

    @property
    def mean_batch(self) -> float:
        return rate(self.stored, self.batches)


def run_once(args: argparse.Namespace, url: str, tokens: list[str]) -> RunResult:
    with fresh_schema(url, keep=args.keep_schema) as schema:
        log(f"database {redact(url)}, schema {schema}")
        settings = Settings.from_env({}, database_url=url, database_schema=schema)
        app = build_application(settings, url)
        try:
            write, turn_ids, per_turn = run_write_path(args, app, settings, tokens)
        finally:
            app.close()
        log("reading the stored rows back ...")
        rows = read_back(url, schema)
        check = verify(rows, turn_ids, per_turn)
        log(f"stored text check: {check}")
        log(f"raw COPY of the same {len(rows):,} rows ...")
        copy_s = raw_copy(url, schema, rows, args.raw_batch)
        log(f"raw INSERT..unnest of the same {len(rows):,} rows ...")
        unnest_s = raw_unnest(url, schema, rows, args.raw_batch)
    return RunResult(write, len(rows), check, copy_s, unnest_s)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_sigterm()
    tokens = make_tokens(args.drafts, args.seed)
    runs: list[RunResult] = []
    with database(args.database_url, args.pg_data_dir) as url:
        facts = server_facts(url)
        for k in range(args.repeat):
            log(f"run {k + 1} of {args.repeat}")
            runs.append(run_once(args, url, tokens))
    report(args, facts, runs)
    return 0 if all(r.check == "ok" for r in runs) else 1


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def report(args: argparse.Namespace, facts: dict[str, str], runs: list[RunResult]) -> None:
    pace = f"{args.rate:,.0f} drafts/s" if args.rate > 0 else "as fast as possible"
    checks = sorted({r.check for r in runs})
    print(
        f"turnstream ingest: {args.turns} turns, {args.drafts:,} token drafts, "
        f"{args.producers} producer thread(s), {pace}"
        + (", no-merge (alternating token/reasoning)" if args.no_merge else "")
        + f"; {len(runs)} run(s), each in a fresh schema"
    )
    print(
        f"PostgreSQL {facts['server_version']} (fsync {facts['fsync']}, synchronous_commit "
        f"{facts['synchronous_commit']}); stored text check: {', '.join(checks)}"
    )
    print()

    # The run with the median write-path rate, in detail.
    ordered = sorted(runs, key=lambda r: r.events_per_s)
    mid = ordered[(len(ordered) - 1) // 2]
    w = mid.write
    sizes = summarize([float(s) for s in w.commits.batch_sizes])
    print_table(
        ["write path, median run (GroupWriter -> COPY under the table lock)", "value"],
        [
            ["turns opened (Turn.Started, one tx each)", fmt(args.turns)],
            ["  opened per s", fmt(rate(args.turns, w.open_s))],
            ["token drafts submitted", fmt(args.drafts)],
            ["  producers done after s", fmt(w.submit_s, 3)],
            ["  all committed after s", fmt(w.elapsed_s, 3)],
            ["token drafts per s (committed)", fmt(mid.drafts_per_s(args.drafts), 0)],
            ["token events stored (rows in the table)", fmt(mid.stored)],
            ["token events stored per s", fmt(mid.events_per_s, 0)],
            ["merge ratio (drafts per stored event)", fmt(rate(args.drafts, mid.stored), 2)],
            ["batches (group commits)", fmt(mid.batches)],
            ["  commits per s", fmt(rate(mid.batches, w.elapsed_s), 1)],
            ["  mean batch (events)", fmt(mid.mean_batch, 1)],
            ["  p50 / max batch (events)", f"{fmt(sizes['p50'], 0)} / {fmt(sizes['max'], 0)}"],
            ["  mean drafts per batch", fmt(rate(w.writer_drafts, mid.batches), 1)],
            ["writer failures (retries)", fmt(w.writer_failures)],
        ],
    )

    # Every run: the write path and the raw baselines on the same rows.
    rows: list[list[str]] = []
    for k, r in enumerate(runs, 1):
        rows.append(
            [
                str(k),
                fmt(r.stored),
                fmt(r.drafts_per_s(args.drafts), 0),
                fmt(r.events_per_s, 0),
                fmt(r.copy_rows_per_s, 0),
                fmt(r.unnest_rows_per_s, 0),
                fmt(rate(r.events_per_s, r.copy_rows_per_s), 3),
                fmt(rate(r.events_per_s, r.unnest_rows_per_s), 3),
            ]
        )
    figures = medians(args, runs)
    rows.append(
        [
            "median",
            fmt(int(figures["events"])),
            fmt(figures["drafts_per_s"], 0),
            fmt(figures["events_per_s"], 0),
            fmt(figures["copy_rows_per_s"], 0),
            fmt(figures["unnest_rows_per_s"], 0),
            fmt(figures["ratio_vs_copy"], 3),
            fmt(figures["ratio_vs_unnest"], 3),
        ]
    )
    print_table(
        [
            "run",
            "rows",
            "drafts/s",
            "events/s",
            f"COPY rows/s ({args.raw_batch}/tx)",
            f"unnest rows/s ({args.raw_batch}/tx)",
            "events/COPY",
            "events/unnest",
        ],
        rows,
        title="same rows, same run: the write path against raw COPY and raw INSERT..unnest",
    )
    print(
        "drafts/s: token drafts handed in per second until the last was committed; "
        "events/s: rows stored per second\n(consecutive drafts of a turn merge into one "
        "event inside a batch). Ratios are per run, then the median."
    )
    emit_json(
        {
            "bench": "ingest",
            **figures,
            "turns": args.turns,
            "drafts": args.drafts,
            "producers": args.producers,
            "rate": args.rate,
            "no_merge": args.no_merge,
            "raw_batch": args.raw_batch,
            "repeat": len(runs),
            "check": "ok" if checks == ["ok"] else ", ".join(checks),
        }
    )


def medians(args: argparse.Namespace, runs: list[RunResult]) -> dict[str, float]:
    """The median of each figure over the runs (ratios: of the per-run ratios)."""
    return {
        "events_per_s": median([r.events_per_s for r in runs]),
        "drafts_per_s": median([r.drafts_per_s(args.drafts) for r in runs]),
        "copy_rows_per_s": median([r.copy_rows_per_s for r in runs]),
        "unnest_rows_per_s": median([r.unnest_rows_per_s for r in runs]),
        "ratio_vs_copy": median([rate(r.events_per_s, r.copy_rows_per_s) for r in runs]),
        "ratio_vs_unnest": median([rate(r.events_per_s, r.unnest_rows_per_s) for r in runs]),
        "mean_batch": median([r.mean_batch for r in runs]),
        "batches": median([float(r.batches) for r in runs]),
        "events": median([float(r.stored) for r in runs]),
        "merge_ratio": median([rate(args.drafts, r.stored) for r in runs]),
        "elapsed_s": median([r.write.elapsed_s for r in runs]),
    }


if __name__ == "__main__":
    sys.exit(main())
