// A tool turn of the real AI SDK Chat (AbstractChat with a plain state, as the React and
// Vue bindings make it) against turnstream, as JSON lines on stdout.
//
// node tools.mjs '<spec>' (or the spec on stdin), spec:
//   {version: "ai5"|"ai6"|"ai7", action: "client-tool"|"approval", base, token, chatId,
//    text, tools?, output?, approve?, reason?, headers?}
// client-tool: the app's tools go in the body; onToolCall answers each call with `output`
//   (addToolOutput, or addToolResult on ai 5), sent on by
//   sendAutomaticallyWhen: lastAssistantMessageIsCompleteWithToolCalls.
// approval (ai >= 6): each part that asks for approval is answered with `approve`
//   (addToolApprovalResponse), sent on by lastAssistantMessageIsCompleteWithApprovalResponses.
// prints {request: {method, url, body}} and {response: {status, text}} per HTTP exchange,
// {toolCall: …} per onToolCall, {messages: […]} (the chat's, at the end), {status} and
// {error: "…"} for anything thrown or reported.
import { readFileSync } from "node:fs";

const spec = JSON.parse(process.argv[2] ?? readFileSync(0, "utf8"));
const ai = await import(spec.version);
const print = (value) => process.stdout.write(JSON.stringify(value) + "\n");
const errorText = (e) => (e instanceof Error ? e.message : String(e));
const errors = [];

class State {
  status = "ready";
  error = undefined;
  messages = [];
  pushMessage = (message) => void (this.messages = this.messages.concat(message));
  popMessage = () => void (this.messages = this.messages.slice(0, -1));
  replaceMessage = (index, message) =>
    void (this.messages = [...this.messages.slice(0, index), message, ...this.messages.slice(index + 1)]);
  snapshot = (thing) => structuredClone(thing);
}

class Chat extends ai.AbstractChat {
  constructor(init) {
    super({ ...init, state: new State() });
  }
}

// Every exchange is printed: the request's body, and the response's text as it came.
async function recording(url, init) {
  const body = init?.body ? JSON.parse(init.body) : null;
  print({ request: { method: init?.method ?? "GET", url: String(url), body } });
  const response = await fetch(url, init);
  if (!response.body) {
    print({ response: { status: response.status, text: "" } });
    return response;
  }
  const [mine, theirs] = response.body.tee();
  void new Response(theirs).text().then((text) => print({ response: { status: response.status, text } }));
  return new Response(mine, { status: response.status, statusText: response.statusText, headers: response.headers });
}

const transport = new ai.DefaultChatTransport({
  api: `${spec.base}/v1/chat`,
  headers: { Authorization: `Bearer ${spec.token}`, ...(spec.headers ?? {}) },
  body: spec.tools ? { tools: spec.tools } : undefined,
  fetch: recording,
});

let chat;
const answerCall = ({ toolCall }) => {
  print({ toolCall });
  const add = chat.addToolOutput ?? chat.addToolResult; // ai 5 has only addToolResult
  // Not awaited: onToolCall runs inside the chat's job queue, which the answer joins.
  void add.call(chat, { tool: toolCall.toolName, toolCallId: toolCall.toolCallId, output: spec.output });
};

chat = new Chat({
  id: spec.chatId,
  transport,
  onToolCall: spec.action === "client-tool" ? answerCall : undefined,
  sendAutomaticallyWhen:
    spec.action === "approval"
      ? ai.lastAssistantMessageIsCompleteWithApprovalResponses
      : ai.lastAssistantMessageIsCompleteWithToolCalls,
  onError: (e) => errors.push(errorText(e)),
});

async function settled() {
  // The automatic request may begin a moment after the one that made it possible.
  for (let quiet = 0; quiet < 5; ) {
    await new Promise((resolve) => setTimeout(resolve, 50));
    quiet = chat.status === "submitted" || chat.status === "streaming" ? 0 : quiet + 1;
  }
}

try {
  await chat.sendMessage({ text: spec.text });
  await settled();
  if (spec.action === "approval") {
    const asking = chat.messages.flatMap((m) => m.parts).filter((p) => p.state === "approval-requested");
    for (const part of asking) {
      await chat.addToolApprovalResponse({ id: part.approval.id, approved: spec.approve, reason: spec.reason });
    }
    await settled();
  }
} catch (e) {
  errors.push(errorText(e));
}
await new Promise((resolve) => setTimeout(resolve, 50)); // the last response's text
print({ status: chat.status });
print({ messages: chat.messages });
for (const error of errors) print({ error });
