"""Messages as an OpenAI-compatible server takes them, attachments as content parts.

A user message without attachments stays a plain string, as every such server takes
it. With attachments its content becomes the list of parts OpenAI's Chat Completions
API documents: the message's text first (left out when empty), then each file in the
order attached: an image as an ``image_url`` part whose URL is a ``data:`` URL of its
bytes (servers need not reach this one to fetch it), a text file or a PDF as a
``text`` part of its text, introduced by its name and type.
"""

from __future__ import annotations

import base64

from openai.types.chat import (
    ChatCompletionContentPartParam,
    ChatCompletionMessageParam,
)

from turnstream.providers.base import Attachment, ChatMessage, ProviderError, attachment_text


def data_url(media_type: str, data: bytes) -> str:
    """The ``data:`` URL of some bytes, base64-encoded, as OpenAI takes images inline."""
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


def attachment_part(attachment: Attachment) -> ChatCompletionContentPartParam:
    """One attachment as a content part.

    Raises:
        ProviderError: The attachment's content was not loaded (a caller's mistake:
            the model would otherwise be sent a file without its content).
    """
    ref = attachment.ref
    if ref.kind == "image":
        if attachment.data is None:
            raise ProviderError(f"the image {ref.name!r} was not loaded for the model")
        return {
            "type": "image_url",
            "image_url": {"url": data_url(ref.media_type, attachment.data)},
        }
    if attachment.text is None:
        raise ProviderError(f"the file {ref.name!r} was not loaded for the model")
    return {"type": "text", "text": attachment_text(attachment)}


def user_content(message: ChatMessage) -> str | list[ChatCompletionContentPartParam]:
    """A user message's content: its text, or its parts when it has attachments."""
    if not message.attachments:
        return message.content
    parts: list[ChatCompletionContentPartParam] = []
    if message.content:
        parts.append({"type": "text", "text": message.content})
    parts += [attachment_part(a) for a in message.attachments]
    return parts


def message_param(message: ChatMessage) -> ChatCompletionMessageParam:
    """One message as the chat completions API takes it."""
    if message.role == "system":
        return {"role": "system", "content": message.content}
    if message.role == "tool":
        return {
            "role": "tool",
            "tool_call_id": message.tool_call_id or "",
            "content": message.content,
        }
    if message.role == "assistant":
        if not message.tool_calls:
            return {"role": "assistant", "content": message.content}
        # A step that only called tools has no text: null, as OpenAI itself returns such
        # a message (so every server that takes tools takes it back).
        return {
            "role": "assistant",
            "content": message.content or None,
            "tool_calls": [
                {
                    "id": call.call_id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in message.tool_calls
            ],
        }
    return {"role": "user", "content": user_content(message)}
