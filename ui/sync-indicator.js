// The sync indicator in the top bar: whether the cloud answers and what
// the sync loop did last; a click syncs now (or checks the cloud). A
// lasting error and new notices are told once.

import { call } from "./api.js";
import { toast, toastError } from "./toast.js";
import { state } from "./store.js";

const $ = (id) => document.getElementById(id);

// The indicator has two sources: the reachability check (whether the
// cloud answers) and, once the device has an account, the sync loop (what
// it did last). The loop's word wins when there is one.
export const registered = () => !!(state.settings && state.settings.playerId);

export function renderIndicator() {
  $("create-cloud").hidden = !registered();
  const c = state.sync && state.sync.connection;
  const l = state.syncLoop;
  const el = $("connection");
  let dot = c ? c.state : "Unknown", text = "checking…", title = c ? `${c.cloudUrl}: ${c.message}.` : "";
  if (!registered()) {
    text = dot === "Online" ? "online · not linked" : dot === "Offline" ? "offline" : "checking…";
    title += " This device has no cloud account: open Settings to register or link it.";
  } else if (l) {
    const phase = { upToDate: ["Online", "up to date"], syncing: ["Syncing", "syncing…"], offline: ["Offline", "offline"], error: ["Error", "sync error"], notRegistered: [dot, "not linked"] }[l.phase] || [dot, l.phase];
    [dot, text] = phase;
    if (l.phase === "syncing" && l.progress && l.progress.latest > 0) {
      text = `syncing ${Math.min(100, Math.round((100 * l.progress.cursor) / l.progress.latest))}%`;
    }
    title = `${l.message}.${l.retryInMs != null && l.phase !== "upToDate" ? ` Retrying in ${Math.ceil(l.retryInMs / 1000)} s.` : ""} Click to sync now.`;
  }
  el.dataset.state = dot;
  el.dataset.phase = l ? l.phase : "";
  $("connection-text").textContent = text;
  const pending = l ? l.pending : (state.sync ? state.sync.pendingChanges : 0);
  $("pending-text").textContent = `${pending} to sync`;
  const last = l && l.lastSyncAt;
  $("last-sync").hidden = !last;
  if (last) $("last-sync").textContent = `· synced ${new Date(last).toLocaleTimeString()}`;
  el.title = title.trim();
}

/** Shows a reachability check's result. */
export function renderSync(s) {
  if (!s) return;
  state.sync = s;
  renderIndicator();
}

/** Shows the sync loop's status (and tells new notices once). */
export function renderLoop(l) {
  if (!l) return;
  const previous = state.syncLoop;
  state.syncLoop = l;
  renderIndicator();
  // Conflicts and rejections: told once each.
  if (previous && l.notices.length) {
    const fresh = l.notices.filter((n) => !previous.notices.includes(n));
    for (const n of fresh) toastError(n);
  }
  // A lasting error is told once, not at every retry (each goes through
  // "syncing" and back): again only after a round succeeded, or when the
  // error itself changes.
  if (l.phase === "upToDate") toldError = null;
  if (l.phase === "error" && l.message !== toldError) {
    toldError = l.message;
    toastError(`Sync: ${l.message}`);
  }
}
let toldError = null;

$("connection").onclick = async () => {
  try {
    if (registered()) {
      await call("sync_now");
      return;
    }
    const s = await call("check_connection");
    renderSync(s);
    const c = s.connection;
    if (c.state === "Online") toast(`Cloud reachable at ${c.cloudUrl}; open Settings to register this device`);
    else toastError(`Cloud offline: ${c.message}`);
  } catch (e) { toastError(e.message); }
};
