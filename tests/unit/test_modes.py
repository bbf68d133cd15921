"""Where each turn mode puts the new messages, and what the model is shown (no database)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import pytest

from turnstream.domain.errors import Invalid, MessageNotFound
from turnstream.domain.modes import Row, TurnRequest, path_to, plan_turn
from turnstream.ids import uuid7

# The tree every test starts from, as the tree projection would hand it over:
#
#   hi ── hello ─┬─ how ─┬─ like_so
#                │       └─ another_way      (a retry of like_so)
#                └─ why ─── because          (an edit of how; because is the leaf)
HI, HELLO, HOW, LIKE_SO, ANOTHER_WAY, WHY, BECAUSE = (uuid7() for _ in range(7))


def row(message_id: UUID, parent_id: UUID | None, role: str, content: str, **more: Any) -> Row:
    return {
        "id": message_id,
        "parent_id": parent_id,
        "role": role,
        "content": content,
        "reasoning": "",
        **more,
    }


def tree() -> dict[UUID, Row]:
    rows = [
        row(HI, None, "user", "Hi"),
        row(HELLO, HI, "assistant", "Hello!"),
        row(HOW, HELLO, "user", "How?"),
        row(LIKE_SO, HOW, "assistant", "Like so."),
        row(ANOTHER_WAY, HOW, "assistant", "Another way."),
        row(WHY, HELLO, "user", "Why?"),
        row(BECAUSE, WHY, "assistant", "Because", reasoning="thinking"),
    ]
    return {r["id"]: r for r in rows}


def ids(rows: list[Row]) -> list[UUID]:
    return [r["id"] for r in rows]


# path_to


def test_path_to_runs_from_the_root_down_to_the_message() -> None:
    assert ids(path_to(tree(), LIKE_SO)) == [HI, HELLO, HOW, LIKE_SO]
    assert ids(path_to(tree(), BECAUSE)) == [HI, HELLO, WHY, BECAUSE]
    assert ids(path_to(tree(), HI)) == [HI]


def test_path_to_nothing_or_an_unknown_message_is_empty() -> None:
    assert path_to(tree(), None) == []
    assert path_to(tree(), uuid7()) == []


def test_path_to_stops_at_a_cycle_instead_of_looping() -> None:
    a, b = uuid7(), uuid7()
    looped = {a: row(a, b, "user", "a"), b: row(b, a, "assistant", "b")}

    # Each message once, ending at the one asked for.
    assert ids(path_to(looped, a)) == [b, a]


# message


def test_a_message_follows_the_current_leaf_by_default() -> None:
    plan = plan_turn(TurnRequest(content="  And then?  "), tree(), BECAUSE)

    assert plan.parent_id == BECAUSE
    assert plan.content == "And then?"
    assert plan.assistant_message_id is None
    assert plan.prefix == ""
    assert ids(plan.history) == [HI, HELLO, WHY, BECAUSE]


def test_the_first_message_of_a_conversation_is_a_root() -> None:
    plan = plan_turn(TurnRequest(content="Hi"), {}, None)

    assert plan.parent_id is None
    assert plan.content == "Hi"
    assert plan.history == []


def test_a_message_with_a_parent_id_branches_from_that_older_answer() -> None:
    plan = plan_turn(TurnRequest(content="Back here", parent_id=LIKE_SO), tree(), BECAUSE)

    assert plan.parent_id == LIKE_SO
    assert ids(plan.history) == [HI, HELLO, HOW, LIKE_SO]


def test_a_message_needs_content() -> None:
    for content in (None, "", "   \n"):
        with pytest.raises(Invalid, match="content"):
            plan_turn(TurnRequest(content=content), tree(), BECAUSE)


def test_a_message_takes_a_parent_id_not_a_message_id() -> None:
    with pytest.raises(Invalid, match="message_id"):
        plan_turn(TurnRequest(content="x", message_id=LIKE_SO), tree(), BECAUSE)


def test_a_message_under_a_user_message_is_invalid() -> None:
    with pytest.raises(Invalid, match="assistant"):
        plan_turn(TurnRequest(content="x", parent_id=HOW), tree(), BECAUSE)


def test_a_message_under_an_unknown_parent_is_not_found() -> None:
    with pytest.raises(MessageNotFound):
        plan_turn(TurnRequest(content="x", parent_id=uuid7()), tree(), BECAUSE)


# retry


def test_retry_answers_the_same_prompt_again() -> None:
    plan = plan_turn(TurnRequest(content=None, mode="retry", message_id=LIKE_SO), tree(), BECAUSE)

    assert plan.parent_id == HOW
    assert plan.content is None
    assert plan.assistant_message_id is None
    assert ids(plan.history) == [HI, HELLO, HOW]


def test_retry_needs_an_assistant_message_id_and_nothing_else() -> None:
    messages = tree()
    bad = [
        TurnRequest(content=None, mode="retry"),
        TurnRequest(content=None, mode="retry", message_id=HOW),
        TurnRequest(content="new text", mode="retry", message_id=LIKE_SO),
        TurnRequest(content=None, mode="retry", message_id=LIKE_SO, parent_id=HELLO),
    ]
    for request in bad:
        with pytest.raises(Invalid):
            plan_turn(request, messages, BECAUSE)
    with pytest.raises(MessageNotFound):
        plan_turn(TurnRequest(content=None, mode="retry", message_id=uuid7()), messages, BECAUSE)


# edit


def test_edit_makes_a_user_sibling_with_the_new_text() -> None:
    plan = plan_turn(
        TurnRequest(content=" How, exactly? ", mode="edit", message_id=HOW), tree(), BECAUSE
    )

    assert plan.parent_id == HELLO
    assert plan.content == "How, exactly?"
    assert ids(plan.history) == [HI, HELLO]


def test_editing_the_first_message_makes_a_second_root() -> None:
    plan = plan_turn(TurnRequest(content="Hey", mode="edit", message_id=HI), tree(), BECAUSE)

    assert plan.parent_id is None
    assert plan.history == []


def test_edit_needs_a_user_message_id_and_content() -> None:
    messages = tree()
    bad = [
        TurnRequest(content="x", mode="edit"),
        TurnRequest(content="x", mode="edit", message_id=LIKE_SO),
        TurnRequest(content=None, mode="edit", message_id=HOW),
        TurnRequest(content="  ", mode="edit", message_id=HOW),
        TurnRequest(content="x", mode="edit", message_id=HOW, parent_id=HELLO),
    ]
    for request in bad:
        with pytest.raises(Invalid):
            plan_turn(request, messages, BECAUSE)
    with pytest.raises(MessageNotFound):
        plan_turn(TurnRequest(content="x", mode="edit", message_id=uuid7()), messages, BECAUSE)


# continue


def test_continue_extends_a_leaf_answer_in_place() -> None:
    plan = plan_turn(
        TurnRequest(content=None, mode="continue", message_id=BECAUSE), tree(), BECAUSE
    )

    assert plan.assistant_message_id == BECAUSE
    assert plan.parent_id == WHY
    assert plan.content is None
    assert plan.prefix == "Because"
    assert plan.reasoning_prefix == "thinking"
    # The answer so far is not part of the history: the caller appends it last.
    assert ids(plan.history) == [HI, HELLO, WHY]


def test_continue_works_on_any_leaf_answer_not_only_the_current_one() -> None:
    plan = plan_turn(
        TurnRequest(content=None, mode="continue", message_id=ANOTHER_WAY), tree(), BECAUSE
    )

    assert plan.assistant_message_id == ANOTHER_WAY
    assert ids(plan.history) == [HI, HELLO, HOW]


def test_continue_needs_a_leaf_assistant_message_and_no_content() -> None:
    messages = tree()
    bad = [
        TurnRequest(content=None, mode="continue"),
        TurnRequest(content=None, mode="continue", message_id=HELLO),  # it has replies
        TurnRequest(content=None, mode="continue", message_id=WHY),
        TurnRequest(content="more", mode="continue", message_id=BECAUSE),
        TurnRequest(content=None, mode="continue", message_id=BECAUSE, parent_id=WHY),
    ]
    for request in bad:
        with pytest.raises(Invalid):
            plan_turn(request, messages, BECAUSE)
    with pytest.raises(MessageNotFound):
        plan_turn(TurnRequest(content=None, mode="continue", message_id=uuid7()), messages, BECAUSE)
