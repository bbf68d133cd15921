"""The aggregates, folded from their events; settings and the models file."""

from __future__ import annotations

from pathlib import Path

import pytest

from turnstream.domain.conversation import Conversation
from turnstream.domain.errors import ConversationNotFound, Invalid
from turnstream.domain.events import utcnow
from turnstream.domain.turn import Turn, TurnUsage
from turnstream.http.sse import sse_data
from turnstream.ids import stable_id, uuid7
from turnstream.settings import Settings, SettingsError, default_model_id
from turnstream.store.mapper import decode_event, encode_event


def started(turn_id: object = None) -> Turn.Started:
    return Turn.Started(
        originator_id=turn_id or uuid7(),  # type: ignore[arg-type]
        originator_version=1,
        timestamp=utcnow(),
        conversation_id=uuid7(),
        tenant="acme",
        user_id="alice",
        node_id=uuid7(),
        mode="message",
        user_message_id=uuid7(),
        assistant_message_id=uuid7(),
        parent_id=None,
        model="demo",
        content="hi",
    )


def test_a_turn_folds_tokens_reasoning_and_its_final_answer() -> None:
    # Start a turn.
    s = started()
    turn = Turn.fold([s])
    assert turn is not None
    assert turn.status == "running"

    # Stream reasoning and two token deltas.
    def ev(cls: type, version: int, **fields: object) -> object:
        return cls(
            originator_id=s.originator_id, originator_version=version, timestamp=utcnow(), **fields
        )

    turn.apply(ev(Turn.ReasoningAppended, 2, text="hm"))  # type: ignore[arg-type]
    turn.apply(ev(Turn.TokensAppended, 3, text="Hel"))  # type: ignore[arg-type]
    turn.apply(ev(Turn.TokensAppended, 4, text="lo"))  # type: ignore[arg-type]
    assert (turn.text, turn.reasoning, turn.version) == ("Hello", "hm", 4)

    # A gap in the versions is refused: streams are gapless.
    with pytest.raises(ValueError, match="after"):
        turn.apply(ev(Turn.TokensAppended, 6, text="!"))  # type: ignore[arg-type]

    # The final event carries the whole answer.
    turn.apply(
        ev(
            Turn.Finished,
            5,
            status="completed",
            text="Hello",
            reasoning="hm",  # type: ignore[arg-type]
            finish_reason="stop",
            usage=TurnUsage(prompt_tokens=3, completion_tokens=2),
        )
    )
    assert turn.ended
    assert turn.status == "completed"
    assert turn.usage == TurnUsage(prompt_tokens=3, completion_tokens=2)


def test_events_round_trip_through_their_stable_topics() -> None:
    s = started()
    assert Turn.Started.TOPIC == "turnstream.turn.started.v1"
    assert decode_event(Turn.Started.TOPIC, encode_event(s)) == s
    failed = Turn.Failed(
        originator_id=s.originator_id,
        originator_version=2,
        timestamp=utcnow(),
        code="runner_lost",
        message="gone",
        text="par",
    )
    assert decode_event(Turn.Failed.TOPIC, encode_event(failed)) == failed
    assert sse_data(failed) == {"code": "runner_lost", "message": "gone", "text": "par"}
    assert sse_data(s)["request_id"] is None
    assert sse_data(s)["created_at"].endswith("Z")


def test_a_conversation_is_renamed_and_deleted_and_then_not_found() -> None:
    created = Conversation.create(
        uuid7(), tenant="acme", owner="alice", model="demo", title=None, system_prompt="Be brief."
    )
    conversation = Conversation.fold([created])
    assert conversation is not None
    renamed = conversation.rename("  A   title ")
    assert renamed.title == "A title"
    conversation.apply(renamed)
    with pytest.raises(Invalid):
        conversation.rename("   ")
    conversation.apply(conversation.delete())
    assert conversation.deleted
    with pytest.raises(ConversationNotFound):
        conversation.rename("again")


def test_ids_are_time_ordered_and_idempotency_keys_are_stable() -> None:
    ids = [uuid7() for _ in range(1000)]
    assert ids == sorted(ids)
    assert all(i.version == 7 for i in ids)
    assert stable_id("c", "r") == stable_id("c", "r") != stable_id("c", "r2")


def test_settings_come_from_turnstream_variables(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "TURNSTREAM_PORT": "9001",
            "TURNSTREAM_DATA_DIR": str(tmp_path),
            "TURNSTREAM_DEMO_TOKENS_PER_S": "12.5",
        }
    )
    assert settings.server.port == 9001
    assert settings.server.data_dir == tmp_path
    assert settings.models.demo_tokens_per_s == 12.5
    with pytest.raises(SettingsError, match="TURNSTREAM_PORT"):
        Settings.from_env({"TURNSTREAM_PORT": "eighty"})


def test_the_models_file_adds_models_and_demo_stays(tmp_path: Path) -> None:
    models = tmp_path / "models.toml"
    models.write_text(
        '[[models]]\nid = "local"\nprovider = "openai"\nbase_url = "http://127.0.0.1:1/v1"\n'
        'default = true\ntitle_model = "demo"\n'
    )
    loaded = Settings.from_env({"TURNSTREAM_MODELS": str(models)}).models.load()
    assert list(loaded) == ["demo", "local"]
    assert default_model_id(loaded) == "local"
    assert default_model_id(Settings.from_env({}).models.load()) == "demo"

    for bad, message in (
        ('[[models]]\nid = "x"\nprovider = "openai"\n', "base_url"),
        ('[[models]]\nid = "x"\nprovider = "demo"\ntitle_model = "nope"\n', "title_model"),
        ('[[models]]\nid = "x"\nprovider = "demo"\ncolour = 1\n', "invalid"),
        ("[[models]\n", "not valid TOML"),
    ):
        models.write_text(bad)
        with pytest.raises(SettingsError, match=message):
            Settings.from_env({"TURNSTREAM_MODELS": str(models)}).models.load()
