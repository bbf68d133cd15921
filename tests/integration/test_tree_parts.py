"""The message tree's parts of tool turns, on a real PostgreSQL: each step's reasoning,
text and calls in order, the calls' states, ``waiting`` while the turn pauses, and the
same parts from a rebuild."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any
from uuid import UUID

import msgspec
import psycopg
import pytest
from psycopg import sql

from tests.support.events import a_started
from tests.support.projections import generations, view_rows
from turnstream.bootstrap import build_application
from turnstream.domain.conversation import Conversation
from turnstream.domain.events import DomainEvent
from turnstream.domain.progress import Draft, TurnProgress
from turnstream.domain.tools import FunctionSpec, ToolSpec
from turnstream.domain.turn import Turn, TurnEvent, TurnUsage
from turnstream.ids import uuid7
from turnstream.projections.reader import Reader
from turnstream.projections.rebuild import rebuild
from turnstream.projections.registry import PROJECTIONS, active_generation, ensure_projections
from turnstream.projections.runner import Batch
from turnstream.projections.views import conversation_view
from turnstream.settings import Settings
from turnstream.store.application import TurnstreamApplication

WEATHER = ToolSpec(
    function=FunctionSpec(
        name="weather",
        description="The weather in a city.",
        parameters={"type": "object", "properties": {"city": {"type": "string"}}},
    )
)
USAGE = TurnUsage(prompt_tokens=5, completion_tokens=3)


@pytest.fixture
def app(database_url: str, db_schema: str) -> Iterator[TurnstreamApplication]:
    settings = Settings.from_env({}, database_url=database_url, database_schema=db_schema)
    application = build_application(settings, database_url)
    ensure_projections(application)
    yield application
    application.close()


def project(app: TurnstreamApplication) -> None:
    """Apply every event stored so far to the tree's active generation, as its worker
    does (a page with a repair to note takes the other way)."""
    tree = PROJECTIONS["tree"]
    with app.connect() as conn:
        batch = Batch(app, tree, active_generation(conn, app, tree.name))
        head, events = batch.next_page(conn, batch.position())
        if events and not batch.apply_active(conn, events, head):
            batch.apply(conn, events, head)


class Story:
    """One turn of a conversation, told through the domain's commands and stored."""

    def __init__(
        self, app: TurnstreamApplication, conversation_id: UUID | None = None, **started: Any
    ) -> None:
        self.app = app
        self.cid = conversation_id or uuid7()
        if conversation_id is None:
            app.record(
                Conversation.create(
                    self.cid, tenant="acme", owner="alice", model="demo", title=None,
                    system_prompt=None,
                )
            )  # fmt: skip
        first = a_started(conversation_id=self.cid, **started)
        self.answer_id = first.assistant_message_id
        self.turn = Turn(first)
        self.progress = TurnProgress(first)
        app.record(first)

    def run(self, *drafts: Draft | tuple[Draft, Any] | None) -> None:
        """Store what a runner drafts (numbered as the writer numbers them)."""
        events: list[DomainEvent] = []
        for draft in drafts:
            if isinstance(draft, tuple):
                draft = draft[0]
            if draft is None:
                continue
            event = draft.event(self.turn.version + 1)
            self.turn.apply(event)
            events.append(event)
        self.app.record(*events)

    def record(self, events: Sequence[TurnEvent]) -> None:
        """Store what a waiting turn's command made (already applied to the fold)."""
        self.app.record(*events)

    def resume(self) -> TurnProgress:
        """The turn taken up again, as a node does: folded from the store."""
        turn = self.app.turn(self.turn.id)
        assert turn is not None
        self.progress = TurnProgress.resume(turn)
        return self.progress

    def answer(self) -> dict[str, Any]:
        project(self.app)
        messages = Reader(self.app).messages(self.cid)
        found: dict[str, Any] = next(m for m in messages if m["id"] == self.answer_id)
        return found


def call(
    call_id: str, name: str, arguments: Any, kind: str, state: str, **more: Any
) -> dict[str, Any]:
    return {
        "type": "tool_call", "call_id": call_id, "name": name, "arguments": arguments,
        "kind": kind, "server": None, "state": state, "approval": None, "output": None,
        "is_error": False,
    } | more  # fmt: skip


def test_two_steps_with_parallel_calls_an_approval_and_pauses(
    app: TurnstreamApplication,
) -> None:
    story = Story(app, tools=(WEATHER,))
    p = story.progress
    story.run(
        p.append_reasoning("Need the weather. "),
        p.append_text("Let me look."),
        p.call_started("c1", "weather"),
        p.call_arguments("c1", '{"city": "Paris"}'),
        p.call_started("s1", "search"),
        p.call_arguments("s1", '{"q": "Paris events"}'),
        p.call_ready("c1", "client"),
        p.call_ready("s1", "server", "web"),
        p.approval_requested("s1"),
        p.step_finished("tool_calls", USAGE),
        p.wait("approval", ["s1"], 60),
    )
    asked = story.answer()
    client = call("c1", "weather", {"city": "Paris"}, "client", "input-available")
    server = call(
        "s1", "search", {"q": "Paris events"}, "server", "approval-requested", server="web",
        approval={"state": "requested", "by": None, "reason": None},
    )  # fmt: skip
    first_step = [
        {"type": "reasoning", "text": "Need the weather. "},
        {"type": "text", "text": "Let me look."},
    ]
    assert asked["status"] == "waiting"
    assert asked["parts"] == [*first_step, client, server]
    assert asked["content"] == ""  # the text comes with the end, as for any turn

    # Approved: the turn still waits, for its client's result.
    story.record(story.turn.decide("s1", approved=True, by="alice"))
    approved = story.answer()
    assert approved["status"] == "waiting"
    server |= {"state": "input-available"}
    server["approval"] = {"state": "approved", "by": "alice", "reason": None}
    assert approved["parts"] == [*first_step, client, server]

    # The last answer: nothing waits, the turn goes on (the node that took it runs it).
    story.record([story.turn.answer("c1", {"temp": 21})])
    going_on = story.answer()
    assert going_on["status"] == "streaming"
    client |= {"state": "output-available", "output": {"temp": 21}}
    assert going_on["parts"] == [*first_step, client, server]

    p = story.resume()
    story.run(p.result("s1", {"events": ["jazz"]}, is_error=False))
    server |= {"state": "output-available", "output": {"events": ["jazz"]}}
    assert story.answer()["parts"] == [*first_step, client, server]
    story.run(
        p.append_text("21 degrees, and jazz."),
        p.step_finished("stop", USAGE),
        p.finish(finish_reason="stop", usage=USAGE),
    )
    done = story.answer()
    assert done["status"] == "complete"
    assert done["content"] == "Let me look.21 degrees, and jazz."
    assert done["parts"] == [
        *first_step,
        client,
        server,
        {"type": "text", "text": "21 degrees, and jazz."},
    ]
    # And so the conversation's JSON shows them.
    row = Reader(app).conversation(story.cid)
    assert row is not None
    view = msgspec.to_builtins(conversation_view(row, Reader(app).messages(story.cid), None))
    shown = next(m for m in view["messages"] if m["id"] == str(story.answer_id))
    assert shown["parts"] == msgspec.to_builtins(done["parts"])
    assert shown["status"] == "complete"
    user = next(m for m in view["messages"] if m["role"] == "user")
    assert user["parts"] == [{"type": "text", "text": "hi"}]


def test_a_refused_approval_is_the_calls_error_result(app: TurnstreamApplication) -> None:
    story = Story(app)
    p = story.progress
    story.run(
        p.call_started("s1", "delete_all"),
        p.call_ready("s1", "server", "files"),
        p.approval_requested("s1"),
        p.step_finished("tool_calls", USAGE),
        p.wait("approval", ["s1"], 60),
    )
    story.record(story.turn.decide("s1", approved=False, by="alice", reason="too risky"))
    refused = story.answer()
    assert refused["status"] == "streaming"
    assert refused["parts"] == [
        call(
            "s1", "delete_all", {}, "server", "output-error", server="files",
            approval={"state": "refused", "by": "alice", "reason": "too risky"},
            output="The user refused this call: too risky", is_error=True,
        )
    ]  # fmt: skip


def test_an_error_result_and_an_unknown_tool(app: TurnstreamApplication) -> None:
    story = Story(app)
    p = story.progress
    story.run(
        p.call_started("u1", "nope"),
        p.call_arguments("u1", "[1]"),
        p.call_ready("u1", "unknown"),
        p.result("u1", "No tool named 'nope' is offered in this turn.", is_error=True),
        p.call_started("s1", "fetch"),
        p.call_ready("s1", "server", "web"),
        p.result("s1", {"error": "bad\x00gateway"}, is_error=True),
        p.step_finished("tool_calls", USAGE),
        p.append_text("Both failed."),
        p.step_finished("stop", USAGE),
        p.finish(finish_reason="stop", usage=USAGE),
    )
    done = story.answer()
    assert done["status"] == "complete"
    assert done["parts"] == [
        call(
            "u1", "nope", None, "unknown", "output-error",
            output="No tool named 'nope' is offered in this turn.", is_error=True,
        ),
        call(
            "s1", "fetch", {}, "server", "output-error", server="web",
            output={"error": "bad\ufffdgateway"}, is_error=True,
        ),
        {"type": "text", "text": "Both failed."},
    ]  # fmt: skip


def test_an_answer_cancelled_mid_step_keeps_its_unfinished_text_last(
    app: TurnstreamApplication,
) -> None:
    story = Story(app)
    p = story.progress
    story.run(
        p.append_text("Looking. "),
        p.call_started("s1", "fetch"),
        p.call_ready("s1", "server", "web"),
        p.result("s1", "page", is_error=False),
        p.step_finished("tool_calls", USAGE),
        p.append_reasoning("Hmm."),
        p.append_text("The page sa"),
        p.interrupt(reason="cancelled", usage=USAGE),
    )
    done = story.answer()
    assert (done["status"], done["content"]) == ("interrupted", "Looking. The page sa")
    assert done["parts"] == [
        {"type": "text", "text": "Looking. "},
        call("s1", "fetch", {}, "server", "output-available", server="web", output="page"),
        {"type": "reasoning", "text": "Hmm."},
        {"type": "text", "text": "The page sa"},
    ]


def test_a_continued_answer_keeps_the_parts_it_had(app: TurnstreamApplication) -> None:
    # A plain answer, continued by a turn that calls a tool, continued again without.
    story = Story(app)
    p = story.progress
    story.run(p.append_text("Part one. "), p.interrupt(reason="cancelled", usage=USAGE))
    assert story.answer()["parts"] == [{"type": "text", "text": "Part one. "}]

    def go_on(text: str) -> Story:
        return Story(
            app, story.cid, mode="continue", user_message_id=None,
            assistant_message_id=story.answer_id, prefix=text, content="",
        )  # fmt: skip

    second = go_on("Part one. ")
    p = second.progress
    second.run(
        p.call_started("c1", "weather"),
        p.call_ready("c1", "client"),
        p.step_finished("tool_calls", USAGE),
        p.wait("tool_result", ["c1"], 60),
    )
    second.record([second.turn.answer("c1", "sunny")])
    p = second.resume()
    second.run(
        p.append_text("Sunny. "),
        p.step_finished("stop", USAGE),
        p.finish(finish_reason="stop", usage=USAGE),
    )
    calls = [call("c1", "weather", {}, "client", "output-available", output="sunny")]
    parts = [{"type": "text", "text": "Part one. "}, *calls, {"type": "text", "text": "Sunny. "}]
    assert second.answer()["parts"] == parts

    third = go_on("Part one. Sunny. ")
    p = third.progress
    third.run(p.append_text("The end."), p.finish(finish_reason="stop", usage=USAGE))
    done = third.answer()
    assert done["content"] == "Part one. Sunny. The end."
    assert done["parts"] == [*parts, {"type": "text", "text": "The end."}]


def test_a_turn_without_tools_has_its_reasoning_then_its_text(
    app: TurnstreamApplication,
) -> None:
    story = Story(app)
    p = story.progress
    story.run(p.append_text("Hello."), p.finish(finish_reason="stop", usage=USAGE))
    assert story.answer()["parts"] == [{"type": "text", "text": "Hello."}]
    thinking = Story(app)
    p = thinking.progress
    thinking.run(
        p.append_reasoning("Greet."),
        p.append_text("Hi!"),
        p.finish(finish_reason="stop", usage=USAGE),
    )
    assert thinking.answer()["parts"] == [
        {"type": "reasoning", "text": "Greet."},
        {"type": "text", "text": "Hi!"},
    ]
    with app.connect() as conn:
        steps = conn.execute("SELECT count(*) FROM tree_steps").fetchone()
    assert steps == (0,)  # no rows for turns without tools


def test_a_rebuild_gives_the_same_parts(
    app: TurnstreamApplication, database_url: str, db_schema: str
) -> None:
    test_two_steps_with_parallel_calls_an_approval_and_pauses(app)
    test_an_answer_cancelled_mid_step_keeps_its_unfinished_text_last(app)
    test_a_continued_answer_keeps_the_parts_it_had(app)
    waiting = Story(app)
    p = waiting.progress
    waiting.run(
        p.call_started("c1", "weather"),
        p.call_ready("c1", "client"),
        p.step_finished("tool_calls", USAGE),
        p.wait("tool_result", ["c1"], 60),
    )
    deleted = Story(app)
    p = deleted.progress
    deleted.run(p.call_started("c1", "weather"), p.call_ready("c1", "client"))
    project(app)
    app.record(app.conversation(deleted.cid).delete())
    project(app)
    live = view_rows(database_url, db_schema)
    assert not [r for r in live["tree_tool_calls"] if deleted.cid in r]
    reader = Reader(app)
    cids = {r[0] for r in live["tree_conversations"]}
    before = {cid: reader.messages(cid) for cid in cids}
    assert any(r["status"] == "waiting" for rows in before.values() for r in rows)

    rebuild(app, "tree")

    assert generations(database_url, db_schema)["tree"] == 2
    assert view_rows(database_url, db_schema) == live
    assert {cid: reader.messages(cid) for cid in cids} == before


def test_a_conversation_created_with_tools_shows_them_in_its_row(
    app: TurnstreamApplication,
) -> None:
    with_tools = uuid7()
    app.record(
        Conversation.create(
            with_tools, tenant="acme", owner="alice", model="demo", title=None,
            system_prompt=None, tools=(WEATHER,),
        )
    )  # fmt: skip
    plain = Story(app).cid
    project(app)
    reader = Reader(app)
    row = reader.conversation(with_tools)
    assert row is not None
    assert row["tools"] == [msgspec.to_builtins(WEATHER)]
    assert row["tools"][0]["function"]["name"] == "weather"
    _, tree_row, _ = reader.tree(with_tools)
    assert tree_row is not None
    assert tree_row["tools"] == row["tools"]
    assert conversation_view(row, [], None).tools == row["tools"]
    plain_row = reader.conversation(plain)
    assert plain_row is not None
    assert plain_row["tools"] is None


def test_a_generation_made_before_tools_gets_them_and_the_step_tables(
    app: TurnstreamApplication, database_url: str, db_schema: str
) -> None:
    # As the previous version left it: no tools column, no step tables, views without.
    schema = sql.Identifier(db_schema)
    with psycopg.connect(database_url, autocommit=True) as conn:
        for name in ("tree_conversations", "tree_steps", "tree_tool_calls"):
            conn.execute(sql.SQL("DROP VIEW {}.{}").format(schema, sql.Identifier(name)))
        for name in ("tree_steps__g1", "tree_tool_calls__g1"):
            conn.execute(sql.SQL("DROP TABLE {}.{}").format(schema, sql.Identifier(name)))
        conn.execute(
            sql.SQL("ALTER TABLE {}.tree_conversations__g1 DROP COLUMN tools").format(schema)
        )
        conn.execute(
            sql.SQL(
                "CREATE VIEW {0}.tree_conversations AS SELECT * FROM {0}.tree_conversations__g1"
            ).format(schema)
        )
    ensure_projections(app)  # what a start of this version does
    assert generations(database_url, db_schema)["tree"] == 1
    story = Story(app)
    p = story.progress
    story.run(
        p.call_started("c1", "weather"),
        p.call_ready("c1", "client"),
        p.step_finished("tool_calls", USAGE),
        p.wait("tool_result", ["c1"], 60),
    )
    answer = story.answer()
    assert answer["status"] == "waiting"
    assert answer["parts"] == [call("c1", "weather", {}, "client", "input-available")]
    row = Reader(app).conversation(story.cid)
    assert row is not None
    assert row["tools"] is None
