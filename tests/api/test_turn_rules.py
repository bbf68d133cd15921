"""One running turn per conversation, and idempotent request ids."""

from __future__ import annotations

import concurrent.futures

import httpx

from tests.api.conftest import ServerFactory
from tests.api.test_bad_input import assert_problem
from tests.api.test_turn_stream import frames_of, new_conversation
from tests.support.server import Frame, Server, parse_sse


def post_turn(
    server: Server, cid: str, body: dict[str, str], last_event_id: int | None = None
) -> list[Frame]:
    headers = server.headers()
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    with httpx.stream(
        "POST",
        f"{server.base_url}/v1/conversations/{cid}/turns",
        json=body,
        headers=headers,
        timeout=60,
    ) as r:
        assert r.status_code == 200, r.read()
        return frames_of(r)


def first_frame(server: Server, cid: str, body: dict[str, str]) -> Frame:
    with httpx.stream(
        "POST",
        f"{server.base_url}/v1/conversations/{cid}/turns",
        json=body,
        headers=server.headers(),
        timeout=60,
    ) as r:
        assert r.status_code == 200, r.read()
        return next(f for f in parse_sse(r.iter_lines()) if isinstance(f, Frame))


def test_a_second_turn_while_one_runs_is_409_with_the_running_turn_id(
    make_server: ServerFactory,
) -> None:
    server = make_server(TURNSTREAM_DEMO_TOKENS="200", TURNSTREAM_DEMO_TOKENS_PER_S="20")
    cid = new_conversation(server)
    running = first_frame(server, cid, {"content": "first"})
    r = httpx.post(
        f"{server.base_url}/v1/conversations/{cid}/turns",
        json={"content": "second"},
        headers=server.headers(),
    )
    body = assert_problem(r, 409, "turn_in_progress")
    assert body["turn_id"] == running.data["turn_id"]
    cancel = f"{server.base_url}/v1/conversations/{cid}/turns/{running.data['turn_id']}/cancel"
    assert httpx.post(cancel, headers=server.headers()).status_code == 202


def test_the_same_request_id_is_one_turn_and_one_generation(make_server: ServerFactory) -> None:
    server = make_server(TURNSTREAM_DEMO_TOKENS="30", TURNSTREAM_DEMO_TOKENS_PER_S="60")
    cid = new_conversation(server)
    body = {"content": "once only", "request_id": "req-42"}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        streams = list(pool.map(lambda _: post_turn(server, cid, body), range(4)))
    turn_ids = {s[0].data["turn_id"] for s in streams}
    assert len(turn_ids) == 1
    assert all([(f.id, f.data) for f in s] == [(f.id, f.data) for f in streams[0]] for s in streams)
    again = post_turn(server, cid, body, last_event_id=3)
    assert [f.id for f in again] == [f.id for f in streams[0][3:]]
    view = httpx.get(f"{server.base_url}/v1/conversations/{cid}", headers=server.headers()).json()
    assert len(view["messages"]) == 2
