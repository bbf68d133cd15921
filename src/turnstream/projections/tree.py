"""The message tree: every conversation with all its messages and branches.

Messages are written when their turn starts (the user message complete, the answer
``streaming``) and once more when it ends: the terminal event carries the whole answer,
so tokens never touch this view; live text comes from the turn's stream. A message's
``ordinal`` is its turn's log position (doubled, the answer after the question), so the
flat list is in creation order, the same in every rebuild.

A user message lists the files attached to it (``attachments``, see ``attachments``),
from its turn's ``Started``.

A turn that calls tools also writes its steps and calls as they end (``tree_steps``),
which make its answer's parts; its answer is ``waiting`` while the turn pauses.
"""

from __future__ import annotations

from typing import ClassVar

import msgspec

from turnstream.domain.conversation import Conversation
from turnstream.domain.events import DomainEvent
from turnstream.domain.turn import Turn
from turnstream.projections import tree_steps
from turnstream.projections.attachments import stored
from turnstream.projections.base import BatchProjection, Op
from turnstream.projections.tree_steps import STEP_TOPICS, jsonb, step_changes

CONVERSATION_TOPICS = (
    Conversation.Created.TOPIC,
    Conversation.Renamed.TOPIC,
    Conversation.Deleted.TOPIC,
    Conversation.Claimed.TOPIC,
)
TURN_TOPICS = (
    Turn.Started.TOPIC,
    Turn.Titled.TOPIC,
    Turn.FellBack.TOPIC,
    Turn.Finished.TOPIC,
    Turn.Failed.TOPIC,
)
"""The turn events of a turn's start and end (the conversation list reads these too)."""


class MessageTree(BatchProjection):
    name = "tree"
    topics = CONVERSATION_TOPICS + TURN_TOPICS + STEP_TOPICS
    tables: ClassVar[dict[str, str]] = {
        "tree_conversations": (
            "id uuid PRIMARY KEY, tenant text NOT NULL, owner text NOT NULL,"
            " model text NOT NULL, title text, system_prompt text,"
            " created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL,"
            " deleted boolean NOT NULL DEFAULT false,"
            " current_leaf_id uuid, active_turn_id uuid, tools jsonb"
        ),
        "tree_messages": (
            "id uuid PRIMARY KEY, conversation_id uuid NOT NULL, ordinal bigint NOT NULL,"
            " parent_id uuid, role text NOT NULL, content text NOT NULL,"
            " reasoning text NOT NULL, status text NOT NULL, model text,"
            " turn_id uuid NOT NULL, created_at timestamptz NOT NULL,"
            " prompt_tokens integer, completion_tokens integer, estimated boolean,"
            " finish_reason text, error_code text, client_id text, attachments jsonb"
        ),
        **tree_steps.TABLES,
    }
    indexes = (
        ("tree_conversations", "active_turn_id"),
        ("tree_messages", "conversation_id, ordinal"),
        ("tree_messages", "turn_id"),
        *tree_steps.INDEXES,
    )
    reads = ("tree_conversations", "tree_messages", *tree_steps.TABLES)
    added = (
        ("tree_messages", "client_id text"),
        ("tree_conversations", "tools jsonb"),
        ("tree_messages", "attachments jsonb"),
    )
    """A generation made before gets ``tools`` where it is, and with it (``CREATE TABLE
    IF NOT EXISTS``) the steps' tables: empty until a rebuild fills them. It gets
    ``attachments`` NULL on every message, which is what it had: no event before them
    had any."""

    def storable_changes(self, event: DomainEvent, position: int) -> tuple[list[Op], bool]:
        """Also the JSON values (tools, a call's arguments and output) made storable."""
        ops, repaired = super().storable_changes(event, position)
        ops, json_repaired = tree_steps.storable_json(ops)
        return ops, repaired or json_repaired

    def changes(self, event: DomainEvent, position: int) -> list[Op]:
        if isinstance(event, Turn.Started):
            cid = event.conversation_id
            insert = self.q(
                "INSERT INTO {tree_messages} (id, conversation_id, ordinal, parent_id, role, "
                "content, reasoning, status, model, turn_id, created_at, client_id, attachments) "
                "SELECT %s, %s, %s, %s, %s, %s, '', %s, %s, %s, %s, %s, %s WHERE EXISTS (SELECT "
                "1 FROM {tree_conversations} WHERE id = %s AND NOT deleted)"
            )
            ops: list[Op] = []
            answer_parent = event.parent_id
            if event.user_message_id is not None:
                answer_parent = event.user_message_id
                ops.append(
                    (
                        insert,
                        (
                            event.user_message_id,
                            cid,
                            2 * position,
                            event.parent_id,
                            "user",
                            event.content,
                            "complete",
                            None,
                            event.originator_id,
                            event.timestamp,
                            event.client_message_id,
                            stored(event.attachments),
                            cid,
                        ),
                    )
                )
            if event.mode == "continue":
                ops.append(
                    (
                        self.q(
                            "UPDATE {tree_messages} SET status = 'streaming', turn_id = %s, model "
                            "= %s WHERE id = %s AND conversation_id = %s"
                        ),
                        (event.originator_id, event.model, event.assistant_message_id, cid),
                    )
                )
            else:
                ops.append(
                    (
                        insert,
                        (
                            event.assistant_message_id,
                            cid,
                            2 * position + 1,
                            answer_parent,
                            "assistant",
                            event.prefix,
                            "streaming",
                            event.model,
                            event.originator_id,
                            event.timestamp,
                            None,
                            None,
                            cid,
                        ),
                    )
                )
            ops.append(
                (
                    self.q(
                        "UPDATE {tree_conversations} SET current_leaf_id = %s, active_turn_id = "
                        "%s, updated_at = greatest(updated_at, %s) WHERE id = %s AND NOT deleted"
                    ),
                    (event.assistant_message_id, event.originator_id, event.timestamp, cid),
                )
            )
            return ops
        if isinstance(event, Turn.Titled):
            return [
                (
                    self.q(
                        "UPDATE {tree_conversations} SET title = coalesce(title, %s) WHERE "
                        "active_turn_id = %s"
                    ),
                    (event.title, event.originator_id),
                )
            ]
        if isinstance(event, Turn.FellBack):
            # The answer's model is the one that wrote it (the turn's Started event keeps
            # the one asked for).
            return [
                (
                    self.q(
                        "UPDATE {tree_messages} SET model = %s WHERE turn_id = %s"
                        " AND role = 'assistant'"
                    ),
                    (event.model, event.originator_id),
                )
            ]
        if isinstance(event, Turn.Finished | Turn.Failed):
            if isinstance(event, Turn.Finished):
                status = "complete" if event.status == "completed" else "interrupted"
                finish_reason, error_code = event.finish_reason, None
            else:
                status, finish_reason, error_code = "failed", None, event.code
            usage = event.usage
            return [
                tree_steps.tail(self.q, event, position),
                (
                    self.q(
                        "UPDATE {tree_messages} SET content = %s, reasoning = CASE WHEN %s = '' "
                        "THEN reasoning ELSE %s END, status = %s, prompt_tokens = %s, "
                        "completion_tokens = %s, estimated = %s, finish_reason = %s, error_code = "
                        "%s WHERE turn_id = %s AND role = 'assistant'"
                    ),
                    (
                        event.text,
                        event.reasoning,
                        event.reasoning,
                        status,
                        None if usage is None else usage.prompt_tokens,
                        None if usage is None else usage.completion_tokens,
                        None if usage is None else usage.estimated,
                        finish_reason,
                        error_code,
                        event.originator_id,
                    ),
                ),
                (
                    self.q(
                        "UPDATE {tree_conversations} SET active_turn_id = NULL, updated_at = "
                        "greatest(updated_at, %s) WHERE active_turn_id = %s"
                    ),
                    (event.timestamp, event.originator_id),
                ),
            ]
        if isinstance(event, Conversation.Created):
            return [
                (
                    self.q(
                        "INSERT INTO {tree_conversations} (id, tenant, owner, model, title, "
                        "system_prompt, created_at, updated_at, tools) VALUES (%s, %s, %s, %s, %s, "
                        "%s, %s, %s, %s)"
                    ),
                    (
                        event.originator_id,
                        event.tenant,
                        event.owner,
                        event.model,
                        event.title,
                        event.system_prompt,
                        event.timestamp,
                        event.timestamp,
                        jsonb(msgspec.to_builtins(event.tools)) if event.tools else None,
                    ),
                )
            ]
        if isinstance(event, Conversation.Renamed):
            return [
                (
                    self.q(
                        "UPDATE {tree_conversations} SET title = %s, updated_at = "
                        "greatest(updated_at, %s) WHERE id = %s AND NOT deleted"
                    ),
                    (event.title, event.timestamp, event.originator_id),
                )
            ]
        if isinstance(event, Conversation.Claimed):
            return [
                (
                    self.q("UPDATE {tree_conversations} SET owner = %s WHERE id = %s"),
                    (event.owner, event.originator_id),
                )
            ]
        if isinstance(event, Conversation.Deleted):
            return [
                (
                    self.q(
                        "UPDATE {tree_conversations} SET deleted = true, updated_at = "
                        "greatest(updated_at, %s) WHERE id = %s"
                    ),
                    (event.timestamp, event.originator_id),
                ),
                (
                    self.q("DELETE FROM {tree_messages} WHERE conversation_id = %s"),
                    (event.originator_id,),
                ),
                *tree_steps.deleted(self.q, event.originator_id),
            ]
        return step_changes(self.q, event, position)
