// A followed turn as this page renders it: what its frames say so far, folded one frame
// at a time, and kept in the tab's sessionStorage so that a reload resumes after the
// last seq it rendered. Nothing here touches the DOM or the API.

const store = window.sessionStorage;
const MAX_FRAMES = 3000;
const ENDED = ["complete", "interrupted", "failed"];

export function freshLive(turnId) {
  return {
    turnId,
    assistantId: null,
    userId: null,
    text: "",
    reasoning: "",
    tools: new Map(),
    status: "streaming",
    seq: 0,
  };
}

export const isRunning = (live) => Boolean(live && !ENDED.includes(live.status));

// What a reload needs of the open conversation: its frames and its running turn.
export function keep(cid, frames, live) {
  store.setItem(`ts.frames.${cid}`, JSON.stringify(frames.slice(-MAX_FRAMES)));
  if (live) store.setItem(`ts.live.${cid}`, JSON.stringify({ ...live, tools: [...live.tools.entries()] }));
  else store.removeItem(`ts.live.${cid}`);
}

export function kept(cid) {
  const frames = JSON.parse(store.getItem(`ts.frames.${cid}`) ?? "[]");
  const live = JSON.parse(store.getItem(`ts.live.${cid}`) ?? "null");
  if (live) live.tools = new Map(live.tools);
  return { frames, live };
}

// Fold frame `f` into `live`; what the page must do besides re-rendering, as
// {started, title, waiting, resumed, error} (each only when it applies).
export function fold(live, f) {
  const d = f.data;
  const effects = {};
  live.turnId = d.turn_id;
  live.seq = f.seq ?? live.seq;
  const callOf = (id) =>
    live.tools.get(id) ?? { call_id: id, name: "?", args: "", arguments: null, state: "input-streaming" };
  const setCall = (id, change) => live.tools.set(id, { ...callOf(id), ...change });
  if (live.status === "waiting" && !["waiting", "final", "error"].includes(f.event)) {
    live.status = "streaming"; // the turn goes on after its pause
    effects.resumed = true;
  }
  switch (f.event) {
    case "turn.started":
      Object.assign(live, {
        assistantId: d.assistant_message_id,
        userId: d.user_message_id,
        parentId: d.parent_id,
        model: d.model,
        mode: d.mode,
      });
      effects.started = d;
      break;
    case "reasoning":
      live.reasoning += d.text;
      break;
    case "token":
      live.text += d.text;
      break;
    case "title":
      effects.title = d.title;
      break;
    case "tool_call.started":
      setCall(d.call_id, { name: d.name, state: "input-streaming" });
      break;
    case "tool_call.arguments":
      setCall(d.call_id, { args: callOf(d.call_id).args + d.text });
      break;
    case "tool_call":
      setCall(d.call_id, { name: d.name, arguments: d.arguments, kind: d.kind, state: "input-available" });
      break;
    case "approval.requested":
      setCall(d.call_id, { state: "approval-requested" });
      break;
    case "approval.decided":
      setCall(d.call_id, { state: "approval-responded", approved: d.approved });
      break;
    case "tool_result":
      setCall(d.call_id, { output: d.output, state: d.is_error ? "output-error" : "output-available" });
      break;
    case "waiting":
      live.status = "waiting";
      effects.waiting = d.reason;
      break;
    case "final":
      Object.assign(live, {
        status: d.status === "completed" ? "complete" : "interrupted",
        text: d.text,
        reasoning: d.reasoning,
        prefixed: true,
      });
      break;
    case "error":
      Object.assign(live, { status: "failed", text: d.text ?? live.text, prefixed: true });
      effects.error = new Error(`${d.code}: ${d.message}`);
      break;
  }
  return effects;
}

// A continued answer's frames carry only what is added: put the stored text before them.
export function prefix(live, stored) {
  if (live.prefixed) return false;
  live.text = (stored?.content ?? "") + live.text;
  live.reasoning = (stored?.reasoning ?? "") + live.reasoning;
  live.prefixed = true;
  return true;
}

// The message as shown: the tree's, or for the running turn's answer what its frames say.
export function shownMessage(m, live) {
  const tools = (m.parts ?? []).filter((p) => p.type === "tool_call");
  const base = { ...m, tools };
  if (!live || m.id !== live.assistantId) return base;
  return {
    ...base,
    status: live.status,
    content: live.text,
    reasoning: live.reasoning,
    tools: [...live.tools.values()],
  };
}

export function withLive(stored, live) {
  const messages = [...stored];
  if (live && live.assistantId && !messages.some((m) => m.id === live.assistantId)) {
    // The tree has not caught up with the turn yet: show the answer where it will be.
    messages.push({
      id: live.assistantId,
      parent_id: live.userId ?? live.parentId,
      role: "assistant",
      content: "",
      reasoning: "",
      status: "streaming",
      model: live.model,
      parts: [],
      attachments: [],
    });
  }
  return messages;
}
