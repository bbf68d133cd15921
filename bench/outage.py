"""Outage: PostgreSQL crashes mid-turn; how fast requests are refused, how fast it is back.

    python bench/outage.py [--rounds 3] [--tokens-per-s 20] [--tokens 400]

Starts an embedded PostgreSQL of its own (it is crashed, so no --database-url) and a
real ``turnstream serve`` on it (with its own embedded NATS). Each round starts a turn,
reads its stream until the first token, crashes PostgreSQL with ``pg_ctl -m immediate``,
then sends every kind of request that needs the store and times each answer (every one
must be a 503 with ``Retry-After``; anything else is counted), starts PostgreSQL again
and times, from the moment PostgreSQL accepts connections, until ``/readyz`` says 200.
The turn must end with exactly one terminal event, every frame the client saw stored.

The baseline of the same run is PostgreSQL's own restart (``pg_ctl start -w``, until it
accepts connections): ``ready_after_s`` is what turnstream adds to it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg.sql import SQL, Identifier

import _common as common
import latency
from turnstream.embedded import EmbeddedPostgres
from turnstream.http.auth import mint

REQUESTS: tuple[tuple[str, str, dict[str, Any] | None], ...] = (
    ("GET", "/v1/conversations", None),
    ("POST", "/v1/conversations", {}),
    ("GET", "/v1/conversations/{cid}", None),
    ("PATCH", "/v1/conversations/{cid}", {"title": "Renamed"}),
    ("POST", "/v1/conversations/{cid}/turns", {"content": "hi"}),
    ("GET", "/v1/conversations/{cid}/turns/{tid}/events", None),
    ("GET", "/v1/conversations/{cid}/stream", None),
    ("POST", "/v1/conversations/{cid}/turns/{tid}/cancel", None),
    ("GET", "/v1/usage", None),
    ("GET", "/readyz", None),
)
"""Every kind of request that needs the store (the turn's own conversation for the
turn routes, another one for the rest)."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens-per-s", type=float, default=20.0)
    parser.add_argument("--tokens", type=int, default=400)
    parser.add_argument("--server-log-level", default="warning")
    parser.add_argument("--server-setting", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--timeout", type=float, default=120.0, help="per request, seconds")
    return parser.parse_args()


class Follower(threading.Thread):
    """Starts a turn and reads its SSE stream to the end."""

    def __init__(self, base: str, headers: dict[str, str], cid: str) -> None:
        super().__init__(daemon=True)
        self.base, self.headers, self.cid = base, headers, cid
        self.ids: list[int] = []
        self.turn_id = ""
        self.first_token = threading.Event()

    def run(self) -> None:
        try:
            with httpx.stream(
                "POST",
                f"{self.base}/v1/conversations/{self.cid}/turns",
                json={"content": "A long story, please."},
                headers=self.headers,
                timeout=httpx.Timeout(30.0, read=300.0),
            ) as r:
                for line in r.iter_lines():
                    if line.startswith("id: "):
                        self.ids.append(int(line[4:]))
                    elif line.startswith("data: ") and not self.turn_id:
                        self.turn_id = json.loads(line[6:])["turn_id"]
                    elif line == "event: token":
                        self.first_token.set()
        except httpx.HTTPError:
            pass  # the stream may end with the store; the stored events tell the rest
        finally:
            self.first_token.set()


def terminal_events(url: str, schema: str, turn_id: str) -> tuple[int, list[int]]:
    """(terminal events stored, the turn's stored seqs)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            SQL(
                "SELECT originator_version, topic FROM {}.turnstream_events"
                " WHERE originator_id = %s ORDER BY originator_version"
            ).format(Identifier(schema)),
            (turn_id,),
        ).fetchall()
    terminal = sum(1 for _, topic in rows if topic.endswith(("finished.v1", "failed.v1")))
    return terminal, [int(v) for v, _ in rows]


def one_round(
    n: int, pg: EmbeddedPostgres, url: str, schema: str, base: str, headers: dict[str, str]
) -> dict[str, Any]:
    client = httpx.Client(base_url=base, headers=headers, timeout=60)
    cids = [client.post("/v1/conversations", json={}).json()["id"] for _ in range(2)]
    follower = Follower(base, headers, cids[0])
    follower.start()
    follower.first_token.wait(60)
    pg.stop("immediate")
    crashed = time.perf_counter()
    answers: list[float] = []
    wrong: list[str] = []
    for method, path, body in REQUESTS:
        target = path.format(cid=cids[0] if "{tid}" in path else cids[1], tid=follower.turn_id)
        t0 = time.perf_counter()
        r = client.request(method, target, json=body, timeout=120)
        answers.append(time.perf_counter() - t0)
        if r.status_code != 503 or "retry-after" not in r.headers:
            wrong.append(f"{method} {path}: {r.status_code}")
    down_s = time.perf_counter() - crashed
    t0 = time.perf_counter()
    pg.start()
    pg_restart_s = time.perf_counter() - t0
    accepting = time.perf_counter()
    while client.get("/readyz", timeout=120).status_code != 200:
        time.sleep(0.02)
    ready_after_s = time.perf_counter() - accepting
    follower.join(300)
    terminal, stored = terminal_events(url, schema, follower.turn_id)
    seen_stored = follower.ids == stored[: len(follower.ids)]
    client.close()
    result: dict[str, Any] = {
        "round": n,
        "answer_s": common.summarize(answers),
        "not_503": wrong,
        "down_s": down_s,
        "pg_restart_s": pg_restart_s,
        "ready_after_s": ready_after_s,
        "turn_terminal_events": terminal,
        "frames_seen_all_stored": seen_stored,
    }
    common.log(
        f"round {n}: 503 in p50 {result['answer_s']['p50'] * 1000:.0f} ms"
        f" / max {result['answer_s']['max'] * 1000:.0f} ms, {len(wrong)} not 503;"
        f" PostgreSQL back in {pg_restart_s:.2f} s, ready {ready_after_s:.2f} s after it"
    )
    return result


def main() -> int:
    args = parse_args()
    common.exit_on_sigterm()
    folder = Path(tempfile.mkdtemp(prefix="turnstream-bench-outage-"))
    pg = EmbeddedPostgres(folder)
    try:
        pg.start()
        pg.ensure_database("outage")
        url = pg.url_for("outage", tcp=True)  # the same URL after each restart
        with common.fresh_schema(url) as schema, latency.serve(args, url, schema) as server:
            base = f"http://{latency.HOST}:{server.port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"serve did not become ready:\n{server.log_tail()}")
                time.sleep(0.1)
            token = mint(server.secret, tenant="bench", user="outage", ttl_s=3600)
            headers = {"Authorization": f"Bearer {token}"}
            rounds = [
                one_round(n, pg, url, schema, base, headers) for n in range(1, args.rounds + 1)
            ]
    finally:
        pg.stop()
        shutil.rmtree(folder, ignore_errors=True)
    rows = [
        [
            str(r["round"]),
            common.fmt(r["answer_s"]["p50"] * 1000),
            common.fmt(r["answer_s"]["max"] * 1000),
            str(len(r["not_503"])),
            common.fmt(r["pg_restart_s"], 2),
            common.fmt(r["ready_after_s"], 2),
            str(r["turn_terminal_events"]),
        ]
        for r in rounds
    ]
    common.print_table(
        ["round", "503 p50 ms", "503 max ms", "not 503", "pg restart s", "ready after s", "ends"],
        rows,
        title="PostgreSQL crashed mid-turn (pg_ctl -m immediate)",
    )
    ok = all(not r["not_503"] and r["turn_terminal_events"] == 1 for r in rounds)
    common.emit_json(
        {
            "bench": "outage",
            "rounds": rounds,
            "answer_max_s": max(r["answer_s"]["max"] for r in rounds),
            "ready_after_s_median": sorted(r["ready_after_s"] for r in rounds)[len(rounds) // 2],
            "pg_restart_s_median": sorted(r["pg_restart_s"] for r in rounds)[len(rounds) // 2],
            "ok": ok,
        }
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
