// The sync indicator in the top bar and the Settings dialog (cloud URL,
// registering, linking devices, signing out).

import { call } from "./api.js";
import { toast, toastError } from "./toast.js";
import { state } from "./store.js";

const $ = (id) => document.getElementById(id);

// The indicator has two sources: the reachability check (whether the
// cloud answers) and, once the device has an account, the sync loop (what
// it did last). The loop's word wins when there is one.
const registered = () => !!(state.settings && state.settings.playerId);

function renderIndicator() {
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

const dialog = $("settings");
function renderAccount() {
  const s = state.settings || {};
  $("account-none").hidden = registered();
  $("account-some").hidden = !registered();
  $("account-status").textContent = registered()
    ? `Player ${s.playerId} · this device ${s.deviceId}`
    : "Not linked: register a new player, or join the player of your other device.";
}
// Shown (and spoken: the paragraph is an alert) in the dialog, where the
// player is looking; not toasted as well, which would say it twice.
function settingsError(message) {
  $("settings-error").textContent = message;
  $("settings-error").hidden = !message;
}
async function accountAction(cmd, args, done) {
  try {
    state.settings = await call(cmd, args);
    settingsError("");
    renderAccount();
    renderIndicator();
    toast(done);
  } catch (e) { settingsError(e.message); }
}
$("open-settings").onclick = () => {
  const s = state.settings || { cloudUrl: "" };
  $("settings-url").value = s.cloudUrl;
  $("settings-data-dir").textContent = state.dataDir;
  $("link-code").hidden = true;
  settingsError("");
  renderAccount();
  dialog.showModal();
  $("settings-url").focus();
};
$("settings-cancel").onclick = () => dialog.close();
// Registering and joining go to the URL in the field (saved with the
// account), not to whatever was saved before.
const typedUrl = () => $("settings-url").value;
$("register").onclick = () => accountAction("register_device", { cloudUrl: typedUrl() }, "Registered: this device now syncs with the cloud");
$("join").onclick = () => accountAction("join_player", { code: $("join-code").value, cloudUrl: typedUrl() }, "Linked: your galaxies will arrive here");
// Enter in the code field joins (it would otherwise submit the form: Save).
$("join-code").addEventListener("keydown", (e) => {
  if (e.key !== "Enter") return;
  e.preventDefault();
  $("join").click();
});
$("sign-out").onclick = () => accountAction("sign_out", {}, "Signed out: this device's token is revoked");
$("make-code").onclick = async () => {
  try {
    const code = await call("create_link_code");
    $("link-code").textContent = code.code;
    $("link-code").title = `Valid once, until ${new Date(code.expiresAt).toLocaleTimeString()}`;
    $("link-code").hidden = false;
  } catch (e) { settingsError(e.message); }
};
$("settings-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    state.settings = await call("save_settings", { settings: { cloudUrl: $("settings-url").value } });
    renderIndicator();
    dialog.close();
    toast("Settings saved. Checking the cloud…");
  } catch (err) { settingsError(err.message); }
});
