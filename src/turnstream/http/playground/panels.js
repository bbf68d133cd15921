// The side panels filled from the API: the model picker and the usage with its limits.

import { call } from "./api.js";
import { el } from "./render.js";

// GET /v1/models into the picker, the default model chosen; the models.
export async function showModels(select) {
  const { data } = await call("GET", "/v1/models");
  select.replaceChildren(...data.map((m) => el("option", { value: m.id, text: m.id, selected: m.default })));
  return data;
}

// GET /v1/usage into its list: today's and this week's tokens, storage, the limits.
export async function showUsage(list) {
  const usage = await call("GET", "/v1/usage");
  const put = (key, value) => (list.querySelector(`dd[data-key=${key}]`).textContent = String(value));
  put("day_tokens", usage.day.total_tokens);
  put("week_tokens", usage.week.total_tokens);
  put("storage_bytes", usage.storage.bytes);
  const limits = Object.entries(usage.limits).filter(([, v]) => v !== null);
  put("limits", limits.length ? limits.map(([k, v]) => `${k} ${v}`).join(", ") : "none");
}
