// The conversation list: pages of GET /v1/conversations (newest first), rename in place,
// delete after a second click to confirm.

import { call } from "./api.js";
import { conversationItem } from "./render.js";

const PAGE = 20;

export function conversationList({ list, more, onOpen, onRenamed, onDeleted, onError }) {
  let items = [];
  let cursor = null;
  let current = null;
  let renaming = null;
  let deleting = null;

  const ui = {
    onOpen: (cid) => onOpen(cid),
    onStartRename(item) {
      renaming = item.id;
      render();
    },
    async onRename(item, title) {
      renaming = null;
      const wanted = title?.trim();
      if (wanted) {
        try {
          await call("PATCH", `/v1/conversations/${item.id}`, { title: wanted });
          onRenamed(item.id, wanted);
        } catch (e) {
          onError(e);
        }
      }
      await load().catch(onError);
    },
    async onDelete(item) {
      if (deleting !== item.id) {
        deleting = item.id;
        return render();
      }
      deleting = null;
      try {
        await call("DELETE", `/v1/conversations/${item.id}`);
        await onDeleted(item.id);
      } catch (e) {
        onError(e);
      }
      await load().catch(onError);
    },
  };

  function render() {
    const shown = { ...ui, current, renaming, deleting };
    list.replaceChildren(...items.map((item) => conversationItem(item, shown)));
    more.hidden = !cursor;
  }

  // The first page again, or (`next`) the page after those shown.
  async function load(next = false) {
    const query = next && cursor ? `?limit=${PAGE}&cursor=${encodeURIComponent(cursor)}` : `?limit=${PAGE}`;
    const page = await call("GET", `/v1/conversations${query}`);
    items = next ? items.concat(page.items) : page.items;
    cursor = page.next_cursor;
    render();
  }

  return {
    load,
    select(cid) {
      current = cid;
      render();
    },
    retitle(cid, title) {
      items = items.map((item) => (item.id === cid ? { ...item, title } : item));
      render();
    },
  };
}
