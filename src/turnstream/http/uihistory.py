"""A chat's history as the AI SDK's ``UIMessage`` list: what ``useChat({messages})``
starts from when a page is opened again.

The AI SDK keeps a chat's messages in the client; a page that reloads has none. ``GET
/v1/chat/{id}/messages`` gives them back from the message tree, the branch that ends at
the conversation's current leaf, in the form the SDK made them:

- a user message has its ``file`` parts first (as ``sendMessage({text, files})`` puts
  them), each ``{type: "file", mediaType, filename, url: "/v1/files/{id}"}``, then its
  ``text``; its id is the client's own when it gave one. A file part posted back names
  this server's file, so it is not uploaded again (``http.uifiles``);
- an answer has the parts the stream made: ``step-start`` per model step, ``reasoning``
  and ``text`` (``state: "done"``), and per tool call a ``tool-<name>`` part (a client
  tool) or a ``dynamic-tool`` part (one the server runs); its id is ours, the stream's
  ``start`` ``messageId``, and its metadata that of the stream's ``finish``. The
  stream's ``data-title`` part is not kept: the title is the conversation's, not a
  message's (``GET /v1/conversations/{cid}``, the list);
- the answer of a turn that runs (or waits) is left out: ``useChat({resume: true})``
  asks ``GET /v1/chat/{id}/stream``, which gives that whole message from its ``start``;
  the SDK would otherwise add the resumed parts to the ones it had.

Only the protocol's fields are sent: the SDK's ``validateUIMessages`` checks them.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import msgspec

from turnstream.domain.tools import output_text
from turnstream.projections.views import ConversationView, MessageView

UiDict = dict[str, Any]


def ui_history(view: ConversationView, *, approvals: bool = False) -> list[UiDict]:
    """The branch that ends at ``view``'s current leaf, root first, as UI messages;
    ``approvals``: the client knows the approval states (ai >= 6)."""
    running = view.active_turn.turn_id if view.active_turn is not None else None
    return [
        ui_message(view.id, message, approvals=approvals)
        for message in branch(view.messages, view.current_leaf_id)
        if not (message.role == "assistant" and message.turn_id == running)
    ]


def branch(messages: list[MessageView], leaf: UUID | None) -> list[MessageView]:
    by_id = {m.id: m for m in messages}
    path: list[MessageView] = []
    at = by_id.get(leaf) if leaf is not None else None
    while at is not None and len(path) <= len(by_id):
        path.append(at)
        at = by_id.get(at.parent_id) if at.parent_id is not None else None
    return path[::-1]


def ui_message(conversation_id: UUID, message: MessageView, *, approvals: bool) -> UiDict:
    meta: UiDict = {"turn_id": str(message.turn_id), "conversation_id": str(conversation_id)}
    if message.role == "user":
        files: list[UiDict] = [
            {
                "type": "file",
                "mediaType": a.media_type,
                "filename": a.name,
                "url": f"/v1/files/{a.id}",
            }
            for a in message.attachments
        ]
        text = [{"type": "text", "text": message.content}] if message.content else []
        ident = message.client_id or str(message.id)
        return {"id": ident, "role": "user", "parts": files + text, "metadata": meta}
    status = "completed" if message.status == "complete" else message.status  # the turn's word
    meta |= {"model": message.model, "status": status}
    meta["usage"] = msgspec.to_builtins(message.usage)
    parts = answer_parts(message.parts, approvals=approvals)
    return {"id": str(message.id), "role": "assistant", "parts": parts, "metadata": meta}


def answer_parts(parts: list[dict[str, Any]], *, approvals: bool) -> list[UiDict]:
    """The tree's parts of an answer as UI parts. A step begins with the answer and
    again where content follows a step's calls (a step's calls come after its text)."""
    out: list[UiDict] = []
    after_call = True
    for part in parts:
        if part["type"] == "tool_call":
            out.append(tool_part(part, approvals=approvals))
            after_call = True
            continue
        if after_call:
            out.append({"type": "step-start"})
            after_call = False
        out.append({"type": part["type"], "text": part["text"], "state": "done"})
    return out


def tool_part(call: dict[str, Any], *, approvals: bool) -> UiDict:
    """A call as the part the stream made of it (``http.uichunks``)."""
    if call["kind"] == "client":
        part: UiDict = {"type": f"tool-{call['name']}", "toolCallId": call["call_id"]}
    else:
        part = {"type": "dynamic-tool", "toolName": call["name"], "toolCallId": call["call_id"]}
    state = call["state"]
    part |= {"state": state, "input": call["arguments"]}
    if state == "output-available":
        part["output"] = call["output"]
    elif state == "output-error":
        part["errorText"] = output_text(call["output"])
    elif state == "approval-requested":
        if approvals:
            part["approval"] = {"id": call["call_id"]}
        else:
            part["state"] = "input-available"
    if call["kind"] != "client":
        part["providerExecuted"] = True
    return part
