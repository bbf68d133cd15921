"""What a turn costs on each wire format: the AI SDK's UI message stream vs our SSE frames.

Both adapters encode the same turn events (a started event, reasoning, tokens, a title,
the end), as the follower hands them to every reader: native SSE frames
(``turnstream.http.sse.encode_frame``) and the UI message stream groups
(``turnstream.http.uistream``), each with and without the side-channel filler. The
figures are CPU time and bytes per turn event, medians of ``--repeat`` runs, and the
UI stream's ratio to the native frames measured in the same run.

    python bench/encoding.py [--tokens 1000] [--reasoning 200] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from uuid import uuid4

from turnstream.domain.events import utcnow
from turnstream.domain.turn import Turn, TurnEvent, TurnUsage
from turnstream.http.sse import encode_frame
from turnstream.http.uistream import UiStream, encode_group

WORDS = ["Event", " sourcing", " keeps", " every", " fact", ",", " in", " order", "."]


def a_turn(tokens: int, reasoning: int) -> list[TurnEvent]:
    """A turn as the follower hands it over: one event per reasoning and text delta."""
    turn_id, at = uuid4(), utcnow()
    started = Turn.start(
        turn_id,
        conversation_id=uuid4(),
        tenant="acme",
        user_id="alice",
        node_id=uuid4(),
        mode="message",
        user_message_id=uuid4(),
        assistant_message_id=uuid4(),
        parent_id=None,
        model="demo",
        content="Tell me about event sourcing.",
    )
    events: list[TurnEvent] = [started]
    seq = 1
    for n in range(reasoning):
        seq += 1
        text = WORDS[n % len(WORDS)]
        events.append(
            Turn.ReasoningAppended(
                originator_id=turn_id, originator_version=seq, timestamp=at, text=text
            )
        )
    seq += 1
    events.append(
        Turn.Titled(
            originator_id=turn_id, originator_version=seq, timestamp=at, title="Event sourcing"
        )
    )
    for n in range(tokens):
        seq += 1
        text = WORDS[n % len(WORDS)]
        events.append(
            Turn.TokensAppended(
                originator_id=turn_id, originator_version=seq, timestamp=at, text=text
            )
        )
    seq += 1
    events.append(
        Turn.Finished(
            originator_id=turn_id,
            originator_version=seq,
            timestamp=at,
            status="completed",
            text="",
            usage=TurnUsage(prompt_tokens=12, completion_tokens=tokens),
        )
    )
    return events


def native(padding: bool) -> Callable[[list[TurnEvent]], int]:
    def encode(events: list[TurnEvent]) -> int:
        return sum(len(encode_frame(e, padding=padding)) for e in events)

    return encode


def ui(padding: bool) -> Callable[[list[TurnEvent]], int]:
    def encode(events: list[TurnEvent]) -> int:
        stream = UiStream()
        return sum(len(encode_group(e, stream.chunks(e), padding=padding)) for e in events)

    return encode


def measure(encode: Callable[[list[TurnEvent]], int], events: list[TurnEvent]) -> tuple[float, int]:
    """CPU seconds and bytes for encoding the turn (10 passes, the best)."""
    best = float("inf")
    size = 0
    for _ in range(10):
        start = time.process_time()
        size = encode(events)
        best = min(best, time.process_time() - start)
    return best, size


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=1000, help="text deltas per turn")
    parser.add_argument("--reasoning", type=int, default=200, help="reasoning deltas per turn")
    parser.add_argument("--repeat", type=int, default=5, help="runs; medians are reported")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    formats = {
        "sse": native(True),
        "sse-unpadded": native(False),
        "ui": ui(True),
        "ui-unpadded": ui(False),
    }
    runs: dict[str, list[tuple[float, int]]] = {name: [] for name in formats}
    for n in range(args.repeat):
        events = a_turn(args.tokens, args.reasoning)
        for name, encode in formats.items():
            runs[name].append(measure(encode, events))
        print(f"run {n + 1}/{args.repeat} done", file=sys.stderr)
    count = args.tokens + args.reasoning + 3
    figures: dict[str, float] = {"events": count}
    print(f"{'format':<14}{'us/event':>10}{'bytes/event':>13}")
    for name, results in runs.items():
        us = statistics.median(r[0] for r in results) / count * 1e6
        size = statistics.median(r[1] for r in results) / count
        figures[f"{name}_us_per_event"] = round(us, 3)
        figures[f"{name}_bytes_per_event"] = round(size, 1)
        print(f"{name:<14}{us:>10.2f}{size:>13.1f}")
    for padded in ("", "-unpadded"):
        ratio = figures[f"ui{padded}_us_per_event"] / figures[f"sse{padded}_us_per_event"]
        figures[f"ui_vs_sse{padded.replace('-', '_')}_cpu"] = round(ratio, 2)
        print(f"ui{padded} / sse{padded} CPU: {ratio:.2f}x")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
