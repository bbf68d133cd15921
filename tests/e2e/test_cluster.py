"""Two `turnstream serve` nodes on one PostgreSQL and one NATS: a turn that runs on node A is
followed live, resumed and cancelled from node B, B ends it when A dies, and B keeps it from
other tenants and users."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.api.test_turn_stream import new_conversation, resume, stored_events
from tests.e2e.conftest import ServerFactory
from tests.support.server import Frame, Server, parse_sse
from turnstream.http.sse import sse_data, sse_name

pytestmark = pytest.mark.e2e

DEADLINE = 60.0
"""How long any awaited condition may take: generous, for a busy 2-core machine running two
nodes, PostgreSQL and NATS. Tests wait on conditions and never sleep for correctness."""

SLOW = {"TURNSTREAM_DEMO_TOKENS": "60", "TURNSTREAM_DEMO_TOKENS_PER_S": "20"}
"""A turn of about 3.4 s: reasoning, 60 tokens at 20 per second."""

NO_POLLING = {
    "TURNSTREAM_REMOTE_POLL_INTERVAL_S": "60",
    "TURNSTREAM_STORE_POLL_INTERVAL_S": "60",
}
"""A node whose readers of a remote turn read the store only when they connect and on a gap:
whatever else reaches them while the turn runs came through NATS."""


class SseReader:
    """One SSE request read on its own thread; each frame is kept with its arrival time.

    Times are wall-clock (``time.time()``) so they compare with the stored events'
    timestamps; they are only ever compared with each other, never with a duration.
    """

    def __init__(
        self, method: str, url: str, headers: dict[str, str], body: Any | None = None
    ) -> None:
        self.frames: list[Frame] = []
        self.arrivals: list[float] = []
        self.status: int | None = None
        self.opened_at: float | None = None
        self.problem: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.finished = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(
            target=self._read, args=(method, url, headers, body), daemon=True
        )
        self._thread.start()

    def _read(self, method: str, url: str, headers: dict[str, str], body: Any | None) -> None:
        try:
            timeout = httpx.Timeout(DEADLINE * 2, connect=DEADLINE)
            with httpx.stream(method, url, headers=headers, json=body, timeout=timeout) as r:
                with self._cond:
                    self.status, self.opened_at = r.status_code, time.time()
                    self._cond.notify_all()
                if r.status_code != 200:
                    r.read()
                    if r.content:
                        self.problem = r.json()
                    return
                for item in parse_sse(r.iter_lines()):
                    if isinstance(item, Frame):
                        with self._cond:
                            self.frames.append(item)
                            self.arrivals.append(time.time())
                            self._cond.notify_all()
        except Exception as exc:  # e.g. the node was killed mid-stream; kept for the asserts
            with self._cond:
                self.error = exc
        finally:
            with self._cond:
                self.finished = True
                self._cond.notify_all()

    def tokens(self) -> int:
        return sum(f.event == "token" for f in self.frames)

    def text(self) -> str:
        return "".join(f.data["text"] for f in self.frames if f.event == "token")

    def until(self, predicate: Callable[[SseReader], bool], what: str) -> None:
        """Wait until ``predicate`` holds (or the stream ends, or the deadline passes)."""
        with self._cond:
            self._cond.wait_for(lambda: predicate(self) or self.finished, DEADLINE)
            assert predicate(self), f"{what}: not within {DEADLINE} s; {self}"

    def until_finished(self, deadline: float = DEADLINE) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.finished, deadline), (
                f"the stream did not end within {deadline} s; {self}"
            )

    def __str__(self) -> str:
        last = self.frames[-1] if self.frames else None
        return (
            f"status={self.status} frames={len(self.frames)} last={last and last.event}"
            f" {last and last.data} error={self.error!r} finished={self.finished}"
        )


def post_turn(server: Server, cid: str, content: str = "Tell me about clusters.") -> SseReader:
    return SseReader(
        "POST",
        f"{server.base_url}/v1/conversations/{cid}/turns",
        server.headers(),
        {"content": content},
    )


def follow(
    server: Server, cid: str, tid: str | None = None, *, last_event_id: int | None = None
) -> SseReader:
    """GET the turn's events (``tid``) or the conversation's active stream (no ``tid``)."""
    path = f"turns/{tid}/events" if tid is not None else "stream"
    headers = server.headers()
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    return SseReader("GET", f"{server.base_url}/v1/conversations/{cid}/{path}", headers)


def as_pairs(frames: list[Frame]) -> list[tuple[str, dict[str, Any]]]:
    return [(f.event, f.data) for f in frames]


def logs(*servers: Server) -> str:
    return "\n".join(f"--- node {s.base_url}\n{s.log()[-4000:]}" for s in servers)


def test_a_turn_run_on_one_node_is_followed_live_on_another_through_nats(
    make_server: ServerFactory, database_url: str, db_schema: str
) -> None:
    # Two nodes; B reads the store only when a reader connects and on a gap.
    a = make_server(**SLOW)
    b = make_server(**SLOW, **NO_POLLING)
    cid = new_conversation(a)

    # Start a turn on A; as soon as it has started, follow it on B both ways.
    posted = post_turn(a, cid)
    posted.until(lambda r: len(r.frames) >= 1, "A's turn.started")
    tid = posted.frames[0].data["turn_id"]
    by_turn = follow(b, cid, tid)
    active = follow(b, cid)
    for reader in (posted, by_turn, active):
        reader.until_finished()

    # A's stream is a whole, completed turn.
    frames = posted.frames
    n = len(frames)
    assert posted.error is None, posted
    assert [f.id for f in frames] == list(range(1, n + 1))
    assert frames[-1].event == "final"
    assert frames[-1].data["status"] == "completed"
    assert frames[-1].data["text"] == posted.text()

    # B's streams are exactly A's: ids 1..n, no gap, no repeat, the same frames.
    for reader in (by_turn, active):
        assert reader.status == 200, reader.problem
        assert reader.error is None, reader
        assert [f.id for f in reader.frames] == list(range(1, n + 1)), logs(a, b)
        assert as_pairs(reader.frames) == as_pairs(frames)

    # And the store holds exactly those events.
    stored = stored_events(database_url, db_schema, tid)
    assert [
        (sse_name(e), {"seq": e.originator_version, "turn_id": tid, **sse_data(e)}) for e in stored
    ] == as_pairs(frames)

    # Live, not polled: B got its first token before A got its terminal frame, and before
    # then it got events that were created only after it had read the store at connect
    # (an event's timestamp is taken before it is committed). With polling off, only NATS
    # can have brought those.
    a_end = posted.arrivals[-1]
    for reader in (by_turn, active):
        first_token = next(i for i, f in enumerate(reader.frames) if f.event == "token")
        assert reader.arrivals[first_token] < a_end
        connected = reader.arrivals[0]  # turn.started came from the connect-time read
        live = [
            i
            for i, event in enumerate(stored)
            if event.timestamp.timestamp() > connected and reader.arrivals[i] < a_end
        ]
        assert len(live) >= 3, (len(live), n, logs(a, b))


def test_resume_on_another_node_gives_exactly_the_frames_after_k(
    make_server: ServerFactory,
) -> None:
    a = make_server(TURNSTREAM_DEMO_TOKENS="120", TURNSTREAM_DEMO_TOKENS_PER_S="20")
    b = make_server(**NO_POLLING)
    cid = new_conversation(a)

    # While the turn runs on A, resume on B from several k, concurrently: from the start,
    # from frames A has seen, and from frames not yet streamed.
    posted = post_turn(a, cid)
    posted.until(lambda r: len(r.frames) >= 8, "8 frames on A")
    tid = posted.frames[0].data["turn_id"]
    seen = len(posted.frames)
    mid_turn = {
        k: follow(b, cid, tid, last_event_id=k) for k in (0, 1, 3, seen - 1, seen, seen + 4)
    }
    posted.until_finished()
    for reader in mid_turn.values():
        reader.until_finished()

    frames = posted.frames
    n = len(frames)
    assert posted.error is None, posted
    assert frames[-1].event == "final"
    assert n > seen + 4
    for k, reader in mid_turn.items():
        assert reader.status == 200, (k, reader.problem)
        assert reader.error is None, (k, reader)
        # Opened while the turn was running on A.
        assert reader.opened_at is not None
        assert reader.opened_at < posted.arrivals[-1], k
        assert [f.id for f in reader.frames] == list(range(k + 1, n + 1)), (k, logs(a, b))
        assert as_pairs(reader.frames) == as_pairs(frames[k:]), k

    # After the end, from every k; by ?after= too, and the header wins.
    for k in range(n + 1):
        got = resume(b, cid, tid, header=k)
        assert as_pairs(got) == as_pairs(frames[k:]), k
    for k in (0, 1, n // 2, n - 1, n):
        got = resume(b, cid, tid, after=k)
        assert [f.id for f in got] == list(range(k + 1, n + 1)), k
    assert [f.id for f in resume(b, cid, tid, header=n - 1, after=1)] == [n]


def test_cancel_on_another_node_interrupts_the_turn_where_it_runs(
    make_server: ServerFactory, database_url: str, db_schema: str, event_count: Callable[[], int]
) -> None:
    a = make_server(TURNSTREAM_DEMO_TOKENS="400", TURNSTREAM_DEMO_TOKENS_PER_S="20")
    b = make_server(TURNSTREAM_DEMO_TOKENS="8", TURNSTREAM_DEMO_TOKENS_PER_S="0")
    cid = new_conversation(a)

    # A runs a long turn; B follows it.
    posted = post_turn(a, cid, "a long answer")
    posted.until(lambda r: len(r.frames) >= 1, "A's turn.started")
    tid = posted.frames[0].data["turn_id"]
    followed = follow(b, cid, tid)
    followed.until(lambda r: r.tokens() >= 3, "3 tokens on B")

    # Cancel from B.
    r = httpx.post(f"{b.base_url}/v1/conversations/{cid}/turns/{tid}/cancel", headers=b.headers())
    assert r.status_code == 202, r.text
    posted.until_finished()
    followed.until_finished()

    # Both streams end with the same `final`: interrupted, cancelled, the partial text.
    for reader in (posted, followed):
        assert reader.error is None, reader
        frames = reader.frames
        assert [f.id for f in frames] == list(range(1, len(frames) + 1))
        assert [f for f in frames if f.event in ("final", "error")] == [frames[-1]]
        final = frames[-1]
        assert final.event == "final", (final, logs(a, b))
        assert final.data["status"] == "interrupted"
        assert final.data["finish_reason"] == "cancelled"
        assert final.data["text"] == reader.text()
        assert reader.tokens() < 400
    assert as_pairs(followed.frames) == as_pairs(posted.frames)
    n = len(posted.frames)
    assert len(stored_events(database_url, db_schema, tid)) == n

    # Cancelling again, on either node, is fine and stores nothing.
    before = event_count()
    for node in (a, b, a, b):
        r = httpx.post(
            f"{node.base_url}/v1/conversations/{cid}/turns/{tid}/cancel", headers=node.headers()
        )
        assert r.status_code == 202, r.text
    assert event_count() == before
    # The conversation is free for the next turn (here on B); the cancelled turn is unchanged.
    nxt = post_turn(b, cid, "next")
    nxt.until_finished()
    assert nxt.status == 200, nxt.problem
    assert nxt.frames[-1].event == "final"
    assert nxt.frames[-1].data["status"] == "completed"
    stored = stored_events(database_url, db_schema, tid)
    assert [e.originator_version for e in stored] == list(range(1, n + 1))
    assert as_pairs(resume(b, cid, tid, header=0)) == as_pairs(posted.frames)


def test_a_reader_on_another_node_sees_runner_lost_when_the_runner_node_dies(
    make_server: ServerFactory, database_url: str, db_schema: str
) -> None:
    a = make_server(TURNSTREAM_DEMO_TOKENS="500", TURNSTREAM_DEMO_TOKENS_PER_S="25")
    b = make_server()
    cid = new_conversation(a)

    # A runs a long turn; B follows it.
    posted = post_turn(a, cid, "a long answer please")
    posted.until(lambda r: len(r.frames) >= 1, "A's turn.started")
    tid = posted.frames[0].data["turn_id"]
    followed = follow(b, cid, tid)
    followed.until(lambda r: r.tokens() >= 5, "5 tokens on B")

    # kill -9 A mid-answer.
    a.kill()
    killed_at = time.time()
    seen_on_a = list(posted.frames)

    # B's stream ends with runner_lost, within a bounded time, without a gap.
    bound = 30.0  # runner check every 0.5 s, relay takeover 2 s: far below on any machine
    followed.until_finished(bound)
    assert followed.error is None, followed
    frames = followed.frames
    assert [f.id for f in frames] == list(range(1, len(frames) + 1)), logs(b)
    assert [f for f in frames if f.event in ("final", "error")] == [frames[-1]]
    end = frames[-1]
    assert end.event == "error", (end, logs(b))
    assert end.data["code"] == "runner_lost"
    assert followed.arrivals[-1] - killed_at < bound
    # The partial answer is kept, and B's frames agree with what A streamed and the store.
    assert end.data["text"] == followed.text()
    assert as_pairs(frames[: len(seen_on_a)]) == as_pairs(seen_on_a)
    stored = stored_events(database_url, db_schema, tid)
    assert [
        (sse_name(e), {"seq": e.originator_version, "turn_id": tid, **sse_data(e)}) for e in stored
    ] == as_pairs(frames)


def test_another_tenant_or_user_cannot_follow_or_cancel_a_turn_through_another_node(
    make_server: ServerFactory,
) -> None:
    a = make_server(TURNSTREAM_DEMO_TOKENS="200", TURNSTREAM_DEMO_TOKENS_PER_S="20")
    b = make_server()
    cid = new_conversation(a)
    posted = post_turn(a, cid)
    posted.until(lambda r: len(r.frames) >= 1, "A's turn.started")
    tid = posted.frames[0].data["turn_id"]

    def requests(headers: dict[str, str], conv: str, turn: str) -> list[httpx.Response]:
        base = f"{b.base_url}/v1/conversations/{conv}"
        return [
            httpx.get(f"{base}/turns/{turn}/events", headers=headers, timeout=DEADLINE),
            httpx.get(
                f"{base}/turns/{turn}/events",
                headers={**headers, "Last-Event-ID": "1"},
                timeout=DEADLINE,
            ),
            httpx.get(f"{base}/stream", headers=headers, timeout=DEADLINE),
            httpx.post(f"{base}/turns/{turn}/cancel", headers=headers, timeout=DEADLINE),
        ]

    # What anyone gets for a conversation that does not exist.
    missing = str(uuid.uuid4())
    nowhere = requests(b.headers("acme", "alice"), missing, str(uuid.uuid4()))

    # Another tenant (even with the same user id) and another user of the same tenant get
    # exactly that for A's running turn, on B.
    for tenant, user in (("globex", "alice"), ("acme", "mallory")):
        got = requests(b.headers(tenant, user), cid, tid)
        for response, expected in zip(got, nowhere, strict=True):
            assert response.status_code == 404, (tenant, user, response.text)
            assert response.headers["content-type"].startswith("application/problem+json")
            body, want = response.json(), expected.json()
            assert body["code"] == "conversation_not_found"
            assert body == {**want, "detail": want["detail"].replace(missing, cid)}
            assert tid not in response.text

    # Their cancels did nothing: the turn goes on streaming on A after the last of them.
    went_on = posted.tokens() + 5
    posted.until(lambda r: r.tokens() >= went_on, "5 more tokens on A")
    assert all(f.event not in ("final", "error") for f in posted.frames)

    # The owner still can, from B.
    r = httpx.post(f"{b.base_url}/v1/conversations/{cid}/turns/{tid}/cancel", headers=b.headers())
    assert r.status_code == 202, r.text
    posted.until_finished()
    assert posted.frames[-1].event == "final"
    assert posted.frames[-1].data["status"] == "interrupted"
