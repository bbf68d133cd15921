"""Starting a turn: every check, then ``turn.started`` recorded, then its runner.

Every check runs before anything is stored or streamed: the conversation is the
caller's, the model is served, the message and the conversation fit their limits, the
mode fits the tree, the input fits the model; then the start is recorded under the
limits and quotas (one statement in the store), and the runner launched. A
``request_id`` makes the start idempotent: the same id on the same conversation is the
same turn, whichever node recorded it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple
from uuid import UUID

import msgspec
from eventsourcing.persistence import IntegrityError

from turnstream.bus.local import LocalBus
from turnstream.domain.attachments import Attachment
from turnstream.domain.callers import Caller
from turnstream.domain.chats import ChatFile, ChatTurn, chat_request
from turnstream.domain.errors import (
    ConversationFull,
    InputTooLong,
    LoginRequired,
    ModelUnavailable,
    PayloadTooLarge,
    ServiceUnavailable,
    TurnInProgress,
    UnknownModel,
)
from turnstream.domain.files import FileRef, refs_of
from turnstream.domain.modes import NEW_MESSAGES, TurnPlan, TurnRequest, plan_turn
from turnstream.domain.progress import TurnProgress
from turnstream.domain.tools import ToolSpec, check_tools
from turnstream.domain.turn import Turn
from turnstream.ids import stable_id, uuid7
from turnstream.providers.base import ChatMessage, message_tokens
from turnstream.settings import GuestSettings, LimitSettings, ModelConfig
from turnstream.store.application import TurnstreamApplication
from turnstream.store.gateway import StoreGateway
from turnstream.store.starts import StartBatcher
from turnstream.store.writer import GroupWriter
from turnstream.usecases.chatfiles import attach, forget
from turnstream.usecases.conversations import ReadModel
from turnstream.usecases.files import Files
from turnstream.usecases.limits import Limits
from turnstream.usecases.registry import RunningTurn
from turnstream.usecases.runner import TurnRunner

Row = dict[str, Any]


def model_input(
    system_prompt: str | None, plan: TurnPlan, attachments: Sequence[FileRef] = ()
) -> list[ChatMessage]:
    """What the model sees: the system prompt, the path to the new answer (with the
    files of its user messages), the new user message with ``attachments``, and for
    ``continue`` the answer so far. The files' content is loaded later
    (``Files.for_model``)."""
    path = [ChatMessage("system", system_prompt)] if system_prompt else []
    for m in plan.history:
        files = refs_of(m.get("attachments"))
        if m["content"] or files:
            path.append(ChatMessage(m["role"], m["content"], attachments=unloaded(files)))
    if plan.content is not None:
        path.append(ChatMessage("user", plan.content, attachments=unloaded(attachments)))
    if plan.prefix:
        path.append(ChatMessage("assistant", plan.prefix))
    return path


def unloaded(refs: Sequence[FileRef]) -> tuple[Attachment, ...]:
    return tuple(Attachment(ref=ref) for ref in refs)


def offered_tools(
    requested: list[ToolSpec] | None, conversations: list[dict[str, Any]] | None
) -> tuple[ToolSpec, ...]:
    """The client tools a turn offers: its own (checked), else its conversation's."""
    if requested is not None:
        check_tools(requested)
        return tuple(requested)
    return tuple(msgspec.convert(conversations or [], list[ToolSpec]))


class StartedTurn(NamedTuple):
    """A start's answer: the turn, and the events of it the starter holds already (its
    ``turn.started`` when this call started it; none when a ``request_id`` found it),
    which its stream sends without reading them back from the store."""

    turn_id: UUID
    known: tuple[Turn.Started, ...] = ()


class TurnStarter:
    def __init__(
        self,
        *,
        app: TurnstreamApplication,
        gateway: StoreGateway,
        reads: ReadModel,
        models: Mapping[str, ModelConfig],
        limits: Limits,
        limit_settings: LimitSettings,
        guests: GuestSettings,
        node_id: UUID,
        bus: LocalBus,
        writer: GroupWriter,
        starts: StartBatcher,
        runner: TurnRunner,
        files: Files,
    ) -> None:
        self.app = app
        self.files = files
        self.run = gateway.run
        self.queued = gateway.queued
        self.starts = starts
        self.reads = reads
        self.models = models
        self.limits = limits
        self.message_chars = limit_settings.message_chars
        self.conversation_messages = limit_settings.conversation_messages
        self.guests = guests
        self.node_id = node_id
        self.bus = bus
        self.writer = writer
        self.runner = runner

    async def start(
        self,
        caller: Caller,
        conversation_id: UUID,
        request: TurnRequest | ChatTurn,
        *,
        client: str,
    ) -> StartedTurn:
        """Start a turn (or find the one its ``request_id`` started).

        ``request``: a turn as our API asks for it, or as a chat client does (placed in
        the tree here, from the same read of it).
        ``client``: the client's address, for the per-address rate limit.
        """
        conversation, stored = await self.reads.tree(caller, conversation_id)
        chat_files: tuple[ChatFile, ...] = ()
        if isinstance(request, ChatTurn):
            tree = {m["id"]: m for m in stored}
            chat_files = request.files
            request = chat_request(request, tree, conversation["current_leaf_id"])
        turn_id = stable_id(conversation_id, request.request_id) if request.request_id else uuid7()
        if request.request_id and await self._is_turn_of(turn_id, conversation_id):
            return StartedTurn(turn_id)
        if not chat_files or request.mode not in ("message", "edit"):
            return await self._admit(
                caller, conversation_id, conversation, stored, request, turn_id, client
            )
        # A chat's files: uploaded now, and deleted again if the turn is refused.
        attached = await attach(self.files, caller, chat_files)
        request = msgspec.structs.replace(request, attachments=attached.ids)
        try:
            return await self._admit(
                caller, conversation_id, conversation, stored, request, turn_id, client
            )
        except BaseException:
            await asyncio.shield(forget(self.files, caller, attached.uploaded))
            raise

    async def _admit(
        self,
        caller: Caller,
        conversation_id: UUID,
        conversation: Row,
        stored: list[Row],
        request: TurnRequest,
        turn_id: UUID,
        client: str,
    ) -> StartedTurn:
        """The checks after the turn is placed, then its start recorded and launched."""
        limit = self.message_chars
        if limit and request.content is not None and len(request.content) > limit:
            raise PayloadTooLarge(f"A message has at most {limit} characters.", max_chars=limit)
        if caller.guest and not self.guests.messages:
            raise LoginRequired("Guests cannot send messages here; sign in.", retry_after=3600)
        model = self._model(request.model, conversation["model"])
        messages = {m["id"]: m for m in stored}
        limit = self.conversation_messages
        if limit and len(messages) + NEW_MESSAGES[request.mode] > limit:
            raise ConversationFull(
                f"A conversation holds at most {limit} messages; start a new one.",
                max_messages=limit,
            )
        tools = offered_tools(request.tools, conversation.get("tools"))
        plan = plan_turn(request, messages, conversation["current_leaf_id"])
        attachments = await self.files.attachments(caller, request.attachments or ())
        self.files.check_model(attachments, model)
        path = model_input(conversation["system_prompt"], plan, attachments)
        path = await self.files.for_model(path, model)
        estimate = sum(message_tokens(m) for m in path)
        if model.max_input_tokens is not None and estimate > model.max_input_tokens:
            raise InputTooLong(
                f"This turn's input is about {estimate} tokens; {model.id!r} takes at most"
                f" {model.max_input_tokens}. Start a new conversation or branch higher up.",
                estimated_tokens=estimate,
                max_input_tokens=model.max_input_tokens,
            )
        started = Turn.start(
            turn_id,
            conversation_id=conversation_id,
            tenant=caller.tenant,
            user_id=caller.user_id,
            node_id=self.node_id,
            mode=request.mode,
            user_message_id=uuid7() if plan.content is not None else None,
            assistant_message_id=plan.assistant_message_id or uuid7(),
            parent_id=plan.parent_id,
            model=model.id,
            request_id=request.request_id,
            content=plan.content or "",
            prefix=plan.prefix,
            reasoning_prefix=plan.reasoning_prefix,
            client_message_id=request.client_message_id,
            tools=tools,
            attachments=attachments,
        )
        worth = estimate + self.limits.output_worth(model, estimate)
        admission = self.limits.admission(caller, started, worth, client)
        try:
            start = (self.app.encode(started), conversation_id, self.node_id, admission)
            admitted = await self.queued(self.starts.submit, start)
        except IntegrityError:
            running = await self.run(self.app.store.running_turn, conversation_id)
            if request.request_id and await self._is_turn_of(turn_id, conversation_id):
                return StartedTurn(turn_id)
            if running is not None:
                raise TurnInProgress(running) from None
            raise ServiceUnavailable("The turn could not be started; try again.") from None
        if admitted.position is None:
            if request.request_id and await self._is_turn_of(turn_id, conversation_id):
                return StartedTurn(turn_id)  # the same request, started by a concurrent POST
            raise await self.limits.refusal(admission, admitted)
        self.bus.open(turn_id)
        self.writer.open_turn(turn_id, 1)
        self.runner.launch(
            RunningTurn(
                started=started,
                model=model,
                messages=path,
                first_turn=not messages,
                title=conversation["title"],
                progress=TurnProgress(started),
            )
        )
        return StartedTurn(turn_id, (started,))

    def _model(self, requested: str | None, conversations: str) -> ModelConfig:
        model_id = requested or conversations
        model = self.models.get(model_id)
        if model is None:
            if requested is not None:
                raise UnknownModel(model_id)
            raise ModelUnavailable(f"The conversation's model {model_id!r} is no longer served.")
        return model

    async def _is_turn_of(self, turn_id: UUID, conversation_id: UUID) -> bool:
        row = await self.run(self.app.store.turn_row, turn_id)
        return row is not None and row.conversation_id == conversation_id
