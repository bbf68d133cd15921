"""Tool turns as the AI SDK's UI message stream (no database, no server): the chunks of
each event, a pause that ends the stream and the answers' stream that continues the
same message, approvals for the clients that know them, exact resumes after any seq,
and the answers read from what the client posts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import msgspec
import pytest

from tests.support.toolturns import WEATHER, Script
from turnstream.domain.tools import FunctionSpec, ToolSpec
from turnstream.domain.turn import Turn, TurnEvent
from turnstream.http.uimessages import UiMessage, answers
from turnstream.http.uistream import UiStream, ui_frames
from turnstream.usecases.tooluse import Approval, ToolResult


def groups(script: Script, *, approvals: bool = False) -> list[list[dict[str, Any]]]:
    stream = UiStream(approvals=approvals)
    return [stream.chunks(e) for e in script.events]


def kinds(group: list[dict[str, Any]]) -> list[str]:
    return [c["type"] for c in group]


async def _events(events: Sequence[TurnEvent], closed: list[bool]) -> AsyncIterator[TurnEvent]:
    try:
        for event in events:
            yield event
    finally:
        closed.append(True)


def frames(script: Script, **options: Any) -> tuple[list[tuple[int | None, dict[str, Any]]], bool]:
    """What ui_frames sends of the script's events: (id, chunk) pairs in order (the id
    of the SSE event, if it had one), and whether it ended with [DONE]. Checks it
    stopped following the events when it ended."""

    async def read() -> tuple[bytes, bool]:
        closed: list[bool] = []
        body = b"".join([f async for f in ui_frames(_events(script.events, closed), **options)])
        return body, bool(closed)

    body, closed = asyncio.run(read())
    assert closed, "the stream closes what it follows"
    out: list[tuple[int | None, dict[str, Any]]] = []
    done = False
    for block in body.decode().split("\n\n"):
        lines = [line for line in block.splitlines() if not line.startswith(":")]
        if not lines:
            continue
        ids = [int(line.removeprefix("id: ")) for line in lines if line.startswith("id: ")]
        (data,) = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
        if data == "[DONE]":
            done = True
            continue
        assert not done, "nothing after [DONE]"
        out.append((ids[0] if ids else None, json.loads(data)))
    return out, done


def a_client_tool_turn() -> Script:
    """Step 1 reasons and calls the client's get_weather, then waits; the client's
    result; step 2 reasons and answers."""
    script = Script()
    script.add(script.progress.append_reasoning("Need weather."))
    script.call("c1", "get_weather", '{"city": "Oslo"}').pause()
    return script.answer("c1", {"sky": "clear"}).finish()


def test_a_client_tool_turn_is_one_message_in_two_streams() -> None:
    script = a_client_tool_turn()
    paused_at = next(e for e in script.events if isinstance(e, Turn.Waiting)).originator_version
    assert [kinds(g) for g in groups(script)] == [
        ["start", "start-step"],
        ["reasoning-start", "reasoning-delta"],
        ["reasoning-end", "tool-input-start"],
        ["tool-input-delta"],
        ["tool-input-available"],
        ["finish-step"],
        ["finish"],
        ["start", "tool-output-available"],
        ["start-step", "reasoning-start", "reasoning-delta"],
        ["reasoning-end", "text-start", "text-delta"],
        ["text-end", "finish-step"],
        ["finish"],
    ]

    first, done = frames(script, after=0, padding=False)
    assert done
    assert [c["type"] for _, c in first][-3:] == ["tool-input-available", "finish-step", "finish"]
    (until,) = [e.until for e in script.events if isinstance(e, Turn.Waiting)]
    assert first[-1] == (
        paused_at,
        {
            "type": "finish",
            "messageMetadata": {
                "turn_id": str(script.started.originator_id),
                "status": "waiting",
                "waiting": {
                    "reason": "tool_result",
                    "call_ids": ["c1"],
                    "until": until.isoformat().replace("+00:00", "Z"),
                },
            },
        },
    )
    by_type = {c["type"]: c for _, c in first}
    assert by_type["tool-input-start"] == {
        "type": "tool-input-start",
        "toolCallId": "c1",
        "toolName": "get_weather",
    }  # a static part: the client's onToolCall runs it
    assert by_type["tool-input-delta"]["inputTextDelta"] == '{"city": "Oslo"}'
    assert by_type["tool-input-available"]["input"] == {"city": "Oslo"}

    answer_seq = paused_at + 1
    rest, done = frames(script, after=paused_at, settled=answer_seq, padding=False)
    assert done
    start = rest[0][1]
    assert start["messageId"] == str(script.started.assistant_message_id)  # the same message
    assert (start["messageMetadata"]["status"], start["messageMetadata"]["waiting"]) == (
        "running",
        None,
    )  # what replaces the pause's, as the client merges metadata
    assert rest[1] == (
        answer_seq,
        {"type": "tool-output-available", "toolCallId": "c1", "output": {"sky": "clear"}},
    )
    assert rest[2][1] == {"type": "start-step"}  # step 2 begins after the result
    assert rest[-1][1]["messageMetadata"]["status"] == "completed"


def test_a_stream_from_the_start_goes_through_an_answered_pause() -> None:
    """A resume (GET) of the turn after it went on: the pause is history."""
    script = a_client_tool_turn()
    whole, done = frames(script, after=0, settled=len(script.events), padding=False)
    assert done
    types = [c["type"] for _, c in whole]
    assert types.count("start") == 2
    assert types.count("finish") == 2
    assert types[-1] == "finish"


def test_resuming_after_any_seq_sends_exactly_the_rest() -> None:
    script = a_client_tool_turn()
    last = len(script.events)
    whole, _ = frames(script, after=0, settled=last, padding=True)
    assert [i for i, _ in whole if i is not None] == list(range(1, last + 1))
    for after in range(last + 1):
        rest, done = frames(script, after=after, settled=last, padding=True)
        cut = next((n for n, (i, _) in enumerate(whole) if i == after), -1) + 1
        assert rest == whole[cut:], after
        assert done


def test_a_partial_answer_ends_the_stream_with_the_calls_that_still_wait() -> None:
    script = Script(tools=(WEATHER, ToolSpec(function=FunctionSpec(name="get_time"))))
    script.call("c1", "get_weather", "{}").call("c2", "get_time", "{}").pause()
    paused_at = len(script.events)
    script.answer("c2", "noon")
    rest, done = frames(script, after=paused_at, settled=len(script.events), padding=False)
    assert done
    assert [c["type"] for _, c in rest] == ["start", "tool-output-available", "finish"]
    closing_id, closing = rest[-1]
    assert closing_id is None  # no event's seq: a resume after the answer gets the same
    assert closing["messageMetadata"]["waiting"]["call_ids"] == ["c1"]
    # A stream of the waiting turn from the start ends there too.
    whole, _ = frames(script, after=0, settled=len(script.events), padding=False)
    assert [c["type"] for _, c in whole][-3:] == ["start", "tool-output-available", "finish"]


def test_a_pause_after_the_settled_seq_ends_the_stream_before_the_rest() -> None:
    script = a_client_tool_turn()
    sent, done = frames(script, after=0, settled=1, padding=False)
    assert done
    assert sent[-1][1]["messageMetadata"]["status"] == "waiting"


def server_tool_turn(*, approved: bool | None) -> Script:
    """A server (MCP) tool that needs an approval; decided (or not yet: None)."""
    script = Script(tools=())
    script.call("s1", "delete_file", '{"path": "a"}', kind="server")
    script.add(script.progress.approval_requested("s1")).pause()
    if approved is None:
        return script
    script.decide("s1", approved=approved)
    if approved:
        script.add(script.go_on().result("s1", "deleted", is_error=False))
    return script.finish("Done.")


def test_server_calls_are_dynamic_parts_the_client_never_runs() -> None:
    chunks = [c for g in groups(server_tool_turn(approved=True)) for c in g]
    tool_chunks = [c for c in chunks if c["type"].startswith("tool-")]
    assert [c["type"] for c in tool_chunks] == [
        "tool-input-start",
        "tool-input-delta",
        "tool-input-available",
        "tool-output-available",
    ]
    for chunk in tool_chunks:
        if chunk["type"] != "tool-input-delta":
            assert (chunk["dynamic"], chunk["providerExecuted"]) == (True, True), chunk


def test_approvals_are_chunks_only_for_the_clients_that_know_them() -> None:
    script = server_tool_turn(approved=None)
    plain = [kinds(g) for g in groups(script)]
    assert not any("tool-approval-request" in g for g in plain)
    assert [] in plain  # the request is an event with no chunk: no id, resumes stay exact
    knowing = [c for g in groups(script, approvals=True) for c in g]
    (request,) = [c for c in knowing if c["type"] == "tool-approval-request"]
    assert request == {"type": "tool-approval-request", "approvalId": "s1", "toolCallId": "s1"}
    assert knowing[-1]["messageMetadata"]["waiting"]["reason"] == "approval"


def test_a_refusal_is_denied_for_clients_that_know_approvals_else_an_error_result() -> None:
    script = server_tool_turn(approved=False)
    knowing = [c for g in groups(script, approvals=True) for c in g]
    assert {"type": "tool-output-denied", "toolCallId": "s1"} in knowing
    assert not any(c["type"] == "tool-output-error" for c in knowing)
    plain = [c for g in groups(script) for c in g]
    assert not any(c["type"] == "tool-output-denied" for c in plain)
    (error,) = [c for c in plain if c["type"] == "tool-output-error"]
    assert "refused" in error["errorText"]
    assert "no" in error["errorText"]  # the reason


def test_unusable_arguments_and_unknown_tools_get_an_error_not_a_run() -> None:
    script = Script()
    script.call("c1", "get_weather", '{"city": ').call("u1", "nope", "{}", kind="unknown")
    chunks = [c for g in groups(script) for c in g]
    ready = [c["toolCallId"] for c in chunks if c["type"] == "tool-input-available"]
    assert ready == ["u1"]  # c1 is never offered to onToolCall
    errors = [c for c in chunks if c["type"] == "tool-output-error"]
    assert [c["toolCallId"] for c in errors] == ["c1", "u1"]
    assert "dynamic" not in errors[0]
    assert errors[1]["dynamic"] is True


def test_argument_deltas_ride_with_filler_in_a_comment() -> None:
    script = Script().call("c1", "get_weather", '{"city": "Oslo"}')

    async def read() -> str:
        chunks = [f async for f in ui_frames(_events(script.events, []), after=0, padding=True)]
        return b"".join(chunks).decode()

    body = asyncio.run(read())
    (block,) = [b for b in body.split("\n\n") if "tool-input-delta" in b]
    assert block.splitlines()[0].startswith(": ")


def parse(message: dict[str, Any]) -> UiMessage:
    return msgspec.convert(message, UiMessage)


def test_the_answers_are_the_parts_of_the_calls_that_wait() -> None:
    message = parse(
        {
            "id": "m1",
            "role": "assistant",
            "metadata": {"anything": 1},
            "parts": [
                {"type": "step-start"},
                {"type": "reasoning", "text": "Hm", "state": "done", "providerMetadata": {}},
                {"type": "tool-old", "toolCallId": "old", "state": "output-available", "output": 1},
                {"type": "step-start"},
                {
                    "type": "tool-get_weather",
                    "toolCallId": "c1",
                    "state": "output-available",
                    "input": {"city": "Oslo"},
                    "output": {"sky": "clear"},
                    "title": "Weather",
                },
                {
                    "type": "tool-get_time",
                    "toolCallId": "c2",
                    "state": "output-error",
                    "errorText": "x",
                },
                {"type": "tool-get_date", "toolCallId": "c3", "state": "input-available"},
                {
                    "type": "dynamic-tool",
                    "toolName": "delete_file",
                    "toolCallId": "s1",
                    "state": "approval-responded",
                    "approval": {"id": "s1", "approved": False, "reason": "not now"},
                },
                {"type": "data-title", "id": "title", "data": {"title": "T"}},
            ],
        }
    )
    assert message.calls_tools
    pending: dict[str, Any] = {"c1": "tool_result", "c2": "tool_result", "c3": "tool_result"}
    found = answers(message, pending | {"s1": "approval"})
    assert found.results == [
        ToolResult(call_id="c1", output={"sky": "clear"}),
        ToolResult(call_id="c2", output="x", is_error=True),
    ]
    assert found.approvals == [Approval(call_id="s1", approved=False, reason="not now")]
    # A result for a call that waits for a decision is no answer (nor is the reverse).
    assert answers(message, {"c1": "approval", "s1": "tool_result"}) == ([], [])


@pytest.mark.parametrize(
    "parts",
    [[], [{"type": "text", "text": "Hi", "state": "done"}], [{"type": "tool-x", "state": "x"}]],
)
def test_a_message_without_tool_calls_is_no_answer(parts: list[dict[str, Any]]) -> None:
    assert not parse({"role": "assistant", "parts": parts}).calls_tools
