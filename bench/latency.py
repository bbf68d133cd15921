"""Latency: how long after the provider emits a token the SSE client has it.

Starts a real ``turnstream serve`` subprocess on a fresh schema, the built-in demo model
pacing its tokens (``--tokens-per-s``, ``--tokens``). For each concurrency level it
creates that many conversations, then starts that many turns at once, each read by a
cheap raw-socket SSE client (asyncio streams, HTTP/1.1 by hand, chunked decoding).
Every frame's wall-clock receive time is kept; afterwards the stored token events are
read from PostgreSQL, whose ``timestamp`` is when the runner received the token from the
provider. For each token frame, delay = receive time - event timestamp: everything
turnstream adds (group commit, bus, SSE encoding, HTTP) plus the client's own reading.
Also POST -> first frame (``turn.started``) per turn.

Run ``python bench/latency.py --help`` for the options; see bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import psycopg
from psycopg.sql import SQL, Identifier

from _common import (
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
    summarize,
)
from turnstream.domain.turn import Turn
from turnstream.http.auth import mint
from turnstream.store.mapper import decode_event

HOST = "127.0.0.1"
TOKEN_EVENTS = {"token": Turn.TokensAppended.TOPIC, "reasoning": Turn.ReasoningAppended.TOPIC}
TERMINAL_EVENTS = {"final", "error"}

T = TypeVar("T")


def parse_levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        msg = f"bad --levels {text!r}: use e.g. 1,50,200"
        raise argparse.ArgumentTypeError(msg) from None
    if not levels or min(levels) < 1:
        msg = "--levels needs positive integers"
        raise argparse.ArgumentTypeError(msg)
    return levels


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Token delivery latency of a real turnstream server: provider emit -> "
        "SSE frame at the client, and POST -> first frame, at several concurrency levels.",
    )
    parser.add_argument(
        "--levels",
        type=parse_levels,
        default=[1, 50, 200],
        help="concurrent turns per level, comma-separated (default 1,50,200)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="times each level is run (fresh conversations each time; default 5)",
    )
    parser.add_argument(
        "--tokens", type=int, default=100, help="answer tokens per turn (default 100)"
    )
    parser.add_argument(
        "--tokens-per-s", type=float, default=50.0, help="demo model pace (default 50)"
    )
    parser.add_argument(
        "--warmup", type=int, default=5, help="turns run first and not counted (default 5)"
    )
    parser.add_argument(
        "--turn-timeout", type=float, default=120.0, help="give up on a stream after this"
    )
    parser.add_argument(
        "--ready-timeout", type=float, default=60.0, help="wait this long for /readyz"
    )
    parser.add_argument(
        "--server-log-level",
        default="warning",
        help="the server's TURNSTREAM_LOG_LEVEL (default warning: no access log)",
    )
    parser.add_argument(
        "--server-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a TURNSTREAM_ setting for the server, e.g. LIMIT_DAILY_TOKENS=1000000000"
        " (repeatable): to measure what a setting costs",
    )
    add_database_args(parser)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.tokens < 1 or args.tokens_per_s <= 0 or args.warmup < 0:
        parser.error("--rounds, --tokens and --tokens-per-s must be positive")
    return args


# The server.


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    secret: str
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def cpu_s(self) -> float:
        """The server process's CPU time so far (user + system), nan when unknown."""
        try:
            import psutil  # type: ignore[import-untyped]
        except ImportError:
            return float("nan")
        try:
            times = psutil.Process(self.process.pid).cpu_times()
        except psutil.Error:
            return float("nan")
        return float(times.user + times.system)


@contextlib.contextmanager
def serve(args: argparse.Namespace, url: str, schema: str) -> Iterator[Server]:
    """A ``turnstream serve`` subprocess; always terminated (SIGTERM, then SIGKILL)."""
    data_dir = Path(tempfile.mkdtemp(prefix="turnstream-bench-serve-"))
    secret = secrets.token_urlsafe(32)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURNSTREAM_")}
    env |= {
        "TURNSTREAM_DATABASE_URL": url,
        "TURNSTREAM_DATABASE_SCHEMA": schema,
        "TURNSTREAM_DATA_DIR": str(data_dir),
        "TURNSTREAM_JWT_SECRET": secret,
        "TURNSTREAM_DEMO_TOKENS_PER_S": str(args.tokens_per_s),
        "TURNSTREAM_DEMO_TOKENS": str(args.tokens),
        "TURNSTREAM_LOG_LEVEL": args.server_log_level,
    }
    for setting in args.server_setting:
        name, _, value = setting.partition("=")
        env[f"TURNSTREAM_{name.upper().removeprefix('TURNSTREAM_')}"] = value
    log_path = data_dir / "server.log"
    process: subprocess.Popen[bytes] | None = None
    try:
        with log_path.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "turnstream", "serve", "--port", str(port)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us only; we stop it in order
            )
        log(f"turnstream serve started (pid {process.pid}, port {port})")
        yield Server(process, port, secret, log_path)
    finally:
        if process is not None:
            stop_process(process)
        shutil.rmtree(data_dir, ignore_errors=True)


def stop_process(process: subprocess.Popen[bytes], grace_s: float = 20.0) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        log(f"server pid {process.pid} ignored SIGTERM for {grace_s}s; killing it")
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait(10)


# A cheap HTTP/1.1 client.


class HttpError(Exception):
    pass


def request_bytes(method: str, path: str, port: int, token: str | None, body: Any) -> bytes:
    payload = b"" if body is None else json.dumps(body).encode()
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: {HOST}:{port}",
        "Accept: */*",
    ]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status_line = await reader.readline()
    if not status_line:
        raise HttpError("connection closed before the status line")
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise HttpError(f"bad status line {status_line!r}")
    status = int(parts[1])
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


async def read_chunk(reader: asyncio.StreamReader) -> bytes:
    """One chunk of a chunked body; b"" for the last (zero) chunk."""
    size_line = await reader.readline()
    if not size_line:
        raise HttpError("connection closed inside a chunked body")
    size = int(size_line.split(b";", 1)[0].strip(), 16)
    if size == 0:
        # Trailers (none expected) up to the blank line.
        while (await reader.readline()) not in (b"\r\n", b"\n", b""):
            pass
        return b""
    data = await reader.readexactly(size + 2)
    return data[:-2]


async def read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts = []
        while chunk := await read_chunk(reader):
            parts.append(chunk)
        return b"".join(parts)
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    return await reader.read()


async def http_json(
    port: int, method: str, path: str, token: str | None = None, body: Any = None
) -> tuple[int, Any]:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(request_bytes(method, path, port, token, body))
        status, headers = await read_head(reader)
        data = await read_body(reader, headers)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    try:
        return status, json.loads(data) if data else None
    except ValueError:
        return status, data.decode(errors="replace")


async def wait_ready(server: Server, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    last = "no answer"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            msg = f"the server exited ({server.process.returncode}):\n{server.log_tail()}"
            raise RuntimeError(msg)
        try:
            status, _ = await http_json(server.port, "GET", "/readyz")
        except (OSError, HttpError) as exc:
            last = str(exc)
        else:
            if status == 200:
                return
            last = f"status {status}"
        await asyncio.sleep(0.1)
    msg = f"the server was not ready within {within_s}s ({last}):\n{server.log_tail()}"
    raise RuntimeError(msg)


# The SSE client.


@dataclass
class TurnRecord:
    post_at: float
    status: int = 0
    turn_id: UUID | None = None
    first_frame_at: float | None = None
    frames: list[tuple[int, str, float]] = field(default_factory=list)  # (seq, event, time)
    end_event: str | None = None
    completion_tokens: int | None = None
    error: str | None = None

    @property
    def last_at(self) -> float:
        return self.frames[-1][2] if self.frames else self.post_at


def parse_frame(raw: bytes) -> tuple[int | None, str | None, bytes | None]:
    seq: int | None = None
    event: str | None = None
    data: bytes | None = None
    for line in raw.split(b"\n"):
        line = line.rstrip(b"\r")
        if line.startswith(b"id:"):
            seq = int(line[3:].strip())
        elif line.startswith(b"event:"):
            event = line[6:].strip().decode()
        elif line.startswith(b"data:"):
            data = line[5:].strip()
    return seq, event, data


async def stream_turn(port: int, token: str, conversation_id: str, content: str) -> TurnRecord:
    """POST a turn and read its SSE stream to the terminal frame, timing every frame."""
    body = {"content": content}
    request = request_bytes("POST", f"/v1/conversations/{conversation_id}/turns", port, token, body)
    reader, writer = await asyncio.open_connection(HOST, port)
    record = TurnRecord(post_at=time.time())
    try:
        writer.write(request)
        record.status, headers = await read_head(reader)
        if record.status != 200:
            record.error = (await read_body(reader, headers))[:300].decode(errors="replace")
            return record
        if "chunked" not in headers.get("transfer-encoding", "").lower():
            record.error = "the stream is not chunked"
            return record
        buffer = b""
        while True:
            chunk = await read_chunk(reader)
            now = time.time()
            if not chunk:
                record.error = record.error or "the stream ended without a terminal frame"
                return record
            buffer += chunk
            while (end := buffer.find(b"\n\n")) >= 0:
                raw, buffer = buffer[:end], buffer[end + 2 :]
                seq, event, data = parse_frame(raw)
                if event is None or seq is None:
                    continue  # a comment (": ping")
                if record.first_frame_at is None:
                    record.first_frame_at = now
                    if data:
                        record.turn_id = UUID(json.loads(data)["turn_id"])
                record.frames.append((seq, event, now))
                if event in TERMINAL_EVENTS:
                    record.end_event = event
                    if data:
                        payload = json.loads(data)
                        usage = payload.get("usage") or {}
                        record.completion_tokens = usage.get("completion_tokens")
                        if event == "error":
                            record.error = f"{payload.get('code')}: {payload.get('message')}"
                    return record
    except (OSError, HttpError, asyncio.IncompleteReadError, ValueError) as exc:
        record.error = f"{type(exc).__name__}: {exc}"
        return record
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


# One level.


@dataclass
class LevelRun:
    level: int
    turns: list[TurnRecord]
    server_cpu_s: float
    client_cpu_s: float
    wall_s: float


async def create_conversations(
    port: int, token: str | Callable[[int], str], count: int
) -> list[str]:
    """``count`` new conversations; ``token``: the caller's, or the i-th one's."""
    limit = asyncio.Semaphore(32)
    token_of = token if callable(token) else lambda _: token

    async def one(i: int) -> str:
        async with limit:
            status, data = await http_json(port, "POST", "/v1/conversations", token_of(i), {})
        if status not in (200, 201) or not isinstance(data, dict):
            msg = f"POST /v1/conversations: {status} {data}"
            raise HttpError(msg)
        return str(data["id"])

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def run_level(
    server: Server, token: str, level: int, within_s: float, label: int
) -> LevelRun:
    conversations = await create_conversations(server.port, token, level)
    cpu0, client0, wall0 = server.cpu_s(), time.process_time(), time.perf_counter()

    async def one(index: int, cid: str) -> TurnRecord:
        content = f"Question {label}-{index}: how does an event-sourced chat backend work?"
        try:
            return await asyncio.wait_for(stream_turn(server.port, token, cid, content), within_s)
        except TimeoutError:
            record = TurnRecord(post_at=float("nan"))
            record.error = f"no terminal frame within {within_s}s"
            return record

    turns = await asyncio.gather(*(one(i, cid) for i, cid in enumerate(conversations)))
    return LevelRun(
        level=level,
        turns=list(turns),
        server_cpu_s=server.cpu_s() - cpu0,
        client_cpu_s=time.process_time() - client0,
        wall_s=time.perf_counter() - wall0,
    )


async def run_all(args: argparse.Namespace, server: Server) -> dict[int, list[LevelRun]]:
    await wait_ready(server, args.ready_timeout)
    log("server ready")
    token = mint(server.secret, tenant="bench", user="bench", ttl_s=24 * 3600)
    if args.warmup:
        log(f"warm-up: {args.warmup} turns")
        await run_level(server, token, args.warmup, args.turn_timeout, label=0)
    runs: dict[int, list[LevelRun]] = {level: [] for level in args.levels}
    label = 1
    for round_no in range(1, args.rounds + 1):
        for level in args.levels:
            log(f"round {round_no}/{args.rounds}: {level} concurrent turns ...")
            run = await run_level(server, token, level, args.turn_timeout, label)
            label += 1
            errors = [t.error for t in run.turns if t.error]
            if errors:
                log(f"  {len(errors)} turn(s) failed, e.g. {errors[0]}")
            runs[level].append(run)
            if server.process.poll() is not None:
                msg = f"the server exited ({server.process.returncode}):\n{server.log_tail()}"
                raise RuntimeError(msg)
    return runs


# The stored timestamps.


def event_times(url: str, schema: str, turn_ids: list[UUID]) -> dict[tuple[UUID, int], float]:
    """(turn id, seq) -> the token event's timestamp (Unix seconds) for token events."""
    times: dict[tuple[UUID, int], float] = {}
    if not turn_ids:
        return times
    with psycopg.connect(url) as conn, conn.cursor(binary=True) as cur:
        cur.execute(
            SQL(
                "SELECT originator_id, originator_version, topic, state FROM {}.{}"
                " WHERE originator_id = ANY(%s) AND topic = ANY(%s)"
            ).format(Identifier(schema), Identifier("turnstream_events")),
            (turn_ids, list(TOKEN_EVENTS.values())),
        )
        for originator_id, version, topic, state in cur:
            event = decode_event(topic, bytes(state))
            times[(originator_id, version)] = event.timestamp.timestamp()
    return times


# Figures.


def level_figures(runs: list[LevelRun], times: dict[tuple[UUID, int], float]) -> dict[str, float]:
    delays_ms: list[float] = []
    steady_ms: list[float] = []
    first_ms: list[float] = []
    frames = token_frames = errors = unmatched = completion = 0
    wall = server_cpu = client_cpu = 0.0
    for run in runs:
        wall += run.wall_s
        server_cpu += run.server_cpu_s
        client_cpu += run.client_cpu_s
        # Steady state: tokens emitted after every turn of the run had its first frame,
        # i.e. once the burst of turn starts is over.
        firsts = [t.first_frame_at for t in run.turns if t.first_frame_at is not None]
        all_started = max(firsts) if firsts else float("inf")
        for turn in run.turns:
            if turn.error:
                errors += 1
            if turn.first_frame_at is not None:
                first_ms.append((turn.first_frame_at - turn.post_at) * 1000)
            frames += len(turn.frames)
            completion += turn.completion_tokens or 0
            for seq, event, at in turn.frames:
                if event not in TOKEN_EVENTS:
                    continue
                token_frames += 1
                stamp = times.get((turn.turn_id, seq)) if turn.turn_id else None
                if stamp is None:
                    unmatched += 1
                    continue
                delays_ms.append((at - stamp) * 1000)
                if stamp > all_started:
                    steady_ms.append((at - stamp) * 1000)
    delay = summarize(delays_ms)
    steady = summarize(steady_ms)
    first = summarize(first_ms)
    return {
        "turns": float(sum(len(r.turns) for r in runs)),
        "p50_ms": delay["p50"],
        "p90_ms": delay["p90"],
        "p99_ms": delay["p99"],
        "max_ms": delay["max"],
        "mean_ms": delay["mean"],
        "steady_p50_ms": steady["p50"],
        "steady_p99_ms": steady["p99"],
        "steady_max_ms": steady["max"],
        "steady_frames": float(len(steady_ms)),
        "first_frame_p50_ms": first["p50"],
        "first_frame_p90_ms": first["p90"],
        "first_frame_p99_ms": first["p99"],
        "first_frame_max_ms": first["max"],
        "frames": float(frames),
        "token_frames": float(token_frames),
        "frames_per_s": rate(frames, wall),
        "tokens_per_token_frame": rate(completion, token_frames),
        "server_cpu_pct": rate(server_cpu * 100, wall),
        "client_cpu_pct": rate(client_cpu * 100, wall),
        "errors": float(errors),
        "unmatched": float(unmatched),
    }


def report(args: argparse.Namespace, figures: dict[int, dict[str, float]]) -> None:
    print(
        f"turnstream latency: demo model {args.tokens} tokens at {args.tokens_per_s:g}/s per "
        f"turn, levels {','.join(map(str, args.levels))}, {args.rounds} round(s) each"
    )
    print(
        "delay = client receive time - stored token timestamp (when the runner got the "
        "token from the provider); token frames include reasoning frames;\nsteady = only "
        "tokens emitted after every turn of the round had its first frame (the start burst "
        "is over)"
    )
    print()
    rows = []
    for level, f in figures.items():
        rows.append(
            [
                str(level),
                fmt(int(f["turns"])),
                fmt(int(f["token_frames"])),
                fmt(f["p50_ms"], 1),
                fmt(f["p90_ms"], 1),
                fmt(f["p99_ms"], 1),
                fmt(f["max_ms"], 1),
                fmt(f["steady_p50_ms"], 1),
                fmt(f["steady_p99_ms"], 1),
                fmt(f["first_frame_p50_ms"], 1),
                fmt(f["first_frame_p99_ms"], 1),
                fmt(f["first_frame_max_ms"], 1),
            ]
        )
    print_table(
        [
            "level",
            "turns",
            "token frames",
            "delay p50 ms",
            "p90",
            "p99",
            "max",
            "steady p50",
            "p99",
            "POST->1st frame p50 ms",
            "p99",
            "max",
        ],
        rows,
        title="token delivery delay and time to first frame",
    )
    rows = []
    for level, f in figures.items():
        rows.append(
            [
                str(level),
                fmt(int(f["frames"])),
                fmt(f["frames_per_s"], 0),
                fmt(level * args.tokens_per_s, 0),
                fmt(f["tokens_per_token_frame"], 2),
                fmt(f["server_cpu_pct"], 0),
                fmt(f["client_cpu_pct"], 0),
                fmt(int(f["errors"])),
                fmt(int(f["unmatched"])),
            ]
        )
    print_table(
        [
            "level",
            "frames",
            "frames/s",
            "tokens/s offered",
            "tokens per token frame",
            "server CPU %",
            "client CPU %",
            "failed turns",
            "unmatched frames",
        ],
        rows,
        title="throughput and load (CPU % of one core, over the level's wall time)",
    )
    levels_json = {str(level): f for level, f in figures.items()}
    at_200 = figures.get(200, {}).get("p99_ms")
    emit_json(
        {
            "bench": "latency",
            "levels": levels_json,
            "p99_ms_at_200": at_200,
            "p99_ms_at_max_level": figures[max(figures)]["p99_ms"],
            "tokens": args.tokens,
            "tokens_per_s": args.tokens_per_s,
            "rounds": args.rounds,
        }
    )


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run the client on uvloop when installed (the server uses it too): a cheaper client."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_sigterm()
    with (
        database(args.database_url, args.pg_data_dir) as url,
        fresh_schema(url, keep=args.keep_schema) as schema,
    ):
        log(f"database {redact(url)}, schema {schema}")
        with serve(args, url, schema) as server:
            runs = run_loop(run_all(args, server))
        turn_ids = [t.turn_id for rs in runs.values() for r in rs for t in r.turns if t.turn_id]
        times = event_times(url, schema, turn_ids)
    figures = {level: level_figures(rs, times) for level, rs in runs.items()}
    report(args, figures)
    failed = sum(int(f["errors"]) for f in figures.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
