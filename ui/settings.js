// The Settings dialog: the cloud URL, registering this device, joining
// another device's player with a link code, making link codes, signing
// out. Errors show (and are spoken) beside the fields.

import { call } from "./api.js";
import { toast } from "./toast.js";
import { state } from "./store.js";
import { registered, renderIndicator } from "./sync-indicator.js";

const $ = (id) => document.getElementById(id);

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
