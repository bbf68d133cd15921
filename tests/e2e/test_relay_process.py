"""serve's relay child: restarted when it dies, gone when serve is gone, drained on stop."""

from __future__ import annotations

import time

import psutil
import pytest

from tests.api.test_relay import assert_exactly_the_store
from tests.api.test_turn_stream import new_conversation, run_turn
from tests.conftest import NatsTarget
from tests.e2e.conftest import ServerFactory
from tests.support.jetstream import wait_relayed

pytestmark = pytest.mark.e2e


def relay_children(pid: int) -> list[psutil.Process]:
    return [
        child
        for child in psutil.Process(pid).children()
        if "relay" in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE
    ]


def wait_for(predicate: object, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_the_relay_child_is_restarted_and_follows_its_parent(
    make_server: ServerFactory, nats_target: NatsTarget, database_url: str, db_schema: str
) -> None:
    server = make_server(TURNSTREAM_DEMO_TOKENS="24", TURNSTREAM_DEMO_TOKENS_PER_S="0")
    assert server.proc is not None
    (child,) = relay_children(server.proc.pid)
    # A niced child, so that the live streams come first on a saturated machine.
    wait_for(lambda: child.nice() >= psutil.Process().nice() + 10, "the relay to nice itself")
    cid = new_conversation(server)
    run_turn(server, cid)

    # kill -9 the relay: serve starts another, which carries on exactly once.
    child.kill()
    child.wait(10)
    wait_for(lambda: len(relay_children(server.proc.pid)) == 1, "a new relay child")
    (second,) = relay_children(server.proc.pid)
    assert second.pid != child.pid
    run_turn(server, cid)
    stored, relayed = wait_relayed(
        nats_target.url, nats_target.stream, nats_target.prefix, database_url, db_schema
    )
    assert_exactly_the_store(stored, relayed, nats_target.prefix)

    # kill -9 serve: its relay child notices and exits by itself.
    server.kill()
    wait_for(
        lambda: not second.is_running() or second.status() == psutil.STATUS_ZOMBIE,
        "the orphaned relay to exit",
    )


def test_a_clean_stop_relays_everything_stored_before_it_exits(
    make_server: ServerFactory, nats_target: NatsTarget, database_url: str, db_schema: str
) -> None:
    server = make_server(TURNSTREAM_DEMO_TOKENS="200", TURNSTREAM_DEMO_TOKENS_PER_S="0")
    cid = new_conversation(server)
    run_turn(server, cid)
    server.stop()
    assert server.proc is not None
    assert server.proc.returncode == 0, server.log()
    # Nothing runs any more: the stream already holds every stored event.
    stored, relayed = wait_relayed(
        nats_target.url,
        nats_target.stream,
        nats_target.prefix,
        database_url,
        db_schema,
        timeout=0,
    )
    assert_exactly_the_store(stored, relayed, nats_target.prefix)
