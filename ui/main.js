// Galaxy Forge front end. Start-up order matters: listeners are registered
// first (an event emitted before that is lost), then the current state is
// fetched, then the events that arrived meanwhile are applied on top.
// Views are whole objects merged by version, so the order never matters.

import { call, on, errorMessage } from "./api.js";
import { toast, toastError } from "./toast.js";
import { h } from "./format.js";
import { state, subscribe, putInstance, putGalaxy, upsertGalaxy, removeGalaxy, removeInstance, galaxyKey, matchesFilter, FILTERS } from "./store.js";
import { createMap } from "./map.js";
import { instanceRow, instanceDetail, galaxyCard, galaxyItem } from "./views.js";

const $ = (id) => document.getElementById(id);
const MAX_ROWS = 300;
const MAX_GALAXY_ITEMS = 400;

// Hooks for the end-to-end tests and the benchmark (read-only use).
const metrics = { firstPaint: null, clicks: [] };
const clickWaiters = [];   // [n, resolve]: resolved once n clicks are measured
function clickMeasured(c) {
  metrics.clicks.push(c);
  for (let i = clickWaiters.length - 1; i >= 0; i--) {
    if (metrics.clicks.length >= clickWaiters[i][0]) clickWaiters.splice(i, 1)[0][1]();
  }
}
window.galaxyForge = {
  metrics,
  /** Resolves once `n` clicks are measured (the benchmark awaits it
   *  instead of polling, which would compete with the frames it times). */
  whenClicks: (n) => new Promise((resolve) => {
    if (metrics.clicks.length >= n) resolve(); else clickWaiters.push([n, resolve]);
  }),
  mapHas: (key) => map.has(key),
  syncLoop: () => state.syncLoop,
  mapCount: () => map.count(),
  instance: (id) => state.instances.get(id) || null,
  pid: () => state.pid,
};

// ---- map -----------------------------------------------------------------
const map = createMap({
  canvas: $("map-canvas"),
  tooltip: $("map-tooltip"),
  container: $("map"),
  onSelect: (key) => selectGalaxy(key, { fromMap: true }),
});
$("zoom-in").onclick = () => map.zoomIn();
$("zoom-out").onclick = () => map.zoomOut();
$("zoom-reset").onclick = () => map.reset();

// ---- orchestrations list -------------------------------------------------
const rows = new Map(); // instanceId -> <li>
const list = $("instance-list");

const newestFirst = (a, b) => Date.parse(b.createdAt) - Date.parse(a.createdAt) || (a.instanceId < b.instanceId ? 1 : -1);

function rowFor(view, fresh) {
  const li = instanceRow(view, { open: state.openInstance === view.instanceId, error: state.rowErrors.get(view.instanceId) });
  if (fresh) li.classList.add("fresh");
  li.addEventListener("click", () => openInstance(view.instanceId));
  li.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); openInstance(view.instanceId); }
  });
  return li;
}

function renderAllRows() {
  list.replaceChildren();
  rows.clear();
  const views = [...state.instances.values()].filter((v) => matchesFilter(v)).sort(newestFirst).slice(0, MAX_ROWS);
  for (const v of views) {
    const li = rowFor(v, false);
    rows.set(v.instanceId, li);
    list.append(li);
  }
  scheduleCounts();
}

function renderRow(view, isNew) {
  const old = rows.get(view.instanceId);
  if (!matchesFilter(view)) {
    if (old) { old.remove(); rows.delete(view.instanceId); scheduleCounts(); }
    return;
  }
  const li = rowFor(view, isNew);
  const hadFocus = old && document.activeElement === old;
  if (old) old.replaceWith(li);
  else {
    // newest first: walk from the top to the first older row
    let before = null;
    for (const el of list.children) {
      const other = state.instances.get(el.dataset.id);
      if (other && newestFirst(view, other) < 0) { before = el; break; }
    }
    list.insertBefore(li, before);
    if (list.children.length > MAX_ROWS) {
      const last = list.lastElementChild;
      rows.delete(last.dataset.id);
      last.remove();
    }
  }
  rows.set(view.instanceId, li);
  if (hadFocus) li.focus();
  scheduleCounts();
}

let countsFrame = 0;
function scheduleCounts() {
  if (countsFrame) return;
  countsFrame = requestAnimationFrame(() => {
    countsFrame = 0;
    const counts = { all: 0, live: 0, completed: 0, failed: 0 };
    for (const v of state.instances.values()) {
      counts.all++;
      for (const f of ["live", "completed", "failed"]) if (FILTERS[f].includes(v.runtimeStatus)) counts[f]++;
    }
    for (const b of $("filters").querySelectorAll("button")) b.querySelector(".n").textContent = counts[b.dataset.filter];
    $("live-count").textContent = counts.live;
    $("instances-empty").hidden = list.children.length > 0;
  });
}

for (const b of $("filters").querySelectorAll("button")) {
  b.addEventListener("click", async () => {
    state.filter = b.dataset.filter;
    for (const o of $("filters").querySelectorAll("button")) o.setAttribute("aria-pressed", String(o === b));
    renderAllRows();
    // Older instances with that status than the first snapshot held.
    const statuses = FILTERS[state.filter];
    if (statuses) {
      try {
        for (const v of await call("list_instances", { statuses, limit: 200 })) putInstance(v);
      } catch (e) { toastError(`Could not list instances: ${e.message}`); }
    }
  });
}

// ---- instance detail (dock) ----------------------------------------------
const actions = {
  terminate: (id) => act(id, "terminate_instance", "Terminated"),
  suspend: (id) => act(id, "suspend_instance", "Suspend requested"),
  resume: (id) => act(id, "resume_instance", "Resume requested"),
  purge: async (id) => {
    if (await act(id, "purge_instance", "Purged")) {
      removeInstance(id);
    }
  },
};

async function act(id, cmd, done) {
  try {
    await call(cmd, { instanceId: id });
    state.rowErrors.delete(id);
    toast(`${done}: ${id.slice(-8)}`);
    return true;
  } catch (e) {
    state.rowErrors.set(id, e.message);
    toastError(e.message);
    const v = state.instances.get(id);
    if (v) { renderRow(v, false); if (state.openInstance === id) renderDetail(); }
    return false;
  }
}

function renderDetail() {
  const box = $("instance-detail");
  const v = state.openInstance && state.instances.get(state.openInstance);
  if (v && v.cloud) {
    box.replaceChildren(h("div", { class: "detail", dataset: { id: v.instanceId, status: v.runtimeStatus } },
      h("div", { class: "detail-head" }, h("h3", {}, `${v.name} ☁`), h("code", { title: v.instanceId }, v.instanceId.slice(-8)),
        h("span", { class: "status", dataset: { status: v.runtimeStatus } }, v.runtimeStatus)),
      h("p", { class: "hint" }, "Runs on galaxy-cloud for your account; its galaxy arrives here through sync.")));
    return;
  }
  if (!v) {
    box.replaceChildren(h("p", { class: "hint" }, state.openInstance
      ? "This instance was purged." : "Open an orchestration to see its history as a timeline."));
    return;
  }
  box.replaceChildren(instanceDetail(v, actions, state.rowErrors.get(v.instanceId)));
}

async function openInstance(id) {
  const previous = state.openInstance;
  state.openInstance = id;
  for (const pid of [previous, id]) {
    const el = pid && rows.get(pid);
    if (el) el.classList.toggle("open", pid === id);
  }
  if (!state.instances.has(id)) {
    try { putInstance(await call("get_instance", { instanceId: id })); }
    catch (e) { toastError(e.message); }
  }
  renderDetail();
  const g = state.instances.get(id)?.galaxy;
  const key = g && `${g.partitionKey}|${g.rowKey}`;
  if (key && state.galaxies.has(key) && state.selectedGalaxy !== key) selectGalaxy(key);
}

// ---- galaxies ------------------------------------------------------------
function selectGalaxy(key, { fromMap = false } = {}) {
  state.selectedGalaxy = key;
  if (!fromMap) map.select(key, { center: true });
  const g = key && state.galaxies.get(key);
  const card = $("galaxy-card");
  if (!g) card.replaceChildren(h("p", { class: "hint" }, "Select a galaxy on the map to see its details."));
  else {
    card.replaceChildren(galaxyCard(g, openInstance, galaxyEdits));
    if (fromMap) openInstance(g.instanceId);
  }
  for (const li of $("galaxy-list").children) li.classList.toggle("selected", li.dataset.key === key);
}

const galaxyEdits = {
  rename: async (g, name) => {
    try {
      upsertGalaxy(await call("rename_galaxy", { rowKey: g.rowKey, name }));
      toast(`Renamed to ${name.trim()}`);
    } catch (e) { toastError(e.message); }
  },
  remove: async (g) => {
    try {
      await call("delete_galaxy", { rowKey: g.rowKey });
      removeGalaxy(galaxyKey(g));
      toast(`Deleted ${g.name}`);
    } catch (e) { toastError(e.message); }
  },
};

let galaxyListFrame = 0;
function renderGalaxyList() {
  if (galaxyListFrame || $("galaxies").hidden) return;
  galaxyListFrame = requestAnimationFrame(() => {
    galaxyListFrame = 0;
    const q = $("galaxy-search").value.trim().toLowerCase();
    const all = [...state.galaxies.entries()].reverse();
    const shown = all.filter(([, g]) => !q || g.name.toLowerCase().includes(q)).slice(0, MAX_GALAXY_ITEMS);
    $("galaxy-list").replaceChildren(...shown.map(([k, g]) => {
      const li = galaxyItem(g, k, k === state.selectedGalaxy);
      li.onclick = () => selectGalaxy(k);
      li.onkeydown = (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); selectGalaxy(k); } };
      return li;
    }));
    $("galaxies-empty").hidden = shown.length > 0;
  });
}
$("galaxy-search").addEventListener("input", renderGalaxyList);

function showTab(name) {
  for (const [tab, body] of [["tab-orchestrations", "orchestrations"], ["tab-galaxies", "galaxies"]]) {
    const on = body === name;
    $(tab).setAttribute("aria-selected", String(on));
    $(body).hidden = !on;
  }
  renderGalaxyList();
}
$("tab-orchestrations").onclick = () => showTab("orchestrations");
$("tab-galaxies").onclick = () => showTab("galaxies");

function updateGalaxyCount() {
  $("galaxy-count").textContent = state.galaxies.size;
  $("map-empty").hidden = state.galaxies.size > 0;
}

// ---- store -> screen -----------------------------------------------------
// Updates are applied to the state at once but drawn at most once per
// frame: an instance sends several updates within a few milliseconds, and
// rebuilding its row and timeline for each one kept WebKit's main thread
// (which also answers commands) busy for tens of milliseconds.

// instanceId -> { t0: performance.now() of the click, invokeMs: when the
// create command answered }
const pendingClicks = new Map();
const dirty = new Map();   // instanceId -> isNew (since the last frame)
let flushFrame = 0;

function noteClick(id, inFrame = false) {
  const click = pendingClicks.get(id);
  const v = state.instances.get(id);
  if (click == null || !v || v.runtimeStatus !== "Completed") return;
  pendingClicks.delete(id);
  const shownMs = performance.now() - click.t0;
  const engineMs = Date.parse(v.lastUpdatedAt) - Date.parse(v.createdAt);
  // Measured once the frame that shows "Completed" is painted: a task
  // queued from a frame callback runs after that frame's paint.
  const record = () => setTimeout(() => clickMeasured({
    id, ms: performance.now() - click.t0, invokeMs: click.invokeMs, shownMs, engineMs,
  }));
  if (inFrame) record(); else requestAnimationFrame(record);
}

function flush() {
  flushFrame = 0;
  const changed = [...dirty];
  dirty.clear();
  for (const [id, isNew] of changed) {
    const view = state.instances.get(id);
    if (view) renderRow(view, isNew);
  }
  if (changed.some(([id]) => id === state.openInstance)) {
    renderDetail();
    const view = state.instances.get(state.openInstance);
    if (view && view.runtimeStatus === "Completed" && view.galaxy) {
      const key = `${view.galaxy.partitionKey}|${view.galaxy.rowKey}`;
      if (state.galaxies.has(key) && state.selectedGalaxy !== key) selectGalaxy(key);
    }
  }
  for (const [id] of changed) noteClick(id, true);
}

subscribe("instance", ({ view, isNew }) => {
  if (!loaded) return;
  dirty.set(view.instanceId, dirty.get(view.instanceId) || isNew);
  if (!flushFrame) flushFrame = requestAnimationFrame(flush);
  if (view.runtimeStatus === "Failed" && !isNew) toastError(`${view.name} ${view.instanceId.slice(-8)} failed: ${view.failure ? view.failure.message : "unknown error"}`);
});
subscribe("instance-removed", (id) => {
  dirty.delete(id);
  const el = rows.get(id);
  if (el) { el.remove(); rows.delete(id); }
  if (state.openInstance === id) renderDetail();
  scheduleCounts();
});
subscribe("galaxy", ({ galaxy, fresh }) => {
  if (!loaded) return;
  map.addGalaxy(galaxy, galaxyKey(galaxy), fresh);
  updateGalaxyCount();
  renderGalaxyList();
});

subscribe("galaxy-changed", ({ galaxy, key }) => {
  map.updateGalaxy(galaxy, key);
  if (state.selectedGalaxy === key) selectGalaxy(key, { fromMap: false });
  renderGalaxyList();
});
subscribe("galaxy-removed", (key) => {
  map.removeGalaxy(key);
  if (state.selectedGalaxy === key) selectGalaxy(null);
  updateGalaxyCount();
  renderGalaxyList();
});

// ---- sync indicator, settings ----------------------------------------------
// Two sources: the reachability check (whether the cloud answers) and, once
// the device has an account, the sync loop (what it did last). The loop's
// word wins when there is one.
const registered = () => !!(state.settings && state.settings.playerId);
const seenNotices = { count: 0 };

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

function renderSync(s) {
  if (!s) return;
  state.sync = s;
  renderIndicator();
}

function renderLoop(l) {
  if (!l) return;
  const previous = state.syncLoop;
  state.syncLoop = l;
  renderIndicator();
  // Conflicts and rejections: told once each.
  if (previous && l.notices.length) {
    const fresh = l.notices.filter((n) => !previous.notices.includes(n));
    for (const n of fresh) toastError(n);
  }
  if (l.phase === "error" && (!previous || previous.phase !== "error")) toastError(`Sync: ${l.message}`);
}

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
function settingsError(message) {
  $("settings-error").textContent = message;
  $("settings-error").hidden = !message;
  if (message) toastError(message);
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
$("register").onclick = () => accountAction("register_device", {}, "Registered: this device now syncs with the cloud");
$("join").onclick = () => accountAction("join_player", { code: $("join-code").value }, "Linked: your galaxies will arrive here");
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

// ---- creating --------------------------------------------------------------
async function createGalaxy() {
  const t0 = performance.now();
  try {
    const id = await call("create_galaxy");
    pendingClicks.set(id, { t0, invokeMs: performance.now() - t0 });
    openInstance(id);
    noteClick(id);
  } catch (e) {
    toastError(`Could not create a galaxy: ${e.message}`);
  }
}
$("create").addEventListener("click", createGalaxy);

// A cloud instance, as far as the panel needs one (its states come from
// the cloud's live stream through Rust).
function cloudView(id, status, old) {
  const now = new Date().toISOString();
  return {
    instanceId: id, name: "Galaxy_Create", runtimeStatus: status, cloud: true,
    createdAt: old ? old.createdAt : now, lastUpdatedAt: now, version: old ? old.version + 1 : 0,
    tasks: [], timeline: [], durationMs: null, galaxy: null, failure: null,
  };
}
function putCloud({ instanceId, runtimeStatus }) {
  const old = state.instances.get(instanceId);
  if (old && old.runtimeStatus === runtimeStatus) return;
  putInstance(cloudView(instanceId, runtimeStatus, old));
}
$("create-cloud").addEventListener("click", async () => {
  try {
    const id = await call("create_in_cloud");
    putCloud({ instanceId: id, runtimeStatus: "Pending" });
    openInstance(id);
  } catch (e) { toastError(`Could not create in the cloud: ${e.message}`); }
});

document.addEventListener("keydown", (e) => {
  const typing = e.target.closest && e.target.closest("input, textarea, dialog, canvas");
  if (typing || e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.key === "n" || e.key === "N") { e.preventDefault(); createGalaxy(); }
  if (e.key === "/") { e.preventDefault(); showTab("galaxies"); $("galaxy-search").focus(); }
});

// ---- start-up --------------------------------------------------------------
let loaded = false;
const early = [];   // events that arrived before the snapshot

function fatal(message) {
  $("fatal-message").textContent = message || "An unknown error stopped the start-up.";
  $("fatal").hidden = false;
  $("app").dataset.state = "error";
  $("fatal-retry").focus();
}

function applySnapshot(snap) {
  state.pid = snap.pid;
  state.dataDir = snap.dataDir;
  state.settings = snap.settings;
  for (const v of snap.instances) putInstance(v);
  for (const g of snap.galaxies) putGalaxy(g);
  renderSync(snap.sync);
  renderLoop(snap.syncLoop);
}

async function load() {
  try {
    const snap = await call("load_state");
    applySnapshot(snap);
    loaded = true;
    for (const [kind, payload] of early.splice(0)) apply(kind, payload);
    map.setGalaxies([...state.galaxies.values()], galaxyKey);
    updateGalaxyCount();
    renderAllRows();
    renderGalaxyList();
    $("fatal").hidden = true;
    $("app").dataset.state = "ready";
    for (const w of snap.warnings) toastError(w);
    requestAnimationFrame(() => {
      metrics.firstPaint = { at: Date.now(), uptimeMs: snap.uptimeMs, sincePageStart: performance.now() };
      call("ui_ready", { galaxies: state.galaxies.size, instances: state.instances.size }).catch(() => {});
    });
  } catch (e) {
    console.error(e);
    fatal(e instanceof Error && !e.kind ? `${e.name}: ${e.message} ${e.stack || ""}` : errorMessage(e.message || e));
  }
}

function apply(kind, payload) {
  if (kind === "instance") putInstance(payload);
  else if (kind === "galaxy") putGalaxy(payload, { fresh: true });
  else if (kind === "galaxy-upserted") upsertGalaxy(payload);
  else if (kind === "galaxy-removed") removeGalaxy(`galaxies|${payload.rowKey}`);
}

$("fatal-retry").onclick = () => load();

async function start() {
  const buffer = (kind) => (payload) => (loaded ? apply(kind, payload) : early.push([kind, payload]));
  await Promise.all([
    on("instance-updated", buffer("instance")),
    on("galaxy-added", buffer("galaxy")),
    on("galaxy-upserted", buffer("galaxy-upserted")),
    on("galaxy-removed", buffer("galaxy-removed")),
    on("sync-status", renderSync),
    on("sync-loop", renderLoop),
    on("notice", (message) => toastError(message)),
    on("cloud-instance", putCloud),
    on("fatal", (message) => { if (!loaded) fatal(message); else toastError(message); }),
    on("resync", async () => {
      try {
        const snap = await call("load_state");
        for (const v of snap.instances) putInstance(v);
        // Galaxies may also have gone (a reset reloads them from the cloud).
        const keep = new Set(snap.galaxies.map(galaxyKey));
        for (const key of [...state.galaxies.keys()]) if (!keep.has(key)) removeGalaxy(key);
        for (const g of snap.galaxies) {
          const old = state.galaxies.get(galaxyKey(g));
          if (!old || old.name !== g.name || old.version !== g.version) upsertGalaxy(g);
        }
      } catch (e) { toastError(e.message); }
    }),
  ]);
  await load();
}

window.addEventListener("error", (e) => toastError(`Unexpected error: ${e.message}`));
window.addEventListener("unhandledrejection", (e) => toastError(`Unexpected error: ${errorMessage(e.reason)}`));
start();
