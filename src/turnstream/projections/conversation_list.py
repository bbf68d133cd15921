"""The conversation list: each user's conversations, newest activity first.

Activity is creation, a rename, and a turn starting or ending; the list
is read with keyset pagination on ``(updated_at, id)``. A deleted conversation leaves
the list (its events stay in the log). ``attachment_count`` is the files its user
messages list, over all its turns (every branch: as ``message_count``), so a list can
show which conversations hold files without reading their trees.
"""

from __future__ import annotations

from typing import ClassVar

from turnstream.domain.conversation import Conversation
from turnstream.domain.events import DomainEvent
from turnstream.domain.modes import NEW_MESSAGES
from turnstream.domain.turn import Turn
from turnstream.projections.base import BatchProjection, Op
from turnstream.projections.tree import CONVERSATION_TOPICS, TURN_TOPICS


class ConversationList(BatchProjection):
    name = "conversations"
    topics = CONVERSATION_TOPICS + TURN_TOPICS
    tables: ClassVar[dict[str, str]] = {
        "conversation_list": (
            "id uuid PRIMARY KEY, tenant text NOT NULL, owner text NOT NULL,"
            " title text, model text NOT NULL, created_at timestamptz NOT NULL,"
            " updated_at timestamptz NOT NULL, message_count integer NOT NULL DEFAULT 0,"
            " active_turn_id uuid, attachment_count integer NOT NULL DEFAULT 0"
        ),
    }
    indexes = (
        ("conversation_list", "tenant, owner, updated_at DESC, id DESC"),
        ("conversation_list", "active_turn_id"),
    )
    reads = ("conversation_list",)
    added = (("conversation_list", "attachment_count integer NOT NULL DEFAULT 0"),)
    """A generation made before counts 0 files everywhere, which is what it had."""

    def changes(self, event: DomainEvent, position: int) -> list[Op]:
        if isinstance(event, Turn.Started):
            return [
                (
                    self.q(
                        "UPDATE {conversation_list} SET message_count = message_count + %s, "
                        "attachment_count = attachment_count + %s, active_turn_id = %s, "
                        "updated_at = greatest(updated_at, %s) WHERE id = %s"
                    ),
                    (
                        NEW_MESSAGES[event.mode],
                        len(event.attachments),
                        event.originator_id,
                        event.timestamp,
                        event.conversation_id,
                    ),
                )
            ]
        if isinstance(event, Turn.Titled):
            return [
                (
                    self.q(
                        "UPDATE {conversation_list} SET title = coalesce(title, %s) WHERE "
                        "active_turn_id = %s"
                    ),
                    (event.title, event.originator_id),
                )
            ]
        if isinstance(event, Turn.Finished | Turn.Failed):
            return [
                (
                    self.q(
                        "UPDATE {conversation_list} SET active_turn_id = NULL, updated_at = "
                        "greatest(updated_at, %s) WHERE active_turn_id = %s"
                    ),
                    (event.timestamp, event.originator_id),
                )
            ]
        if isinstance(event, Conversation.Created):
            return [
                (
                    self.q(
                        "INSERT INTO {conversation_list} (id, tenant, owner, title, model, "
                        "created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                    ),
                    (
                        event.originator_id,
                        event.tenant,
                        event.owner,
                        event.title,
                        event.model,
                        event.timestamp,
                        event.timestamp,
                    ),
                )
            ]
        if isinstance(event, Conversation.Renamed):
            return [
                (
                    self.q(
                        "UPDATE {conversation_list} SET title = %s, updated_at = "
                        "greatest(updated_at, %s) WHERE id = %s"
                    ),
                    (event.title, event.timestamp, event.originator_id),
                )
            ]
        if isinstance(event, Conversation.Claimed):
            # The conversation moves to the new owner's list, as their latest activity.
            return [
                (
                    self.q(
                        "UPDATE {conversation_list} SET owner = %s, updated_at = "
                        "greatest(updated_at, %s) WHERE id = %s"
                    ),
                    (event.owner, event.timestamp, event.originator_id),
                )
            ]
        if isinstance(event, Conversation.Deleted):
            return [
                (self.q("DELETE FROM {conversation_list} WHERE id = %s"), (event.originator_id,))
            ]
        return []
