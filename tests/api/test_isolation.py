"""Isolation: nothing of one user or tenant is visible to, or changeable by, another.

One served instance and one set of resources for the whole module. The matrix is
(caller x route): every cell names who asked what, so a failure says where the leak is.
A foreign access must answer exactly what a random, non-existent id answers (404, same
code, same keys, same words), and must change nothing: the store holds the same events
afterwards and the owner's running turn still runs.

The callers: the owner (t1/u1), another user of the same tenant (t1/u2), the same user
id in another tenant (t2/u1: a different person), a stranger (t2/u2), an admin of the
owner's tenant (reads only, within that tenant), an admin of another tenant, and a guest
of the owner's tenant.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import jwt
import psycopg
import pytest
from psycopg import sql

from tests.support.fake_openai import FakeOpenAI
from tests.support.server import Frame, Server, parse_sse
from tests.support.shared_server import served
from turnstream.domain.turn import TurnEvent
from turnstream.store.mapper import decode_event

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)


@dataclass(frozen=True)
class Who:
    tenant: str
    user: str
    admin: bool = False
    guest: bool = False


CALLERS: dict[str, Who] = {
    "owner": Who("t1", "u1"),
    "t1-u2": Who("t1", "u2"),  # another user of the owner's tenant
    "t2-u1": Who("t2", "u1"),  # the owner's user id in another tenant: someone else
    "t2-u2": Who("t2", "u2"),
    "t1-admin": Who("t1", "boss", admin=True),  # may read the owner's things, not write
    "t2-admin": Who("t2", "boss", admin=True),  # an admin elsewhere: nothing of t1
    "t1-guest": Who("t1", "guest-1", guest=True),  # anyone can be a guest
}
OWNER = CALLERS["owner"]


@dataclass
class Answer:
    status: int
    media_type: str
    body: Any
    frames: list[Frame]

    def describe(self) -> str:
        return f"{self.status} {self.media_type} {self.body!r} {[f.event for f in self.frames]}"


@dataclass(frozen=True)
class Turn:
    """A conversation of the owner's and one turn in it."""

    cid: str
    tid: str
    user_message_id: str
    answer_id: str
    request_id: str


@dataclass
class World:
    server: Server
    client: httpx.Client
    db: psycopg.Connection[Any]
    done: Turn
    """The owner's conversation with a completed turn."""
    running: Turn
    """The owner's conversation with a turn that runs until the module ends."""
    own: dict[str, str] = field(default_factory=dict)
    """Each caller's own conversation (no turn in it)."""
    made: dict[str, set[str]] = field(default_factory=dict)
    """Every conversation each caller created (or claimed)."""
    last_state: tuple[int, bool, Any] | None = None

    def token(self, name: str) -> str:
        who = CALLERS[name]
        return self.server.token(who.tenant, who.user, ttl_s=3600, admin=who.admin, guest=who.guest)

    def headers(self, name: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
        auth = {"Authorization": f"Bearer {self.token(name)}"} if name else {}
        return auth | (extra or {})

    def send(
        self,
        name: str | None,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        whole_stream: bool = False,
        token: str | None = None,
    ) -> Answer:
        """One request as ``name``; of an SSE answer, the first frame (or all of them)."""
        hdrs = self.headers(name, headers)
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        with self.client.stream(
            method, self.server.base_url + path, json=json, headers=hdrs, params=params
        ) as r:
            media_type = r.headers.get("content-type", "").split(";")[0].strip()
            if media_type == "text/event-stream":
                frames: list[Frame] = []
                for piece in parse_sse(r.iter_lines()):
                    if isinstance(piece, Frame):
                        frames.append(piece)
                        if not whole_stream:
                            break
                return Answer(r.status_code, media_type, None, frames)
            r.read()
            body = r.json() if r.content and media_type.endswith("json") else r.text
            return Answer(r.status_code, media_type, body, [])

    def create(self, name: str, **body: Any) -> str:
        a = self.send(name, "POST", "/v1/conversations", json=body)
        assert a.status == 201, a.describe()
        cid = str(a.body["id"])
        self.made.setdefault(name, set()).add(cid)
        return cid

    def turn(self, name: str, cid: str, body: dict[str, Any], **kw: Any) -> list[Frame]:
        a = self.send(
            name, "POST", f"/v1/conversations/{cid}/turns", json=body, whole_stream=True, **kw
        )
        assert a.status == 200, a.describe()
        assert a.frames, "a turn's answer has frames"
        return a.frames

    # What must never change under a foreign hand.

    def state(self) -> tuple[int, bool, Any]:
        """Events stored (but the running turn's), whether it ended, the owner's view."""
        query = sql.SQL(
            "SELECT count(*) FROM {}.turnstream_events WHERE originator_id <> %s"
        ).format(sql.Identifier(self.server.schema))
        row = self.db.execute(query, (self.running.tid,)).fetchone()
        assert row is not None
        last = sql.SQL(
            "SELECT topic, state FROM {}.turnstream_events WHERE originator_id = %s"
            " ORDER BY originator_version DESC LIMIT 1"
        ).format(sql.Identifier(self.server.schema))
        topic, state = self.db.execute(last, (self.running.tid,)).fetchone() or (None, None)
        event = decode_event(topic, bytes(state)) if topic else None
        ended = isinstance(event, TurnEvent) and event.TERMINAL
        view = self.send("owner", "GET", f"/v1/conversations/{self.done.cid}")
        assert view.status == 200, view.describe()
        return int(row[0]), ended, view.body

    def assert_unchanged(self) -> None:
        """Nothing was stored, the running turn runs, the owner's conversation is as it was."""
        before, now = self.last_state, self.state()
        self.last_state = now  # judge the next cell on its own
        assert before is not None
        assert now[0] == before[0], f"{now[0] - before[0]} event(s) stored"
        assert not now[1], "the owner's running turn was ended"
        assert now[2] == before[2], "the owner's conversation changed"

    def usage(self, name: str) -> Any:
        a = self.send(name, "GET", "/v1/usage")
        assert a.status == 200, f"GET /v1/usage as {name}: {a.describe()}"
        return a.body


def _start_running_turn(client: httpx.Client, server: Server, cid: str, body: Any) -> Frame:
    with client.stream(
        "POST",
        f"{server.base_url}/v1/conversations/{cid}/turns",
        json=body,
        headers={"Authorization": f"Bearer {server.token(OWNER.tenant, OWNER.user)}"},
    ) as r:
        assert r.status_code == 200, r.read()
        # Disconnect after turn.started: the turn goes on (only cancel stops it).
        return next(f for f in parse_sse(r.iter_lines()) if isinstance(f, Frame))


@pytest.fixture(scope="module")
def world(
    database_url: str, nats_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    data_dir = tmp_path_factory.mktemp("isolation")
    with FakeOpenAI() as fake:
        models = data_dir / "models.toml"
        # "fast" answers at once (the default); the demo model is slow, for the running turn.
        models.write_text(
            f'[[models]]\nid = "fast"\nprovider = "openai"\nbase_url = "{fake.base_url}"\n'
            "context_window = 4096\ndefault = true\n"
        )
        env = {
            "TURNSTREAM_MODELS": str(models),
            "TURNSTREAM_DEMO_TOKENS": "5000",
            "TURNSTREAM_DEMO_TOKENS_PER_S": "4",
            "TURNSTREAM_GUEST_MESSAGES": "5",
            "TURNSTREAM_GUEST_TENANTS": "guests,t1",
            "TURNSTREAM_SHUTDOWN_GRACE_S": "0",
        }
        with (
            served(database_url, nats_url, data_dir / "node", **env) as server,
            httpx.Client(timeout=20) as client,
            psycopg.connect(database_url, autocommit=True) as db,
        ):
            yield _build_world(server, client, db)


def _build_world(server: Server, client: httpx.Client, db: psycopg.Connection[Any]) -> World:
    owner_headers = {"Authorization": f"Bearer {server.token(OWNER.tenant, OWNER.user)}"}

    def create(**body: Any) -> str:
        r = client.post(f"{server.base_url}/v1/conversations", json=body, headers=owner_headers)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    # The owner's conversation with a completed turn.
    done_cid = create(title="Done")
    with client.stream(
        "POST",
        f"{server.base_url}/v1/conversations/{done_cid}/turns",
        json={"content": "Tell me a secret.", "request_id": "r-done"},
        headers=owner_headers,
    ) as r:
        assert r.status_code == 200, r.read()
        frames = [f for f in parse_sse(r.iter_lines()) if isinstance(f, Frame)]
    assert frames[-1].event == "final", frames[-1]
    assert len(frames) >= 3
    started = frames[0].data
    done = Turn(
        done_cid,
        started["turn_id"],
        started["user_message_id"],
        started["assistant_message_id"],
        "r-done",
    )

    # The owner's conversation with a turn that runs until the last test cancels it.
    run_cid = create(title="Running", model="demo")
    first = _start_running_turn(
        client, server, run_cid, {"content": "Go on.", "request_id": "r-run"}
    )
    running = Turn(
        run_cid,
        first.data["turn_id"],
        first.data["user_message_id"],
        first.data["assistant_message_id"],
        "r-run",
    )

    world = World(server=server, client=client, db=db, done=done, running=running)
    world.made["owner"] = {done_cid, run_cid}
    for name in CALLERS:
        world.own[name] = world.create(name, title=f"{name}'s own")
    world.last_state = world.state()
    return world


# The matrix.


@dataclass(frozen=True)
class Probe:
    """One route aimed at the owner's conversation, or at the caller's own one."""

    name: str
    method: Literal["GET", "POST", "PATCH", "DELETE"]
    path: str
    """With ``{cid}`` and ``{tid}``."""
    turn: Literal["done", "running"]
    """The owner's finished or running turn (and its conversation)."""
    write: bool
    own: bool = False
    """Aim at the caller's own conversation with the owner's turn id: turn_not_found."""
    body: Callable[[World], Any] | None = None
    headers: Callable[[World], dict[str, str]] | None = None
    params: dict[str, str] | None = None
    ok: int = 200
    """The status of an allowed read."""
    first_seq: int = 1
    """The first frame's id of an allowed read of a stream."""

    @property
    def code(self) -> str:
        return "turn_not_found" if self.own else "conversation_not_found"


def _guest_token(w: World) -> dict[str, str]:
    return {"X-Guest-Token": w.server.token("t1", "guest-x", guest=True)}


CONV = "/v1/conversations/{cid}"
TURNS = CONV + "/turns"
EVENTS = CONV + "/turns/{tid}/events"
STREAM = CONV + "/stream"
CANCEL = CONV + "/turns/{tid}/cancel"
CLAIM = CONV + "/claim"


def _body(**body: Any) -> Callable[[World], Any]:
    """A request body; ``"$answer"``/``"$user"``/``"$request"`` name the owner's finished turn."""

    def make(w: World) -> Any:
        names = {
            "$answer": w.done.answer_id,
            "$user": w.done.user_message_id,
            "$request": w.done.request_id,
            "$running-request": w.running.request_id,
        }
        return {k: names.get(v, v) if isinstance(v, str) else v for k, v in body.items()}

    return make


def _header(**headers: str) -> Callable[[World], dict[str, str]]:
    return lambda w: {k.replace("_", "-"): v for k, v in headers.items()}


PROBES = [
    Probe("get", "GET", CONV, "done", write=False),
    Probe("get-running", "GET", CONV, "running", write=False),
    Probe("patch", "PATCH", CONV, "done", write=True, body=_body(title="Taken")),
    Probe("delete", "DELETE", CONV, "done", write=True),
    Probe("delete-running", "DELETE", CONV, "running", write=True),
    Probe("turn-message", "POST", TURNS, "done", write=True, body=_body(content="Hi")),
    Probe(
        "turn-message-parent",
        "POST",
        TURNS,
        "done",
        write=True,
        body=_body(content="Hi", parent_id="$answer"),
    ),
    Probe(
        "turn-retry",
        "POST",
        TURNS,
        "done",
        write=True,
        body=_body(mode="retry", message_id="$answer"),
    ),
    Probe(
        "turn-edit",
        "POST",
        TURNS,
        "done",
        write=True,
        body=_body(mode="edit", message_id="$user", content="Hm"),
    ),
    Probe(
        "turn-continue",
        "POST",
        TURNS,
        "done",
        write=True,
        body=_body(mode="continue", message_id="$answer"),
    ),
    # The owner's request id: the same request id is the same turn, but only for its owner.
    Probe(
        "turn-replay-request-id",
        "POST",
        TURNS,
        "done",
        write=True,
        body=_body(content="Tell me a secret.", request_id="$request"),
    ),
    # Not 409 turn_in_progress: that would tell a stranger the conversation exists.
    Probe("turn-while-running", "POST", TURNS, "running", write=True, body=_body(content="Hi")),
    Probe(
        "turn-replay-running",
        "POST",
        TURNS,
        "running",
        write=True,
        body=_body(content="Go on.", request_id="$running-request"),
    ),
    Probe("events", "GET", EVENTS, "done", write=False),
    Probe(
        "events-last-event-id",
        "GET",
        EVENTS,
        "done",
        write=False,
        headers=_header(Last_Event_ID="2"),
        first_seq=3,
    ),
    Probe("events-after", "GET", EVENTS, "done", write=False, params={"after": "1"}, first_seq=2),
    Probe("events-running", "GET", EVENTS, "running", write=False),
    Probe(
        "events-running-last-event-id",
        "GET",
        EVENTS,
        "running",
        write=False,
        headers=_header(Last_Event_ID="1"),
        first_seq=2,
    ),
    Probe("stream", "GET", STREAM, "running", write=False),
    Probe(
        "stream-last-event-id",
        "GET",
        STREAM,
        "running",
        write=False,
        headers=_header(Last_Event_ID="1"),
        first_seq=2,
    ),
    Probe("stream-idle", "GET", STREAM, "done", write=False, ok=204),
    Probe("cancel-running", "POST", CANCEL, "running", write=True),
    Probe("cancel-finished", "POST", CANCEL, "done", write=True),
    Probe("claim", "POST", CLAIM, "done", write=True, headers=_guest_token),
    Probe("claim-running", "POST", CLAIM, "running", write=True, headers=_guest_token),
    # The owner's turn ids under the caller's own conversation.
    Probe("own-conversation-events", "GET", EVENTS, "done", write=False, own=True),
    Probe("own-conversation-events-running", "GET", EVENTS, "running", write=False, own=True),
    Probe("own-conversation-cancel", "POST", CANCEL, "done", write=True, own=True),
    Probe("own-conversation-cancel-running", "POST", CANCEL, "running", write=True, own=True),
]


def allowed(name: str, probe: Probe) -> bool:
    """The owner reads their things; an admin reads (never writes) within their tenant."""
    if probe.own:
        return False
    who = CALLERS[name]
    if who == OWNER:
        return True
    return who.admin and who.tenant == OWNER.tenant and not probe.write


# The owner's own writes are the lifecycle test's (they would change the shared fixtures).
CELLS = [
    pytest.param(name, probe, id=f"{name}:{probe.name}")
    for probe in PROBES
    for name in CALLERS
    if not (name == "owner" and probe.write and not probe.own)
]


def shape(a: Answer) -> dict[str, Any]:
    """What a client can tell of an answer, ids aside."""
    body = a.body if isinstance(a.body, dict) else {"<body>": a.body}
    return {
        "status": a.status,
        "media_type": a.media_type,
        "keys": sorted(body),
        **{k: UUID_RE.sub("<id>", str(v)) for k, v in body.items()},
    }


def assert_not_found(a: Answer, code: str) -> None:
    assert a.status == 404, a.describe()
    assert a.media_type == "application/problem+json", a.describe()
    assert a.body["code"] == code, a.describe()
    assert a.body["status"] == 404


@pytest.mark.parametrize(("name", "probe"), CELLS)
def test_every_route_answers_a_foreigner_as_if_nothing_were_there(
    world: World, name: str, probe: Probe
) -> None:
    world.last_state = world.state()
    target = world.running if probe.turn == "running" else world.done
    cid = world.own[name] if probe.own else target.cid
    kw: dict[str, Any] = {
        "json": probe.body(world) if probe.body else None,
        "headers": probe.headers(world) if probe.headers else None,
        "params": probe.params,
    }
    a = world.send(name, probe.method, probe.path.format(cid=cid, tid=target.tid), **kw)

    if allowed(name, probe):
        assert a.status == probe.ok, a.describe()
        if a.media_type == "text/event-stream":
            assert a.frames, a.describe()
            assert a.frames[0].id == probe.first_seq
            assert a.frames[0].data["turn_id"] == target.tid
        elif probe.ok == 200:
            assert a.body["id"] == cid
    else:
        # Exactly what a random id answers: same status, code, keys and words.
        missing = world.own[name] if probe.own else str(uuid.uuid4())
        path = probe.path.format(cid=missing, tid=uuid.uuid4())
        baseline = world.send(name, probe.method, path, **kw)
        if CALLERS[name].guest and probe.path == CLAIM:
            # A guest may not claim at all: the route's own 400, the same for any id.
            assert (a.status, a.body["code"]) == (400, "invalid_request"), a.describe()
        else:
            assert_not_found(a, probe.code)
        assert shape(a) == shape(baseline)

    world.assert_unchanged()


@pytest.mark.parametrize("name", CALLERS)
def test_the_list_holds_the_callers_own_conversations_only(world: World, name: str) -> None:
    a = world.send(name, "GET", "/v1/conversations", params={"limit": "100"})
    assert a.status == 200, a.describe()
    listed = {item["id"] for item in a.body["items"]}
    assert a.body["next_cursor"] is None
    assert world.own[name] in listed
    assert listed <= world.made[name]
    others = set().union(*(made for other, made in world.made.items() if other != name))
    assert not listed & others


USAGE_KEYS = re.compile(r"turns|tokens")
NOT_USAGE = re.compile(r"limit|remaining|reset|max")


def usage_counts(body: Any, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], int]:
    """The counters of a usage answer (turns, tokens), not its limits or reset times."""
    found: dict[tuple[str, ...], int] = {}
    if isinstance(body, dict):
        for key, value in body.items():
            found |= usage_counts(value, (*path, str(key)))
    elif isinstance(body, list):
        for i, value in enumerate(body):
            found |= usage_counts(value, (*path, str(i)))
    elif (
        isinstance(body, int)
        and not isinstance(body, bool)
        and path
        and USAGE_KEYS.search(path[-1])
        and not any(NOT_USAGE.search(p) for p in path)
    ):
        found[path] = body
    return found


def test_usage_counts_the_callers_own_turns_only(world: World) -> None:
    before = {name: usage_counts(world.usage(name)) for name in CALLERS}
    assert before["owner"], f"no turn or token counters in {world.usage('owner')!r}"

    # The owner uses some tokens; the others' usage does not move (nor t2/u1's).
    cid = world.create("owner", title="Usage")
    assert world.turn("owner", cid, {"content": "Count me."})[-1].event == "final"
    after = {name: usage_counts(world.usage(name)) for name in CALLERS}
    grown = {k: v for k, v in after["owner"].items() if v > before["owner"].get(k, 0)}
    assert any("turns" in "/".join(k) for k in grown), (before["owner"], after["owner"])
    for name in CALLERS:
        if name != "owner":
            assert after[name] == before[name], name


SMUGGLED: dict[str, Any] = {
    "tenant": "t2",
    "owner": "u2",
    "user_id": "u2",
    "sub": "u2",
    "roles": ["admin"],
    "guest": False,
    "usage": {"prompt_tokens": 0, "completion_tokens": 0, "estimated": False},
}
BODY_ROUTES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "create": ("POST", "/v1/conversations", {"title": "Mine"}),
    "turn": ("POST", TURNS, {"content": "Hi"}),
    "patch": ("PATCH", CONV, {"title": "Mine"}),
}


@pytest.mark.parametrize("key", SMUGGLED)
@pytest.mark.parametrize("route", BODY_ROUTES)
def test_a_body_cannot_say_who_owns_what_or_what_was_used(
    world: World, route: str, key: str
) -> None:
    world.last_state = world.state()
    method, path, body = BODY_ROUTES[route]
    a = world.send(
        "owner", method, path.format(cid=world.own["owner"]), json=body | {key: SMUGGLED[key]}
    )
    assert a.status == 400, a.describe()
    assert a.body["code"] == "invalid_request"
    world.assert_unchanged()


def _find_jwt(body: Any) -> str | None:
    """The token in a POST /v1/guest answer, whatever its field is called."""
    if isinstance(body, str) and body.count(".") == 2 and body.startswith("eyJ"):
        return body
    values = body.values() if isinstance(body, dict) else body if isinstance(body, list) else []
    return next((t for t in map(_find_jwt, values) if t is not None), None)


def _claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


@pytest.mark.parametrize(
    "body",
    [None, {"tenant": "t1"}, {"sub": "u1"}, {"user_id": "u1"}, {"roles": ["admin"]}],
    ids=["plain", "tenant", "sub", "user_id", "roles"],
)
def test_a_guest_is_a_guest_that_sees_nothing_of_anyone_else(
    world: World, body: dict[str, Any] | None
) -> None:
    a = world.send(None, "POST", "/v1/guest", json=body)
    if a.status == 400:  # a body may not ask for more than a guest token
        assert body is not None
        assert a.body["code"] == "invalid_request"
        return
    assert a.status in (200, 201), a.describe()
    token = _find_jwt(a.body)
    assert token is not None, a.describe()
    claims = _claims(token)
    assert claims["guest"] is True
    assert "admin" not in (claims.get("roles") or [])
    assert (claims["tenant"], claims["sub"]) != (OWNER.tenant, OWNER.user)

    # The guest lists nothing and reads nothing of the owner's.
    listing = world.send(None, "GET", "/v1/conversations", token=token)
    assert listing.status == 200, listing.describe()
    assert listing.body["items"] == []
    for path in (
        CONV.format(cid=world.done.cid),
        EVENTS.format(cid=world.done.cid, tid=world.done.tid),
        STREAM.format(cid=world.running.cid),
    ):
        assert_not_found(world.send(None, "GET", path, token=token), "conversation_not_found")


def test_a_claim_moves_only_that_guests_conversation_and_only_within_its_tenant(
    world: World,
) -> None:
    guest, other_guest = (world.server.token("t1", g, guest=True) for g in ("g-1", "g-2"))
    created = world.send(None, "POST", "/v1/conversations", json={"title": "Guest"}, token=guest)
    assert created.status == 201, created.describe()
    cid = created.body["id"]
    frames = world.send(
        None, "POST", TURNS.format(cid=cid), json={"content": "Hi"}, token=guest, whole_stream=True
    ).frames
    assert frames[-1].event == "final", frames

    def claim(name: str, token: str) -> Answer:
        return world.send(name, "POST", CLAIM.format(cid=cid), headers={"X-Guest-Token": token})

    # Another tenant, or another guest's token: not found, and nothing moves.
    for name, token in (("t2-u1", guest), ("t2-admin", guest), ("t1-u2", other_guest)):
        assert_not_found(claim(name, token), "conversation_not_found")
    assert world.send(None, "GET", CONV.format(cid=cid), token=guest).status == 200

    # The claim moves it, messages and all, to the caller; the guest loses it.
    moved = claim("t1-u2", guest)
    assert moved.status in (200, 201, 204), moved.describe()
    world.made["t1-u2"].add(cid)
    view = world.send("t1-u2", "GET", CONV.format(cid=cid))
    assert view.status == 200, view.describe()
    assert len(view.body["messages"]) == 2
    assert_not_found(
        world.send(None, "GET", CONV.format(cid=cid), token=guest), "conversation_not_found"
    )
    for name in ("owner", "t2-u1", "t2-u2", "t2-admin"):
        assert_not_found(world.send(name, "GET", CONV.format(cid=cid)), "conversation_not_found")

    # It is nobody's guest conversation any more: the same token claims nothing else.
    assert_not_found(claim("owner", guest), "conversation_not_found")
    assert world.send("t1-u2", "GET", CONV.format(cid=cid)).status == 200


@pytest.mark.parametrize("name", [name for name, who in CALLERS.items() if not who.guest])
def test_each_caller_has_full_use_of_their_own_conversation(world: World, name: str) -> None:
    # Create, read, rename.
    cid = world.create(name, title="Mine")
    base = CONV.format(cid=cid)
    got = world.send(name, "GET", base)
    assert got.status == 200, got.describe()
    assert (got.body["id"], got.body["messages"]) == (cid, [])
    renamed = world.send(name, "PATCH", base, json={"title": "Still mine"})
    assert renamed.status == 200, renamed.describe()
    assert renamed.body["title"] == "Still mine"

    # A turn, its events from the start, after Last-Event-ID and after ?after=.
    frames = world.turn(name, cid, {"content": "Hello", "request_id": "mine-1"})
    assert frames[-1].event == "final", frames[-1]
    assert frames[-1].data["status"] == "completed"
    tid, n = frames[0].data["turn_id"], len(frames)
    events = EVENTS.format(cid=cid, tid=tid)
    assert [f.id for f in world.send(name, "GET", events, whole_stream=True).frames] == list(
        range(1, n + 1)
    )
    tail = world.send(name, "GET", events, headers={"Last-Event-ID": str(n - 1)}, whole_stream=True)
    assert [f.id for f in tail.frames] == [n]
    after = world.send(name, "GET", events, params={"after": "1"}, whole_stream=True)
    assert [f.id for f in after.frames] == list(range(2, n + 1))
    assert world.send(name, "GET", STREAM.format(cid=cid)).status == 204

    # The same request id is the same turn; then every other mode.
    replay = world.turn(name, cid, {"content": "Hello", "request_id": "mine-1"})
    assert [(f.id, f.data) for f in replay] == [(f.id, f.data) for f in frames]
    user_id, answer_id = frames[0].data["user_message_id"], frames[0].data["assistant_message_id"]
    assert world.turn(name, cid, {"mode": "retry", "message_id": answer_id})[-1].event == "final"
    edited = world.turn(name, cid, {"mode": "edit", "message_id": user_id, "content": "Hey"})
    assert edited[-1].event == "final"
    leaf = edited[0].data["assistant_message_id"]
    assert world.turn(name, cid, {"mode": "continue", "message_id": leaf})[-1].event == "final"

    # Cancel is idempotent, also on an ended turn.
    for _ in range(2):
        cancelled = world.send(name, "POST", CANCEL.format(cid=cid, tid=tid))
        assert cancelled.status == 202, cancelled.describe()
    got = world.send(name, "GET", base)
    assert len(got.body["messages"]) == 5

    # Delete: gone everywhere.
    assert world.send(name, "DELETE", base).status == 204
    assert_not_found(world.send(name, "GET", base), "conversation_not_found")
    assert_not_found(world.send(name, "GET", events), "conversation_not_found")


def test_the_running_turn_outlived_every_foreign_cancel_and_its_owner_cancels_it(
    world: World,
) -> None:
    # Last in the module: it ends the shared running turn.
    _, ended, _ = world.state()
    assert not ended
    run = world.running
    cancelled = world.send("owner", "POST", CANCEL.format(cid=run.cid, tid=run.tid))
    assert cancelled.status == 202, cancelled.describe()
    frames = world.send(
        "owner", "GET", EVENTS.format(cid=run.cid, tid=run.tid), whole_stream=True
    ).frames
    assert frames[-1].event == "final"
    assert frames[-1].data["status"] == "interrupted"
