// DOM from data: messages, tool calls, files, the conversation list, event frames.
// Nothing here calls the API; actions go to the callbacks given. Text is always set as
// text (textContent), never parsed as HTML: what a model writes cannot run here.

import { fileUrl } from "./api.js";

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key.startsWith("data-") || key.startsWith("aria-") || key === "role")
      node.setAttribute(key, value === true ? "" : String(value));
    else node[key] = value;
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}

// A button that is not a form's submit; `attrs` as for el().
export const button = (cls, text, onclick, attrs = {}) =>
  el("button", { type: "button", class: cls, text, onclick, ...attrs });

const pretty = (value) =>
  value === null || value === undefined
    ? ""
    : typeof value === "string"
      ? value
      : JSON.stringify(value, null, 2);

function attachments(files) {
  if (!files?.length) return null;
  return el(
    "div",
    { class: "attachments" },
    files.map((file) => {
      const caption = el("figcaption", { class: "file-name", text: file.name });
      const figure = el("figure", { class: "attachment", "data-id": file.id }, caption);
      if (file.media_type.startsWith("image/")) {
        const img = el("img", { alt: file.name, width: file.width, height: file.height });
        figure.prepend(img);
        fileUrl(file.id).then(
          (url) => (img.src = url),
          () => (img.alt = `${file.name} (not available)`),
        );
      }
      return figure;
    }),
  );
}

function tool(call, { busy, onApprove }) {
  const state = call.state;
  const asks = state === "approval-requested";
  const label = {
    "input-streaming": "writing arguments",
    "input-available": call.kind === "client" ? "waiting for the client's result" : "running",
    "approval-requested": "waits for your approval",
    "approval-responded": call.approved ? "approved" : "refused",
    "output-available": "done",
    "output-error": "failed",
  }[state];
  return el(
    "div",
    { class: "tool", "data-call-id": call.call_id, "data-state": state },
    el("span", { class: "tool-name", text: call.name }),
    el("span", { class: "tool-state", text: ` — ${label ?? state}` }),
    el("pre", { class: "args", "aria-label": "Arguments", text: pretty(call.arguments ?? call.args) }),
    el("pre", { class: "result", "aria-label": "Result", text: pretty(call.output) }),
    asks && button("approve", "Approve", () => onApprove(call, true), { disabled: busy === "approving" }),
    asks && button("refuse", "Refuse", () => onApprove(call, false), { disabled: busy === "approving" }),
  );
}

const STATES = {
  streaming: "writing",
  waiting: "waiting",
  complete: "",
  interrupted: "stopped",
  failed: "failed",
};

// One message of the branch. `entry`: {message, index, count}; `view`: the message as
// shown (the tree's, or the running turn's); `ui`: {busy, editing, openReasoning, on*}.
export function message(entry, view, ui) {
  const { index, count } = entry;
  const assistant = view.role === "assistant";
  const header = el(
    "header",
    {},
    el("span", { class: "who", text: assistant ? view.model || "assistant" : "you" }),
    el("span", { class: "state", text: STATES[view.status] ?? view.status }),
    count > 1 &&
      el(
        "nav",
        { class: "branch", "aria-label": "Versions" },
        button("prev", "‹", () => ui.onSwitch(entry.message, -1), {
          "aria-label": "Previous version",
          disabled: index === 0 || ui.running,
        }),
        el("span", { class: "position", text: `${index + 1} / ${count}` }),
        button("next", "›", () => ui.onSwitch(entry.message, 1), {
          "aria-label": "Next version",
          disabled: index === count - 1 || ui.running,
        }),
      ),
  );
  const article = el("article", {
    class: "message",
    "data-id": view.id,
    "data-role": view.role,
    "data-status": view.status,
  });
  const files = attachments(view.attachments);
  article.append(header, ...(files ? [files] : []));
  if (view.reasoning) {
    const details = el(
      "details",
      {
        class: "reasoning",
        open: ui.openReasoning.has(view.id),
        ontoggle: (e) =>
          e.target.open ? ui.openReasoning.add(view.id) : ui.openReasoning.delete(view.id),
      },
      el("summary", { text: "Reasoning" }),
      el("div", { class: "reasoning-text", text: view.reasoning }),
    );
    article.append(details);
  }
  const tools = view.tools ?? [];
  if (tools.length) {
    article.append(el("div", { class: "tools" }, tools.map((c) => tool(c, ui))));
  }
  if (ui.editing?.id === view.id) {
    const area = el("textarea", {
      class: "edit-text",
      "aria-label": "New text of the message",
      value: ui.editing.text,
      oninput: (e) => (ui.editing.text = e.target.value),
    });
    article.append(
      area,
      el(
        "footer",
        {},
        button("save", "Save and send", () => ui.onSaveEdit()),
        button("cancel-edit", "Cancel", () => ui.onCancelEdit()),
      ),
    );
    queueMicrotask(() => area.isConnected && document.activeElement === document.body && area.focus());
    return article;
  }
  article.append(el("div", { class: "content", text: view.content }));
  const actions = assistant
    ? [
        button("retry", "Retry", () => ui.onRetry(view), { disabled: ui.running }),
        button("continue", "Continue", () => ui.onContinue(view), { disabled: ui.running }),
      ]
    : [button("edit", "Edit", () => ui.onEdit(view), { disabled: ui.running })];
  article.append(el("footer", {}, actions));
  return article;
}

export function conversationItem(item, ui) {
  const li = el("li", { class: "conversation", "data-id": item.id });
  if (item.id === ui.current) li.classList.add("current");
  if (ui.renaming === item.id) {
    const input = el("input", {
      class: "rename-input",
      "aria-label": "New title",
      value: item.title ?? "",
      onkeydown: (e) => {
        if (e.key === "Enter") ui.onRename(item, e.target.value);
        else if (e.key === "Escape") ui.onRename(item, null);
      },
    });
    li.append(input);
    queueMicrotask(() => input.focus());
    return li;
  }
  const confirming = ui.deleting === item.id;
  li.append(
    button("open", item.title || "Untitled", () => ui.onOpen(item.id), {
      title: item.title || "Untitled",
      "aria-current": item.id === ui.current ? "true" : null,
    }),
    button("rename", "Rename", () => ui.onStartRename(item)),
    button(confirming ? "delete confirm" : "delete", confirming ? "Confirm delete" : "Delete", () =>
      ui.onDelete(item),
    ),
  );
  return li;
}

export function frame(turnId, f) {
  const { seq, turn_id, p, ...data } = f.data; // the padding is noise here
  void turn_id;
  void p;
  return el(
    "li",
    { class: "frame", "data-seq": f.seq, "data-event": f.event, "data-turn": turnId },
    el("span", { class: "seq", text: String(seq ?? f.seq) }),
    ` ${f.event} `,
    el("span", { class: "data", text: JSON.stringify(data) }),
  );
}
