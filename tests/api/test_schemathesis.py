"""Schemathesis against a served instance: no 5xx, and every answer as the OpenAPI says.

One ``turnstream serve`` for the module; the schema is the one it serves. Every operation
gets the examples, coverage (boundary and missing-part cases) and fuzzing phases with a
valid bearer token, a fixed seed and a bounded number of examples. Half of the cases
whose path names a conversation are pointed at a real one (with a finished turn), so the
checks also see 2xx answers, not only 404s.

The checks, and why some are off:

- on: ``not_a_server_error``, ``status_code_conformance``, ``content_type_conformance``,
  ``response_schema_conformance``, ``response_headers_conformance`` (the document lists
  every problem+json answer of each operation), ``negative_data_rejection`` (what the
  schema forbids is refused), ``ignored_auth`` and ``missing_required_header`` (no route
  serves without its token), ``unsupported_method``.
- off: ``positive_data_acceptance``. The API validates beyond what JSON Schema can say:
  cursors and guest tokens are opaque (only what the API handed out is accepted), a
  title is 1 to 200 characters *after trimming*, a turn's ``content``/``message_id``
  depend on its ``mode``, a ``parent_id`` must name a message. A schema-valid request
  may rightly be 400/404 here.
- off: ``allow_header_conformance``. Litestar 2's automatic OPTIONS answer lists only the
  methods of the first handler registered on a path (litestar-org/litestar#4169, fixed
  in Litestar 3); 405 answers carry the right ``Allow``.
- stateful checks (``use_after_free``, ``ensure_resource_availability``,
  ``object_level_authorization``) need the stateful phase and links the schema does not
  have; isolation is ``test_isolation.py``'s.

Turn streams (``text/event-stream``) are read to their end (the demo model answers at
once), and are checked for status, content type and 5xx like everything else.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.support.server import Frame, Server, parse_sse
from tests.support.shared_server import bearer, served

MAX_EXAMPLES = 50
SEED = 20261121


@pytest.fixture(scope="module")
def api(
    database_url: str, nats_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    env = {
        "TURNSTREAM_DEMO_TOKENS": "8",
        "TURNSTREAM_DEMO_TOKENS_PER_S": "0",
        "TURNSTREAM_GUEST_MESSAGES": "3",
        "TURNSTREAM_GUEST_TENANTS": "guests,acme",
        "TURNSTREAM_SHUTDOWN_GRACE_S": "0",
    }
    data_dir = Path(tmp_path_factory.mktemp("schemathesis"))
    with served(database_url, nats_url, data_dir, **env) as server:
        yield server


class Conversations:
    """Real conversations (each with one finished turn) to aim generated cases at."""

    def __init__(self, server: Server, token: str) -> None:
        self.server = server
        self.headers = bearer(token)
        self.shared = self.new()

    def new(self) -> tuple[str, str]:
        """A fresh conversation of the caller's and its finished turn: (cid, tid)."""
        base = self.server.base_url
        r = httpx.post(f"{base}/v1/conversations", json={}, headers=self.headers, timeout=30)
        assert r.status_code == 201, r.text
        cid = r.json()["id"]
        with httpx.stream(
            "POST",
            f"{base}/v1/conversations/{cid}/turns",
            json={"content": "Hello"},
            headers=self.headers,
            timeout=30,
        ) as turn:
            assert turn.status_code == 200, turn.read()
            frames = [f for f in parse_sse(turn.iter_lines()) if isinstance(f, Frame)]
        assert frames[-1].event == "final", frames[-1]
        return cid, frames[0].data["turn_id"]


@pytest.fixture(scope="module")
def token(api: Server) -> str:
    return api.token("acme", "fuzzer", ttl_s=3600)


@pytest.fixture(scope="module")
def conversations(api: Server, token: str) -> Conversations:
    return Conversations(api, token)


@pytest.fixture(scope="module")
def api_schema(api: Server, token: str) -> Any:
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "headers": bearer(token),
            "request-timeout": 30,
            "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True},
            "phases": {
                "examples": {"enabled": True},
                "coverage": {"enabled": True},
                "fuzzing": {"enabled": True},
                "stateful": {"enabled": False},
            },
            "checks": {
                "not_a_server_error": {"enabled": True},
                "status_code_conformance": {"enabled": True},
                "content_type_conformance": {"enabled": True},
                "response_schema_conformance": {"enabled": True},
                "response_headers_conformance": {"enabled": True},
                "negative_data_rejection": {"enabled": True},
                "ignored_auth": {"enabled": True},
                "missing_required_header": {"enabled": True},
                "unsupported_method": {"enabled": True},
                "positive_data_acceptance": {"enabled": False},
                "allow_header_conformance": {"enabled": False},
                "use_after_free": {"enabled": False},
                "ensure_resource_availability": {"enabled": False},
                "object_level_authorization": {"enabled": False},
            },
        }
    )
    return schemathesis.openapi.from_url(f"{api.base_url}/schema/openapi.json", config=config)


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """Schemathesis 4.32 reads ``Node._nodeid``, which pytest 9.2 no longer has."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


def _aim_at_real(case: Any, conversations: Conversations) -> None:
    """Point half of the cases naming a conversation at a real one (by the generated id)."""
    params = case.path_parameters
    generated = _uuid(params.get("cid")) if params else None
    if params is None or generated is None or generated.int % 2:
        return  # no conversation, a bad id (left as it is), or the other half
    # Reads share one conversation; a write gets its own (it may rename or delete it).
    cid, tid = conversations.shared if case.method == "GET" else conversations.new()
    params["cid"] = cid
    if _uuid(params.get("tid")) is not None:
        params["tid"] = tid


def _uuid(value: object) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


@schema.parametrize()
@settings(
    deadline=None,
    derandomize=True,
    database=None,
    max_examples=MAX_EXAMPLES,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_every_operation_answers_as_its_schema_says(
    case: Any, conversations: Conversations, token: str
) -> None:
    _aim_at_real(case, conversations)
    # The token as an explicit override: with a generated header in the case (such as
    # Last-Event-ID), schemathesis would otherwise take the configured one for generated.
    case.call_and_validate(headers=bearer(token))


def test_every_operations_success_answer_matches_its_schema(
    api_schema: Any, api: Server, token: str
) -> None:
    """Fuzzing rarely hits the happy path of every operation; walk it once, same checks."""

    def call(method: str, path: str, headers: dict[str, str] | None = None, **kw: Any) -> Any:
        case = api_schema[path][method].Case(headers=bearer(token) | (headers or {}), **kw)
        return case.call_and_validate(timeout=30)

    # A conversation, listed, read, renamed.
    created = call(
        "POST", "/v1/conversations", body={"title": "Walk", "system_prompt": "Be brief."}
    )
    assert created.status_code == 201
    cid = created.json()["id"]
    ids = {"cid": cid}
    assert call("GET", "/v1/conversations", query={"limit": 5}).status_code == 200
    assert call("GET", "/v1/conversations/{cid}", path_parameters=ids).status_code == 200
    renamed = call(
        "PATCH", "/v1/conversations/{cid}", path_parameters=ids, body={"title": "Walked"}
    )
    assert renamed.status_code == 200

    # A turn (its SSE stream), its events, the idle stream, a cancel of the ended turn.
    turn = call(
        "POST", "/v1/conversations/{cid}/turns", path_parameters=ids, body={"content": "Hi"}
    )
    assert turn.status_code == 200
    assert turn.headers["content-type"][0].startswith("text/event-stream")
    frames = [f for f in parse_sse(iter(turn.text.splitlines())) if isinstance(f, Frame)]
    assert frames[-1].event == "final"
    turn_ids = ids | {"tid": frames[0].data["turn_id"]}
    events = "/v1/conversations/{cid}/turns/{tid}/events"
    assert call("GET", events, path_parameters=turn_ids).status_code == 200
    assert call("GET", events, path_parameters=turn_ids, query={"after": 1}).status_code == 200
    assert call("GET", "/v1/conversations/{cid}/stream", path_parameters=ids).status_code == 204
    cancel = "/v1/conversations/{cid}/turns/{tid}/cancel"
    assert call("POST", cancel, path_parameters=turn_ids).status_code == 202

    # A guest's conversation, claimed.
    guest = call("POST", "/v1/guest", body={"tenant": "acme"})
    assert guest.status_code == 201
    guest_token = guest.json()["token"]
    r = httpx.post(
        f"{api.base_url}/v1/conversations", json={}, headers=bearer(guest_token), timeout=30
    )
    assert r.status_code == 201, r.text
    claimed = call(
        "POST",
        "/v1/conversations/{cid}/claim",
        path_parameters={"cid": r.json()["id"]},
        headers={"X-Guest-Token": guest_token},
    )
    assert claimed.status_code == 200

    # The rest; then the conversation is deleted.
    for path in ("/v1/models", "/v1/usage", "/healthz", "/readyz", "/metrics"):
        assert call("GET", path).status_code == 200, path
    assert call("DELETE", "/v1/conversations/{cid}", path_parameters=ids).status_code == 204
