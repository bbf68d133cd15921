"""The one exception hierarchy of turnstream.

Every error a client can cause is a :class:`TurnstreamError` with a stable machine
``code`` and an HTTP status; the HTTP layer maps them to RFC 9457 problem+json in one
place. Nothing else (library errors, SQL, stack traces) ever reaches a client.
"""

from __future__ import annotations

from typing import Any


class TurnstreamError(Exception):
    """Base of every error that has a meaning for a client."""

    status: int = 500
    code: str = "internal_error"
    title: str = "Internal error"
    retry_after: int | None = None
    """Seconds after which trying again may succeed (the ``Retry-After`` header)."""

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class Invalid(TurnstreamError):
    status = 400
    code = "invalid_request"
    title = "Invalid request"


class UnknownModel(Invalid):
    code = "unknown_model"
    title = "Unknown model"

    def __init__(self, model: str) -> None:
        super().__init__(f"No model {model!r} is configured; GET /v1/models lists them.")


class Unauthorized(TurnstreamError):
    status = 401
    code = "unauthorized"
    title = "Unauthorized"


class NotFound(TurnstreamError):
    status = 404
    code = "not_found"
    title = "Not found"


class ConversationNotFound(NotFound):
    code = "conversation_not_found"
    title = "Conversation not found"

    def __init__(self, conversation_id: object) -> None:
        super().__init__(f"No conversation {conversation_id}.")


class TurnNotFound(NotFound):
    code = "turn_not_found"
    title = "Turn not found"

    def __init__(self, turn_id: object) -> None:
        super().__init__(f"No turn {turn_id} in this conversation.")


class MessageNotFound(NotFound):
    code = "message_not_found"
    title = "Message not found"

    def __init__(self, message_id: object) -> None:
        super().__init__(f"No message {message_id} in this conversation.")


class Conflict(TurnstreamError):
    status = 409
    code = "conflict"
    title = "Conflict"


class TurnInProgress(Conflict):
    code = "turn_in_progress"
    title = "A turn is in progress"

    def __init__(self, turn_id: object) -> None:
        super().__init__(
            "This conversation already has a running turn; follow or cancel it first.",
            turn_id=str(turn_id),
        )


class ModelUnavailable(TurnstreamError):
    status = 410
    code = "model_unavailable"
    title = "Model unavailable"


class PayloadTooLarge(TurnstreamError):
    status = 413
    code = "payload_too_large"
    title = "Payload too large"


class InputTooLong(TurnstreamError):
    status = 422
    code = "input_too_long"
    title = "Input too long"


class LimitExceeded(TurnstreamError):
    status = 429
    code = "rate_limited"
    title = "Too many requests"

    def __init__(self, detail: str, retry_after: int, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.retry_after = retry_after


class TooManyTurns(LimitExceeded):
    code = "too_many_turns"
    title = "Too many running turns"


class QuotaExhausted(LimitExceeded):
    code = "quota_exhausted"
    title = "Token quota exhausted"


class LoginRequired(LimitExceeded):
    code = "login_required"
    title = "Login required"


class ConversationFull(TurnstreamError):
    status = 422
    code = "conversation_full"
    title = "Conversation full"


RETRY_OUTAGE_S = 5
"""Retry-After of an outage: PostgreSQL or NATS is checked again within a second, and a
restart of either takes a few seconds."""


class ServiceUnavailable(TurnstreamError):
    status = 503
    code = "service_unavailable"
    title = "Service unavailable"
    retry_after = RETRY_OUTAGE_S
