"""The chat history's shape (``http.uihistory``): the branch to the current leaf only,
the running turn's answer left out, steps and tool calls as the stream makes them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

from turnstream.http.uihistory import answer_parts, ui_history
from turnstream.projections.views import ActiveTurn, AttachmentView, ConversationView, MessageView

NOW = datetime(2026, 12, 7, tzinfo=UTC)


def message(
    role: str, parent: MessageView | None, text: str, turn: UUID | None = None, **more: Any
) -> MessageView:
    return MessageView(
        id=uuid4(),
        parent_id=parent.id if parent else None,
        role=role,  # type: ignore[arg-type]
        content=text,
        reasoning="",
        status=more.pop("status", "complete"),
        model="demo" if role == "assistant" else None,
        turn_id=turn or uuid4(),
        children=[],
        created_at=NOW,
        parts=[{"type": "text", "text": text}] if role == "assistant" else [],
        **more,
    )


def view(messages: list[MessageView], leaf: MessageView, running: UUID | None = None) -> Any:
    return ConversationView(
        id=uuid4(),
        title=None,
        model="demo",
        system_prompt=None,
        created_at=NOW,
        updated_at=NOW,
        messages=messages,
        current_leaf_id=leaf.id,
        active_turn=None if running is None else ActiveTurn(turn_id=running, last_seq=3),
    )


def test_only_the_current_branch_is_given_root_first() -> None:
    q1 = message("user", None, "first", client_id="c1")
    a1 = message("assistant", q1, "one", q1.turn_id)
    old = message("user", a1, "old question")
    old_answer = message("assistant", old, "old answer", old.turn_id)
    edited = message("user", a1, "edited question")
    new_answer = message("assistant", edited, "new answer", edited.turn_id)
    messages = [q1, a1, old, old_answer, edited, new_answer]
    given = ui_history(view(messages, new_answer))
    assert [m["id"] for m in given] == ["c1", str(a1.id), str(edited.id), str(new_answer.id)]
    assert [m["parts"][-1]["text"] for m in given] == [
        "first",
        "one",
        "edited question",
        "new answer",
    ]
    assert given[1]["metadata"]["status"] == "completed"
    older = ui_history(view(messages, old_answer))
    assert [m["parts"][-1]["text"] for m in older][2:] == ["old question", "old answer"]


def test_the_running_answer_is_left_to_the_resumed_stream() -> None:
    q = message("user", None, "question")
    running = message("assistant", q, "half an ans", q.turn_id, status="streaming")
    given = ui_history(view([q, running], running, running=q.turn_id))
    assert [m["role"] for m in given] == ["user"]


def test_files_come_before_the_text_and_name_this_servers_urls() -> None:
    fid = uuid4()
    image = AttachmentView(id=fid, name="a.png", media_type="image/png", bytes=9, width=2, height=1)
    q = message("user", None, "", attachments=[image])
    (given,) = ui_history(view([q], q))
    assert given["parts"] == [
        {"type": "file", "mediaType": "image/png", "filename": "a.png", "url": f"/v1/files/{fid}"}
    ]


def call(kind: str, state: str, **more: Any) -> dict[str, Any]:
    base = {"type": "tool_call", "call_id": "c1", "name": "weather", "arguments": {"city": "X"}}
    return base | {"kind": kind, "state": state, "output": None} | more


def test_steps_begin_the_answer_and_again_after_calls() -> None:
    parts = [
        {"type": "reasoning", "text": "think"},
        call("client", "output-available", output={"sky": "clear"}),
        {"type": "text", "text": "It is clear."},
    ]
    assert answer_parts(parts, approvals=False) == [
        {"type": "step-start"},
        {"type": "reasoning", "text": "think", "state": "done"},
        {
            "type": "tool-weather",
            "toolCallId": "c1",
            "state": "output-available",
            "input": {"city": "X"},
            "output": {"sky": "clear"},
        },
        {"type": "step-start"},
        {"type": "text", "text": "It is clear.", "state": "done"},
    ]


def test_a_server_call_is_dynamic_and_an_approval_shows_only_to_clients_that_know_it() -> None:
    (failed,) = answer_parts([call("server", "output-error", output="boom")], approvals=False)
    assert failed == {
        "type": "dynamic-tool",
        "toolName": "weather",
        "toolCallId": "c1",
        "state": "output-error",
        "input": {"city": "X"},
        "errorText": "boom",
        "providerExecuted": True,
    }
    asking = [call("server", "approval-requested")]
    (old,) = answer_parts(asking, approvals=False)
    assert old["state"] == "input-available"
    assert "approval" not in old
    (new,) = answer_parts(asking, approvals=True)
    assert (new["state"], new["approval"]) == ("approval-requested", {"id": "c1"})
