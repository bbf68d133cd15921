"""Limits and quotas: each refusal has its status, code and Retry-After, and stores nothing."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from tests.api.conftest import ServerFactory
from tests.api.test_bad_input import assert_problem
from tests.api.test_turn_rules import post_turn
from tests.api.test_turn_stream import new_conversation
from tests.support.server import Frame, Server, parse_sse


def post(server: Server, cid: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    """POST a turn and read it to its end (or its refusal)."""
    return httpx.post(
        f"{server.base_url}/v1/conversations/{cid}/turns",
        json=body,
        headers=server.headers() | headers,
        timeout=60,
    )


def ended(r: httpx.Response) -> list[Frame]:
    assert r.status_code == 200, r.text
    frames = [f for f in parse_sse(r.text.splitlines()) if isinstance(f, Frame)]
    assert frames[-1].event in ("final", "error")
    return frames


def retry_after(r: httpx.Response, at_most: float) -> int:
    value = int(r.headers["Retry-After"])
    assert 1 <= value <= at_most
    return value


def usage(server: Server, headers: dict[str, str] | None = None) -> dict[str, Any]:
    r = httpx.get(f"{server.base_url}/v1/usage", headers=headers or server.headers())
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_messages_per_minute_per_user_and_per_address_behind_trusted_proxies(
    make_server: ServerFactory, event_count: Callable[[], int]
) -> None:
    server = make_server(
        TURNSTREAM_LIMIT_MESSAGES_PER_MINUTE="3",
        TURNSTREAM_TRUSTED_PROXIES="127.0.0.1",
        TURNSTREAM_DEMO_TOKENS="3",
        TURNSTREAM_DEMO_TOKENS_PER_S="0",
    )
    cid = new_conversation(server)
    for i in range(3):
        ended(post(server, cid, {"content": f"m{i}"}, **{"X-Forwarded-For": "203.0.113.1"}))
    before = event_count()
    r = post(server, cid, {"content": "one too many"}, **{"X-Forwarded-For": "203.0.113.2"})
    body = assert_problem(r, 429, "rate_limited")
    assert body["limit"] == 3
    retry_after(r, 60)
    assert event_count() == before

    # Bob behind the same address: the address has had its three, whoever sent them.
    bob = {"Authorization": f"Bearer {server.token('acme', 'bob')}"}
    bob_cid = httpx.post(f"{server.base_url}/v1/conversations", json={}, headers=bob).json()["id"]
    same_address = httpx.post(
        f"{server.base_url}/v1/conversations/{bob_cid}/turns",
        json={"content": "hi"},
        headers=bob | {"X-Forwarded-For": "203.0.113.1"},
    )
    assert_problem(same_address, 429, "rate_limited")
    # A client further left in the header is not believed: the nearest hop counts.
    spoofed = httpx.post(
        f"{server.base_url}/v1/conversations/{bob_cid}/turns",
        json={"content": "hi"},
        headers=bob | {"X-Forwarded-For": "198.51.100.9, 203.0.113.1"},
    )
    assert_problem(spoofed, 429, "rate_limited")
    elsewhere = httpx.post(
        f"{server.base_url}/v1/conversations/{bob_cid}/turns",
        json={"content": "hi"},
        headers=bob | {"X-Forwarded-For": "198.51.100.9"},
        timeout=60,
    )
    ended(elsewhere)


def test_a_conversation_holds_at_most_its_limit_of_messages(
    make_server: ServerFactory, event_count: Callable[[], int]
) -> None:
    server = make_server(
        TURNSTREAM_LIMIT_CONVERSATION_MESSAGES="4",
        TURNSTREAM_DEMO_TOKENS="3",
        TURNSTREAM_DEMO_TOKENS_PER_S="0",
    )
    cid = new_conversation(server)
    ended(post(server, cid, {"content": "one"}))
    last = ended(post(server, cid, {"content": "two"}))[0].data["assistant_message_id"]
    before = event_count()
    body = assert_problem(post(server, cid, {"content": "three"}), 422, "conversation_full")
    assert body["max_messages"] == 4
    assert_problem(
        post(server, cid, {"mode": "retry", "message_id": last}), 422, "conversation_full"
    )
    assert event_count() == before
    # Continuing the last answer adds no message: still allowed.
    frames = ended(post(server, cid, {"mode": "continue", "message_id": last}))
    assert frames[-1].event == "final"


def test_concurrent_turns_per_user(make_server: ServerFactory) -> None:
    server = make_server(
        TURNSTREAM_LIMIT_CONCURRENT_TURNS="2",
        TURNSTREAM_DEMO_TOKENS="400",
        TURNSTREAM_DEMO_TOKENS_PER_S="20",
    )
    cids = [new_conversation(server) for _ in range(3)]
    running: list[dict[str, Any]] = []
    for cid in cids[:2]:
        with httpx.stream(
            "POST",
            f"{server.base_url}/v1/conversations/{cid}/turns",
            json={"content": "long"},
            headers=server.headers(),
            timeout=60,
        ) as r:
            assert r.status_code == 200
            running.append(next(f for f in parse_sse(r.iter_lines()) if isinstance(f, Frame)).data)
    r = post(server, cids[2], {"content": "third"})
    body = assert_problem(r, 429, "too_many_turns")
    assert body["limit"] == 2
    retry_after(r, 60)
    # Another user is not held back by this one's turns.
    other = {"Authorization": f"Bearer {server.token('acme', 'bob')}"}
    bob_cid = httpx.post(f"{server.base_url}/v1/conversations", json={}, headers=other).json()["id"]
    with httpx.stream(
        "POST",
        f"{server.base_url}/v1/conversations/{bob_cid}/turns",
        json={"content": "mine"},
        headers=other,
        timeout=60,
    ) as r:
        assert r.status_code == 200
    # Once one of the two ends, the third may start.
    first = running[0]
    cancel = f"{server.base_url}/v1/conversations/{cids[0]}/turns/{first['turn_id']}/cancel"
    assert httpx.post(cancel, headers=server.headers()).status_code == 202
    httpx.get(
        f"{server.base_url}/v1/conversations/{cids[0]}/turns/{first['turn_id']}/events",
        headers=server.headers(),
        timeout=60,
    ).raise_for_status()  # to its terminal frame
    with httpx.stream(
        "POST",
        f"{server.base_url}/v1/conversations/{cids[2]}/turns",
        json={"content": "third"},
        headers=server.headers(),
        timeout=60,
    ) as r:
        assert r.status_code == 200
    for cid, turn in ((cids[1], running[1]),):
        url = f"{server.base_url}/v1/conversations/{cid}/turns/{turn['turn_id']}/cancel"
        httpx.post(url, headers=server.headers())


def test_the_daily_quota_holds_under_twenty_concurrent_turns(make_server: ServerFactory) -> None:
    quota = 600
    server = make_server(
        TURNSTREAM_LIMIT_DAILY_TOKENS=str(quota),
        TURNSTREAM_DEMO_TOKENS="40",
        TURNSTREAM_DEMO_TOKENS_PER_S="200",
    )
    cids = [new_conversation(server) for _ in range(20)]

    def one(cid: str) -> httpx.Response:
        return post(server, cid, {"content": "Tell me about event sourcing."})

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(one, cids))
    admitted = [ended(r) for r in answers if r.status_code == 200]
    refused = [r for r in answers if r.status_code != 200]
    assert admitted, "some turns fit the quota"
    assert refused, "twenty turns do not"
    for r in refused:
        assert_problem(r, 429, "quota_exhausted")
        retry_after(r, 86400)
    spent = [
        f[-1].data["usage"]["prompt_tokens"] + f[-1].data["usage"]["completion_tokens"]
        for f in admitted
    ]
    report = usage(server)
    assert report["day"]["total_tokens"] == sum(spent)
    assert report["day"]["turns"] == len(admitted)
    assert report["day"]["limit_tokens"] == quota
    # Never beyond the quota by more than one turn's worth.
    assert sum(spent) <= quota + max(spent)

    # Spend the rest: the turn that crosses the quota runs, the next one is refused
    # until the day resets.
    while usage(server)["day"]["total_tokens"] < quota:
        ended(post(server, new_conversation(server), {"content": "more"}))
    r = post(server, new_conversation(server), {"content": "and more"})
    body = assert_problem(r, 429, "quota_exhausted")
    tomorrow = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    tomorrow += timedelta(days=1)
    assert body["resets_at"] == tomorrow.isoformat()
    assert retry_after(r, 86400) >= (tomorrow - datetime.now(UTC)).total_seconds() - 5
    report = usage(server)
    assert report["day"]["remaining_tokens"] == 0
    assert report["day"]["resets_at"].startswith(tomorrow.date().isoformat())


def test_the_weekly_quota_and_the_usage_report(make_server: ServerFactory) -> None:
    server = make_server(
        TURNSTREAM_LIMIT_WEEKLY_TOKENS="1",
        TURNSTREAM_DEMO_TOKENS="5",
        TURNSTREAM_DEMO_TOKENS_PER_S="0",
    )
    fresh = usage(server)
    assert fresh["week"]["total_tokens"] == 0
    assert fresh["week"]["limit_tokens"] == 1
    assert fresh["day"]["limit_tokens"] is None
    assert fresh["limits"]["weekly_tokens"] == 1
    assert fresh["storage"] == {"bytes": 0, "files": 0}  # no files yet
    monday = datetime.fromisoformat(fresh["week"]["start"])
    assert monday.weekday() == 0
    assert datetime.fromisoformat(fresh["week"]["resets_at"]) == monday + timedelta(days=7)
    final = ended(post(server, new_conversation(server), {"content": "hi"}))[-1]
    r = post(server, new_conversation(server), {"content": "again"})
    assert_problem(r, 429, "quota_exhausted")
    retry_after(r, 7 * 86400)
    after = usage(server)
    spent = final.data["usage"]["prompt_tokens"] + final.data["usage"]["completion_tokens"]
    assert after["week"]["total_tokens"] == after["day"]["total_tokens"] == spent
    assert after["week"]["turns"] == 1
    # Another user's usage is theirs alone.
    bob = {"Authorization": f"Bearer {server.token('acme', 'bob')}"}
    assert usage(server, bob)["week"]["total_tokens"] == 0


def test_input_over_the_models_maximum_and_a_model_no_longer_served(
    make_server: ServerFactory, tmp_path: Path, event_count: Callable[[], int]
) -> None:
    models = tmp_path / "models.toml"
    models.write_text(
        '[[models]]\nid = "small"\nprovider = "demo"\nmax_input_tokens = 50\n'
        '[[models]]\nid = "gone-soon"\nprovider = "demo"\n'
    )
    server = make_server(TURNSTREAM_MODELS=str(models), TURNSTREAM_DEMO_TOKENS_PER_S="0")
    cid = new_conversation(server, model="small")
    before = event_count()
    body = assert_problem(post(server, cid, {"content": "word " * 200}), 422, "input_too_long")
    assert body["max_input_tokens"] == 50
    assert body["estimated_tokens"] > 50
    assert event_count() == before
    ended(post(server, cid, {"content": "short"}))

    doomed = new_conversation(server, model="gone-soon")
    server.stop()
    models.write_text('[[models]]\nid = "small"\nprovider = "demo"\n')
    server.start()
    before = event_count()
    assert_problem(post(server, doomed, {"content": "hello?"}), 410, "model_unavailable")
    assert event_count() == before


def test_guests_send_their_allowance_then_sign_in_and_claim(
    make_server: ServerFactory, event_count: Callable[[], int]
) -> None:
    server = make_server(
        TURNSTREAM_GUEST_MESSAGES="2",
        TURNSTREAM_GUEST_TENANTS="guests,acme",
        TURNSTREAM_DEMO_TOKENS="3",
        TURNSTREAM_DEMO_TOKENS_PER_S="0",
    )
    r = httpx.post(f"{server.base_url}/v1/guest", json={"tenant": "acme"})
    assert r.status_code == 201, r.text
    guest = r.json()
    assert guest["tenant"] == "acme"
    assert guest["messages"] == 2
    as_guest = {"Authorization": f"Bearer {guest['token']}"}
    created = httpx.post(f"{server.base_url}/v1/conversations", json={}, headers=as_guest)
    cid = created.json()["id"]
    turns = f"{server.base_url}/v1/conversations/{cid}/turns"
    for text in ("one", "two"):
        ended(httpx.post(turns, json={"content": text}, headers=as_guest, timeout=60))
    before = event_count()
    r = httpx.post(turns, json={"content": "three"}, headers=as_guest)
    assert_problem(r, 429, "login_required")
    assert int(r.headers["Retry-After"]) >= 1
    assert event_count() == before
    allowance = usage(server, as_guest)["guest"]
    assert allowance == {"messages": 2, "used": 2, "remaining": 0}

    # Alice signs in and claims it: it is hers now, and the guest's no longer.
    claim = f"{server.base_url}/v1/conversations/{cid}/claim"
    wrong = [
        ({}, 400, "invalid_request"),  # no guest token
        ({"X-Guest-Token": "not-a-token"}, 400, "invalid_request"),
        ({"X-Guest-Token": server.token("acme", "bob")}, 400, "invalid_request"),  # not a guest
    ]
    for extra, status, code in wrong:
        assert_problem(httpx.post(claim, headers=server.headers() | extra), status, code)
    elsewhere = {"Authorization": f"Bearer {server.token('other', 'alice')}"}
    assert_problem(
        httpx.post(claim, headers=elsewhere | {"X-Guest-Token": guest["token"]}),
        404,
        "conversation_not_found",
    )
    r = httpx.post(claim, headers=server.headers() | {"X-Guest-Token": guest["token"]})
    assert r.status_code == 200, r.text
    assert [m["content"] for m in r.json()["messages"] if m["role"] == "user"] == ["one", "two"]
    again = httpx.post(claim, headers=server.headers() | {"X-Guest-Token": guest["token"]})
    assert again.status_code == 200
    listed = httpx.get(f"{server.base_url}/v1/conversations", headers=server.headers()).json()
    assert cid in [c["id"] for c in listed["items"]]
    assert_problem(
        httpx.get(f"{server.base_url}/v1/conversations/{cid}", headers=as_guest),
        404,
        "conversation_not_found",
    )
    assert httpx.get(f"{server.base_url}/v1/conversations", headers=as_guest).json()["items"] == []
    frames = ended(post(server, cid, {"content": "three, signed in"}))
    assert frames[-1].event == "final"


def test_guests_off_means_no_guest_tokens_and_no_guest_turns(make_server: ServerFactory) -> None:
    server = make_server(TURNSTREAM_DEMO_TOKENS_PER_S="0")
    assert_problem(httpx.post(f"{server.base_url}/v1/guest"), 404, "not_found")
    as_guest = {"Authorization": f"Bearer {server.token('acme', 'g1', guest=True)}"}
    cid = httpx.post(f"{server.base_url}/v1/conversations", json={}, headers=as_guest).json()["id"]
    r = httpx.post(
        f"{server.base_url}/v1/conversations/{cid}/turns", json={"content": "hi"}, headers=as_guest
    )
    assert_problem(r, 429, "login_required")


def test_repeated_request_ids_stream_one_generation_to_every_caller(
    make_server: ServerFactory,
) -> None:
    server = make_server(
        TURNSTREAM_LIMIT_CONCURRENT_TURNS="1",
        TURNSTREAM_DEMO_TOKENS="30",
        TURNSTREAM_DEMO_TOKENS_PER_S="60",
    )
    cid = new_conversation(server)
    body = {"content": "once only", "request_id": "req-10"}

    def one(_: int) -> list[tuple[int | None, str, dict[str, Any]]]:
        # Frame.data leaves out the padding, which is random per frame sent.
        return [(f.id, f.event, f.data) for f in post_turn(server, cid, body)]

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        streams = list(pool.map(one, range(10)))
    assert all(s == streams[0] for s in streams)
    assert streams[0][-1][1] == "final"
    view = httpx.get(f"{server.base_url}/v1/conversations/{cid}", headers=server.headers()).json()
    assert len(view["messages"]) == 2
    assert usage(server)["day"]["turns"] == 1
