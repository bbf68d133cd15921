"""PostgreSQL stopped mid-turn (``pg_ctl -m immediate``): 503s, never a 500; then back.

The test owns its PostgreSQL (an embedded one, whichever the session uses), so it can
crash it. The service runs in-process on it, with NATS as the session has it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from tests.support.inprocess import Served, in_process_settings, serving
from tests.support.server import Frame, parse_sse
from tests.support.shared_server import a_place
from turnstream.embedded import EmbeddedPostgres


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(Path(tmp_path_factory.mktemp("outage-pg")))
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Follower(threading.Thread):
    """Starts a turn and reads its SSE stream to the end, frame by frame."""

    def __init__(self, api: Served, cid: str) -> None:
        super().__init__(daemon=True)
        self.api, self.cid = api, cid
        self.frames: list[Frame] = []
        self.first_token = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.stream(
                "POST",
                f"{self.api.base_url}/v1/conversations/{self.cid}/turns",
                json={"content": "Tell me a long story."},
                headers=self.api.headers(),
                timeout=120,
            ) as r:
                for frame in parse_sse(r.iter_lines()):
                    if isinstance(frame, Frame):
                        self.frames.append(frame)
                        if frame.event == "token":
                            self.first_token.set()
        except BaseException as exc:
            self.error = exc
        finally:
            self.first_token.set()


def stored_frames(url: str, schema: str, turn_id: str) -> list[dict[str, Any]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            sql.SQL(
                "SELECT originator_version, state FROM {}.turnstream_events"
                " WHERE originator_id = %s ORDER BY originator_version"
            ).format(sql.Identifier(schema)),
            (turn_id,),
        ).fetchall()
    return [{"seq": v, **json.loads(bytes(state))} for v, state in rows]


def test_postgres_stopped_mid_turn_is_503_everywhere_and_the_service_recovers(
    postgres: EmbeddedPostgres, nats_url: str
) -> None:
    postgres.ensure_database("outage")
    url = postgres.url_for("outage", tcp=True)  # the same after a restart
    with a_place(url, nats_url) as (schema, target):
        settings = in_process_settings(
            url, schema, target, demo_tokens=150, demo_tokens_per_s=30.0, guest_messages=2
        )
        with serving(settings) as api:
            base, headers = api.base_url, api.headers()
            cids = [
                httpx.post(f"{base}/v1/conversations", json={}, headers=headers).json()["id"]
                for _ in range(2)
            ]
            # A turn streams; two tokens in, PostgreSQL crashes.
            follower = Follower(api, cids[0])
            follower.start()
            assert follower.first_token.wait(60), follower.error
            turn_id = follower.frames[0].data["turn_id"]
            postgres.stop("immediate")
            # Every request that needs the store is a 503 with Retry-After, at once.
            cid, other = cids
            turn = f"/v1/conversations/{cid}/turns/{turn_id}"
            needs_store = [
                ("GET", "/v1/conversations", None),
                ("POST", "/v1/conversations", {}),
                ("GET", f"/v1/conversations/{other}", None),
                ("PATCH", f"/v1/conversations/{other}", {"title": "New"}),
                ("DELETE", f"/v1/conversations/{other}", None),
                ("POST", f"/v1/conversations/{other}/turns", {"content": "hi"}),
                ("GET", f"{turn}/events", None),
                ("GET", f"/v1/conversations/{cid}/stream", None),
                ("POST", f"{turn}/cancel", None),
                ("GET", "/v1/usage", None),
                ("GET", "/readyz", None),
                ("GET", "/metrics", None),
            ]
            for method, path, body in needs_store:
                r = httpx.request(method, base + path, json=body, headers=headers, timeout=60)
                assert r.status_code == 503, (method, path, r.status_code, r.text)
                assert r.headers["content-type"].startswith("application/problem+json")
                assert r.json()["code"] == "service_unavailable", r.text
                assert int(r.headers["retry-after"]) > 0, r.headers
            # What needs no store still answers.
            assert httpx.get(f"{base}/v1/models", headers=headers).status_code == 200
            assert httpx.get(f"{base}/healthz").status_code == 200
            # PostgreSQL returns: the service is ready again by itself.
            postgres.start()
            deadline = time.monotonic() + 60
            while httpx.get(f"{base}/readyz", timeout=30).status_code != 200:
                assert time.monotonic() < deadline, "not ready 60 s after PostgreSQL returned"
                time.sleep(0.1)
            # The turn ends once; everything the client saw is stored, in order.
            follower.join(120)
            assert not follower.is_alive()
            stored = stored_frames(url, schema, turn_id)
            assert [e["seq"] for e in stored] == list(range(1, len(stored) + 1))
            seen = [f.id for f in follower.frames]
            assert seen == list(range(1, len(seen) + 1))
            assert len(seen) <= len(stored)
            rest = httpx.get(
                f"{base}{turn}/events", headers=headers | {"Last-Event-ID": str(seen[-1])}
            )
            assert rest.status_code == 200, rest.text
            after = [f for f in parse_sse(iter(rest.text.splitlines())) if isinstance(f, Frame)]
            frames = follower.frames + after
            terminal = [f for f in frames if f.event in ("final", "error")]
            assert len(terminal) == 1, [f.event for f in frames]
            assert [f.id for f in frames] == [e["seq"] for e in stored]
            # New work goes through.
            r = httpx.post(
                f"{base}/v1/conversations/{other}/turns",
                json={"content": "Are you back?"},
                headers=headers,
                timeout=60,
            )
            assert r.status_code == 200, r.text
            assert "event: final" in r.text
            r = httpx.get(f"{base}/v1/conversations/{other}", headers=headers)
            assert r.status_code == 200, r.text
            assert r.json()["messages"][-1]["status"] == "complete"
