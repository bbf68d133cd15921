"""`turnstream tail`: exactly the relayed events from any offset, one JSON envelope a line.

Every run compares tail's output, byte for byte, with what the stream holds (read
independently with `read_stream`), on a stream filled by a real `turnstream serve`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import nats
import pytest
from jsonschema import Draft202012Validator

from tests.api.test_turn_stream import new_conversation, run_turn
from tests.conftest import NatsTarget
from tests.support.jetstream import StreamMessage, read_stream, wait_relayed
from tests.support.server import Server, free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
POSITION = "Turnstream-Position"


def tail_env(target: NatsTarget | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURNSTREAM_")}
    return env | (target.env() if target else {}) | extra


def tail_cmd(*args: object) -> list[str]:
    return [sys.executable, "-m", "turnstream", "tail", *map(str, args)]


def tail(target: NatsTarget, *args: object) -> list[bytes]:
    """tail's output lines; it must end by itself, with status 0."""
    proc = subprocess.run(tail_cmd(*args), env=tail_env(target), capture_output=True, timeout=90)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.splitlines()


def bodies(messages: list[StreamMessage]) -> list[bytes]:
    return [m.body for m in messages]


def position(message: StreamMessage) -> int:
    return int(message.headers[POSITION])


def relay_some_turns(
    server: Server, target: NatsTarget, database_url: str, schema: str
) -> tuple[list[str], list[StreamMessage]]:
    """Two conversations, three turns and a rename, all relayed: (conversation ids, stream)."""
    first, second = new_conversation(server), new_conversation(server)
    for cid in (first, second, first):
        assert run_turn(server, cid)[-1].event == "final"
    r = httpx.patch(
        f"{server.base_url}/v1/conversations/{second}",
        json={"title": "Second"},
        headers=server.headers(),
    )
    assert r.status_code == 200, r.text
    _, messages = wait_relayed(target.url, target.stream, target.prefix, database_url, schema)
    return [first, second], messages


async def _delete(url: str, stream: str, seqs: list[int]) -> None:
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=3)
    try:
        js = nc.jetstream()
        for seq in seqs:
            await js.delete_msg(stream, seq)
    finally:
        await nc.close()


async def _stored_at(url: str, stream: str, seq: int) -> datetime:
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=3)
    try:
        raw = await nc.jetstream().get_msg(stream, seq)
        assert raw.time is not None
        return raw.time
    finally:
        await nc.close()


def test_tail_prints_every_relayed_envelope_verbatim_and_each_fits_the_schema(
    server: Server, nats_target: NatsTarget, database_url: str, db_schema: str
) -> None:
    _, messages = relay_some_turns(server, nats_target, database_url, db_schema)

    # No option: the whole stream, in order, each line a message body as stored.
    lines = tail(nats_target)
    assert lines == bodies(messages)

    # Every envelope the relay really published fits the committed schema.
    schema = json.loads((ROOT / "docs" / "nats-envelope.schema.json").read_text())
    check = Draft202012Validator(schema)
    for line in lines:
        envelope = json.loads(line)
        assert not list(check.iter_errors(envelope)), envelope


def test_from_seq_and_position_start_exactly_where_asked_even_across_deleted_messages(
    server: Server, nats_target: NatsTarget, database_url: str, db_schema: str
) -> None:
    _, messages = relay_some_turns(server, nats_target, database_url, db_schema)
    n = len(messages)
    assert n > 10

    # --from-seq N: the message with stream sequence N onward.
    for seq in (1, 2, n // 2, n):
        assert tail(nats_target, "--from-seq", seq) == bodies(messages[seq - 1 :]), seq

    # --position P: the first message whose position is P or more, onward.
    def from_position(p: int, held: list[StreamMessage]) -> list[bytes]:
        return bodies([m for m in held if position(m) >= p])

    for k in (0, 1, n // 3, n - 1):
        p = position(messages[k])
        assert tail(nats_target, "--position", p) == bodies(messages[k:]), p
        assert tail(nats_target, "--position", p + 1) == from_position(p + 1, messages)
    assert tail(nats_target, "--position", 1) == bodies(messages)

    # Delete a run of messages in the middle and the first one: the search steps over
    # the holes in the sequence.
    gone = [1, n // 2 - 1, n // 2, n // 2 + 1]
    asyncio.run(_delete(nats_target.url, nats_target.stream, gone))
    held = [m for m in messages if m.seq not in gone]
    assert read_stream(nats_target.url, nats_target.stream, nats_target.prefix) == held
    for seq in gone:
        p = position(messages[seq - 1])
        assert tail(nats_target, "--position", p) == from_position(p, held), p
    assert tail(nats_target, "--position", 1) == bodies(held)
    assert tail(nats_target, "--from-seq", n // 2) == bodies(messages[n // 2 + 1 :])


def test_since_starts_at_the_first_message_stored_at_or_after_that_time(
    server: Server, nats_target: NatsTarget, database_url: str, db_schema: str
) -> None:
    # One turn relayed; note when the stream stored its last message.
    cid = new_conversation(server)
    run_turn(server, cid)
    _, before = wait_relayed(
        nats_target.url, nats_target.stream, nats_target.prefix, database_url, db_schema
    )
    stored_at = asyncio.run(_stored_at(nats_target.url, nats_target.stream, before[-1].seq))
    after_it = stored_at + timedelta(microseconds=1)

    # Another turn.
    run_turn(server, cid)
    _, messages = wait_relayed(
        nats_target.url, nats_target.stream, nats_target.prefix, database_url, db_schema
    )
    second_turn = bodies(messages[len(before) :])
    assert second_turn

    # An ISO-8601 time, with an offset or in local time: exactly the second turn.
    assert tail(nats_target, "--since", after_it.isoformat()) == second_turn
    local = after_it.astimezone().replace(tzinfo=None)
    assert tail(nats_target, "--since", local.isoformat()) == second_turn
    # A duration back from now: everything here is younger than a day.
    assert tail(nats_target, "--since", "1d") == bodies(messages)
    # A time after the last message: nothing, and tail still ends.
    assert tail(nats_target, "--since", "2999-01-01T00:00:00Z") == []


def test_subject_filters_and_a_filter_that_matches_nothing_ends_at_once(
    server: Server, nats_target: NatsTarget, database_url: str, db_schema: str
) -> None:
    (first, second), messages = relay_some_turns(server, nats_target, database_url, db_schema)
    prefix = nats_target.prefix

    # One conversation's events (its turns and its conversation events).
    for cid in (first, second):
        mine = [m for m in messages if m.subject.startswith(f"{prefix}.acme.{cid}.")]
        assert mine
        assert tail(nats_target, "--subject", f"{prefix}.acme.{cid}.>") == bodies(mine)
    # Every turn's final event, from the middle of the stream on.
    mid = len(messages) // 2
    finals = [m for m in messages[mid - 1 :] if m.subject.endswith(".final")]
    assert finals
    got = tail(nats_target, "--subject", f"{prefix}.*.*.turn.*.final", "--from-seq", mid)
    assert got == bodies(finals)

    # Nothing matches: empty output, status 0, whichever way it is asked.
    last = messages[-1]
    assert tail(nats_target, "--subject", f"{prefix}.nobody.>") == []
    assert tail(nats_target, "--from-seq", last.seq + 1) == []
    assert tail(nats_target, "--position", position(last) + 1) == []
    assert tail(nats_target, "--subject", f"{prefix}.*.{first}.conversation.deleted") == []


class Follower:
    """`tail --follow` in the background; its lines as they come."""

    def __init__(self, target: NatsTarget, *args: object) -> None:
        self.proc = subprocess.Popen(
            tail_cmd("--follow", *args),
            env=tail_env(target),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lines: list[bytes] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip(b"\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, count: int, timeout: float = 60.0) -> list[bytes]:
        """Its lines once it has printed ``count`` (fails if it ends or stalls first)."""
        with self._changed:
            self._changed.wait_for(
                lambda: len(self.lines) >= count or not self._reader.is_alive(), timeout
            )
            lines = list(self.lines)
        assert len(lines) >= count, (len(lines), count, self.stderr_if_ended())
        return lines

    def stderr_if_ended(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return "(still running)"
        return self.proc.stderr.read().decode(errors="replace")

    def stop(self, sig: signal.Signals) -> tuple[int, list[bytes]]:
        """Send ``sig``; its exit status and everything it printed."""
        self.proc.send_signal(sig)
        code = self.proc.wait(30)
        self._reader.join(10)
        return code, list(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def test_follow_prints_new_events_as_a_turn_runs_until_sigterm_or_sigint(
    server: Server, nats_target: NatsTarget, database_url: str, db_schema: str
) -> None:
    (first, _), before = relay_some_turns(server, nats_target, database_url, db_schema)
    head = position(before[-1])
    prefix = nats_target.prefix

    everything = Follower(nats_target)
    only_new = Follower(nats_target, "--position", head + 1)
    third = new_conversation(server)
    one_conversation = Follower(nats_target, "--subject", f"{prefix}.acme.{third}.>")
    followers = (everything, only_new, one_conversation)
    try:
        # The stream so far (the third conversation's creation may or may not be in it).
        assert everything.wait_for(len(before))[: len(before)] == bodies(before)

        # A new turn in the third conversation, and one in the first.
        run_turn(server, third)
        run_turn(server, first)
        _, after = wait_relayed(
            nats_target.url, nats_target.stream, nats_target.prefix, database_url, db_schema
        )
        new = after[len(before) :]
        in_third = [m for m in after if m.subject.startswith(f"{prefix}.acme.{third}.")]
        assert len(in_third) > 3

        assert everything.wait_for(len(after)) == bodies(after)
        assert only_new.wait_for(len(new)) == bodies(new)
        assert one_conversation.wait_for(len(in_third)) == bodies(in_third)

        # SIGTERM or SIGINT ends a follower with status 0, having printed nothing more.
        assert everything.stop(signal.SIGTERM) == (0, bodies(after))
        assert only_new.stop(signal.SIGINT) == (0, bodies(new))
        assert one_conversation.stop(signal.SIGTERM) == (0, bodies(in_third))
    finally:
        for follower in followers:
            follower.kill()


def test_start_options_are_mutually_exclusive() -> None:
    proc = subprocess.run(
        tail_cmd("--from-seq", 3, "--since", "10m"),
        env=tail_env(None, TURNSTREAM_NATS_URL="nats://127.0.0.1:4222"),
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert b"not allowed with" in proc.stderr
    assert proc.stdout == b""


def test_unreachable_nats_is_one_line_on_stderr_and_status_1(tmp_path: Path) -> None:
    # Nothing listens on that port.
    url = f"nats://127.0.0.1:{free_port()}"
    started = time.monotonic()
    proc = subprocess.run(
        tail_cmd(), env=tail_env(None, TURNSTREAM_NATS_URL=url), capture_output=True, timeout=60
    )
    assert proc.returncode == 1
    assert proc.stdout == b""
    assert proc.stderr.decode().count("\n") == 1
    assert proc.stderr.startswith(b"turnstream tail: cannot reach NATS at")
    # Bounded: a few attempts, not the forever-retry of an unlimited reconnect.
    assert time.monotonic() - started < 30

    # No TURNSTREAM_NATS_URL and no embedded NATS in the data folder: it says what to set.
    proc = subprocess.run(
        tail_cmd(),
        env=tail_env(None, TURNSTREAM_DATA_DIR=str(tmp_path)),
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert b"TURNSTREAM_NATS_URL" in proc.stderr
    assert proc.stderr.decode().count("\n") == 1
