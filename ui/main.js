// Galaxy Forge front end: start-up. Each part lives in a module of its
// own (instances.js, detail.js, galaxies.js with galaxy-card.js and
// galaxy-list.js, tabs.js, sync-indicator.js, settings.js, create.js,
// shortcuts.js, confirm.js; hooks.js for tests); this one wires them to
// Rust.
//
// Start-up order matters: listeners are registered first (an event
// emitted before that is lost), then the current state is fetched, then
// the events that arrived meanwhile are applied on top. Views are whole
// objects merged by version, so the order never matters.

import { call, on, errorMessage } from "./api.js";
import { toastError } from "./toast.js";
import { state, putInstance, putGalaxy, upsertGalaxy, removeGalaxy, galaxyKey } from "./store.js";
import { map, drawGalaxies } from "./galaxies.js";
import { renderAllRows } from "./instances.js";
import { renderSync, renderLoop } from "./sync-indicator.js";
import { putCloud } from "./create.js";
import { installHooks, metrics, focusRequested } from "./hooks.js";
import "./tabs.js";
import "./settings.js";
import "./shortcuts.js";

const $ = (id) => document.getElementById(id);
const early = []; // events that arrived before the snapshot

installHooks({ state, map });

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
    state.loaded = true;
    for (const [kind, payload] of early.splice(0)) apply(kind, payload);
    drawGalaxies();
    renderAllRows();
    $("fatal").hidden = true;
    $("app").dataset.state = "ready";
    for (const w of snap.warnings) toastError(w);
    requestAnimationFrame(() => {
      metrics.firstPaint = { at: Date.now(), uptimeMs: snap.uptimeMs, sincePageStart: performance.now() };
      call("ui_ready", { galaxies: state.galaxies.size, instances: state.instances.size }).catch(() => {});
    });
  } catch (e) {
    // The stack goes to the console, not to the player.
    console.error(e);
    fatal(e instanceof Error && !e.kind ? `${e.name}: ${e.message}` : errorMessage(e.message || e));
  }
}

function apply(kind, payload) {
  if (kind === "instance") putInstance(payload);
  else if (kind === "galaxy") putGalaxy(payload, { fresh: true });
  else if (kind === "galaxy-upserted") upsertGalaxy(payload);
  else if (kind === "galaxy-removed") removeGalaxy(`galaxies|${payload.rowKey}`);
}

/** Lost updates: re-read everything and merge it in. */
async function resync() {
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
}

let listening = false;
async function start() {
  const buffer = (kind) => (payload) => (state.loaded ? apply(kind, payload) : early.push([kind, payload]));
  if (!listening) await Promise.all([
    on("instance-updated", buffer("instance")),
    on("galaxy-added", buffer("galaxy")),
    on("galaxy-upserted", buffer("galaxy-upserted")),
    on("galaxy-removed", buffer("galaxy-removed")),
    on("sync-status", renderSync),
    on("sync-loop", renderLoop),
    on("notice", (message) => toastError(message)),
    on("cloud-instance", putCloud),
    on("focus-requested", focusRequested),
    on("fatal", (message) => { if (!state.loaded) fatal(message); else toastError(message); }),
    on("resync", resync),
  ]);
  listening = true;
  await load();
}

function startOrSayWhy() {
  start().catch((e) => {
    console.error(e);
    fatal(errorMessage(e?.message || e));
  });
}
$("fatal-retry").onclick = startOrSayWhy;

window.addEventListener("error", (e) => toastError(`Unexpected error: ${e.message}`));
window.addEventListener("unhandledrejection", (e) => toastError(`Unexpected error: ${errorMessage(e.reason)}`));
// Listening can fail (an IPC or capability error): the fatal screen says
// so, with its Try again, instead of an empty page that stays loading.
startOrSayWhy();
