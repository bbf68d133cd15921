"""The Turn's commands: the one place turn events are made, and the invariants they keep."""

from __future__ import annotations

import pytest

from tests.support.events import a_started
from turnstream.domain.errors import TurnEnded
from turnstream.domain.progress import (
    FailDraft,
    FinishDraft,
    ReasoningDraft,
    TextDraft,
    TurnProgress,
    merge_deltas,
)
from turnstream.domain.turn import RUNNER_LOST, Turn, TurnUsage
from turnstream.ids import uuid7


def test_a_turn_starts_with_version_one_and_a_user_message_only_where_its_mode_makes_one() -> None:
    started = a_started(content="Hi")
    assert started.originator_version == 1
    assert started.user_message_id is not None
    # A retry makes no user message; a message always does.
    with pytest.raises(ValueError, match="user message"):
        a_started(mode="retry", user_message_id=uuid7())
    with pytest.raises(ValueError, match="user message"):
        a_started(mode="message", user_message_id=None)
    assert a_started(mode="retry", user_message_id=None, content="").mode == "retry"


def test_progress_makes_the_drafts_and_nothing_follows_the_end() -> None:
    # Start a continued answer: it has a prefix.
    started = a_started(content="Go on", prefix="Once upon", reasoning_prefix="Hm.")
    progress = TurnProgress(started)
    # Stream two pieces of text and some reasoning; empty pieces make no draft.
    assert progress.append_text("") is None
    first = progress.append_text(" a time")
    assert isinstance(first, TextDraft)
    assert isinstance(progress.append_reasoning(" More."), ReasoningDraft)
    assert progress.append_text(",") is not None
    # A title comes once.
    assert progress.title("Tales") is not None
    assert progress.title("Again") is None
    # The end holds the prefix and everything streamed.
    end = progress.finish(finish_reason="stop", usage=TurnUsage(prompt_tokens=3))
    assert isinstance(end, FinishDraft)
    assert (end.status, end.text, end.reasoning) == ("completed", "Once upon a time,", "Hm. More.")
    assert progress.generated_text == " a time,"
    # Nothing after the end.
    with pytest.raises(TurnEnded):
        progress.append_text("late")
    with pytest.raises(TurnEnded):
        progress.interrupt(reason="cancelled", usage=TurnUsage())


def test_interrupted_and_failed_ends_keep_the_text() -> None:
    progress = TurnProgress(a_started())
    progress.append_text("Half")
    end = progress.interrupt(reason="cancelled", usage=TurnUsage())
    assert (end.status, end.text, end.finish_reason) == ("interrupted", "Half", "cancelled")
    failing = TurnProgress(a_started())
    failing.append_text("Part")
    failed = failing.fail(code="provider_error", message="gone", usage=None)
    assert isinstance(failed, FailDraft)
    assert failed.TERMINAL
    assert failed.text == "Part"


def test_a_draft_becomes_its_event_with_the_version_the_writer_gives_it() -> None:
    started = a_started()
    draft = TextDraft(turn_id=started.originator_id, text="He")
    merged = merge_deltas(draft, ["llo", "!"])
    event = merged.event(7)
    assert isinstance(event, Turn.TokensAppended)
    assert (event.originator_version, event.text, event.timestamp) == (7, "Hello!", draft.at)
    end = TurnProgress(started).finish(finish_reason="stop", usage=TurnUsage()).event(8)
    assert isinstance(end, Turn.Finished)
    assert end.TERMINAL


def test_a_turn_whose_runner_is_gone_ends_once_with_runner_lost_and_its_text() -> None:
    started = a_started()
    turn = Turn(started)
    turn.apply(TextDraft(turn_id=started.originator_id, text="So far").event(2))
    lost = turn.lose_runner()
    assert (lost.code, lost.text, lost.originator_version) == (RUNNER_LOST, "So far", 3)
    turn.apply(lost)
    with pytest.raises(TurnEnded):
        turn.lose_runner()
