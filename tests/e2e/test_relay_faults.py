"""The relay under faults: kill -9 mid-batch, a NATS outage, takeover, relays side by side.

Every test ends the same way: once the relay has caught up, the stream holds exactly the
stored events, in order, none twice (``assert_exactly_the_store``).
"""

from __future__ import annotations

import concurrent.futures
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.test_relay import assert_exactly_the_store
from tests.api.test_turn_stream import new_conversation, run_turn
from tests.conftest import NatsTarget
from tests.e2e.conftest import ServerFactory
from tests.support.jetstream import read_stream, stored_events, wait_relayed
from tests.support.relay import (
    RelayProcess,
    relay_lock_holders,
    stream_count,
    wait_lock_holder,
    wait_stream_above,
)
from tests.support.server import Frame, Server, parse_sse
from turnstream.bus.relay import ACK_TIMEOUT_S
from turnstream.embedded import EmbeddedNats

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

# Paced so that (almost) every token is its own commit, hence its own event: eight such
# turns at once store about 3,200 events in about two seconds.
BUSY = {"TURNSTREAM_DEMO_TOKENS": "400", "TURNSTREAM_DEMO_TOKENS_PER_S": "200"}
RESUMED = re.compile(r"relay resumes after position (\d+) \(stream sequence (\d+)\)")

RelayFactory = Callable[..., RelayProcess]


@pytest.fixture
def make_relay(
    database_url: str, db_schema: str, nats_target: NatsTarget, tmp_path: Path
) -> Iterator[RelayFactory]:
    """Start `turnstream relay` processes on this test's store and stream (stopped afterwards)."""
    started: list[RelayProcess] = []

    def make(*, rogue: bool = False, **env: str) -> RelayProcess:
        relay = RelayProcess(
            {
                "TURNSTREAM_DATABASE_URL": database_url,
                "TURNSTREAM_DATABASE_SCHEMA": db_schema,
                **nats_target.env(),
                **env,
            },
            tmp_path / f"relay{len(started)}",
            rogue=rogue,
        )
        started.append(relay)
        return relay.start()

    yield make
    for relay in started:
        relay.stop()


def run_turns(server: Server, conversations: list[str]) -> None:
    """One turn on each conversation, all at once; each must complete."""
    with concurrent.futures.ThreadPoolExecutor(len(conversations)) as pool:
        results = list(pool.map(lambda cid: run_turn(server, cid), conversations))
    for frames in results:
        assert frames[-1].event == "final", frames[-1]
        assert frames[-1].data["status"] == "completed"


def assert_prefix_of_the_store(
    database_url: str, schema: str, target: NatsTarget
) -> tuple[int, int]:
    """The stream holds the store's first n events exactly (n may be anything): (n, store)."""
    stored = stored_events(database_url, schema)
    relayed = read_stream(target.url, target.stream, target.prefix)
    assert len(relayed) <= len(stored)
    assert_exactly_the_store(stored[: len(relayed)], relayed, target.prefix)
    return len(relayed), len(stored)


def test_a_relay_killed_mid_batch_resumes_exactly_once(
    make_server: ServerFactory,
    make_relay: RelayFactory,
    nats_target: NatsTarget,
    database_url: str,
    db_schema: str,
) -> None:
    # No relay inside serve: the store builds a backlog that only our relays publish.
    server = make_server(TURNSTREAM_RELAY="false", **BUSY)
    conversations = [new_conversation(server) for _ in range(8)]
    batch = 200
    relay_settings = {"TURNSTREAM_RELAY_BATCH": str(batch)}

    # Each round: a backlog of thousands of events, a relay, kill -9 once it is part way.
    # Kill points move through the backlog from round to round. A round whose relay got
    # through the whole backlog before the kill landed proves nothing and is not counted.
    kills_mid_way = 0
    fractions = (0.0, 0.3, 0.6)
    for _ in range(6):
        run_turns(server, conversations)
        before = stream_count(nats_target.url, nats_target.stream)
        total = len(stored_events(database_url, db_schema))
        backlog = total - before
        assert backlog > 3 * batch, (before, total)  # several pages: room to stop part way
        relay = make_relay(**relay_settings)
        aim = before + int(backlog * fractions[kills_mid_way])
        seen = wait_stream_above(nats_target.url, nats_target.stream, aim, alive=[relay])
        relay.kill()

        # Whatever the dead relay left, even publishes still in flight, is a prefix.
        held, total = assert_prefix_of_the_store(database_url, db_schema, nats_target)
        assert held >= seen
        if held < total:
            kills_mid_way += 1
            if kills_mid_way == len(fractions):
                break
    assert kills_mid_way == len(fractions), f"only {kills_mid_way} kills landed part way"

    # A new relay resumes from the stream's last message and publishes the rest, once.
    held = stream_count(nats_target.url, nats_target.stream)
    relay = make_relay(**relay_settings)
    stored, relayed = wait_relayed(
        nats_target.url, nats_target.stream, nats_target.prefix, database_url, db_schema
    )
    assert_exactly_the_store(stored, relayed, nats_target.prefix)
    resumed = RESUMED.search(relay.log())
    assert resumed is not None, relay.log()
    position, sequence = int(resumed.group(1)), int(resumed.group(2))
    assert held <= sequence < len(stored)
    assert position == stored[sequence - 1].position


class TurnReader(threading.Thread):
    """Streams one turn over HTTP in the background, noting when each frame arrived."""

    def __init__(self, server: Server, cid: str) -> None:
        super().__init__(daemon=True)
        self.server, self.cid = server, cid
        self.frames: list[tuple[float, Frame]] = []
        self.streaming = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.stream(
                "POST",
                f"{self.server.base_url}/v1/conversations/{self.cid}/turns",
                json={"content": "Tell me about outages."},
                headers=self.server.headers(),
                timeout=60,
            ) as r:
                assert r.status_code == 200, r.read()
                for item in parse_sse(r.iter_lines()):
                    if isinstance(item, Frame):
                        self.frames.append((time.monotonic(), item))
                        if item.event == "token":
                            self.streaming.set()
        except BaseException as exc:  # surfaced by the test after join()
            self.error = exc
        finally:
            self.streaming.set()

    def result(self) -> list[Frame]:
        self.join(60)
        assert not self.is_alive(), "the turn did not end"
        if self.error is not None:
            raise self.error
        return [frame for _, frame in self.frames]

    def arrived_between(self, start: float, end: float) -> list[Frame]:
        return [frame for at, frame in self.frames if start < at < end]


def readyz(server: Server) -> tuple[int, dict[str, str]]:
    r = httpx.get(f"{server.base_url}/readyz", timeout=10)
    return r.status_code, r.json()["checks"]


def wait_ready_state(server: Server, nats: str, timeout: float = 30.0) -> None:
    """Wait until /readyz reports NATS as ``nats`` ("ok" or "down"), PostgreSQL ok."""
    deadline = time.monotonic() + timeout
    while True:
        status, checks = readyz(server)
        if checks == {"postgres": "ok", "nats": nats, "projections": "ok"}:
            assert status == (200 if nats == "ok" else 503)
            return
        if time.monotonic() > deadline:
            msg = f"/readyz still says {status} {checks}, waited for nats {nats}"
            raise AssertionError(msg)
        time.sleep(0.1)


@pytest.mark.parametrize(
    "outage_s",
    [
        # Shorter than the relay's ack timeout: publishes made during the outage may wait
        # in the client's reconnect buffer and be acked after it.
        pytest.param(3.5, id="shorter-than-the-ack-timeout"),
        # Longer: the relay gives up (on an ack, or on NATS) during the outage and starts
        # over from the stream's state; publishes it gave up on may still be sent later.
        pytest.param(ACK_TIMEOUT_S + 2, id="longer-than-the-ack-timeout"),
    ],
)
def test_a_nats_outage_longer_than_the_duplicate_window_loses_and_repeats_nothing(
    outage_s: float,
    make_server: ServerFactory,
    nats_target: NatsTarget,
    database_url: str,
    db_schema: str,
    tmp_path: Path,
) -> None:
    # This test's own nats-server, so it can stop it; a one-second duplicate window.
    nats_server = EmbeddedNats(tmp_path / "nats")
    url = nats_server.start()
    server: Server | None = None
    try:
        server = make_server(
            TURNSTREAM_NATS_URL=url,
            TURNSTREAM_NATS_DUPLICATE_WINDOW_S="1",
            # 20 tokens a second, for longer than the outage: the turns span it.
            TURNSTREAM_DEMO_TOKENS=str(int((outage_s + 6) * 20)),
            TURNSTREAM_DEMO_TOKENS_PER_S="20",
            TURNSTREAM_LOG_LEVEL="INFO",
        )
        wait_ready_state(server, "ok")

        # Slow turns on several conversations; all are streaming when NATS goes away.
        readers = [TurnReader(server, new_conversation(server)) for _ in range(4)]
        for reader in readers:
            reader.start()
        for reader in readers:
            assert reader.streaming.wait(30)
        # The relay (serve's child process) is up and publishing before NATS goes.
        wait_relayed(url, nats_target.stream, nats_target.prefix, database_url, db_schema)
        nats_server.stop()
        down_at = time.monotonic()
        wait_ready_state(server, "down")

        # A turn started during the outage runs too.
        late = TurnReader(server, new_conversation(server))
        late.start()
        assert late.streaming.wait(30)
        # The outage itself, longer than the duplicate window (the scenario, not a wait
        # for a result).
        time.sleep(max(0.0, down_at + outage_s - time.monotonic()))
        wait_ready_state(server, "down")

        # NATS comes back on the same store and port.
        up_at = time.monotonic()
        assert nats_server.start() == url
        wait_ready_state(server, "ok")

        # The turns streamed through the outage and completed; nothing failed for NATS.
        for reader in [*readers, late]:
            frames = reader.result()
            assert [f.id for f in frames] == list(range(1, len(frames) + 1))
            assert frames[-1].event == "final", frames[-1]
            assert frames[-1].data["status"] == "completed"
            assert [f for f in frames if f.event == "error"] == []
        for reader in readers:
            assert any(f.event == "token" for f in reader.arrived_between(down_at, up_at))

        # The relay publishes what the store took meanwhile, each event once.
        stored, relayed = wait_relayed(
            url, nats_target.stream, nats_target.prefix, database_url, db_schema
        )
        assert_exactly_the_store(stored, relayed, nats_target.prefix)
        log = server.log()
        assert "NATS disconnected" in log
        if outage_s > ACK_TIMEOUT_S:
            assert "relay stopped" in log
    finally:
        if server is not None:
            server.stop()  # before its NATS, so its shutdown does not wait on it
        nats_server.stop()


def test_a_standby_relay_takes_over_when_the_active_one_is_killed(
    make_server: ServerFactory,
    nats_target: NatsTarget,
    database_url: str,
    db_schema: str,
) -> None:
    settings = BUSY | {"TURNSTREAM_RELAY_TAKEOVER_S": "0.5", "TURNSTREAM_LOG_LEVEL": "INFO"}

    # Node A alone: its relay leads and holds the lock.
    a = make_server(**settings)
    run_turns(a, [new_conversation(a)])
    wait_relayed(nats_target.url, nats_target.stream, nats_target.prefix, database_url, db_schema)
    leader = wait_lock_holder(database_url, db_schema, nats_target.stream)

    # Node B joins: its relay stands by (the lock stays where it was).
    b = make_server(**settings)
    conversations = [new_conversation(b) for _ in range(6)]
    assert relay_lock_holders(database_url, db_schema, nats_target.stream) == [leader]
    assert "relay active" not in b.log()

    # Traffic on B, relayed by A; kill -9 A while it is publishing B's events.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        traffic = pool.submit(run_turns, b, conversations)
        held = stream_count(nats_target.url, nats_target.stream)
        wait_stream_above(nats_target.url, nats_target.stream, held + 200)
        a.kill()
        traffic.result()

    # B's relay takes the lock and publishes the rest: more turns on B, exactly once.
    assert wait_lock_holder(database_url, db_schema, nats_target.stream, other_than=leader)
    run_turns(b, conversations[:2])
    stored, relayed = wait_relayed(
        nats_target.url, nats_target.stream, nats_target.prefix, database_url, db_schema
    )
    assert_exactly_the_store(stored, relayed, nats_target.prefix)
    assert "relay active for stream" in b.log()


def test_two_relays_at_once_publish_each_event_once(
    make_server: ServerFactory,
    make_relay: RelayFactory,
    nats_target: NatsTarget,
    database_url: str,
    db_schema: str,
) -> None:
    server = make_server(TURNSTREAM_RELAY="false", **BUSY)
    conversations = [new_conversation(server) for _ in range(6)]
    settings = {"TURNSTREAM_RELAY_BATCH": "100", "TURNSTREAM_RELAY_TAKEOVER_S": "0.2"}
    relays = [make_relay(**settings), make_relay(**settings)]

    # Traffic while both run; one leads, the other keeps trying to take over.
    for _ in range(2):
        run_turns(server, conversations)
    stored, relayed = wait_relayed(
        nats_target.url, nats_target.stream, nats_target.prefix, database_url, db_schema
    )
    assert_exactly_the_store(stored, relayed, nats_target.prefix)
    assert all(r.alive() for r in relays)
    assert len(relay_lock_holders(database_url, db_schema, nats_target.stream)) == 1
    assert sum("relay active for stream" in r.log() for r in relays) == 1


def test_two_relays_that_both_lead_still_publish_each_event_once(
    make_server: ServerFactory,
    make_relay: RelayFactory,
    nats_target: NatsTarget,
    database_url: str,
    db_schema: str,
) -> None:
    # The worst case the lock exists to prevent: two relays that each think they lead (each
    # takes a lock of its own). Nats-Expected-Last-Sequence alone must keep the stream exact.
    server = make_server(TURNSTREAM_RELAY="false", **BUSY)
    conversations = [new_conversation(server) for _ in range(6)]
    settings = {"TURNSTREAM_RELAY_BATCH": "100"}
    relays = [make_relay(rogue=True, **settings), make_relay(rogue=True, **settings)]
    # Both lead before the traffic starts: on a loaded machine one relay process can take
    # longer to start than the other takes to publish every event.
    for relay in relays:
        relay.wait_log("relay active for stream")

    for _ in range(2):
        run_turns(server, conversations)
    stored, relayed = wait_relayed(
        nats_target.url, nats_target.stream, nats_target.prefix, database_url, db_schema
    )
    assert_exactly_the_store(stored, relayed, nats_target.prefix)
    assert all(r.alive() for r in relays)
    assert all("relay active for stream" in r.log() for r in relays)


def test_a_relay_whose_publish_is_refused_starts_over_at_once(
    make_server: ServerFactory,
    make_relay: RelayFactory,
    nats_target: NatsTarget,
    database_url: str,
    db_schema: str,
) -> None:
    # A one-second duplicate window, so that a stale publish is refused by its expected
    # sequence, not answered as a duplicate.
    window = {"TURNSTREAM_NATS_DUPLICATE_WINDOW_S": "1"}
    server = make_server(TURNSTREAM_RELAY="false", **BUSY, **window)
    conversations = [new_conversation(server) for _ in range(4)]
    settings = {"TURNSTREAM_RELAY_BATCH": "100", **window}

    # The active relay catches up, then freezes (a long VM or GC pause): it keeps its
    # connections and its lock, and its idea of where the stream stands goes stale.
    active = make_relay(**settings)
    run_turns(server, conversations)
    wait_relayed(nats_target.url, nats_target.stream, nats_target.prefix, database_url, db_schema)
    active.pause()
    try:
        # Meanwhile a relay that wrongly thinks it leads publishes the next events.
        rogue = make_relay(rogue=True, **settings)
        run_turns(server, conversations)
        wait_relayed(
            nats_target.url, nats_target.stream, nats_target.prefix, database_url, db_schema
        )
        rogue.stop()
        # Let the duplicate window lapse (the scenario, not a wait for a result).
        time.sleep(3)
        seen = len(active.log())
    finally:
        active.resume()

    # Thawed, the active relay publishes what the stream already holds. JetStream refuses
    # it at once (wrong last sequence), and the relay must start over from the stream's
    # state on that answer, not stall until its ack timeout.
    stopped = active.wait_log(r"relay stopped \((.*)\); resuming", after=seen)
    assert "no ack" not in stopped.group(1), (
        f"JetStream refused the publish, but the relay never got the answer: {stopped.group(0)}"
    )
    run_turns(server, conversations)
    stored, relayed = wait_relayed(
        nats_target.url, nats_target.stream, nats_target.prefix, database_url, db_schema
    )
    assert_exactly_the_store(stored, relayed, nats_target.prefix)
