"""The one exception hierarchy of turnstream: what went wrong, with a stable code.

Every error a client can cause is a :class:`TurnstreamError` with a machine ``code``
and a ``detail`` safe to show. How an error is answered (HTTP status, title) is the HTTP
part's one table (``turnstream.http.problems``); nothing else (library errors, SQL,
stack traces) ever reaches a client.
"""

from __future__ import annotations

from typing import Any


class TurnstreamError(Exception):
    """Base of every error that has a meaning for a client."""

    code: str = "internal_error"
    retry_after: int | None = None
    """Seconds after which trying again may succeed (``Retry-After`` over HTTP)."""

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class Invalid(TurnstreamError):
    code = "invalid_request"


class UnknownModel(Invalid):
    code = "unknown_model"

    def __init__(self, model: str) -> None:
        super().__init__(f"No model {model!r} is configured; GET /v1/models lists them.")


class Unauthorized(TurnstreamError):
    code = "unauthorized"


class NotFound(TurnstreamError):
    code = "not_found"


class ConversationNotFound(NotFound):
    code = "conversation_not_found"

    def __init__(self, conversation_id: object) -> None:
        super().__init__(f"No conversation {conversation_id}.")


class TurnNotFound(NotFound):
    code = "turn_not_found"

    def __init__(self, turn_id: object) -> None:
        super().__init__(f"No turn {turn_id} in this conversation.")


class MessageNotFound(NotFound):
    code = "message_not_found"

    def __init__(self, message_id: object) -> None:
        super().__init__(f"No message {message_id} in this conversation.")


class FileNotFound(NotFound):
    code = "file_not_found"

    def __init__(self, file_id: object) -> None:
        super().__init__(f"No file {file_id}.")


class Conflict(TurnstreamError):
    code = "conflict"


class TurnInProgress(Conflict):
    code = "turn_in_progress"

    def __init__(self, turn_id: object) -> None:
        super().__init__(
            "This conversation already has a running turn; follow or cancel it first.",
            turn_id=str(turn_id),
        )


class TurnEnded(Conflict):
    """A running turn's command after its end (a runner's bug, never a client's)."""

    code = "turn_ended"

    def __init__(self, turn_id: object) -> None:
        super().__init__(f"Turn {turn_id} has ended; nothing may follow its end.")


class ToolCallNotPending(Conflict):
    """A tool result or decision the turn does not wait for (the call waits for the
    other kind of answer); its subclasses say the other reasons."""

    code = "tool_call_not_pending"

    def __init__(self, call_id: str, why: str) -> None:
        super().__init__(f"Tool call {call_id!r}: {why}", call_id=call_id)


class UnknownToolCall(ToolCallNotPending):
    code = "unknown_tool_call"


class ToolCallAnswered(ToolCallNotPending):
    code = "tool_call_answered"


class TurnNotWaiting(ToolCallNotPending):
    code = "turn_not_waiting"


class ModelUnavailable(TurnstreamError):
    code = "model_unavailable"


class PayloadTooLarge(TurnstreamError):
    code = "payload_too_large"


class FileTooLarge(PayloadTooLarge):
    code = "file_too_large"


class ImageTooLarge(PayloadTooLarge):
    """An image whose pixels are more than allowed (a decompression bomb, or just huge)."""

    code = "image_too_large"


class TooManyAttachments(Invalid):
    code = "too_many_attachments"

    def __init__(self, limit: int) -> None:
        super().__init__(f"A message has at most {limit} attachments.", max_files=limit)


class UnsupportedMediaType(TurnstreamError):
    """A file whose content is none of the allowed types (whatever its name says)."""

    code = "unsupported_media_type"


class UnsupportedAttachment(TurnstreamError):
    """An attachment the turn's model cannot take (an image for a model without vision)."""

    code = "unsupported_attachment"


class InputTooLong(TurnstreamError):
    code = "input_too_long"


class ConversationFull(TurnstreamError):
    code = "conversation_full"


class LimitExceeded(TurnstreamError):
    code = "rate_limited"

    def __init__(self, detail: str, retry_after: int, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.retry_after = retry_after


class TooManyTurns(LimitExceeded):
    code = "too_many_turns"


class QuotaExhausted(LimitExceeded):
    code = "quota_exhausted"


class LoginRequired(LimitExceeded):
    code = "login_required"


RETRY_OUTAGE_S = 5
"""Retry-After of an outage: PostgreSQL or NATS is checked again within a second, and a
restart of either takes a few seconds."""


class ServiceUnavailable(TurnstreamError):
    code = "service_unavailable"
    retry_after = RETRY_OUTAGE_S
