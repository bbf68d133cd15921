// The public API as the playground uses it: the token in an Authorization header (never
// in a URL), problem+json errors as ApiError with their detail, and SSE streams read
// from fetch (EventSource cannot send a header) and resumed with Last-Event-ID.

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.title || `HTTP ${status}`);
    this.status = status;
    this.code = problem?.code ?? null;
  }
}

let token = "";

export function setToken(value) {
  token = value.trim();
}

function headers(extra = {}) {
  return token ? { Authorization: `Bearer ${token}`, ...extra } : { ...extra };
}

async function failure(response) {
  let problem = null;
  try {
    problem = await response.json();
  } catch {
    problem = null;
  }
  return new ApiError(response.status, problem);
}

export async function call(method, path, body) {
  const init = { method, headers: headers() };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await failure(response);
  return response.status === 204 ? null : response.json();
}

export async function upload(file) {
  const form = new FormData();
  form.append("file", file, file.name);
  const response = await fetch("/v1/files", { method: "POST", headers: headers(), body: form });
  if (!response.ok) throw await failure(response);
  return response.json();
}

const blobs = new Map();

// An image of the caller's, as a blob: URL (an <img> cannot send the token).
export async function fileUrl(id) {
  if (!blobs.has(id)) {
    blobs.set(
      id,
      fetch(`/v1/files/${id}`, { headers: headers() }).then(async (response) => {
        if (!response.ok) throw await failure(response);
        return URL.createObjectURL(await response.blob());
      }),
    );
  }
  return blobs.get(id);
}

// The frames of an SSE response, in order: {seq, event, data}. Comments (pings, the
// padding) are dropped.
async function* frames(response, signal) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  const abort = () => reader.cancel().catch(() => {});
  signal?.addEventListener("abort", abort, { once: true });
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let cut;
      while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
        let id = null;
        let event = "message";
        const data = [];
        for (const line of block.split(/\r?\n/)) {
          if (line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "id") id = Number(text);
          else if (field === "event") event = text;
          else if (field === "data") data.push(text);
        }
        if (data.length) yield { seq: id, event, data: JSON.parse(data.join("\n")) };
      }
    }
  } finally {
    signal?.removeEventListener("abort", abort);
  }
}

const TERMINAL = new Set(["final", "error"]);
const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => (clearTimeout(timer), resolve()), { once: true });
  });

// Follow a turn's stream to its terminal frame, resuming after the last seq seen when
// the connection drops (backoff 0.5 s, doubling to 8 s, with jitter). `open(after)`
// makes the request; `onFrame` gets each frame once; `onRetry(attempt, ms, error)` says
// a reconnect is coming. Resolves with the terminal frame, or null when the stream
// has nothing (204) or is aborted; a refusal (4xx) rejects with its ApiError.
export async function follow({ open, after = 0, onFrame, onRetry, signal }) {
  let last = after;
  for (let attempt = 0; !signal?.aborted; ) {
    let error = null;
    try {
      const response = await open(last);
      if (response.status === 204) return null;
      if (!response.ok) {
        const refused = await failure(response);
        if (response.status < 500 && response.status !== 429) throw refused;
        error = refused;
      } else {
        for await (const frame of frames(response, signal)) {
          if (frame.seq !== null && frame.seq <= last) continue; // never twice
          if (frame.seq !== null) last = frame.seq;
          attempt = 0;
          onFrame(frame);
          if (TERMINAL.has(frame.event)) return frame;
        }
      }
    } catch (e) {
      if (e instanceof ApiError && e.status < 500 && e.status !== 429) throw e;
      error = e;
    }
    if (signal?.aborted) return null;
    attempt += 1;
    const ms = Math.min(8000, 500 * 2 ** (attempt - 1)) * (0.75 + Math.random() / 2);
    onRetry?.(attempt, ms, error);
    await sleep(ms, signal);
  }
  return null;
}

// A new turn's stream. The body has a request_id, so the same POST again is the same
// turn: a dropped connection resumes it with Last-Event-ID and starts nothing new.
export function startTurn(cid, body, signal) {
  return (after) =>
    fetch(`/v1/conversations/${cid}/turns`, {
      method: "POST",
      headers: headers({
        "Content-Type": "application/json",
        Accept: "text/event-stream",
        ...(after > 0 ? { "Last-Event-ID": String(after) } : {}),
      }),
      body: JSON.stringify(body),
      signal,
    });
}

export function turnEvents(cid, tid, signal) {
  return (after) =>
    fetch(`/v1/conversations/${cid}/turns/${tid}/events`, {
      headers: headers({ Accept: "text/event-stream", "Last-Event-ID": String(after) }),
      signal,
    });
}
