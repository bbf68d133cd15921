// The files waiting for the next message: uploaded as soon as they are picked (so a bad
// one is refused before anything is sent), shown with a thumbnail, removable.

import { upload } from "./api.js";
import { button, el } from "./render.js";

export function pendingFiles({ list, onStatus, onError, onUploaded }) {
  let pending = []; // {id, name, url}

  function render() {
    list.replaceChildren(
      ...pending.map((f) =>
        el(
          "li",
          { class: "pending-file", "data-id": f.id },
          f.url && el("img", { src: f.url, alt: "" }),
          el("span", { text: f.name }),
          button(
            "remove",
            "×",
            () => {
              pending = pending.filter((p) => p !== f);
              if (f.url) URL.revokeObjectURL(f.url);
              render();
            },
            { "aria-label": `Remove ${f.name}` },
          ),
        ),
      ),
    );
  }

  return {
    ids: () => pending.map((f) => f.id),
    clear() {
      for (const f of pending) if (f.url) URL.revokeObjectURL(f.url);
      pending = [];
      render();
    },
    async add(input) {
      for (const file of [...input.files]) {
        onStatus(`uploading ${file.name}…`);
        try {
          const made = await upload(file);
          const url = made.media_type.startsWith("image/") ? URL.createObjectURL(file) : null;
          pending.push({ id: made.id, name: made.name, url });
          render();
          onStatus(null);
        } catch (e) {
          onError(e);
        }
      }
      input.value = "";
      onUploaded();
    },
  };
}
