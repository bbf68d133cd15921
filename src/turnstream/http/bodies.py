"""Request bodies: their shapes, and how strictly every one is read.

Every JSON body passes the app's request class, so every field of every route, today's
and tomorrow's, is held to the same rules: bounded nesting, and text PostgreSQL can
store. A body that breaks one is a 400 ``invalid_request`` that names the field;
nothing is stored. Bodies are closed: an unknown field is a 400 too, so no body can set
a tenant, an owner, a role or usage.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request

from turnstream.domain.errors import Invalid
from turnstream.domain.identities import TENANT_PATTERN
from turnstream.domain.modes import TurnRequest
from turnstream.domain.tools import ToolSpec
from turnstream.http.params import MAX_JSON_DEPTH, json_too_deep
from turnstream.usecases.tooluse import Approval, ToolResults


class NewConversation(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    model: str | None = None
    title: Annotated[str, msgspec.Meta(max_length=1000)] | None = None
    system_prompt: Annotated[str, msgspec.Meta(max_length=100_000)] | None = None
    tools: list[ToolSpec] = msgspec.field(default_factory=list)
    """Client tools every turn of the conversation offers unless it brings its own."""


class ConversationPatch(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    title: Annotated[str, msgspec.Meta(max_length=1000)]


class GuestRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    tenant: Annotated[str, msgspec.Meta(pattern=TENANT_PATTERN)] | None = None
    """The tenant whose guest this is (the configured guest tenant by default)."""


BODIES: tuple[type[msgspec.Struct], ...] = (
    NewConversation,
    ConversationPatch,
    TurnRequest,
    GuestRequest,
    ToolResults,
    Approval,
)
"""Every request body type (each refuses unknown fields; OpenAPI says so)."""


def check_text(value: Any, path: str = "") -> None:
    """Refuse a NUL character (U+0000) anywhere in ``value``'s strings, keys included.

    PostgreSQL text cannot hold it: an event that carried one into a view would stop
    that view. JSON decoding already refuses lone surrogates (they have no UTF-8 form).
    """
    if isinstance(value, str):
        if "\x00" in value:
            msg = f"{path or 'body'}: text cannot contain the NUL character (U+0000)."
            raise Invalid(msg, field=path or "body")
    elif isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            check_text(key, where)
            check_text(item, where)
    elif isinstance(value, list):
        for n, item in enumerate(value):
            check_text(item, f"{path}[{n}]")


class StrictRequest(Request[Any, Any, Any]):
    """A request whose JSON body is checked for its depth before it is decoded, and by
    :func:`check_text` after."""

    async def json(self) -> Any:
        if json_too_deep(await self.body()):
            msg = f"body: JSON nests arrays and objects more than {MAX_JSON_DEPTH} deep."
            raise Invalid(msg, field="body")
        value = await super().json()
        check_text(value)
        return value
