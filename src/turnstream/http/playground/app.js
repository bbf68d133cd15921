// The playground: a client of the public API that shows everything it does. The token
// comes from the URL fragment (#token=…, what `turnstream serve` prints) or the field,
// and is kept in this tab's sessionStorage, never in a URL. A running turn's rendering
// (its text, last seq and frames) is kept there too, so that a reload resumes the turn
// after the last seq it rendered and shows nothing twice.

import { ApiError, call, follow, setToken, startTurn, turnEvents, upload } from "./api.js";
import { button, conversationItem, el, frame as frameItem, message as messageItem } from "./render.js";
import { branch, parentKey, sibling } from "./tree.js";

const $ = (selector) => document.querySelector(selector);
const store = window.sessionStorage;
const POLL_MS = 2000;
const MAX_FRAMES = 3000;

const state = {
  cid: null, // the open conversation
  view: null, // GET /v1/conversations/{cid}
  choice: new Map(), // parent key -> the child shown
  live: null, // the turn being followed: {turnId, assistantId, text, reasoning, tools, status, seq}
  abort: null, // stops following it
  frames: [], // [{turn, seq, event, data}] of the open conversation
  seen: new Set(), // "turn:seq" of those frames
  done: null, // the last turn this tab followed to its end
  items: [], // the conversation list
  cursor: null,
  pending: [], // files uploaded for the next message: {id, name, url}
  editing: null, // {id, text}
  renaming: null,
  deleting: null,
  busy: null,
  openReasoning: new Set(),
  models: [],
};

function setStatus(kind, text) {
  const status = $("#status");
  status.dataset.state = kind;
  status.textContent = text ?? kind;
}

function report(error) {
  setStatus("error", error instanceof Error ? error.message : String(error));
}

// The fragment: #token=…&c=… (both optional); afterwards only #c=… is left.
function readFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.get("token")) store.setItem("ts.token", params.get("token"));
  return params.get("c");
}

function writeFragment() {
  history.replaceState(null, "", state.cid ? `#c=${state.cid}` : location.pathname);
}

// What a reload needs of a running turn, and the frames shown, per conversation.
function save() {
  if (!state.cid) return;
  store.setItem(`ts.frames.${state.cid}`, JSON.stringify(state.frames.slice(-MAX_FRAMES)));
  if (state.live) store.setItem(`ts.live.${state.cid}`, JSON.stringify(serialLive(state.live)));
  else store.removeItem(`ts.live.${state.cid}`);
}

// Frames come many a second: what a reload needs is written once per animation frame
// (live and frames together, so they always agree), and when the page goes away.
let saving = false;
function saveSoon() {
  if (saving) return;
  saving = true;
  requestAnimationFrame(() => {
    saving = false;
    save();
  });
}
window.addEventListener("pagehide", save);

const serialLive = (live) => ({ ...live, tools: [...live.tools.entries()] });

function restored(cid) {
  const frames = JSON.parse(store.getItem(`ts.frames.${cid}`) ?? "[]");
  const live = JSON.parse(store.getItem(`ts.live.${cid}`) ?? "null");
  if (live) live.tools = new Map(live.tools);
  return { frames, live };
}

// The message as shown: the tree's, or for the running turn's answer what its frames say.
function shown(m) {
  const live = state.live;
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

function messagesOfView() {
  const messages = [...(state.view?.messages ?? [])];
  const live = state.live;
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

const running = () => Boolean(state.live && !["complete", "interrupted", "failed"].includes(state.live.status));

function leafOfBranch() {
  const path = branch(messagesOfView(), state.view?.current_leaf_id, state.choice);
  return path.length ? path[path.length - 1].message : null;
}

const ui = {
  get running() {
    return running();
  },
  get busy() {
    return state.busy;
  },
  get editing() {
    return state.editing;
  },
  openReasoning: state.openReasoning,
  onSwitch(m, step) {
    const other = sibling(messagesOfView(), m, step);
    if (other) state.choice.set(parentKey(m), other.id);
    renderMessages();
  },
  onRetry: (m) => send({ mode: "retry", message_id: m.id }),
  onContinue: (m) => send({ mode: "continue", message_id: m.id }),
  onEdit(m) {
    state.editing = { id: m.id, text: m.content };
    renderMessages();
  },
  onCancelEdit() {
    state.editing = null;
    renderMessages();
  },
  onSaveEdit() {
    const { id, text } = state.editing;
    state.editing = null;
    send({ mode: "edit", message_id: id, content: text });
  },
  async onApprove(c, approved) {
    state.busy = "approving";
    renderMessages();
    try {
      await call("POST", `/v1/conversations/${state.cid}/turns/${state.live.turnId}/approvals`, {
        call_id: c.call_id,
        approved,
      });
    } catch (e) {
      report(e);
    } finally {
      state.busy = null;
      renderMessages();
    }
  },
};

let scheduled = false;
function renderMessages() {
  if (scheduled) return;
  scheduled = true;
  requestAnimationFrame(() => {
    scheduled = false;
    const box = $("#messages");
    const atEnd = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    const path = branch(messagesOfView(), state.view?.current_leaf_id, state.choice);
    box.replaceChildren(...path.map((entry) => messageItem(entry, shown(entry.message), ui)));
    if (atEnd) box.scrollTop = box.scrollHeight;
    $("#stop").disabled = !running();
    $("#title").textContent = state.cid ? state.view?.title || "Untitled" : "New conversation";
  });
}

function renderList() {
  const list = {
    current: state.cid,
    renaming: state.renaming,
    deleting: state.deleting,
    onOpen: (cid) => open(cid),
    onStartRename(item) {
      state.renaming = item.id;
      renderList();
    },
    async onRename(item, title) {
      state.renaming = null;
      if (title !== null && title.trim()) {
        try {
          await call("PATCH", `/v1/conversations/${item.id}`, { title: title.trim() });
          if (item.id === state.cid && state.view) state.view.title = title.trim();
        } catch (e) {
          report(e);
        }
      }
      await loadList();
      renderMessages();
    },
    async onDelete(item) {
      if (state.deleting !== item.id) {
        state.deleting = item.id;
        return renderList();
      }
      state.deleting = null;
      try {
        await call("DELETE", `/v1/conversations/${item.id}`);
        if (item.id === state.cid) await open(null);
      } catch (e) {
        report(e);
      }
      await loadList();
    },
  };
  $("#conversations").replaceChildren(...state.items.map((item) => conversationItem(item, list)));
  $("#more").hidden = !state.cursor;
}

function renderFrames() {
  state.seen = new Set(state.frames.map((f) => `${f.turn}:${f.seq}`));
  $("#events").replaceChildren(...state.frames.map((f) => frameItem(f.turn, f)));
}

async function loadList(more = false) {
  const query = more && state.cursor ? `?limit=20&cursor=${encodeURIComponent(state.cursor)}` : "?limit=20";
  const page = await call("GET", `/v1/conversations${query}`);
  state.items = more ? state.items.concat(page.items) : page.items;
  state.cursor = page.next_cursor;
  renderList();
}

async function loadUsage() {
  const usage = await call("GET", "/v1/usage");
  const put = (key, value) => ($(`#usage dd[data-key=${key}]`).textContent = String(value));
  put("day_tokens", usage.day.total_tokens);
  put("week_tokens", usage.week.total_tokens);
  put("storage_bytes", usage.storage.bytes);
  const limits = Object.entries(usage.limits).filter(([, v]) => v !== null);
  put("limits", limits.length ? limits.map(([k, v]) => `${k} ${v}`).join(", ") : "none");
}

async function loadModels() {
  const { data } = await call("GET", "/v1/models");
  state.models = data;
  const select = $("#model");
  select.replaceChildren(...data.map((m) => el("option", { value: m.id, text: m.id, selected: m.default })));
}

async function refreshView() {
  if (!state.cid) return;
  state.view = await call("GET", `/v1/conversations/${state.cid}`);
  renderMessages();
}

// Open a conversation (null: none, the next message makes one): its tree, its frames,
// and its running turn, followed after what this tab rendered of it.
async function open(cid) {
  state.abort?.abort();
  Object.assign(state, { cid, view: null, live: null, abort: null, editing: null, frames: [] });
  state.choice.clear();
  writeFragment();
  renderList();
  renderFrames();
  renderMessages();
  setStatus("idle");
  if (!cid) return;
  const kept = restored(cid);
  state.frames = kept.frames;
  renderFrames();
  try {
    await refreshView();
  } catch (e) {
    state.view = null;
    renderMessages();
    return report(e);
  }
  const active = state.view.active_turn;
  if (active) attach(active.turn_id, kept.live?.turnId === active.turn_id ? kept.live : null);
}

function freshLive(turnId) {
  return { turnId, assistantId: null, userId: null, text: "", reasoning: "", tools: new Map(), status: "streaming", seq: 0 };
}

function attach(turnId, live) {
  state.live = live ?? freshLive(turnId);
  const abort = new AbortController();
  state.abort = abort;
  run(turnEvents(state.cid, turnId, abort.signal), abort);
}

// Follow a stream (a new turn's, or a running one's) to its end.
async function run(opener, abort) {
  const cid = state.cid;
  setStatus("streaming", "streaming");
  renderMessages();
  try {
    await follow({
      open: opener,
      after: state.live?.seq ?? 0,
      signal: abort.signal,
      onFrame: (f) => cid === state.cid && apply(f),
      onRetry: (attempt, ms) =>
        setStatus("reconnecting", `connection lost; reconnecting (attempt ${attempt}) in ${(ms / 1000).toFixed(1)} s`),
    });
  } catch (e) {
    if (cid === state.cid) report(e);
  }
  if (abort.signal.aborted || cid !== state.cid) return;
  try {
    await Promise.all([refreshView(), loadList(), loadUsage()]);
  } catch (e) {
    report(e);
  }
  // The tree now holds what the frames showed; the turn is shown from it.
  state.done = state.live?.turnId ?? null;
  state.live = null;
  state.abort = null;
  save();
  renderMessages();
  if ($("#status").dataset.state !== "error") setStatus("idle");
}

// One frame of the followed turn: shown in the events pane and in the answer.
function apply(f) {
  const live = state.live;
  const d = f.data;
  if (!live || (live.turnId && d.turn_id !== live.turnId)) return;
  live.turnId = d.turn_id;
  live.seq = f.seq ?? live.seq;
  const key = `${d.turn_id}:${f.seq}`;
  if (!state.seen.has(key)) {
    // Frames a reload already showed are applied again (from the turn's start, when
    // this tab kept no rendering of it) but listed once.
    state.seen.add(key);
    state.frames.push({ turn: d.turn_id, seq: f.seq, event: f.event, data: d });
    $("#events").append(frameItem(d.turn_id, state.frames[state.frames.length - 1]));
  }
  const callOf = (id) => live.tools.get(id) ?? { call_id: id, name: "?", args: "", arguments: null, state: "input-streaming" };
  const setCall = (id, change) => live.tools.set(id, { ...callOf(id), ...change });
  if (live.status === "waiting" && !["waiting", "final", "error"].includes(f.event)) {
    live.status = "streaming"; // the turn goes on after its pause
    setStatus("streaming", "streaming");
  }
  switch (f.event) {
    case "turn.started":
      Object.assign(live, { assistantId: d.assistant_message_id, userId: d.user_message_id, parentId: d.parent_id, model: d.model, mode: d.mode });
      state.choice.clear(); // the new turn's branch is the server's current leaf
      refreshView().then(() => {
        if (d.mode === "continue" && !live.prefixed) {
          const m = state.view.messages.find((x) => x.id === live.assistantId);
          live.text = (m?.content ?? "") + live.text;
          live.reasoning = (m?.reasoning ?? "") + live.reasoning;
          live.prefixed = true;
          renderMessages();
        }
      }, report);
      break;
    case "reasoning":
      live.reasoning += d.text;
      break;
    case "token":
      live.text += d.text;
      break;
    case "title":
      if (state.view) state.view.title = d.title;
      state.items = state.items.map((item) => (item.id === state.cid ? { ...item, title: d.title } : item));
      renderList();
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
      setStatus("waiting", d.reason === "approval" ? "waiting for an approval" : "waiting for a tool result");
      break;
    case "final":
      Object.assign(live, { status: d.status === "completed" ? "complete" : "interrupted", text: d.text, reasoning: d.reasoning, prefixed: true });
      break;
    case "error":
      Object.assign(live, { status: "failed", text: d.text ?? live.text, prefixed: true });
      report(new Error(`${d.code}: ${d.message}`));
      break;
  }
  saveSoon();
  renderMessages();
}

// Start a turn of the open conversation (made first when there is none).
async function send(body) {
  if (running()) return;
  try {
    if (!state.cid) {
      const made = await call("POST", "/v1/conversations", { model: $("#model").value || undefined });
      state.cid = made.id;
      state.view = null;
      state.frames = [];
      writeFragment();
      renderFrames();
    }
    const model = $("#model").value;
    const request = { ...body, request_id: crypto.randomUUID() };
    if (model && state.view && model !== state.view.model) request.model = model;
    state.live = freshLive(null);
    const abort = new AbortController();
    state.abort = abort;
    loadList().catch(report);
    await run(startTurn(state.cid, request, abort.signal), abort);
  } catch (e) {
    report(e);
  }
}

async function sendMessage() {
  const text = $("#message").value;
  const files = state.pending.map((f) => f.id);
  if (!text.trim() && !files.length) return;
  const parent = leafOfBranch();
  const body = { mode: "message", content: text };
  if (files.length) body.attachments = files;
  if (parent?.role === "assistant") body.parent_id = parent.id; // the branch shown goes on
  $("#message").value = "";
  state.pending = [];
  renderPending();
  await send(body);
}

async function stop() {
  const live = state.live;
  if (!running() || !live.turnId) return;
  try {
    await call("POST", `/v1/conversations/${state.cid}/turns/${live.turnId}/cancel`);
    setStatus("streaming", "stopping");
  } catch (e) {
    report(e);
  }
}

function renderPending() {
  $("#pending").replaceChildren(
    ...state.pending.map((f) =>
      el(
        "li",
        { class: "pending-file", "data-id": f.id },
        f.url && el("img", { src: f.url, alt: "" }),
        el("span", { text: f.name }),
        button("remove", "×", () => {
          state.pending = state.pending.filter((p) => p !== f);
          renderPending();
        }, { "aria-label": `Remove ${f.name}` }),
      ),
    ),
  );
}

async function attachFiles(input) {
  for (const file of [...input.files]) {
    setStatus("streaming", `uploading ${file.name}…`);
    try {
      const made = await upload(file);
      const url = made.media_type.startsWith("image/") ? URL.createObjectURL(file) : null;
      state.pending.push({ id: made.id, name: made.name, url });
      renderPending();
      setStatus("idle");
    } catch (e) {
      report(e);
    }
  }
  input.value = "";
  loadUsage().catch(report);
}

// While idle, look at the open conversation now and then: another tab's (or client's)
// turn is followed as soon as it runs, and its messages appear when it ends.
async function poll() {
  if (state.cid && !state.abort && !document.hidden && state.view) {
    try {
      const before = JSON.stringify(state.view);
      const view = await call("GET", `/v1/conversations/${state.cid}`);
      if (!state.abort && state.cid === view.id) {
        if (JSON.stringify(view) !== before) {
          state.view = view;
          renderMessages();
        }
        const active = view.active_turn?.turn_id;
        if (active && active !== state.done) attach(active, null);
      }
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 404)) report(e);
    }
  }
  setTimeout(poll, POLL_MS);
}

async function signIn() {
  setToken($("#token").value);
  store.setItem("ts.token", $("#token").value.trim());
  try {
    await Promise.all([loadModels(), loadList(), loadUsage()]);
    setStatus("idle");
  } catch (e) {
    report(e);
  }
}

async function main() {
  const cid = readFragment();
  $("#token").value = store.getItem("ts.token") ?? "";
  $("#token").addEventListener("change", () => signIn().then(() => open(null)));
  $("#new").addEventListener("click", () => open(null).then(() => $("#message").focus()));
  $("#more").addEventListener("click", () => loadList(true).catch(report));
  $("#composer").addEventListener("submit", (e) => {
    e.preventDefault();
    sendMessage();
  });
  $("#message").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $("#composer").requestSubmit();
    }
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && running()) stop();
  });
  $("#stop").addEventListener("click", stop);
  $("#files").addEventListener("change", (e) => attachFiles(e.target));
  window.addEventListener("offline", () => setStatus("reconnecting", "offline; waiting for the network"));
  if (!$("#token").value) {
    setStatus("error", "Paste a token (turnstream serve prints a link with one).");
    return;
  }
  await signIn();
  await open(cid);
  setTimeout(poll, POLL_MS);
}

main().catch(report);
