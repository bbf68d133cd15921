"""The log is forever: no single stored event may stop the relay or a projection.

Events as an older version could have stored them (a tenant ``acme\\n``, text with NUL)
are written straight to the store; the relay publishes them and everything after them,
on an encoded subject token, and notes each once as a repair.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import NatsTarget
from tests.integration.test_relay import relay_on, settings_for, write
from tests.support import events
from tests.support.inprocess import in_process_settings, serving
from tests.support.jetstream import stored_events, stream_messages
from tests.support.shared_server import a_place
from turnstream.bootstrap import build_application
from turnstream.bus.envelope import tenant_of_token
from turnstream.cli import projections as projections_cli
from turnstream.domain.events import DomainEvent
from turnstream.settings import Settings
from turnstream.store.application import TurnstreamApplication

BAD_TENANT = "acme\n"


def a_conversation(tenant: str, text: str = "hello") -> list[DomainEvent]:
    """A conversation with one finished turn whose text and title hold ``text``."""
    return events.a_conversation(tenant=tenant, content=text, tokens=[text], title=f"about {text}")


@pytest.fixture
def app(database_url: str, db_schema: str) -> Iterator[TurnstreamApplication]:
    application = build_application(Settings.from_env({}, database_schema=db_schema), database_url)
    yield application
    application.close()


def repairs(app: TurnstreamApplication) -> dict[str, int]:
    with app.connect() as conn:
        return app.store.repair_counts(conn)


async def test_a_tenant_that_is_no_subject_token_is_relayed_encoded_and_the_rest_follows(
    app: TurnstreamApplication,
    nats_target: NatsTarget,
    database_url: str,
    db_schema: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = settings_for(nats_target, database_url, db_schema)
    # A conversation of tenant "acme\n" (stored as an old version could have), then
    # one of a good tenant behind it.
    poisoned = a_conversation(BAD_TENANT)
    write(app, poisoned)
    head = write(app, a_conversation("acme"))
    with caplog.at_level(logging.WARNING, logger="turnstream.bus.relay"):
        async with relay_on(app, settings) as running:
            await running.caught_up(head)
            assert running.relay.status.last_error is None
        # A second relay resumes from the stream: nothing is noted or logged again.
        head = write(app, a_conversation("acme"))
        async with relay_on(app, settings) as running:
            await running.caught_up(head)
    relayed = await stream_messages(nats_target.url, nats_target.stream, nats_target.prefix)
    stored = stored_events(database_url, db_schema)
    # Every stored event is on the stream, once, in order.
    assert [m.headers["Turnstream-Position"] for m in relayed] == [str(e.position) for e in stored]
    # The poisoned events went out on the encoded token; their body holds the tenant as
    # stored, and the token decodes to it.
    bad = relayed[: len(poisoned)]
    for message in bad:
        token = message.subject.split(".")[1]
        assert token == "~YWNtZQo"
        assert tenant_of_token(token) == BAD_TENANT
        assert json.loads(message.body)["tenant"] == BAD_TENANT
    assert all(m.subject.split(".")[1] == "acme" for m in relayed[len(poisoned) :])
    # Each was noted once, and logged once.
    assert repairs(app) == {f"relay/{nats_target.stream}": len(poisoned)}
    logged = [r for r in caplog.records if "not a subject token" in r.getMessage()]
    assert len(logged) == len(poisoned)


NUL_TEXT = "hi\x00there"


def test_text_a_view_cannot_hold_is_projected_repaired_and_counted_once(
    database_url: str, nats_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with a_place(database_url, nats_url) as (schema, target):
        settings = in_process_settings(database_url, schema, target)
        with serving(settings) as api:
            app = api.container.app
            # Poison as an older version could have stored it: a tenant "acme\n" and
            # text with NUL; then a good conversation behind it, through the API.
            poisoned = a_conversation(BAD_TENANT, NUL_TEXT) + a_conversation("acme", NUL_TEXT)
            write(app, poisoned)
            good = httpx.post(
                f"{api.base_url}/v1/conversations", json={}, headers=api.headers(), timeout=30
            )
            assert good.status_code == 201, good.text
            # The relay and every projection reach the log's head.
            head = api.wait_at_head()
            # The good conversation reads as always (reads wait for the projections).
            cid = good.json()["id"]
            r = httpx.get(f"{api.base_url}/v1/conversations/{cid}", headers=api.headers())
            assert r.status_code == 200, r.text
            # The poisoned conversation of tenant "acme" is in the views, its text with
            # U+FFFD where the NUL was; the log keeps the original.
            poisoned_cid = poisoned[4].originator_id
            r = httpx.get(f"{api.base_url}/v1/conversations/{poisoned_cid}", headers=api.headers())
            assert r.status_code == 200, r.text
            view = r.json()
            assert view["title"] == "about hi\ufffdthere"
            assert [m["content"] for m in view["messages"]] == ["hi\ufffdthere"] * 2
            stored = stored_events(database_url, schema)
            assert b"hi\\u0000there" in stored[4].state
            # Counted: by each projection that holds such text, and the relay.
            metrics = httpx.get(f"{api.base_url}/metrics").text
            expected = {"relay": 4, "tree": 6, "conversations": 2, "usage": 0}
            for part, count in expected.items():
                assert f'turnstream_repaired_events{{part="{part}"}} {count}.0' in metrics
            projections_cli.main(api.settings, "status", None, as_json=True)
            status = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
            assert {s["name"]: s["repaired"] for s in status} == {
                k: v for k, v in expected.items() if k != "relay"
            }
            assert all(s["position"] == head for s in status)
