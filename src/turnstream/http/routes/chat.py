"""The AI SDK's chat routes: what a stock ``DefaultChatTransport`` calls.

``POST /v1/chat`` starts a turn and answers with its UI message stream, or, when the
chat's turn waits and the posted assistant message answers its tool calls, records the
answers and answers with the rest of that turn; ``GET /v1/chat/{id}/stream`` is what
``useChat({resume: true})`` asks on mount; ``POST /v1/chat/{id}/stop`` is a stop
button's call; ``GET /v1/chat/{id}/messages`` is the chat's history as UI messages
(``http.uihistory``), what a page opened again gives ``useChat({messages})``. Each is
the same turn lifecycle as ``/v1/conversations/…``: the chat id names a conversation
(``usecases.chats``), the body becomes an ordinary turn request (``domain.chats``) or
the answers of ``POST …/tool-results`` and ``…/approvals`` (``usecases.tooluse``), the
stream is the followed turn in another encoding (``http.uistream``).

The approval chunks are known to ai >= 6 only (5.0.0 refuses them): a client that
knows them says so with ``X-Turnstream-Tool-Approvals: 1``, which the transport's
``headers`` send with every request, the stream's resume too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, get, post
from litestar.openapi import ResponseSpec
from litestar.response import Stream
from litestar.status_codes import HTTP_202_ACCEPTED, HTTP_204_NO_CONTENT

from turnstream.domain.callers import Caller
from turnstream.domain.chats import ChatFile, ChatTrigger, ChatTurn
from turnstream.domain.errors import Invalid, ToolCallNotPending, TurnInProgress, TurnNotWaiting
from turnstream.domain.tools import ToolSpec
from turnstream.http.dependencies import (
    EVENT_STREAM,
    LastEventId,
    client_of,
    resume_from,
    sse_settings,
)
from turnstream.http.tickets import StreamCaller
from turnstream.http.uifiles import chat_files
from turnstream.http.uihistory import UiDict, ui_history
from turnstream.http.uimessages import ClientId, UiMessage, answers
from turnstream.http.uistream import HEADERS, ui_frames
from turnstream.usecases.chats import chat_conversation_id
from turnstream.usecases.services import Services


class ChatRequest(msgspec.Struct, kw_only=True):
    """The body ``DefaultChatTransport`` posts: the chat id, its messages (or only the
    last, ``message``), the trigger. Other fields are ignored: the client merges the
    app's own ``body`` in."""

    id: str
    messages: list[UiMessage] | None = None
    message: UiMessage | None = None
    """The short form: only the message the turn is about."""
    trigger: ChatTrigger = "submit-message"
    messageId: ClientId | None = None
    """``regenerate-message``: the answer to regenerate."""
    model: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    request_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    tools: list[ToolSpec] | None = None
    """Client tools the turn offers (OpenAI function format), as ``TurnRequest.tools``:
    what the app's transport merges into the body."""

    @property
    def last(self) -> UiMessage | None:
        return self.message or (self.messages[-1] if self.messages else None)

    def turn(self, files: tuple[ChatFile, ...] = ()) -> ChatTurn:
        """The turn asked for; ``files``: its last user message's (``http.uifiles``)."""
        last = self.last
        user = last if last is not None and last.role == "user" else None
        if self.trigger == "submit-message" and user is None:
            raise Invalid("'submit-message' needs a last message whose role is 'user'.")
        return ChatTurn(
            trigger=self.trigger,
            client_message_id=user.id if user is not None else None,
            text=user.text() if user is not None else None,
            message_id=self.messageId,
            request_id=self.request_id,
            model=self.model,
            tools=self.tools,
            files=files,
        )


APPROVALS_HEADER = "X-Turnstream-Tool-Approvals"


def ui_stream(frames: AsyncIterator[bytes]) -> Stream:
    return Stream(frames, media_type=EVENT_STREAM, headers=HEADERS)


@post(
    "/chat",
    tags=["chat"],
    summary="Start a turn of an AI SDK chat; the response is its UI message stream",
    status_code=200,
    media_type=EVENT_STREAM,
)
async def chat(
    request: Request[Any, Any, Any], services: Services, caller: Caller, data: ChatRequest
) -> Stream:
    last = data.last
    if data.trigger == "submit-message" and last is not None and last.calls_tools:
        return await answer_chat(request, services, caller, data.id, last)
    user = last if last is not None and last.role == "user" else None
    submits = data.trigger == "submit-message" and user is not None
    turn_request = data.turn(chat_files(request, user) if submits and user else ())
    cid = await services.chats.open(caller, data.id, model=data.model)
    turn = await services.turns.start(caller, cid, turn_request, client=client_of(request))
    events = services.follower.follow(caller.tenant, cid, turn.turn_id, 0, turn.known)
    padding = sse_settings(request).padding
    approvals = knows_approvals(request)
    return ui_stream(ui_frames(events, after=0, padding=padding, approvals=approvals))


async def answer_chat(
    request: Request[Any, Any, Any],
    services: Services,
    caller: Caller,
    chat_id: str,
    message: UiMessage,
) -> Stream:
    """The chat's waiting turn takes the answers ``message`` carries and goes on (as
    ``POST …/tool-results`` and ``…/approvals`` do); the response is the rest of that
    turn, after the pause the client's last stream ended with. Never a new turn: with
    nothing to answer it is 409."""
    cid = await services.chats.find(caller, chat_id)
    turn = None if cid is None else await services.answers.open_turn(caller, cid)
    if cid is None or turn is None:
        raise TurnNotWaiting("*", "This chat has no turn that waits for answers.")
    if turn.paused_at is None:
        raise TurnInProgress(turn.turn_id)
    found = answers(message, turn.pending)
    if not (found.results or found.approvals):
        waits = ", ".join(f"{c!r} ({why})" for c, why in turn.pending.items())
        raise ToolCallNotPending("*", f"The message answers none of the calls that wait: {waits}.")
    answered = None
    if found.results:
        answered = await services.answers.results(caller, cid, turn.turn_id, found.results)
    for approval in found.approvals:
        answered = await services.answers.decide(caller, cid, turn.turn_id, approval)
    assert answered is not None
    events = services.follower.follow(caller.tenant, cid, turn.turn_id, 0)
    frames = ui_frames(
        events,
        after=turn.paused_at,
        settled=answered.seq,
        padding=sse_settings(request).padding,
        approvals=knows_approvals(request),
    )
    return ui_stream(frames)


def knows_approvals(request: Request[Any, Any, Any]) -> bool:
    """Whether the client knows the approval chunks (it says so: ai 5.0.0 refuses them)."""
    return request.headers.get(APPROVALS_HEADER, "").strip().lower() in ("1", "true")


@get(
    "/chat/{id:str}/stream",
    tags=["chat"],
    summary="The running turn of a chat as a UI message stream; 204 when none runs",
    media_type=EVENT_STREAM,
    responses={204: ResponseSpec(None, description="No turn of this chat is running.")},
)
async def chat_stream(
    request: Request[Any, Any, Any],
    services: Services,
    stream_caller: StreamCaller,
    id: str,  # the path's name, as the AI SDK's transport builds it
    last_event_id: LastEventId = None,
) -> Response[Any]:
    chat_id = id
    after = resume_from(last_event_id)
    cid = await services.chats.find(stream_caller.caller, chat_id, read=True)
    # A chat not made yet is checked as the conversation it will be: a ticket of another
    # conversation is 404 here too.
    caller = stream_caller.check_ticket_scope(
        cid or chat_conversation_id(stream_caller.caller, chat_id)
    )
    turn = None if cid is None else await services.answers.open_turn(caller, cid)
    if cid is None or turn is None:
        return Response(None, status_code=HTTP_204_NO_CONTENT)
    # From the first event, whatever the client has: the chunks after ``after`` depend
    # on the parts the earlier ones opened. It ends where the turn waits (now, or at a
    # later pause), so that the client can answer.
    events = services.follower.follow(caller.tenant, cid, turn.turn_id, 0)
    frames = ui_frames(
        events,
        after=after,
        settled=turn.seq,
        padding=sse_settings(request).padding,
        approvals=knows_approvals(request),
    )
    return ui_stream(frames)


class ChatStop(msgspec.Struct, kw_only=True):
    chat_id: str
    turn_id: str | None
    """The turn being stopped; null when none was running."""
    status: str


@post(
    "/chat/{id:str}/stop",
    tags=["chat"],
    summary="Stop a chat's running turn, whichever node runs it (idempotent)",
    status_code=HTTP_202_ACCEPTED,
)
async def stop_chat(services: Services, caller: Caller, id: str) -> ChatStop:
    chat_id = id
    cid = await services.chats.find(caller, chat_id)
    turn_id = None if cid is None else await services.conversations.active_turn(caller, cid)
    if cid is None or turn_id is None:
        return ChatStop(chat_id=chat_id, turn_id=None, status="idle")
    await services.control.cancel(caller, cid, turn_id)
    return ChatStop(chat_id=chat_id, turn_id=str(turn_id), status="cancelling")


@get(
    "/chat/{id:str}/messages",
    tags=["chat"],
    summary="A chat's messages as the AI SDK's UIMessage list (empty for a new chat)",
)
async def chat_messages(
    request: Request[Any, Any, Any], services: Services, caller: Caller, id: str
) -> list[UiDict]:
    cid = await services.chats.find(caller, id, read=True)
    if cid is None:
        return []  # as a chat not made yet: an id names nothing of anyone else's
    view = await services.conversations.view(caller, cid)
    return ui_history(view, approvals=knows_approvals(request))


ROUTES = [chat, chat_stream, stop_chat, chat_messages]
