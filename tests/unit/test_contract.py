"""docs/CONTRACT.md says what the code does: its routes, errors, events, types, settings.

The contract is the project's promise to clients and consumers; these checks keep the
page and the code from drifting apart (the behaviour behind each line is tested where
it is built).
"""

from __future__ import annotations

import re
from pathlib import Path

import msgspec

from turnstream.bus.envelope import SUBJECT_TYPES
from turnstream.domain.errors import TurnstreamError
from turnstream.domain.modes import TurnRequest
from turnstream.http.problems import ERRORS
from turnstream.http.routes import chat, conversations, files, operations, tools, turns, usage
from turnstream.http.sse import SSE_EVENTS
from turnstream.settings import ENV_PREFIX, known_names

CONTRACT = (Path(__file__).parents[2] / "docs" / "CONTRACT.md").read_text()


def section(title: str) -> str:
    start = CONTRACT.index(f"## {title}")
    end = CONTRACT.find("\n## ", start + 1)
    return CONTRACT[start : end if end != -1 else None]


def test_every_route_of_the_contract_is_served_and_every_served_route_is_in_it() -> None:
    rows = re.findall(r"^\| `([^|]+)` \|", section("HTTP (base `/v1`)"), re.M)
    promised = {
        (method, path.split("?")[0])
        for row in rows
        for method, path in re.findall(r"(GET|POST|PATCH|DELETE) (\S+?)`?(?:,|$)", row)
    }
    served = set()
    for handler in [operations.healthz, operations.readyz, operations.metrics]:
        served |= {(m, p) for m in handler.http_methods for p in handler.paths}
    routes = conversations.ROUTES + turns.ROUTES + tools.ROUTES + chat.ROUTES + usage.ROUTES
    for handler in routes + files.ROUTES:
        served |= {
            (m, "/v1" + re.sub(r"\{(\w+):\w+\}", r"{\1}", p))
            for m in handler.http_methods
            for p in handler.paths
        }
    assert len(served) == 27
    assert promised - {("GET", "/schema/openapi.json")} == served


def test_every_error_code_of_the_contract_is_answered_with_its_status() -> None:
    listed = re.findall(r"`(\w+)` \((\d{3})", section("Errors"))
    assert len(listed) >= 10
    by_code = {cls.code: answer for cls, answer in ERRORS.items()}
    for code, status in listed:
        assert code in by_code, code
        assert by_code[code].status == int(status), code


def test_the_sse_events_and_the_nats_types_are_the_contracts() -> None:
    frames = section("SSE frames")
    names = set(re.findall(r"^  - `([\w.]+)`:", frames, re.M))
    assert names == {name for name, _ in SSE_EVENTS.values()}
    nats = section("NATS JetStream")
    kinds = re.split(r",\s*", re.findall(r"with type one of\s+`([^`]+)`", nats)[0])
    kinds += re.findall(r"conversation\.<type>` \(`([^`]+)`\)", nats)[0].split(", ")
    kinds += re.findall(r"file\.<file_id>\.<type>` \(`([^`]+)`\)", nats)[0].split(", ")
    assert set(kinds) == set(SUBJECT_TYPES.values())


def test_a_turns_body_has_the_contracts_fields() -> None:
    body = re.findall(r"Body: `\{([^}]+)\}`", section("HTTP (base `/v1`)"))[0]
    fields = {f.strip().split(" ")[0].rstrip("?") for f in body.split(",")}
    assert fields == set(TurnRequest.__struct_fields__)
    schema = msgspec.json.schema(TurnRequest)["$defs"]["TurnRequest"]
    assert set(schema["properties"]["mode"]["enum"]) == {"message", "retry", "edit", "continue"}


def test_every_setting_the_contract_names_is_read() -> None:
    named = set(re.findall(rf"`{ENV_PREFIX}(\w+)`", CONTRACT)) - {"*"}
    assert named
    assert named <= known_names()


def test_every_error_class_has_an_answer_in_the_table() -> None:
    def classes(base: type[TurnstreamError]) -> list[type[TurnstreamError]]:
        return [base] + [c for sub in base.__subclasses__() for c in classes(sub)]

    unanswered = [c for c in classes(TurnstreamError)[1:] if c not in ERRORS]
    # Only errors a client can never cause may fall back to a base class's answer.
    assert [c.__name__ for c in unanswered] == ["TurnEnded"]
