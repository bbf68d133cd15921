"""Models and conversations: list, create, read, rename, delete, claim."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Request, delete, get, patch, post
from litestar.params import HeaderParameter, Parameter
from litestar.status_codes import HTTP_204_NO_CONTENT

from turnstream.domain.callers import Caller
from turnstream.domain.errors import Invalid, Unauthorized
from turnstream.http.auth import verify
from turnstream.http.bodies import ConversationPatch, NewConversation
from turnstream.http.dependencies import count_param
from turnstream.http.params import decimal
from turnstream.http.tickets import mint_ticket
from turnstream.projections.views import ConversationPage, ConversationSummary, ConversationView
from turnstream.settings import default_model_id
from turnstream.usecases.services import Services


class ModelInfo(msgspec.Struct, kw_only=True):
    id: str
    provider: str
    context_window: int
    supports: list[str]
    default: bool


class ModelList(msgspec.Struct, kw_only=True):
    data: list[ModelInfo]


@get("/models", tags=["models"], summary="The configured models")
async def list_models(services: Services, caller: Caller) -> ModelList:
    default = default_model_id(services.models)
    return ModelList(
        data=[
            ModelInfo(
                id=m.id,
                provider=m.provider,
                context_window=m.context_window,
                supports=list(m.supports),
                default=m.id == default,
            )
            for m in services.models.values()
        ]
    )


@post("/conversations", tags=["conversations"], summary="Create a conversation")
async def create_conversation(
    services: Services, caller: Caller, data: NewConversation
) -> ConversationSummary:
    return await services.conversations.create(
        caller,
        model=data.model,
        title=data.title,
        system_prompt=data.system_prompt,
        tools=tuple(data.tools),
    )


@get(
    "/conversations",
    tags=["conversations"],
    summary="The caller's conversations, newest activity first (cursor pagination)",
)
async def list_conversations(
    services: Services,
    caller: Caller,
    limit: Annotated[
        str | None, count_param("Conversations per page (20).", minimum=1, maximum=100)
    ] = None,
    cursor: Annotated[str | None, Parameter(query="cursor", max_length=200)] = None,
) -> ConversationPage:
    count = 20 if limit is None else decimal(limit, "limit", minimum=1, maximum=100)
    return await services.conversations.page(caller, count, cursor)


@get("/conversations/{cid:uuid}", tags=["conversations"], summary="A conversation and its messages")
async def get_conversation(services: Services, caller: Caller, cid: UUID) -> ConversationView:
    return await services.conversations.view(caller, cid)


@patch("/conversations/{cid:uuid}", tags=["conversations"], summary="Rename a conversation")
async def rename_conversation(
    services: Services, caller: Caller, cid: UUID, data: ConversationPatch
) -> ConversationView:
    await services.conversations.rename(caller, cid, data.title)
    return await services.conversations.view(caller, cid)


@delete(
    "/conversations/{cid:uuid}",
    tags=["conversations"],
    summary="Delete a conversation",
    status_code=HTTP_204_NO_CONTENT,
)
async def delete_conversation(services: Services, caller: Caller, cid: UUID) -> None:
    await services.conversations.delete(caller, cid)


@post(
    "/conversations/{cid:uuid}/claim",
    tags=["conversations"],
    summary="Move a guest's conversation to the signed-in caller",
    status_code=200,
)
async def claim_conversation(
    request: Request[Any, Any, Any],
    services: Services,
    caller: Caller,
    cid: UUID,
    guest_token: Annotated[
        str,
        HeaderParameter(
            name="X-Guest-Token",
            description="The guest token the conversation was made with.",
            max_length=4096,
        ),
    ],
) -> ConversationView:
    try:
        guest = verify(request.app.state.jwt_secret, f"Bearer {guest_token}")
    except Unauthorized as exc:
        raise Invalid(f"X-Guest-Token: {exc.detail}") from None
    await services.conversations.claim(caller, guest, cid)
    return await services.conversations.view(caller, cid)


class StreamTicket(msgspec.Struct, kw_only=True):
    ticket: str
    """For ``?ticket=`` on the conversation's GET streams, in place of the bearer token."""
    expires_at: datetime


@post(
    "/conversations/{cid:uuid}/stream-tickets",
    tags=["conversations"],
    summary="A short-lived ticket for the conversation's streams, for a browser's EventSource",
    status_code=201,
)
async def new_stream_ticket(
    request: Request[Any, Any, Any], services: Services, caller: Caller, cid: UUID
) -> StreamTicket:
    """A ticket that opens this conversation's GET streams (and nothing else) for the
    caller, because a browser's own ``EventSource`` cannot send ``Authorization``."""
    await services.conversations.check_readable(caller, cid)
    ticket, expires = mint_ticket(
        request.app.state.jwt_secret, caller, cid, request.app.state.stream_ticket_ttl_s
    )
    return StreamTicket(ticket=ticket, expires_at=datetime.fromtimestamp(expires, UTC))


ROUTES = [
    list_models,
    create_conversation,
    list_conversations,
    get_conversation,
    rename_conversation,
    delete_conversation,
    claim_conversation,
    new_stream_ticket,
]
