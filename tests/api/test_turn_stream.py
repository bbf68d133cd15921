"""A turn over real HTTP: frames, the store, resume, disconnects, cancel, pings."""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Any

import httpx
import psycopg
from psycopg import sql

from tests.api.conftest import ServerFactory
from tests.support.server import Frame, Server, parse_sse
from turnstream.domain.turn import TurnEvent
from turnstream.http.sse import sse_data, sse_name
from turnstream.store.mapper import decode_event


def new_conversation(server: Server, **body: Any) -> str:
    r = httpx.post(f"{server.base_url}/v1/conversations", json=body, headers=server.headers())
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def frames_of(response: httpx.Response) -> list[Frame]:
    return [f for f in parse_sse(response.iter_lines()) if isinstance(f, Frame)]


def run_turn(
    server: Server, cid: str, content: str = "Tell me about event sourcing."
) -> list[Frame]:
    with httpx.stream(
        "POST",
        f"{server.base_url}/v1/conversations/{cid}/turns",
        json={"content": content},
        headers=server.headers(),
        timeout=60,
    ) as r:
        assert r.status_code == 200, r.read()
        return frames_of(r)


def resume(
    server: Server, cid: str, tid: str, *, header: int | None = None, after: int | None = None
) -> list[Frame]:
    headers = server.headers()
    if header is not None:
        headers["Last-Event-ID"] = str(header)
    params = {"after": str(after)} if after is not None else None
    with httpx.stream(
        "GET",
        f"{server.base_url}/v1/conversations/{cid}/turns/{tid}/events",
        headers=headers,
        params=params,
        timeout=60,
    ) as r:
        assert r.status_code == 200, r.read()
        return frames_of(r)


def stored_events(database_url: str, schema: str, turn_id: str) -> list[TurnEvent]:
    with psycopg.connect(database_url) as conn:
        query = sql.SQL(
            "SELECT topic, state FROM {}.turnstream_events"
            " WHERE originator_id = %s ORDER BY originator_version"
        ).format(sql.Identifier(schema))
        rows = conn.execute(query, (turn_id,)).fetchall()
    return [decode_event(topic, bytes(state)) for topic, state in rows]  # type: ignore[misc]


def test_a_turns_frames_are_gapless_and_equal_the_stored_events(
    server: Server, database_url: str, db_schema: str
) -> None:
    # Send a message and read the whole answer.
    cid = new_conversation(server)
    frames = run_turn(server, cid)

    # Frame ids are 1..n without gap; turn.started first; one terminal, last.
    assert [f.id for f in frames] == list(range(1, len(frames) + 1))
    assert frames[0].event == "turn.started"
    terminals = [f for f in frames if f.event in ("final", "error")]
    assert terminals == [frames[-1]]
    final = frames[-1]
    assert final.event == "final"
    assert final.data["status"] == "completed"
    tokens = [f for f in frames if f.event == "token"]
    assert tokens, "the demo model streams tokens"
    assert final.data["text"] == "".join(f.data["text"] for f in tokens)
    assert final.data["reasoning"] == "".join(
        f.data["text"] for f in frames if f.event == "reasoning"
    )
    assert final.data["usage"]["completion_tokens"] > 0
    turn_id = frames[0].data["turn_id"]
    assert all(f.data["turn_id"] == turn_id and f.data["seq"] == f.id for f in frames)

    # The store holds exactly these events, one for one.
    stored = stored_events(database_url, db_schema, turn_id)
    assert [(e.originator_version, sse_name(e)) for e in stored] == [
        (f.id, f.event) for f in frames
    ]
    for event, frame in zip(stored, frames, strict=True):
        assert {
            "seq": event.originator_version,
            "turn_id": turn_id,
            **sse_data(event),
        } == frame.data


def test_the_first_turn_is_titled_before_its_end_and_later_turns_are_not(server: Server) -> None:
    cid = new_conversation(server)
    first = run_turn(server, cid, "How do relays publish events in order?")
    titles = [f for f in first if f.event == "title"]
    assert len(titles) == 1
    assert titles[0].data["title"] == "How do relays publish events in order?"
    assert first.index(titles[0]) < len(first) - 1
    second = run_turn(server, cid, "And after a crash?")
    assert [f for f in second if f.event == "title"] == []


def test_resume_gives_exactly_the_frames_after_k_once_the_turn_ended(server: Server) -> None:
    cid = new_conversation(server)
    frames = run_turn(server, cid)
    tid = frames[0].data["turn_id"]
    n = len(frames)
    for k in range(n + 1):
        by_header = resume(server, cid, tid, header=k)
        assert [(f.id, f.data) for f in by_header] == [(f.id, f.data) for f in frames[k:]]
    for k in (0, 1, n // 2, n - 1, n):
        by_query = resume(server, cid, tid, after=k)
        assert [f.id for f in by_query] == [f.id for f in frames[k:]]
    # The header wins over ?after=.
    both = resume(server, cid, tid, header=n - 1, after=1)
    assert [f.id for f in both] == [n]


def test_resume_while_running_misses_nothing_and_repeats_nothing(
    make_server: ServerFactory,
) -> None:
    server = make_server(TURNSTREAM_DEMO_TOKENS="60", TURNSTREAM_DEMO_TOKENS_PER_S="40")
    cid = new_conversation(server)
    with httpx.stream(
        "POST",
        f"{server.base_url}/v1/conversations/{cid}/turns",
        json={"content": "Stream slowly please."},
        headers=server.headers(),
        timeout=60,
    ) as r:
        parsed = parse_sse(r.iter_lines())
        seen: list[Frame] = []
        for item in parsed:
            if isinstance(item, Frame):
                seen.append(item)
            if len(seen) >= 8:
                break
        tid = seen[0].data["turn_id"]
        # While the turn runs, resume from every k seen so far, concurrently.
        with concurrent.futures.ThreadPoolExecutor(len(seen) + 1) as pool:
            futures = {
                k: pool.submit(resume, server, cid, tid, header=k) for k in range(len(seen) + 1)
            }
            rest = [f for f in parsed if isinstance(f, Frame)]
            everything = seen + rest
            assert everything[-1].event in ("final", "error")
            for k, future in futures.items():
                got = future.result()
                assert [(f.id, f.data) for f in got] == [(f.id, f.data) for f in everything[k:]], k


def test_a_client_disconnect_does_not_stop_the_turn(make_server: ServerFactory) -> None:
    server = make_server(TURNSTREAM_DEMO_TOKENS="40", TURNSTREAM_DEMO_TOKENS_PER_S="80")
    cid = new_conversation(server)
    with httpx.stream(
        "POST",
        f"{server.base_url}/v1/conversations/{cid}/turns",
        json={"content": "hello"},
        headers=server.headers(),
        timeout=30,
    ) as r:
        first = next(f for f in parse_sse(r.iter_lines()) if isinstance(f, Frame))
    # The connection is closed; the turn goes on and ends by itself.
    frames = resume(server, cid, first.data["turn_id"], header=0)
    assert frames[-1].event == "final"
    assert frames[-1].data["status"] == "completed"
    tokens = [f for f in frames if f.event == "token"]
    assert frames[-1].data["text"] == "".join(f.data["text"] for f in tokens)


def test_cancel_interrupts_the_turn_and_keeps_its_partial_text(make_server: ServerFactory) -> None:
    server = make_server(TURNSTREAM_DEMO_TOKENS="400", TURNSTREAM_DEMO_TOKENS_PER_S="20")
    cid = new_conversation(server)
    with httpx.stream(
        "POST",
        f"{server.base_url}/v1/conversations/{cid}/turns",
        json={"content": "a long answer"},
        headers=server.headers(),
        timeout=60,
    ) as r:
        assert r.status_code == 200, r.read()
        frames: list[Frame] = []
        cancelled = False
        for item in parse_sse(r.iter_lines()):
            if not isinstance(item, Frame):
                continue
            frames.append(item)
            if not cancelled and sum(f.event == "token" for f in frames) >= 3:
                tid = frames[0].data["turn_id"]
                url = f"{server.base_url}/v1/conversations/{cid}/turns/{tid}/cancel"
                assert httpx.post(url, headers=server.headers()).status_code == 202
                # Cancelling twice is fine.
                assert httpx.post(url, headers=server.headers()).status_code == 202
                cancelled = True
    final = frames[-1]
    assert final.event == "final"
    assert final.data["status"] == "interrupted"
    assert final.data["text"] == "".join(f.data["text"] for f in frames if f.event == "token")
    assert sum(f.event == "token" for f in frames) < 400


def test_the_active_stream_is_204_when_idle_and_the_running_turn_otherwise(
    make_server: ServerFactory,
) -> None:
    server = make_server(TURNSTREAM_DEMO_TOKENS="30", TURNSTREAM_DEMO_TOKENS_PER_S="30")
    cid = new_conversation(server)
    url = f"{server.base_url}/v1/conversations/{cid}/stream"
    assert httpx.get(url, headers=server.headers()).status_code == 204
    started = threading.Event()
    result: list[Frame] = []

    def post() -> None:
        with httpx.stream(
            "POST",
            f"{server.base_url}/v1/conversations/{cid}/turns",
            json={"content": "hi"},
            headers=server.headers(),
            timeout=60,
        ) as r:
            for item in parse_sse(r.iter_lines()):
                if isinstance(item, Frame):
                    result.append(item)
                    started.set()

    thread = threading.Thread(target=post)
    thread.start()
    assert started.wait(30)
    with httpx.stream(
        "GET", url, headers={**server.headers(), "Last-Event-ID": "1"}, timeout=60
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache"
        assert r.headers["x-accel-buffering"] == "no"
        live = frames_of(r)
    thread.join(60)
    assert [f.id for f in live] == [f.id for f in result[1:]]
    assert httpx.get(url, headers=server.headers()).status_code == 204


def test_a_reader_resuming_the_active_stream_after_the_turn_ended_gets_its_end(
    server: Server,
) -> None:
    # A browser reconnects after a stream that ended on purpose; its turn ended while it
    # was away. It gets the rest of that turn, not a 204 that would lose the final frame.
    cid = new_conversation(server)
    frames = run_turn(server, cid)
    url = f"{server.base_url}/v1/conversations/{cid}/stream"
    with httpx.stream(
        "GET", url, headers=server.headers() | {"Last-Event-ID": "3"}, timeout=60
    ) as r:
        assert r.status_code == 200
        rest = frames_of(r)
    assert [(f.id, f.data) for f in rest] == [(f.id, f.data) for f in frames[3:]]
    last = str(frames[-1].id)
    assert httpx.get(url, headers=server.headers() | {"Last-Event-ID": last}).status_code == 204
    assert httpx.get(url, headers=server.headers()).status_code == 204


def test_an_idle_stream_carries_ping_comments(make_server: ServerFactory) -> None:
    server = make_server(
        TURNSTREAM_DEMO_TOKENS="6",
        TURNSTREAM_DEMO_TOKENS_PER_S="2",
        TURNSTREAM_PING_INTERVAL_S="0.2",
    )
    cid = new_conversation(server)
    with httpx.stream(
        "POST",
        f"{server.base_url}/v1/conversations/{cid}/turns",
        json={"content": "slowly"},
        headers=server.headers(),
        timeout=60,
    ) as r:
        items = list(parse_sse(r.iter_lines()))
    assert ": ping" in items
    frames = [i for i in items if isinstance(i, Frame)]
    assert frames[-1].event == "final"


def test_the_conversation_lists_its_messages_in_order(server: Server) -> None:
    cid = new_conversation(server, system_prompt="Be brief.")
    first = run_turn(server, cid, "first question")
    second = run_turn(server, cid, "second question")
    r = httpx.get(f"{server.base_url}/v1/conversations/{cid}", headers=server.headers())
    assert r.status_code == 200
    body = r.json()
    messages = body["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[0]["content"] == "first question"
    assert messages[1]["content"] == first[-1].data["text"]
    assert messages[2]["parent_id"] == messages[1]["id"]
    assert messages[3]["content"] == second[-1].data["text"]
    assert messages[3]["status"] == "complete"
    assert messages[1]["children"] == [messages[2]["id"]]
    assert body["current_leaf_id"] == messages[3]["id"]
    assert body["active_turn"] is None
    assert body["title"] == "first question"
