"""SSE frames: the contract's layout, and the ``p`` filler against the token-length channel."""

from __future__ import annotations

import json
import random
import statistics
import string

from turnstream.domain.events import utcnow
from turnstream.domain.turn import Turn, TurnEvent, TurnUsage
from turnstream.http.sse import PAD_ROOM, PAD_STEP, encode_frame
from turnstream.ids import uuid7

URL_SAFE = set(string.ascii_letters + string.digits + "-_")
TURN_ID = uuid7()


def token(text: str, seq: int = 7) -> Turn.TokensAppended:
    return Turn.TokensAppended(
        originator_id=TURN_ID, originator_version=seq, timestamp=utcnow(), text=text
    )


def data_of(frame: bytes) -> dict[str, object]:
    lines = frame.decode().split("\n")
    assert lines[2].startswith("data: ")
    parsed: dict[str, object] = json.loads(lines[2].removeprefix("data: "))
    return parsed


def test_a_frame_without_padding_is_exactly_the_contracts() -> None:
    frame = encode_frame(token("Hel"), padding=False)
    assert frame == (
        b'id: 7\nevent: token\ndata: {"seq":7,"turn_id":"%s","text":"Hel"}\n\n'
        % str(TURN_ID).encode()
    )


def test_token_and_reasoning_frames_carry_url_safe_filler_and_the_same_data() -> None:
    reasoning = Turn.ReasoningAppended(
        originator_id=TURN_ID, originator_version=3, timestamp=utcnow(), text="Reading"
    )
    for event in (token(' a "quoted"\nline é'), reasoning):
        padded = data_of(encode_frame(event, padding=True))
        filler = padded.pop("p")
        assert isinstance(filler, str)
        assert set(filler) <= URL_SAFE
        assert padded == data_of(encode_frame(event, padding=False))


def test_the_filler_is_random() -> None:
    fillers = {data_of(encode_frame(token("same"), padding=True))["p"] for _ in range(20)}
    assert len(fillers) == 20


def test_other_frames_get_no_filler() -> None:
    started = Turn.Started(
        originator_id=TURN_ID,
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
    )
    others: list[TurnEvent] = [
        started,
        Turn.Titled(originator_id=TURN_ID, originator_version=2, timestamp=utcnow(), title="T"),
        Turn.Finished(
            originator_id=TURN_ID,
            originator_version=3,
            timestamp=utcnow(),
            status="completed",
            text="Hi",
            usage=TurnUsage(prompt_tokens=1, completion_tokens=1),
        ),
        Turn.Failed(
            originator_id=TURN_ID,
            originator_version=3,
            timestamp=utcnow(),
            code="provider_error",
            message="The model broke off.",
            text="Hi",
        ),
    ]
    for event in others:
        assert encode_frame(event, padding=True) == encode_frame(event, padding=False)


def test_up_to_its_room_the_frame_length_does_not_depend_on_the_text() -> None:
    # The frame with no text and no filler: what every padded length is measured from.
    base = len(encode_frame(token(""), padding=False)) + len(',"p":""')
    texts = ["", ".", " the", "\n\n", "é", '"', " deterministic", " a b c d e" * 4, "x" * PAD_ROOM]
    for text in texts:
        lengths = {len(encode_frame(token(text), padding=True)) - base for _ in range(1000)}
        # The room, plus any random extra below a step, whatever the text.
        assert lengths == set(range(PAD_ROOM, PAD_ROOM + PAD_STEP)), text


def test_longer_text_shows_its_length_only_to_the_step() -> None:
    base = len(encode_frame(token(""), padding=False)) + len(',"p":""')
    for size, room in ((PAD_ROOM + 1, PAD_ROOM + PAD_STEP), (300, 304), (304, 304)):
        lengths = {len(encode_frame(token("y" * size), padding=True)) - base for _ in range(1000)}
        assert lengths == set(range(room, room + PAD_STEP)), size


def test_frame_lengths_do_not_track_token_lengths() -> None:
    rng = random.Random(7)
    words = ["a", " an", ",", ".", "\n\n", " the", " stream", " conver", "sation", " backend"]
    texts = [rng.choice(words) for _ in range(10_000)]
    for padding, check in ((True, lambda r: abs(r) < 0.1), (False, lambda r: r > 0.5)):
        sizes = [len(encode_frame(token(t, seq), padding=padding)) for seq, t in enumerate(texts)]
        r = statistics.correlation([len(t) for t in texts], sizes)
        assert check(r), (padding, r)
