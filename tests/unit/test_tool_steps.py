"""Tools in the domain: declared tools are checked, a turn's steps and calls fold the same
way from events as the running turn's progress keeps them, and a waiting turn takes
only the answers it waits for."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.events import a_started
from turnstream.domain.errors import Invalid, ToolCallNotPending, TurnEnded
from turnstream.domain.progress import Draft, TurnProgress
from turnstream.domain.tools import FunctionSpec, ToolSpec, check_tools, parse_arguments
from turnstream.domain.turn import Turn, TurnEvent, TurnUsage

WEATHER = ToolSpec(
    function=FunctionSpec(
        name="get_weather",
        parameters={
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    )
)


def tool(name: str, parameters: dict[str, Any] | None = None) -> ToolSpec:
    return ToolSpec(function=FunctionSpec(name=name, parameters=parameters or {"type": "object"}))


def test_well_formed_tools_pass_the_check() -> None:
    check_tools([WEATHER, tool("search-web"), tool("x_1")])


@pytest.mark.parametrize(
    ("tools", "reason"),
    [
        ([tool("has space")], "letters, digits"),
        ([tool("a"), tool("a")], "given twice"),
        (
            [tool("bad", {"type": "object", "properties": {"x": {"type": "nonsense"}}})],
            "valid JSON",
        ),
        ([tool("list", {"type": "array"})], "describe an object"),
    ],
)
def test_a_malformed_tool_is_invalid_with_the_reason(tools: list[ToolSpec], reason: str) -> None:
    with pytest.raises(Invalid, match=reason):
        check_tools(tools)


def test_arguments_parse_as_a_json_object_or_say_why_not() -> None:
    assert parse_arguments('{"city": "Oslo"}') == ({"city": "Oslo"}, None)
    assert parse_arguments("") == ({}, None)
    assert parse_arguments('{"city": ') == (None, "The arguments are not valid JSON.")
    assert parse_arguments("[1]") == (None, "The arguments are not a JSON object.")


def numbered(started: Turn.Started, drafts: list[Draft | None]) -> list[TurnEvent]:
    real = [d for d in drafts if d is not None]
    return [started, *(d.event(v) for v, d in enumerate(real, 2))]


def a_paused_turn() -> tuple[Turn.Started, TurnProgress, list[Draft | None]]:
    """Step 1 streams text and two calls (a client tool, a server tool needing
    approval), then pauses for both."""
    started = a_started(tools=(WEATHER,))
    p = TurnProgress(started)
    drafts: list[Draft | None] = [
        p.append_text("Let me check."),
        p.call_started("c1", "get_weather"),
        p.call_arguments("c1", '{"city":'),
        p.call_arguments("c1", ' "Oslo"}'),
        p.call_started("c2", "delete_file"),
        p.call_arguments("c2", '{"path": "a"}'),
        p.call_ready("c1", "client")[0],
        p.call_ready("c2", "server", "files")[0],
        p.approval_requested("c2"),
        p.step_finished("tool_calls", TurnUsage(prompt_tokens=10, completion_tokens=5)),
    ]
    waiting = p.steps.waiting()
    assert waiting == ("approval", ["c2"])
    drafts.append(p.wait(*waiting, wait_s=60))
    return started, p, drafts


def test_the_folded_turn_and_the_progress_agree_on_steps_calls_and_the_wait() -> None:
    started, progress, drafts = a_paused_turn()
    turn = Turn.fold(numbered(started, drafts))
    assert turn is not None
    assert turn.waiting == ("approval", ["c2"])
    assert turn.text == "Let me check."
    calls = turn.steps.calls
    assert calls["c1"].arguments == {"city": "Oslo"}
    assert calls["c1"].kind == "client"
    assert calls["c2"].server == "files"
    assert calls["c2"].approval == "requested"
    assert turn.steps_usage == TurnUsage(prompt_tokens=10, completion_tokens=5)
    assert [c.call_id for c in turn.steps.last_calls] == [
        c.call_id for c in progress.steps.last_calls
    ]
    # The pause ends this runner: nothing more may be made by it.
    with pytest.raises(TurnEnded):
        progress.append_text("more")


def test_answers_resolve_the_wait_in_order_approval_first_then_the_clients_result() -> None:
    started, _, drafts = a_paused_turn()
    turn = Turn.fold(numbered(started, drafts))
    assert turn is not None
    with pytest.raises(ToolCallNotPending) as not_yet:
        turn.answer("c2", "done")  # c2 is a server call: no client answers it
    assert not_yet.value.code == "tool_call_not_pending"
    decided = turn.decide("c2", approved=True, by="alice")
    assert [type(e) for e in decided] == [Turn.ApprovalDecided]
    assert turn.waiting == ("tool_result", ["c1"])  # still waits, for the client now
    assert [c.call_id for c in turn.steps.to_run()] == ["c2"]
    result = turn.answer("c1", {"temp_c": 4})
    assert result.originator_version == decided[-1].originator_version + 1
    assert turn.waiting is None


def test_a_refusal_is_also_the_calls_error_result() -> None:
    started, _, drafts = a_paused_turn()
    turn = Turn.fold(numbered(started, drafts))
    assert turn is not None
    events = turn.decide("c2", approved=False, by="alice", reason="not today")
    assert isinstance(events[1], Turn.ToolResultRecorded)
    assert events[1].is_error
    assert "not today" in events[1].output
    assert turn.steps.to_run() == []


@pytest.mark.parametrize(
    ("call_id", "code"),
    [("nope", "unknown_tool_call"), ("c1", "tool_call_answered")],
)
def test_a_stale_or_repeated_answer_has_its_code(call_id: str, code: str) -> None:
    started, _, drafts = a_paused_turn()
    turn = Turn.fold(numbered(started, drafts))
    assert turn is not None
    turn.answer("c1", "sunny")
    with pytest.raises(ToolCallNotPending) as refused:
        turn.answer(call_id, "again")
    assert refused.value.code == code


def test_a_waiting_turn_ends_with_its_text_and_the_steps_usage() -> None:
    started, _, drafts = a_paused_turn()
    turn = Turn.fold(numbered(started, drafts))
    assert turn is not None
    cancelled = turn.end_waiting(code=None)
    assert isinstance(cancelled, Turn.Finished)
    assert cancelled.status == "interrupted"
    assert cancelled.text == "Let me check."
    timed_out = turn.end_waiting(code="tool_timeout", message="too long")
    assert isinstance(timed_out, Turn.Failed)
    assert timed_out.usage == turn.steps_usage
    turn.apply(cancelled)
    with pytest.raises(ToolCallNotPending) as late:
        turn.answer("c1", "x")
    assert late.value.code == "turn_not_waiting"


def test_a_resumed_progress_continues_the_text_and_the_next_step() -> None:
    started, _, drafts = a_paused_turn()
    turn = Turn.fold(numbered(started, drafts))
    assert turn is not None
    turn.decide("c2", approved=True, by="alice")
    turn.answer("c1", "sunny")
    progress = TurnProgress.resume(turn)
    result = progress.result("c2", "deleted", is_error=False)
    text = progress.append_text(" It is sunny.")
    assert progress.steps.number == 2  # text after a finished step opens the next
    end = progress.finish(finish_reason="stop", usage=TurnUsage())
    assert end.text == "Let me check. It is sunny."
    assert result is not None
    assert text is not None
