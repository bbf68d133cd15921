// Files sent by the real AI SDK Chat (AbstractChat with a plain state, as the React and
// Vue bindings make it) against turnstream, as JSON lines on stdout.
//
// node files.mjs '<spec>' (or the spec on stdin), spec:
//   {version: "ai5"|"ai6"|"ai7", base, token, chatId, sends: [{text?, files?, parts?}],
//    initial?}
// `initial`: the messages the chat starts with (useChat({messages})), first checked by
// the SDK's validateUIMessages where it has one (ai >= 6), which prints {validated: n};
// each send is one chat.sendMessage({text, files}): `files` ([{name, type, base64}]) are
// given as a FileList, as a browser's <input type="file"> gives them (Node has no FileList
// nor FileReader: the two small classes below stand in for the browser's), so the SDK
// makes them data URLs itself; `parts` are FileUIPart objects given as they are.
// prints {request: {url, body}} per request, {messages: […]} (the chat's, at the end),
// {status} and {error: "…"} for anything thrown or reported.
import { readFileSync } from "node:fs";

const spec = JSON.parse(process.argv[2] ?? readFileSync(0, "utf8"));
const ai = await import(spec.version);
const print = (value) => process.stdout.write(JSON.stringify(value) + "\n");
const errorText = (e) => (e instanceof Error ? e.message : String(e));
const errors = [];

// The browser's FileList and FileReader.readAsDataURL, as far as the SDK uses them.
// Not an Array (the SDK takes an array as file parts already made).
globalThis.FileList = class FileList {
  constructor(files) {
    files.forEach((file, i) => void (this[i] = file));
    this.length = files.length;
  }
  *[Symbol.iterator]() {
    for (let i = 0; i < this.length; i++) yield this[i];
  }
};
globalThis.FileReader = class FileReader {
  readAsDataURL(file) {
    file.arrayBuffer().then(
      (buffer) => {
        const base64 = Buffer.from(buffer).toString("base64");
        this.onload?.({ target: { result: `data:${file.type};base64,${base64}` } });
      },
      (error) => this.onerror?.(error),
    );
  }
};

class State {
  status = "ready";
  error = undefined;
  constructor(messages = []) {
    this.messages = messages;
  }
  pushMessage = (message) => void (this.messages = this.messages.concat(message));
  popMessage = () => void (this.messages = this.messages.slice(0, -1));
  replaceMessage = (index, message) =>
    void (this.messages = [...this.messages.slice(0, index), message, ...this.messages.slice(index + 1)]);
  snapshot = (thing) => structuredClone(thing);
}

class Chat extends ai.AbstractChat {
  constructor(init) {
    super({ ...init, state: new State(init.messages) }); // as the React binding's state
  }
}

async function recording(url, init) {
  print({ request: { url: String(url), body: init?.body ? JSON.parse(init.body) : null } });
  return fetch(url, init);
}

if (spec.initial && ai.validateUIMessages) {
  try {
    print({ validated: (await ai.validateUIMessages({ messages: spec.initial })).length });
  } catch (e) {
    errors.push(`validateUIMessages: ${errorText(e)}`);
  }
}

const chat = new Chat({
  id: spec.chatId,
  messages: spec.initial,
  transport: new ai.DefaultChatTransport({
    api: `${spec.base}/v1/chat`,
    headers: { Authorization: `Bearer ${spec.token}` },
    fetch: recording,
  }),
  onError: (e) => errors.push(errorText(e)),
});

const fileList = (files) =>
  new FileList(files.map((f) => new File([Buffer.from(f.base64, "base64")], f.name, { type: f.type })));

try {
  for (const send of spec.sends) {
    const files = send.files ? fileList(send.files) : send.parts;
    await chat.sendMessage({ text: send.text, files });
  }
} catch (e) {
  errors.push(errorText(e));
}
print({ status: chat.status });
print({ messages: chat.messages });
for (const error of errors) print({ error });
