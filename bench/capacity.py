"""Capacity: the most concurrent turns a node streams with the token delay p99 <= 50 ms.

Two servers in the same run, read by the same raw-socket SSE client (``latency.py``'s):

- **turnstream**: a real ``turnstream serve`` (every token stored, relayed to NATS by
  its relay child, the projections in their child, every limit on), on a fresh schema;
- **baseline**: ``bench/baseline.py``, the same framework, server settings, frames and
  padding, nothing stored.

For each, levels of concurrent turns (the demo model, ``--tokens`` at ``--tokens-per-s``,
the starts spread over ``--spread-s``) climb a ladder until a level has a token delay
p99 over ``--p99-ms`` or a failed turn, then bisect down to ``--resolution`` turns. The
capacity is the largest level that passed. Per level: delay p50/p99, POST -> first
frame p50/p99, and the CPU seconds per 1,000 streamed tokens of every process (serve,
relay, projections, PostgreSQL, nats-server, the client). Then a burst: ``--burst``
turns started at once, POST -> first frame. The JSON last line has both capacities,
their ratio, the burst and the CPU table.

``--idle N`` instead opens N idle SSE streams on one turnstream process (followers of
turns whose model is silent) and reports the RSS per stream and how many it holds.

Run ``python bench/capacity.py --help`` for the options; see bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import psutil  # type: ignore[import-untyped]

import latency
from _common import (
    add_database_args,
    database,
    emit_json,
    exit_on_sigterm,
    fmt,
    fresh_schema,
    log,
    print_table,
    redact,
    summarize,
)
from turnstream.http.auth import mint

ROLES = ("serve", "relay", "projections", "postgres", "nats-server", "client")
LIMITS_ON = {
    "LIMIT_MESSAGES_PER_MINUTE": "1000000",
    "LIMIT_CONVERSATION_MESSAGES": "1000000",
    "LIMIT_CONCURRENT_TURNS": "1000000",
    "LIMIT_DAILY_TOKENS": "1000000000000",
    "LIMIT_WEEKLY_TOKENS": "1000000000000",
}
"""Every limit on, high enough never to refuse: the cost of checking them is paid."""
LADDER = (10, 25, 50, 100, 150, 200, 300, 400, 500, 600, 700, 800, 1000, 1200, 1500)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Capacity of a turnstream node against a bare baseline in the same run."
    )
    parser.add_argument("--tokens", type=int, default=200, help="answer tokens per turn")
    parser.add_argument("--tokens-per-s", type=float, default=50.0, help="demo model pace")
    parser.add_argument("--spread-s", type=float, default=1.0, help="starts spread over this")
    parser.add_argument("--p99-ms", type=float, default=50.0, help="the delay a level may have")
    parser.add_argument(
        "--first-frame-ms", type=float, default=1000.0, help="POST -> first frame p99 allowed"
    )
    parser.add_argument(
        "--pace-ms", type=float, default=100.0, help="how far behind its pace a turn may end"
    )
    parser.add_argument("--resolution", type=int, default=25, help="bisect to this many turns")
    parser.add_argument("--max-turns", type=int, default=1500, help="never try more turns")
    parser.add_argument("--burst", type=int, default=200, help="turns started at once")
    parser.add_argument("--users", type=int, default=0, help="distinct users (0: one a turn)")
    parser.add_argument(
        "--only", choices=("turnstream", "baseline"), default=None, help="measure one side"
    )
    parser.add_argument(
        "--workers",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1],
        metavar="N[,N...]",
        help="measure turnstream with each of these serve --workers counts (e.g. 1,2)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="whole runs; medians reported")
    parser.add_argument("--turn-timeout", type=float, default=120.0)
    parser.add_argument("--ready-timeout", type=float, default=60.0)
    parser.add_argument(
        "--server-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a TURNSTREAM_ setting for turnstream (repeatable)",
    )
    parser.add_argument(
        "--idle", type=int, default=0, help="instead: open this many idle SSE streams"
    )
    parser.add_argument("--idle-turns", type=int, default=100, help="turns the idle streams follow")
    parser.add_argument(
        "--profile-level",
        type=int,
        default=0,
        help="also run this level once with py-spy recording every turnstream process",
    )
    parser.add_argument("--profile-dir", type=Path, default=Path("profiles"))
    add_database_args(parser)
    args = parser.parse_args(argv)
    # latency.serve reads these.
    args.server_log_level = "warning"
    return args


# Processes and their CPU.


def role_of(proc: psutil.Process) -> str:
    try:
        name = proc.name()
        cmdline = proc.cmdline()
    except psutil.Error:
        return "other"
    if "nats-server" in name or any("nats-server" in part for part in cmdline[:1]):
        return "nats-server"
    if name.startswith("postgres"):
        return "postgres"
    if "relay" in cmdline:
        return "relay"
    if "projections" in cmdline:
        return "projections"
    if "serve" in cmdline:  # a worker of serve --workers
        return "serve"
    return "other"


def processes(pid: int, with_postgres: bool) -> dict[int, tuple[str, psutil.Process]]:
    """pid -> (role, process): the server, its descendants, and PostgreSQL's processes."""
    out: dict[int, tuple[str, psutil.Process]] = {}
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        out[pid] = ("serve", root)
        for child in root.children(recursive=True):
            out[child.pid] = (role_of(child), child)
    if with_postgres:
        for proc in psutil.process_iter(["name"]):
            if (proc.info.get("name") or "").startswith("postgres"):
                out.setdefault(proc.pid, ("postgres", proc))
    return out


def cpu_snapshot(pid: int, with_postgres: bool) -> dict[int, tuple[str, float]]:
    snap: dict[int, tuple[str, float]] = {}
    for child_pid, (role, proc) in processes(pid, with_postgres).items():
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            snap[child_pid] = (role, float(t.user + t.system))
    snap[os.getpid()] = ("client", time.process_time())
    return snap


def cpu_delta(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    roles: dict[str, float] = defaultdict(float)
    for pid, (role, cpu) in after.items():
        roles[role] += cpu - before.get(pid, (role, 0.0))[1]
    return dict(roles)


# The two servers.


@dataclass
class Target:
    name: str
    server: latency.Server
    with_postgres: bool
    tokens: list[str]
    times: Callable[[list[UUID]], Awaitable[dict[tuple[UUID, int], float]]]

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def pid(self) -> int:
        return self.server.process.pid

    def alive(self) -> bool:
        return self.server.process.poll() is None

    def token(self, index: int) -> str:
        return self.tokens[index % len(self.tokens)]


@contextlib.contextmanager
def baseline_server(args: argparse.Namespace) -> Iterator[latency.Server]:
    """``bench/baseline.py`` as a subprocess (its output in a log, as serve's)."""
    port = latency.free_port()
    script = Path(__file__).with_name("baseline.py")
    cmd = [sys.executable, str(script), "--port", str(port)]
    cmd += ["--tokens-per-s", str(args.tokens_per_s), "--tokens", str(args.tokens)]
    with tempfile.TemporaryDirectory(prefix="turnstream-bench-baseline-") as folder:
        log_path = Path(folder) / "baseline.log"
        with log_path.open("wb") as out:
            process = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        try:
            yield latency.Server(process, port, "", log_path)
        finally:
            latency.stop_process(process)


async def baseline_times(port: int, turn_ids: list[UUID]) -> dict[tuple[UUID, int], float]:
    status, data = await latency.http_json(port, "GET", "/bench/times")
    if status != 200 or not isinstance(data, dict):
        msg = f"GET /bench/times: {status}"
        raise latency.HttpError(msg)
    wanted = {str(t) for t in turn_ids}
    return {
        (UUID(turn), int(seq)): float(at)
        for turn, pairs in data.items()
        if turn in wanted
        for seq, at in pairs
    }


async def quiet(target: Target, within_s: float = 15.0, below: float = 0.05) -> None:
    """Wait until the target's processes use under ``below`` of a core (the relay and
    the projections have caught up): each level starts from rest."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        before = cpu_snapshot(target.pid, target.with_postgres)
        await asyncio.sleep(0.5)
        after = cpu_snapshot(target.pid, target.with_postgres)
        busy = sum(v for k, v in cpu_delta(before, after).items() if k != "client")
        if busy < below * 0.5:
            return


# One level.


@dataclass
class Level:
    level: int
    spread_s: float
    figures: dict[str, float]
    cpu_s: dict[str, float]
    tokens: int
    errors: list[str] = field(default_factory=list)

    def ok(self, args: argparse.Namespace) -> bool:
        f = self.figures
        return (
            not self.errors
            and f["p99_ms"] <= args.p99_ms
            and f["first_frame_p99_ms"] <= args.first_frame_ms
            and f["pace_lag_p99_ms"] <= args.pace_ms
        )

    def cpu_per_1k(self) -> dict[str, float]:
        per = 1000.0 / self.tokens if self.tokens else float("nan")
        out = {role: self.cpu_s.get(role, 0.0) * per for role in ROLES}
        out["total"] = sum(v for k, v in self.cpu_s.items() if k != "client") * per
        return out


def pace_lags(turns: list[latency.TurnRecord], tokens_per_s: float) -> list[float]:
    """How far each turn's stream ended behind its model's pace, in ms: its first to its
    last frame, less its tokens at ``tokens_per_s``. The token delay alone cannot see a
    saturated server: its model wakes up late and stamps its tokens late, so they look
    fresh; its stream just takes longer."""
    lags = []
    for t in turns:
        if t.frames and t.completion_tokens:
            took = t.frames[-1][2] - t.frames[0][2]
            lags.append((took - t.completion_tokens / tokens_per_s) * 1000)
    return lags


async def run_level(target: Target, level: int, spread_s: float, args: argparse.Namespace) -> Level:
    await quiet(target)
    conversations = await latency.create_conversations(target.port, target.token, level)
    before = cpu_snapshot(target.pid, target.with_postgres)
    wall0 = time.perf_counter()

    async def one(i: int, cid: str) -> latency.TurnRecord:
        await asyncio.sleep(spread_s * i / level)
        content = f"Question {i}: how does an event-sourced chat backend work?"
        try:
            return await asyncio.wait_for(
                latency.stream_turn(target.port, target.token(i), cid, content),
                args.turn_timeout,
            )
        except TimeoutError:
            record = latency.TurnRecord(post_at=float("nan"))
            record.error = f"no terminal frame within {args.turn_timeout}s"
            return record

    turns = list(await asyncio.gather(*(one(i, c) for i, c in enumerate(conversations))))
    wall = time.perf_counter() - wall0
    after = cpu_snapshot(target.pid, target.with_postgres)
    turn_ids = [t.turn_id for t in turns if t.turn_id is not None]
    times = await target.times(turn_ids)
    run = latency.LevelRun(level, turns, 0.0, 0.0, wall)
    figures = latency.level_figures([run], times)
    figures["pace_lag_p99_ms"] = summarize(pace_lags(turns, args.tokens_per_s))["p99"]
    errors = [t.error for t in turns if t.error]
    tokens = sum(t.completion_tokens or 0 for t in turns)
    result = Level(level, spread_s, figures, cpu_delta(before, after), tokens, errors)
    log(
        f"  {target.name} {level} turns: delay p50 {fmt(figures['p50_ms'])} "
        f"p99 {fmt(figures['p99_ms'])} ms, first frame p50 {fmt(figures['first_frame_p50_ms'])}"
        f" p99 {fmt(figures['first_frame_p99_ms'])} ms, {len(errors)} failed, "
        f"pace lag p99 {fmt(figures['pace_lag_p99_ms'])} ms, "
        f"{fmt(result.cpu_per_1k()['total'], 3)} CPU-s/1k tokens"
        + (f" (e.g. {errors[0]})" if errors else "")
    )
    if not target.alive():
        raise RuntimeError(f"{target.name} exited")
    return result


async def find_capacity(target: Target, args: argparse.Namespace) -> tuple[int, list[Level]]:
    levels: list[Level] = []
    best, failed = 0, None
    for level in LADDER:
        if level > args.max_turns:
            break
        result = await run_level(target, level, args.spread_s, args)
        levels.append(result)
        if not result.ok(args):
            failed = level
            break
        best = level
    while failed is not None and failed - best > args.resolution:
        mid = max(best + 1, round((best + failed) / 2 / 5) * 5)
        result = await run_level(target, mid, args.spread_s, args)
        levels.append(result)
        if result.ok(args):
            best = mid
        else:
            failed = mid
    return best, levels


@dataclass
class SideResult:
    capacity: int
    levels: list[Level]
    burst: Level


async def measure(target: Target, args: argparse.Namespace) -> SideResult:
    await latency.wait_ready(target.server, args.ready_timeout)
    log(f"{target.name}: warm-up")
    await run_level(target, 5, 0.0, args)
    log(f"{target.name}: finding the capacity")
    capacity, levels = await find_capacity(target, args)
    log(f"{target.name}: capacity {capacity}; a burst of {args.burst} starts")
    burst = await run_level(target, args.burst, 0.0, args)
    return SideResult(capacity, levels, burst)


def tokens_for(secret: str, args: argparse.Namespace, count: int) -> list[str]:
    users = args.users or count
    return [mint(secret, tenant="bench", user=f"user-{i}", ttl_s=86400) for i in range(users)]


def turnstream_settings(args: argparse.Namespace) -> argparse.Namespace:
    ns = argparse.Namespace(**vars(args))
    ns.server_setting = [f"{k}={v}" for k, v in LIMITS_ON.items()] + list(args.server_setting)
    return ns


@contextlib.contextmanager
def profiling(target: Target, args: argparse.Namespace) -> Iterator[list[subprocess.Popen[bytes]]]:
    """py-spy recording every turnstream process (serve, relay, projections) meanwhile:
    only the thread holding the GIL, so the samples are where Python spends CPU."""
    args.profile_dir.mkdir(parents=True, exist_ok=True)
    recorders = []
    for pid, (role, _) in processes(target.pid, False).items():
        if role not in ("serve", "relay", "projections"):
            continue
        out = args.profile_dir / f"{role}-{pid}.txt"
        recorders.append(
            subprocess.Popen(
                ["py-spy", "record", "--pid", str(pid), "--format", "raw", "-o", str(out),
                 "--rate", "200", "--nonblocking", "--gil"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )  # fmt: skip
    try:
        yield recorders
    finally:
        for rec in recorders:
            rec.send_signal(2)  # SIGINT: py-spy writes its file
        for rec in recorders:
            with contextlib.suppress(subprocess.TimeoutExpired):
                rec.wait(30)


def side_name(workers: int) -> str:
    return "turnstream" if workers == 1 else f"turnstream-{workers}-workers"


async def run_turnstream(
    args: argparse.Namespace, url: str, schema: str, workers: int = 1
) -> SideResult:
    ts_args = turnstream_settings(args)
    ts_args.server_setting.append(f"WORKERS={workers}")
    with latency.serve(ts_args, url, schema) as server:

        async def times(turn_ids: list[UUID]) -> dict[tuple[UUID, int], float]:
            return await asyncio.to_thread(latency.event_times, url, schema, turn_ids)

        target = Target(
            name=side_name(workers),
            server=server,
            with_postgres=True,
            tokens=tokens_for(server.secret, args, max(LADDER)),
            times=times,
        )
        result = await measure(target, args)
        if args.profile_level:
            log(f"turnstream: {args.profile_level} turns under py-spy into {args.profile_dir}")
            with profiling(target, args):
                await run_level(target, args.profile_level, args.spread_s, args)
        return result


async def run_baseline(args: argparse.Namespace) -> SideResult:
    with baseline_server(args) as server:
        target = Target(
            name="baseline",
            server=server,
            with_postgres=False,
            tokens=["none"],
            times=lambda ids: baseline_times(server.port, ids),
        )
        return await measure(target, args)


# Idle streams.


async def open_idle(port: int, token: str, path: str) -> tuple[asyncio.StreamWriter, bool]:
    reader, writer = await asyncio.open_connection(latency.HOST, port)
    writer.write(latency.request_bytes("GET", path, port, token, None))
    status, _ = await latency.read_head(reader)
    ok = status == 200 and bool(await latency.read_chunk(reader))  # the turn.started frame
    return writer, ok


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return float("nan")


async def run_idle(args: argparse.Namespace, url: str, schema: str) -> dict[str, Any]:
    ts_args = turnstream_settings(args)
    ts_args.tokens_per_s = 0.001  # the model stays silent: every stream is idle
    with latency.serve(ts_args, url, schema) as server:
        await latency.wait_ready(server, args.ready_timeout)
        token = mint(server.secret, tenant="bench", user="idle", ttl_s=86400)
        cids = await latency.create_conversations(server.port, token, args.idle_turns)
        starters: list[asyncio.StreamWriter] = []
        turns: list[tuple[str, str]] = []
        for cid in cids:
            reader, writer = await asyncio.open_connection(latency.HOST, server.port)
            body = {"content": "Wait."}
            path = f"/v1/conversations/{cid}/turns"
            writer.write(latency.request_bytes("POST", path, server.port, token, body))
            await latency.read_head(reader)
            chunk = await latency.read_chunk(reader)
            _, _, data = latency.parse_frame(chunk.strip())
            turns.append((cid, json.loads(data or b"{}")["turn_id"]))
            starters.append(writer)
        proc = psutil.Process(server.process.pid)
        await asyncio.sleep(1.0)
        rss0 = proc.memory_info().rss
        gate = asyncio.Semaphore(200)
        log(f"opening {args.idle} idle streams on {len(turns)} running turns ...")

        async def one(i: int) -> tuple[asyncio.StreamWriter | None, bool]:
            cid, tid = turns[i % len(turns)]
            async with gate:
                try:
                    return await open_idle(
                        server.port, token, f"/v1/conversations/{cid}/turns/{tid}/events"
                    )
                except (OSError, latency.HttpError, asyncio.IncompleteReadError):
                    return None, False

        t0 = time.perf_counter()
        opened = await asyncio.gather(*(one(i) for i in range(args.idle)))
        open_s = time.perf_counter() - t0
        await asyncio.sleep(2.0)
        rss1 = proc.memory_info().rss
        _, metrics_text = await latency.http_json(server.port, "GET", "/metrics", token)
        held = metric(str(metrics_text), "turnstream_open_sse_streams")
        ok = sum(1 for _, good in opened if good)
        for held_writer, _ in opened:
            if held_writer is not None:
                held_writer.close()
        for starter in starters:
            starter.close()
    per_stream = (rss1 - rss0) / max(1, ok)
    result = {
        "bench": "capacity-idle",
        "streams_requested": args.idle,
        "streams_opened": ok,
        "streams_held_by_server": held,
        "turns": len(turns),
        "rss_before_mib": rss0 / 2**20,
        "rss_after_mib": rss1 / 2**20,
        "rss_per_stream_kib": per_stream / 1024,
        "open_s": open_s,
    }
    print_table(
        ["idle streams", "opened", "held (metric)", "RSS before MiB", "after MiB", "KiB/stream"],
        [
            [
                fmt(args.idle),
                fmt(ok),
                fmt(held, 0),
                fmt(rss0 / 2**20),
                fmt(rss1 / 2**20),
                fmt(per_stream / 1024),
            ]
        ],
        title="idle SSE streams on one serve process",
    )
    return result


# Report.


def median(values: list[float]) -> float:
    clean = sorted(v for v in values if v == v)
    if not clean:
        return float("nan")
    mid = len(clean) // 2
    return clean[mid] if len(clean) % 2 else (clean[mid - 1] + clean[mid]) / 2


def side_json(runs: list[SideResult]) -> dict[str, Any]:
    by_level: dict[int, list[Level]] = defaultdict(list)
    for run in runs:
        for lv in run.levels:
            by_level[lv.level].append(lv)
    levels = {}
    for level in sorted(by_level):
        lvs = by_level[level]
        levels[str(level)] = {
            "p50_ms": median([lv.figures["p50_ms"] for lv in lvs]),
            "p99_ms": median([lv.figures["p99_ms"] for lv in lvs]),
            "first_frame_p50_ms": median([lv.figures["first_frame_p50_ms"] for lv in lvs]),
            "first_frame_p99_ms": median([lv.figures["first_frame_p99_ms"] for lv in lvs]),
            "pace_lag_p99_ms": median([lv.figures["pace_lag_p99_ms"] for lv in lvs]),
            "failed_turns": median([float(len(lv.errors)) for lv in lvs]),
            "cpu_s_per_1k_tokens": {
                role: median([lv.cpu_per_1k()[role] for lv in lvs]) for role in (*ROLES, "total")
            },
        }
    return {
        "capacity": median([float(r.capacity) for r in runs]),
        "capacities": [r.capacity for r in runs],
        "levels": levels,
        "burst": {
            "turns": runs[0].burst.level,
            "first_frame_p50_ms": median([r.burst.figures["first_frame_p50_ms"] for r in runs]),
            "first_frame_p99_ms": median([r.burst.figures["first_frame_p99_ms"] for r in runs]),
            "failed_turns": median([float(len(r.burst.errors)) for r in runs]),
            "cpu_s": {role: median([r.burst.cpu_s.get(role, 0.0) for r in runs]) for role in ROLES},
        },
    }


def report(args: argparse.Namespace, sides: dict[str, list[SideResult]]) -> None:
    out: dict[str, Any] = {
        "bench": "capacity",
        "tokens": args.tokens,
        "tokens_per_s": args.tokens_per_s,
        "spread_s": args.spread_s,
        "p99_ms": args.p99_ms,
        "first_frame_ms": args.first_frame_ms,
        "pace_ms": args.pace_ms,
        "repeat": args.repeat,
        "turnstream_settings": turnstream_settings(args).server_setting,
    }
    for name, runs in sides.items():
        js = side_json(runs)
        out[name] = js
        rows = []
        for level, f in js["levels"].items():
            cpu = f["cpu_s_per_1k_tokens"]
            rows.append(
                [level, fmt(f["p50_ms"]), fmt(f["p99_ms"]), fmt(f["first_frame_p50_ms"]),
                 fmt(f["first_frame_p99_ms"]), fmt(f["pace_lag_p99_ms"]),
                 fmt(f["failed_turns"], 0),
                 *(fmt(cpu[r], 3) for r in ROLES), fmt(cpu["total"], 3)]
            )  # fmt: skip
        print_table(
            ["turns", "delay p50 ms", "p99", "1st frame p50", "p99", "pace lag p99", "failed",
             *ROLES,
             "total (no client)"],
            rows,
            title=f"{name}: capacity {js['capacity']:g} turns (runs: {js['capacities']}); "
            "CPU-s per 1,000 streamed tokens",
        )  # fmt: skip
        b = js["burst"]
        print(
            f"{name}: {b['turns']} starts at once: first frame p50 "
            f"{fmt(b['first_frame_p50_ms'])} ms, p99 {fmt(b['first_frame_p99_ms'])} ms; CPU-s over"
            " the burst: " + ", ".join(f"{r} {fmt(v, 2)}" for r, v in b["cpu_s"].items()) + "\n"
        )
    base: dict[str, Any] = out.get("baseline") or {}
    for name in [side_name(w) for w in args.workers]:
        if name not in out or not base:
            continue
        ts = out[name]
        ratio = ts["capacity"] / base["capacity"] if base["capacity"] else None
        common_levels = [lv for lv in ts["levels"] if lv in base["levels"]]
        cpu_ratio = {
            lv: ts["levels"][lv]["cpu_s_per_1k_tokens"]["total"]
            / base["levels"][lv]["cpu_s_per_1k_tokens"]["total"]
            for lv in common_levels
        }
        suffix = name.removeprefix("turnstream")
        out["ratio" + suffix.replace("-", "_")] = ratio
        out["cpu_ratio" + suffix.replace("-", "_")] = cpu_ratio
        print(
            f"capacity {name} / baseline: {fmt(ratio, 3)}; CPU per token "
            f"{name} / baseline by level: "
            + ", ".join(f"{lv}: {fmt(r, 2)}" for lv, r in cpu_ratio.items())
        )
    emit_json(out)


async def run_all(args: argparse.Namespace, url: str | None) -> dict[str, list[SideResult]]:
    sides: dict[str, list[SideResult]] = defaultdict(list)
    for n in range(args.repeat):
        log(f"run {n + 1} of {args.repeat}")
        if args.only in (None, "baseline"):
            sides["baseline"].append(await run_baseline(args))
        if args.only in (None, "turnstream"):
            assert url is not None
            for workers in args.workers:
                with fresh_schema(url, keep=args.keep_schema) as schema:
                    result = await run_turnstream(args, url, schema, workers)
                sides[side_name(workers)].append(result)
    return sides


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_sigterm()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the idle mode's sockets
    with database(args.database_url, args.pg_data_dir) as url:
        log(f"database {redact(url)}")
        if args.idle:
            with fresh_schema(url, keep=args.keep_schema) as schema:
                emit_json(latency.run_loop(run_idle(args, url, schema)))
            return 0
        sides = latency.run_loop(run_all(args, url))
    report(args, sides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
