// One action of the real AI SDK client against turnstream, as JSON lines on stdout.
//
// node chat.mjs '<spec>' (or the spec on stdin), spec:
//   {version: "ai5"|"ai6"|"ai7", action: "send"|"reconnect"|"send-and-stop"|"send-and-drop",
//    base, token, chatId, messages?, trigger?, messageId?, body?}
// prints {"chunk": …} per chunk the transport yields, then {"stop": status} (send-and-stop),
// {"message": …} (the last message readUIMessageStream assembled), {"none": true}
// (reconnectToStream gave null: 204), and {"error": "…"} for anything thrown or reported.
import { readFileSync } from "node:fs";

const spec = JSON.parse(process.argv[2] ?? readFileSync(0, "utf8"));
const { DefaultChatTransport, readUIMessageStream } = await import(spec.version);
const print = (value) => process.stdout.write(JSON.stringify(value) + "\n");
const errorText = (e) => (e instanceof Error ? e.message : String(e));

const auth = { Authorization: `Bearer ${spec.token}` };
const transport = new DefaultChatTransport({ api: `${spec.base}/v1/chat`, headers: auth });
const aborter = new AbortController();
const errors = [];

async function chunks() {
  if (spec.action === "reconnect") return transport.reconnectToStream({ chatId: spec.chatId });
  return transport.sendMessages({
    chatId: spec.chatId,
    messages: spec.messages,
    trigger: spec.trigger ?? "submit-message",
    messageId: spec.messageId,
    abortSignal: aborter.signal,
    body: spec.body,
  });
}

async function stop() {
  const url = `${spec.base}/v1/chat/${encodeURIComponent(spec.chatId)}/stop`;
  const response = await fetch(url, { method: "POST", headers: auth });
  print({ stop: response.status });
}

// Every chunk goes both to stdout and to readUIMessageStream, which assembles the message.
let feed;
const fed = new ReadableStream({ start: (controller) => void (feed = controller) });
const assembled = (async () => {
  let last = null;
  for await (const message of readUIMessageStream({
    stream: fed,
    onError: (e) => errors.push(errorText(e)),
  })) {
    last = message;
  }
  return last;
})();

try {
  const stream = await chunks();
  if (stream === null) {
    print({ none: true });
  } else {
    let interrupted = false;
    for await (const chunk of stream) {
      print({ chunk });
      feed.enqueue(chunk);
      if (chunk.type === "text-delta" && !interrupted) {
        interrupted = true;
        if (spec.action === "send-and-stop") await stop();
        if (spec.action === "send-and-drop") break; // cancels the body's reader
      }
    }
    if (spec.action === "send-and-drop") aborter.abort();
  }
} catch (e) {
  errors.push(errorText(e));
}
feed.close();
const message = await assembled;
if (message !== null) print({ message });
for (const error of errors) print({ error });
