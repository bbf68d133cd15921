"""A chat client's trigger and message ids become ordinary turn requests; the UI message
stream's chunks, groups and ids (no database, no server)."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

import pytest

from turnstream.domain.chats import ChatTurn, chat_request, check_chat_id
from turnstream.domain.errors import Invalid
from turnstream.domain.turn import Turn, TurnEvent, TurnUsage
from turnstream.http.uistream import UiStream, encode_group
from turnstream.ids import uuid7

HI, HELLO, AGAIN = uuid7(), uuid7(), uuid7()


def tree() -> dict[UUID, dict[str, Any]]:
    """hi (client id c-hi) ── hello, and a second answer to hi: again (the leaf)."""
    rows = [
        {"id": HI, "parent_id": None, "role": "user", "content": "Hi", "client_id": "c-hi"},
        {"id": HELLO, "parent_id": HI, "role": "assistant", "content": "Hello!"},
        {"id": AGAIN, "parent_id": HI, "role": "assistant", "content": "Hello again!"},
    ]
    return {r["id"]: r for r in rows}


def test_a_new_client_message_is_a_message_under_the_leaf() -> None:
    chat = ChatTurn(trigger="submit-message", client_message_id="c-2", text=" More? ")
    request = chat_request(chat, tree(), AGAIN)
    assert (request.mode, request.content, request.parent_id) == ("message", "More?", None)
    assert request.client_message_id == "c-2"


def test_a_known_client_id_with_other_text_is_an_edit_of_that_message() -> None:
    chat = ChatTurn(trigger="submit-message", client_message_id="c-hi", text="Hey")
    request = chat_request(chat, tree(), AGAIN)
    assert (request.mode, request.message_id, request.content) == ("edit", HI, "Hey")
    assert request.client_message_id == "c-hi"


def test_a_known_client_id_with_the_same_text_asks_again() -> None:
    chat = ChatTurn(trigger="submit-message", client_message_id="c-hi", text="Hi")
    request = chat_request(chat, tree(), AGAIN)
    assert (request.mode, request.message_id, request.client_message_id) == ("retry", AGAIN, None)


# Named ids: the values are uuid7s made at import, and parallel workers (pytest-xdist)
# must each collect the same test names.
@pytest.mark.parametrize(
    ("message_id", "target"),
    [(None, AGAIN), (str(HELLO), HELLO), (str(AGAIN), AGAIN)],
    ids=["leaf", "hello", "again"],
)
def test_regenerate_retries_the_named_answer_or_the_leaf(
    message_id: str | None, target: UUID
) -> None:
    chat = ChatTurn(trigger="regenerate-message", message_id=message_id)
    request = chat_request(chat, tree(), AGAIN)
    assert (request.mode, request.message_id) == ("retry", target)


@pytest.mark.parametrize(
    "message_id", [str(HI), "nope", str(uuid7())], ids=["question", "nope", "unknown"]
)
def test_regenerating_what_is_no_answer_of_the_chat_is_refused(message_id: str) -> None:
    with pytest.raises(Invalid, match="no answer"):
        chat_request(ChatTurn(trigger="regenerate-message", message_id=message_id), tree(), AGAIN)


def test_a_submit_without_text_and_a_bad_chat_id_are_refused() -> None:
    with pytest.raises(Invalid):
        chat_request(ChatTurn(trigger="submit-message", text="  "), tree(), AGAIN)
    with pytest.raises(Invalid):
        chat_request(ChatTurn(trigger="regenerate-message"), {}, None)
    for bad in ["", "a/b", "x" * 129, "é", "a b"]:
        with pytest.raises(Invalid):
            check_chat_id(bad)
    assert check_chat_id("Ab_9-" + "x" * 123) == "Ab_9-" + "x" * 123


TURN, CID, ANSWER = uuid7(), uuid7(), uuid7()


def events(*kinds: tuple[str, str]) -> list[TurnEvent]:
    common = {"originator_id": TURN}
    out: list[TurnEvent] = [
        Turn.start(
            TURN,
            conversation_id=CID,
            tenant="acme",
            user_id="alice",
            node_id=uuid7(),
            mode="message",
            user_message_id=uuid7(),
            assistant_message_id=ANSWER,
            parent_id=None,
            model="demo",
            content="Hi",
        )
    ]
    for seq, (kind, text) in enumerate(kinds, start=2):
        at = out[0].timestamp
        if kind == "r":
            out.append(
                Turn.ReasoningAppended(**common, originator_version=seq, timestamp=at, text=text)
            )
        elif kind == "t":
            out.append(
                Turn.TokensAppended(**common, originator_version=seq, timestamp=at, text=text)
            )
        elif kind == "final":
            out.append(
                Turn.Finished(
                    **common,
                    originator_version=seq,
                    timestamp=at,
                    status=text,
                    text="",
                    usage=TurnUsage(),
                )
            )
        else:
            out.append(
                Turn.Failed(
                    **common, originator_version=seq, timestamp=at, code=kind, message=text, text=""
                )
            )
    return out


def types(stream: UiStream, event: TurnEvent) -> list[str]:
    return [c["type"] for c in stream.chunks(event)]


def test_parts_open_before_their_first_delta_and_close_before_the_end() -> None:
    turn = events(("r", "Hmm"), ("r", "."), ("t", "Hel"), ("t", "lo"), ("final", "completed"))
    stream = UiStream()
    groups = [types(stream, e) for e in turn]
    assert groups == [
        ["start", "start-step"],
        ["reasoning-start", "reasoning-delta"],
        ["reasoning-delta"],
        ["reasoning-end", "text-start", "text-delta"],
        ["text-delta"],
        ["text-end", "finish-step", "finish"],
    ]
    assert UiStream().chunks(turn[0])[0]["messageId"] == str(ANSWER)


def test_a_cancel_is_an_abort_and_a_failure_an_error_with_its_code() -> None:
    stream = UiStream()
    cancelled = events(("t", "Hel"), ("final", "interrupted"))
    assert [types(stream, e) for e in cancelled][-1] == [
        "text-end",
        "finish-step",
        "message-metadata",
        "abort",
    ]
    stream = UiStream()
    failed = events(("t", "Hel"), ("provider_error", "The model failed."))
    *_, last = [stream.chunks(e) for e in failed]
    assert last[-1] == {"type": "error", "errorText": "provider_error: The model failed."}


def test_only_a_groups_last_chunk_has_the_seq_and_filler_rides_in_comments() -> None:
    turn = events(("r", "Hmm"), ("t", "Hello"))
    stream = UiStream()
    for event in turn:
        raw = encode_group(event, stream.chunks(event), padding=True).decode()
        blocks = [b for b in raw.split("\n\n") if b]
        ids = [line for b in blocks for line in b.splitlines() if line.startswith("id:")]
        assert ids == [f"id: {event.originator_version}"]
        assert blocks[-1].splitlines()[-2] == f"id: {event.originator_version}"
        for block in blocks:
            data = [line for line in block.splitlines() if line.startswith("data: ")]
            chunk = json.loads(data[0].removeprefix("data: "))
            assert "p" not in chunk  # the strict client knows no such field
            comments = [line for line in block.splitlines() if line.startswith(": ")]
            assert bool(comments) == ("delta" in chunk)
