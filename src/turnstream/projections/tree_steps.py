"""The message tree's tool turns: their steps and calls as rows, and rows as parts.

A turn that calls tools is a sequence of model steps (``turnstream.domain.tools``). Its
answer is shown as *parts*: per step its reasoning, its text, then its calls. Rows are
written as steps end (``StepFinished`` carries the step's text and reasoning) and as
calls progress; deltas are never read here either.

- ``tree_steps``: a row per finished step (``step`` 1, 2 …), and two more kinds that keep
  a message's parts equal to its content: a *lead* (step 0), the answer a ``continue``
  turn extends when that turn calls tools; a *tail* (the step after the turn's last),
  what the turn's end holds that no finished step does (an answer cancelled or failed
  mid-step; a continuation without tools of an answer that had some).
- ``tree_tool_calls``: a row per call, from complete (``ToolCallReady``) to its result.
  A call's step is the turn's steps finished before it, plus one: a step's calls are
  ready before its ``StepFinished``.

Rows name their message and conversation, found in ``tree_messages`` by turn in SQL (a
turn's events do not carry them): a conversation's parts are one query, its deletion
removes them, and a turn whose message the tree does not hold writes none. Each row's
``position`` is its event's log position, so parts are in the same order in every
rebuild.

The answer is ``waiting`` from the turn's ``Waiting`` until it goes on: when an answer
(a result, a decision) leaves no call waiting, as the node that records it then runs
the turn, or at any event of the model's (which a resumed runner makes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any
from uuid import UUID

import msgspec
from psycopg.types.json import Jsonb

from turnstream.domain.events import DomainEvent
from turnstream.domain.turn import Turn
from turnstream.projections.base import _UNSTORABLE, REPLACEMENT, Op

Row = dict[str, Any]
Part = dict[str, Any]

STEP_TOPICS = (
    Turn.ToolCallReady.TOPIC,
    Turn.ApprovalRequested.TOPIC,
    Turn.ApprovalDecided.TOPIC,
    Turn.ToolResultRecorded.TOPIC,
    Turn.StepFinished.TOPIC,
    Turn.Waiting.TOPIC,
)

TABLES = {
    "tree_steps": (
        "turn_id uuid NOT NULL, step integer NOT NULL, message_id uuid NOT NULL,"
        " conversation_id uuid NOT NULL, position bigint NOT NULL, text text NOT NULL,"
        " reasoning text NOT NULL, finish_reason text, PRIMARY KEY (turn_id, step)"
    ),
    "tree_tool_calls": (
        "turn_id uuid NOT NULL, call_id text NOT NULL, message_id uuid NOT NULL,"
        " conversation_id uuid NOT NULL, step integer NOT NULL, position bigint NOT NULL,"
        " name text NOT NULL, arguments jsonb, kind text NOT NULL, server text,"
        " approval_state text, approval_by text, approval_reason text, output jsonb,"
        " is_error boolean, PRIMARY KEY (turn_id, call_id)"
    ),
}
INDEXES = (
    ("tree_steps", "conversation_id, position"),
    ("tree_tool_calls", "conversation_id, position"),
)

_ANSWER = "FROM {tree_messages} m WHERE m.turn_id = %s AND m.role = 'assistant'"
_HAS_ROWS = (
    "EXISTS (SELECT 1 FROM {tree_steps} s WHERE s.conversation_id = m.conversation_id"
    " AND s.message_id = m.id) OR EXISTS (SELECT 1 FROM {tree_tool_calls} c"
    " WHERE c.conversation_id = m.conversation_id AND c.message_id = m.id)"
)
_NEXT_STEP = "(SELECT coalesce(max(s.step), 0) + 1 FROM {tree_steps} s WHERE s.turn_id = m.turn_id)"

LEAD = (
    "INSERT INTO {tree_steps} (turn_id, step, message_id, conversation_id, position, text,"
    " reasoning) SELECT m.turn_id, 0, m.id, m.conversation_id, %s, m.content, m.reasoning "
    + _ANSWER
    + " AND (m.content <> '' OR m.reasoning <> '') AND NOT ("
    + _HAS_ROWS
    + ") ON CONFLICT DO NOTHING"
)
CALL = (
    "INSERT INTO {tree_tool_calls} (turn_id, call_id, message_id, conversation_id, step,"
    " position, name, arguments, kind, server) SELECT m.turn_id, %s, m.id, m.conversation_id, "
    + _NEXT_STEP
    + ", %s, %s, %s, %s, %s "
    + _ANSWER
    + " ON CONFLICT (turn_id, call_id) DO UPDATE SET step = excluded.step, position ="
    " excluded.position, name = excluded.name, arguments = excluded.arguments, kind ="
    " excluded.kind, server = excluded.server, approval_state = NULL, approval_by = NULL,"
    " approval_reason = NULL, output = NULL, is_error = NULL"
)
"""A call id made again in a turn is the later call, as in the turn's fold (``Steps``)."""
STEP = (
    "INSERT INTO {tree_steps} (turn_id, step, message_id, conversation_id, position, text,"
    " reasoning, finish_reason) SELECT m.turn_id, %s, m.id, m.conversation_id, %s, %s, %s, %s "
    + _ANSWER
    + " ON CONFLICT (turn_id, step) DO NOTHING"
)
TAIL = (
    "INSERT INTO {tree_steps} (turn_id, step, message_id, conversation_id, position, text,"
    " reasoning) SELECT t.* FROM (SELECT m.turn_id,"
    " (SELECT coalesce(max(s.step), 0) + 1 FROM {tree_steps} s WHERE s.turn_id = m.turn_id),"
    " m.id, m.conversation_id, %s::bigint, substr(%s::text, (length(m.content) + 1 +"
    " (SELECT coalesce(sum(length(s.text)), 0) FROM {tree_steps} s"
    " WHERE s.turn_id = m.turn_id AND s.step > 0))::integer) AS text,"
    " CASE WHEN %s::text = '' THEN '' ELSE substr(%s::text, (length(m.reasoning) + 1 +"
    " (SELECT coalesce(sum(length(s.reasoning)), 0) FROM {tree_steps} s"
    " WHERE s.turn_id = m.turn_id AND s.step > 0))::integer) END AS reasoning"
    " FROM {tree_messages} m WHERE m.turn_id = %s AND m.role = 'assistant' AND ("
    "EXISTS (SELECT 1 FROM {tree_steps} s WHERE s.conversation_id = m.conversation_id"
    " AND s.message_id = m.id) OR EXISTS (SELECT 1 FROM {tree_tool_calls} c"
    " WHERE c.conversation_id = m.conversation_id AND c.message_id = m.id))) t"
    " WHERE t.text <> '' OR t.reasoning <> ''"
)
"""Before the answer's row takes the end's text: its ``content`` is still what the turn
began with (empty, or the answer a ``continue`` extends)."""

_CALL_UPDATE = "UPDATE {tree_tool_calls} SET %s WHERE turn_id = %%s AND call_id = %%s"
REQUESTED = _CALL_UPDATE % "approval_state = 'requested'"
DECIDED = _CALL_UPDATE % "approval_state = %s, approval_by = %s, approval_reason = %s"
RESULT = _CALL_UPDATE % "output = %s, is_error = %s"
RESUMED = (
    "UPDATE {tree_messages} SET status = 'streaming' WHERE turn_id = %s AND role = 'assistant'"
    " AND status = 'waiting'"
)
"""The model's next events (a call, a step's end) come once the turn goes on."""
ANSWERED = (
    "UPDATE {tree_messages} SET status = 'streaming' WHERE turn_id = %s AND role = 'assistant'"
    " AND status = 'waiting' AND NOT EXISTS (SELECT 1 FROM {tree_tool_calls} c"
    " WHERE c.turn_id = %s AND c.is_error IS NULL"
    " AND (c.approval_state = 'requested' OR c.kind = 'client'))"
)
"""An answer (a result, a decision) lets a waiting turn go on once no call waits for
one any more (``Call.waits_for``): the node that records the last one runs the turn."""
WAITING = (
    "UPDATE {tree_messages} SET status = 'waiting' WHERE turn_id = %s AND role = 'assistant'"
    " AND status = 'streaming'"
)
DELETED = (
    "DELETE FROM {tree_steps} WHERE conversation_id = %s",
    "DELETE FROM {tree_tool_calls} WHERE conversation_id = %s",
)


def jsonb(value: Any) -> Jsonb:
    """A JSON value as a ``jsonb`` parameter (see :func:`storable_json`)."""
    return Jsonb(value, dumps=msgspec.json.encode)


def step_changes(q: Callable[[str], str], event: DomainEvent, position: int) -> list[Op]:
    """The statements of a tool turn's event (``STEP_TOPICS``); none for others."""
    turn = event.originator_id
    resumed: Op = (q(RESUMED), (turn,))
    answered: Op = (q(ANSWERED), (turn, turn))
    if isinstance(event, Turn.ToolCallReady):
        call = (
            event.call_id, position, event.name, jsonb(event.arguments), event.kind,
            event.server, turn,
        )  # fmt: skip
        return [(q(LEAD), (position, turn)), (q(CALL), call), resumed]
    if isinstance(event, Turn.StepFinished):
        step = (event.step, position, event.text, event.reasoning, event.finish_reason, turn)
        return [(q(STEP), step), resumed]
    if isinstance(event, Turn.ApprovalRequested):
        return [(q(REQUESTED), (turn, event.call_id)), resumed]
    if isinstance(event, Turn.ApprovalDecided):
        state = "approved" if event.approved else "refused"
        return [(q(DECIDED), (state, event.by, event.reason, turn, event.call_id)), answered]
    if isinstance(event, Turn.ToolResultRecorded):
        output = jsonb(event.output)
        return [(q(RESULT), (output, event.is_error, turn, event.call_id)), answered]
    if isinstance(event, Turn.Waiting):
        return [(q(WAITING), (turn,))]
    return []


def tail(q: Callable[[str], str], event: Turn.Finished | Turn.Failed, position: int) -> Op:
    """The tail of a turn that ends (before its answer's row takes the end's text)."""
    reasoning = event.reasoning
    return (q(TAIL), (position, event.text, reasoning, reasoning, event.originator_id))


def deleted(q: Callable[[str], str], conversation_id: UUID) -> list[Op]:
    return [(q(statement), (conversation_id,)) for statement in DELETED]


# JSON values a view can hold.


def clean(value: Any) -> tuple[Any, bool]:
    """``value`` with every string a ``jsonb`` cannot hold (NUL, lone surrogates) made
    storable as :func:`~turnstream.projections.base.storable` makes text; and whether
    any was. A tool's output is anything a server or a client sent."""
    if isinstance(value, str):
        if _UNSTORABLE.search(value):
            return _UNSTORABLE.sub(REPLACEMENT, value), True
        return value, False
    if isinstance(value, list):
        items = [clean(v) for v in value]
        return [v for v, _ in items], any(c for _, c in items)
    if isinstance(value, dict):
        changed = False
        out: dict[Any, Any] = {}
        for k, v in value.items():
            key, key_changed = clean(k)
            out[key], value_changed = clean(v)
            changed = changed or key_changed or value_changed
        return out, changed
    return value, False


def storable_json(ops: list[Op]) -> tuple[list[Op], bool]:
    """``ops`` with their JSON parameters :func:`clean`; and whether any had to be."""
    repaired = False
    out: list[Op] = []
    for statement, params in ops:
        if any(isinstance(p, Jsonb) for p in params):
            fixed: list[Any] = []
            for p in params:
                if isinstance(p, Jsonb):
                    value, changed = clean(p.obj)
                    if changed:
                        p, repaired = jsonb(value), True
                fixed.append(p)
            params = fixed
        out.append((statement, params))
    return out, repaired


# Rows as parts (the reader's side).


def text_parts(reasoning: str, text: str) -> list[Part]:
    parts: list[Part] = []
    if reasoning:
        parts.append({"type": "reasoning", "text": reasoning})
    if text:
        parts.append({"type": "text", "text": text})
    return parts


def call_state(row: Row) -> str:
    if row["is_error"] is not None:
        return "output-error" if row["is_error"] else "output-available"
    if row["approval_state"] == "requested":
        return "approval-requested"
    return "input-available"


def call_part(row: Row) -> Part:
    approval = row["approval_state"]
    return {
        "type": "tool_call",
        "call_id": row["call_id"],
        "name": row["name"],
        "arguments": row["arguments"],
        "kind": row["kind"],
        "server": row["server"],
        "state": call_state(row),
        "approval": None
        if approval is None
        else {"state": approval, "by": row["approval_by"], "reason": row["approval_reason"]},
        "output": row["output"],
        "is_error": bool(row["is_error"]),
    }


def message_parts(message: Row, rows: list[Row]) -> list[Part]:
    """A message's parts: from its step and call rows (in log order) when it has any,
    else its reasoning and text."""
    if not rows:
        return text_parts(message["reasoning"], message["content"])
    steps: dict[tuple[UUID, int], Row] = {}
    calls: dict[tuple[UUID, int], list[Row]] = {}
    first: dict[UUID, int] = {}
    for row in rows:
        key = (row["turn_id"], row["step"])
        first.setdefault(row["turn_id"], row["position"])
        if row["call_id"] is None:
            steps[key] = row
        else:
            calls.setdefault(key, []).append(row)
    parts: list[Part] = []
    # Turns in the order they began, steps in order; a step's calls after its text.
    for key in sorted(steps.keys() | calls.keys(), key=lambda k: (first[k[0]], k[1])):
        step = steps.get(key)
        if step is not None:
            parts += text_parts(step["reasoning"], step["text"])
        parts += [call_part(c) for c in calls.get(key, ())]
    return parts


def with_parts(messages: list[Row], rows: Iterable[Row]) -> list[Row]:
    """``messages`` (the tree's rows), each with its ``parts`` from ``rows`` (the step
    and call rows of their conversation, in log order)."""
    of: dict[UUID, list[Row]] = {}
    for row in rows:
        of.setdefault(row["message_id"], []).append(row)
    for message in messages:
        message["parts"] = message_parts(message, of.get(message["id"], []))
    return messages
