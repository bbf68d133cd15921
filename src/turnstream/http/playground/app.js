// The playground: a client of the public API that shows everything it does. The token
// comes from the URL fragment (#token=…, what `turnstream serve` prints) or the field,
// and is kept in this tab's sessionStorage, never in a URL. A running turn's rendering
// (its text, last seq and frames) is kept there too, so that a reload resumes the turn
// after the last seq it rendered and shows nothing twice.

import { ApiError, call, follow, setToken, startTurn, turnEvents } from "./api.js";
import { pendingFiles } from "./composer.js";
import { conversationList } from "./list.js";
import { frame as frameItem, message as messageItem } from "./render.js";
import { branch, parentKey, sibling } from "./tree.js";
import { showModels, showUsage } from "./panels.js";
import { fold, freshLive, isRunning, keep, kept, prefix, shownMessage, withLive } from "./turns.js";

const $ = (selector) => document.querySelector(selector);
const store = window.sessionStorage;
const POLL_MS = 2000;

const state = {
  cid: null, // the open conversation
  view: null, // GET /v1/conversations/{cid}
  choice: new Map(), // parent key -> the child shown
  live: null, // the turn being followed: {turnId, assistantId, text, reasoning, tools, status, seq}
  abort: null, // stops following it
  frames: [], // [{turn, seq, event, data}] of the open conversation
  seen: new Set(), // "turn:seq" of those frames
  done: null, // the last turn this tab followed to its end
  editing: null, // {id, text}
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

// Frames come many a second: what a reload needs is written once per animation frame
// (live and frames together, so they always agree), and when the page goes away.
const save = () => state.cid && keep(state.cid, state.frames, state.live);
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

const shown = (m) => shownMessage(m, state.live);
const messagesOfView = () => withLive(state.view?.messages ?? [], state.live);

const running = () => isRunning(state.live);

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

const conversations = conversationList({
  list: $("#conversations"),
  more: $("#more"),
  onOpen: (cid) => open(cid),
  onRenamed(cid, title) {
    if (cid === state.cid && state.view) state.view.title = title;
    renderMessages();
  },
  onDeleted: (cid) => (cid === state.cid ? open(null) : undefined),
  onError: report,
});
const loadList = (next = false) => conversations.load(next);

function renderFrames() {
  state.seen = new Set(state.frames.map((f) => `${f.turn}:${f.seq}`));
  $("#events").replaceChildren(...state.frames.map((f) => frameItem(f.turn, f)));
}

const loadUsage = () => showUsage($("#usage"));
async function loadModels() {
  state.models = await showModels($("#model"));
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
  conversations.select(cid);
  renderFrames();
  renderMessages();
  setStatus("idle");
  if (!cid) return;
  const saved = kept(cid);
  state.frames = saved.frames;
  renderFrames();
  try {
    await refreshView();
  } catch (e) {
    state.view = null;
    renderMessages();
    return report(e);
  }
  const active = state.view.active_turn;
  if (active) attach(active.turn_id, saved.live?.turnId === active.turn_id ? saved.live : null);
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
  let fresh = true;
  try {
    await Promise.all([refreshView(), loadList(), loadUsage()]);
  } catch (e) {
    fresh = false; // e.g. offline: the ended turn stays shown from its frames
    report(e);
  }
  // The tree now holds what the frames showed; the turn is shown from it.
  state.done = state.live?.turnId ?? null;
  if (fresh) state.live = null;
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
  const key = `${d.turn_id}:${f.seq}`;
  if (!state.seen.has(key)) {
    // Frames a reload already showed are applied again (from the turn's start, when
    // this tab kept no rendering of it) but listed once.
    state.seen.add(key);
    state.frames.push({ turn: d.turn_id, seq: f.seq, event: f.event, data: d });
    $("#events").append(frameItem(d.turn_id, state.frames[state.frames.length - 1]));
  }
  const effects = fold(live, f);
  if (effects.resumed) setStatus("streaming", "streaming");
  if (effects.started) {
    state.choice.clear(); // the new turn's branch is the server's current leaf
    refreshView().then(() => {
      if (effects.started.mode !== "continue") return;
      if (prefix(live, state.view.messages.find((x) => x.id === live.assistantId))) renderMessages();
    }, report);
  }
  if (effects.title !== undefined) {
    if (state.view) state.view.title = effects.title;
    conversations.retitle(state.cid, effects.title);
  }
  if (effects.waiting) {
    setStatus("waiting", effects.waiting === "approval" ? "waiting for an approval" : "waiting for a tool result");
  }
  if (effects.error) report(effects.error);
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
      conversations.select(made.id);
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
  const files = pending.ids();
  if (!text.trim() && !files.length) return;
  const parent = leafOfBranch();
  const body = { mode: "message", content: text };
  if (files.length) body.attachments = files;
  if (parent?.role === "assistant") body.parent_id = parent.id; // the branch shown goes on
  $("#message").value = "";
  pending.clear();
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

const pending = pendingFiles({
  list: $("#pending"),
  onStatus: (text) => (text ? setStatus("streaming", text) : setStatus("idle")),
  onError: report,
  onUploaded: () => loadUsage().catch(report),
});

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
        if (state.live && !running()) {
          state.live = null; // an ended turn kept from its frames: the tree has it now
          save();
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
  $("#files").addEventListener("change", (e) => pending.add(e.target));
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
