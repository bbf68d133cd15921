"""Turn modes end to end: the message tree they build and exactly what the model sees.

The model is a real local OpenAI-compatible server (:class:`FakeOpenAI`) that records
every request, so each turn's prompt is checked message by message.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx

from tests.api.test_bad_input import assert_problem
from tests.api.test_openai_turns import llm_server as llm_server  # the fixture
from tests.api.test_turn_rules import post_turn
from tests.api.test_turn_stream import new_conversation
from tests.support.fake_openai import FakeOpenAI
from tests.support.fake_openai import fake_openai as fake_openai  # the fixture
from tests.support.server import Frame, Server, parse_sse

SYSTEM = {"role": "system", "content": "Be brief."}

Shape = tuple[str, str | None, str, str, str, list[str]]
"""A message as (id, parent_id, role, content, status, children)."""


def user(content: str) -> dict[str, str]:
    return {"role": "user", "content": content}


def assistant(content: str) -> dict[str, str]:
    return {"role": "assistant", "content": content}


def view(server: Server, cid: str) -> dict[str, Any]:
    r = httpx.get(f"{server.base_url}/v1/conversations/{cid}", headers=server.headers())
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def shape(conversation: dict[str, Any]) -> list[Shape]:
    return [
        (m["id"], m["parent_id"], m["role"], m["content"], m["status"], m["children"])
        for m in conversation["messages"]
    ]


def message(conversation: dict[str, Any], message_id: str) -> dict[str, Any]:
    found: dict[str, Any] = next(m for m in conversation["messages"] if m["id"] == message_id)
    return found


def turn(
    server: Server, fake: FakeOpenAI, cid: str, body: dict[str, str]
) -> tuple[list[Frame], list[dict[str, str]]]:
    """Run a turn to its end: its frames, and the messages the model was sent for it."""
    before = len(fake.requests)
    frames = post_turn(server, cid, body)
    assert frames[-1].event in ("final", "error")
    sent = fake.requests[before:]
    # One request, and when the model server failed before answering, its retries: the
    # same request again.
    assert sent, "a turn sends the model a request"
    assert all(r == sent[0] for r in sent), "a retry is the same request"
    messages: list[dict[str, str]] = sent[0]["messages"]
    return frames, messages


def test_each_mode_grows_the_tree_and_shows_the_model_the_path_to_the_new_answer(
    llm_server: Server, fake_openai: FakeOpenAI
) -> None:
    server, fake = llm_server, fake_openai
    cid = new_conversation(server, system_prompt="Be brief.")

    def answered(frames: list[Frame], usage: tuple[int, int]) -> dict[str, Any]:
        """Read your writes: one GET right after the final frame shows the whole answer."""
        assert frames[-1].event == "final"
        assert frames[-1].data["status"] == "completed"
        now = view(server, cid)
        answer = message(now, frames[0].data["assistant_message_id"])
        assert answer["status"] == "complete"
        assert answer["content"] == frames[-1].data["text"]
        assert answer["model"] == "local"
        assert answer["turn_id"] == frames[0].data["turn_id"]
        assert answer["usage"] == {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "estimated": False,
        }
        assert now["current_leaf_id"] == answer["id"]
        assert now["active_turn"] is None
        return now

    # A first message: a root user message and its answer.
    fake.script(chunks=["Hello", "!"], usage=(5, 2))
    frames, sent = turn(server, fake, cid, {"content": "Hi"})
    hi, hello = frames[0].data["user_message_id"], frames[0].data["assistant_message_id"]
    assert frames[0].data["parent_id"] is None
    now = answered(frames, (5, 2))
    assert shape(now) == [
        (hi, None, "user", "Hi", "complete", [hello]),
        (hello, hi, "assistant", "Hello!", "complete", []),
    ]
    assert message(now, hi)["model"] is None
    assert sent == [SYSTEM, user("Hi")]

    # A second message follows the current leaf.
    fake.script(chunks=["Then", " this."], usage=(9, 2))
    frames, sent = turn(server, fake, cid, {"content": "And then?"})
    then, this = frames[0].data["user_message_id"], frames[0].data["assistant_message_id"]
    assert frames[0].data["parent_id"] == hello
    now = answered(frames, (9, 2))
    assert shape(now) == [
        (hi, None, "user", "Hi", "complete", [hello]),
        (hello, hi, "assistant", "Hello!", "complete", [then]),
        (then, hello, "user", "And then?", "complete", [this]),
        (this, then, "assistant", "Then this.", "complete", []),
    ]
    assert sent == [SYSTEM, user("Hi"), assistant("Hello!"), user("And then?")]

    # Retry the second answer: a new assistant sibling answers the same prompt.
    fake.script(chunks=["Or", " that."], usage=(9, 3))
    frames, sent = turn(server, fake, cid, {"mode": "retry", "message_id": this})
    assert frames[0].data["mode"] == "retry"
    assert frames[0].data["user_message_id"] is None
    assert frames[0].data["parent_id"] == then
    that = frames[0].data["assistant_message_id"]
    now = answered(frames, (9, 3))
    assert shape(now) == [
        (hi, None, "user", "Hi", "complete", [hello]),
        (hello, hi, "assistant", "Hello!", "complete", [then]),
        (then, hello, "user", "And then?", "complete", [this, that]),
        (this, then, "assistant", "Then this.", "complete", []),
        (that, then, "assistant", "Or that.", "complete", []),
    ]
    assert sent == [SYSTEM, user("Hi"), assistant("Hello!"), user("And then?")]

    # Edit the second user message: a new user sibling and its answer.
    fake.script(chunks=["Next", " is"], reasoning=["Hmm"], usage=(8, 2))
    frames, sent = turn(
        server, fake, cid, {"mode": "edit", "message_id": then, "content": "What next?"}
    )
    assert frames[0].data["mode"] == "edit"
    assert frames[0].data["parent_id"] == hello
    what, nxt = frames[0].data["user_message_id"], frames[0].data["assistant_message_id"]
    now = answered(frames, (8, 2))
    assert shape(now) == [
        (hi, None, "user", "Hi", "complete", [hello]),
        (hello, hi, "assistant", "Hello!", "complete", [then, what]),
        (then, hello, "user", "And then?", "complete", [this, that]),
        (this, then, "assistant", "Then this.", "complete", []),
        (that, then, "assistant", "Or that.", "complete", []),
        (what, hello, "user", "What next?", "complete", [nxt]),
        (nxt, what, "assistant", "Next is", "complete", []),
    ]
    assert sent == [SYSTEM, user("Hi"), assistant("Hello!"), user("What next?")]

    # Continue the leaf answer: the same message grows; the model sees the text so far.
    fake.script(chunks=[" more", "."], reasoning=[", still"], usage=(12, 2))
    frames, sent = turn(server, fake, cid, {"mode": "continue", "message_id": nxt})
    assert frames[0].data["mode"] == "continue"
    assert frames[0].data["user_message_id"] is None
    assert frames[0].data["assistant_message_id"] == nxt
    assert frames[0].data["parent_id"] == what
    assert "".join(f.data["text"] for f in frames if f.event == "token") == " more."
    assert frames[-1].data["text"] == "Next is more."
    assert frames[-1].data["reasoning"] == "Hmm, still"
    now = answered(frames, (12, 2))
    assert message(now, nxt)["reasoning"] == "Hmm, still"
    assert shape(now) == [
        (hi, None, "user", "Hi", "complete", [hello]),
        (hello, hi, "assistant", "Hello!", "complete", [then, what]),
        (then, hello, "user", "And then?", "complete", [this, that]),
        (this, then, "assistant", "Then this.", "complete", []),
        (that, then, "assistant", "Or that.", "complete", []),
        (what, hello, "user", "What next?", "complete", [nxt]),
        (nxt, what, "assistant", "Next is more.", "complete", []),
    ]
    assert sent == [
        SYSTEM,
        user("Hi"),
        assistant("Hello!"),
        user("What next?"),
        assistant("Next is"),
    ]

    # A message with an explicit parent_id branches from an older answer.
    fake.script(chunks=["Back", " again."], usage=(14, 2))
    frames, sent = turn(server, fake, cid, {"content": "Back here", "parent_id": this})
    assert frames[0].data["parent_id"] == this
    back, again = frames[0].data["user_message_id"], frames[0].data["assistant_message_id"]
    now = answered(frames, (14, 2))
    assert shape(now) == [
        (hi, None, "user", "Hi", "complete", [hello]),
        (hello, hi, "assistant", "Hello!", "complete", [then, what]),
        (then, hello, "user", "And then?", "complete", [this, that]),
        (this, then, "assistant", "Then this.", "complete", [back]),
        (that, then, "assistant", "Or that.", "complete", []),
        (what, hello, "user", "What next?", "complete", [nxt]),
        (nxt, what, "assistant", "Next is more.", "complete", []),
        (back, this, "user", "Back here", "complete", [again]),
        (again, back, "assistant", "Back again.", "complete", []),
    ]
    assert sent == [
        SYSTEM,
        user("Hi"),
        assistant("Hello!"),
        user("And then?"),
        assistant("Then this."),
        user("Back here"),
    ]
    # Every request went to the configured model, streamed.
    assert {(r["model"], r["stream"]) for r in fake.requests} == {("served-name", True)}


def test_invalid_targets_are_problems_and_store_nothing(
    llm_server: Server, fake_openai: FakeOpenAI, event_count: Callable[[], int]
) -> None:
    server = llm_server
    # A conversation hi → hello → then → this, and another one of the same user.
    cid = new_conversation(server, system_prompt="Be brief.")
    first = post_turn(server, cid, {"content": "Hi"})
    hi, hello = first[0].data["user_message_id"], first[0].data["assistant_message_id"]
    second = post_turn(server, cid, {"content": "And then?"})
    then = second[0].data["user_message_id"]
    other_cid = new_conversation(server)
    elsewhere = post_turn(server, other_cid, {"content": "Elsewhere"})[0].data
    before_view, before_events = view(server, cid), event_count()

    turns = f"{server.base_url}/v1/conversations/{cid}/turns"
    auth = server.headers()
    unknown = str(uuid.uuid4())
    invalid: list[dict[str, str]] = [
        {"mode": "retry", "message_id": hi},  # a user message
        {"mode": "retry"},  # which answer?
        {"mode": "edit", "message_id": hello, "content": "x"},  # an assistant message
        {"mode": "edit", "message_id": then},  # no new text
        {"mode": "edit", "message_id": then, "content": "   "},
        {"mode": "continue", "message_id": hello},  # it has replies
        {"mode": "continue", "message_id": then},  # a user message
        {"content": "x", "message_id": hello},  # message takes parent_id
        {"content": "x", "parent_id": hi},  # a reply follows an answer
    ]
    for body in invalid:
        assert_problem(httpx.post(turns, json=body, headers=auth), 400, "invalid_request")
    not_found: list[dict[str, str]] = [
        {"mode": "retry", "message_id": elsewhere["assistant_message_id"]},
        {"mode": "edit", "message_id": elsewhere["user_message_id"], "content": "x"},
        {"mode": "continue", "message_id": elsewhere["assistant_message_id"]},
        {"content": "x", "parent_id": elsewhere["assistant_message_id"]},
        {"mode": "retry", "message_id": unknown},
        {"content": "x", "parent_id": unknown},
    ]
    for body in not_found:
        assert_problem(httpx.post(turns, json=body, headers=auth), 404, "message_not_found")

    assert event_count() == before_events
    assert view(server, cid) == before_view
    # Nothing was asked of the model either: two turns here, one in the other conversation.
    assert len(fake_openai.requests) == 3


def test_cancelled_and_failed_answers_keep_their_status_and_a_failed_one_can_be_retried(
    llm_server: Server, fake_openai: FakeOpenAI
) -> None:
    server, fake = llm_server, fake_openai
    cid = new_conversation(server, system_prompt="Be brief.")
    fake.script(chunks=["Hello."])
    hi = post_turn(server, cid, {"content": "Hi"})[0].data

    # The provider fails: the turn ends with an error, the answer is marked failed.
    fake.script(status=500, error_message="boom")
    frames, sent = turn(server, fake, cid, {"content": "Break"})
    assert frames[-1].event == "error"
    assert frames[-1].data["code"] == "provider_error"
    broken_user = frames[0].data["user_message_id"]
    broken = frames[0].data["assistant_message_id"]
    now = view(server, cid)
    assert message(now, broken)["status"] == "failed"
    assert message(now, broken)["content"] == ""
    assert now["current_leaf_id"] == broken
    assert now["active_turn"] is None

    # Retry the failed answer: a completed sibling, for the same prompt.
    fake.script(chunks=["Fixed."])
    frames, sent = turn(server, fake, cid, {"mode": "retry", "message_id": broken})
    assert frames[-1].event == "final"
    fixed = frames[0].data["assistant_message_id"]
    assert frames[0].data["parent_id"] == broken_user
    assert sent == [SYSTEM, user("Hi"), assistant("Hello."), user("Break")]
    now = view(server, cid)
    assert message(now, broken_user)["children"] == [broken, fixed]
    assert (message(now, broken)["status"], message(now, fixed)["status"]) == (
        "failed",
        "complete",
    )
    assert message(now, fixed)["content"] == "Fixed."

    # A reply under the failed (empty) answer: the model is not shown an empty message.
    fake.script(chunks=["Yes."])
    frames, sent = turn(server, fake, cid, {"content": "Still there?", "parent_id": broken})
    assert frames[-1].event == "final"
    assert sent == [
        SYSTEM,
        user("Hi"),
        assistant("Hello."),
        user("Break"),
        user("Still there?"),
    ]

    # Cancel a slow answer after two tokens: it ends interrupted and keeps its text.
    fake.script(chunks=[f"w{i} " for i in range(200)], delay_s=0.05)
    cancelled: list[Frame] = []
    with httpx.stream(
        "POST",
        f"{server.base_url}/v1/conversations/{cid}/turns",
        json={"content": "Talk for long", "parent_id": hi["assistant_message_id"]},
        headers=server.headers(),
        timeout=60,
    ) as r:
        assert r.status_code == 200
        for item in parse_sse(r.iter_lines()):
            if not isinstance(item, Frame):
                continue
            cancelled.append(item)
            if sum(f.event == "token" for f in cancelled) == 2:
                # While it runs, the tree shows the answer streaming and the active turn.
                tid = cancelled[0].data["turn_id"]
                running = view(server, cid)
                assert running["active_turn"] is not None, (cancelled, running, server.log())
                assert running["active_turn"]["turn_id"] == tid
                assert running["active_turn"]["last_seq"] >= len(cancelled)
                answer = message(running, cancelled[0].data["assistant_message_id"])
                assert answer["status"] == "streaming"
                url = f"{server.base_url}/v1/conversations/{cid}/turns/{tid}/cancel"
                assert httpx.post(url, headers=server.headers()).status_code == 202
    assert cancelled[-1].event == "final"
    assert cancelled[-1].data["status"] == "interrupted"
    partial = cancelled[-1].data["text"]
    assert partial == "".join(f.data["text"] for f in cancelled if f.event == "token")
    assert partial.startswith("w0 w1 ")
    interrupted = cancelled[0].data["assistant_message_id"]
    now = view(server, cid)
    assert message(now, interrupted)["status"] == "interrupted"
    assert message(now, interrupted)["content"] == partial
    assert message(now, interrupted)["usage"]["estimated"] is True
    assert now["active_turn"] is None

    # The interrupted answer can be continued: the same message, old text + new text.
    fake.script(chunks=["done."], usage=(30, 1))
    frames, sent = turn(server, fake, cid, {"mode": "continue", "message_id": interrupted})
    assert frames[-1].data["text"] == partial + "done."
    assert sent[-1] == assistant(partial)
    now = view(server, cid)
    assert message(now, interrupted)["status"] == "complete"
    assert message(now, interrupted)["content"] == partial + "done."
