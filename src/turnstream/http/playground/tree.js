// The message tree as a user reads it: one branch, root first. The server says which
// leaf the last turn made (current_leaf_id); a user who switches versions (`2 / 3`)
// chooses a child for a parent, and below that choice the branch goes on through the
// server's leaf when it can, else through the newest child.

const ROOT = "root";

export function childrenOf(messages) {
  const children = new Map();
  for (const m of messages) {
    const key = m.parent_id ?? ROOT;
    if (!children.has(key)) children.set(key, []);
    children.get(key).push(m);
  }
  return children;
}

// The displayed branch: [{message, index, count}] where index/count place the message
// among its siblings. `choice`: parent key -> chosen child id.
export function branch(messages, leafId, choice) {
  const byId = new Map(messages.map((m) => [m.id, m]));
  const onLeafPath = new Set();
  for (let at = byId.get(leafId); at; at = byId.get(at.parent_id)) {
    if (onLeafPath.has(at.id)) break;
    onLeafPath.add(at.id);
  }
  const children = childrenOf(messages);
  const path = [];
  for (let key = ROOT; children.has(key) && path.length <= messages.length; ) {
    const siblings = children.get(key);
    const chosen =
      siblings.find((m) => m.id === choice.get(key)) ??
      siblings.find((m) => onLeafPath.has(m.id)) ??
      siblings[siblings.length - 1];
    path.push({ message: chosen, index: siblings.indexOf(chosen), count: siblings.length });
    key = chosen.id;
  }
  return path;
}

export function parentKey(message) {
  return message.parent_id ?? ROOT;
}

// The sibling `step` places away (-1 previous, +1 next), or null at either end.
export function sibling(messages, message, step) {
  const siblings = childrenOf(messages).get(parentKey(message)) ?? [];
  return siblings[siblings.indexOf(message) + step] ?? null;
}
