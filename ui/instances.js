// The orchestrations panel: the newest instances as rows (keyed by
// instance id and updated in place, so the focused row keeps focus), the
// status filters and the counts. Updates are applied to the state at once
// but drawn at most once per frame: an instance sends several updates
// within a few milliseconds, and redrawing its row and timeline for each
// kept WebKit's main thread (which also answers commands) busy for tens of
// milliseconds.

import { call } from "./api.js";
import { toastError } from "./toast.js";
import { state, subscribe, putInstance, matchesFilter, FILTERS } from "./store.js";
import { instanceRow, updateInstanceRow } from "./views.js";
import { openInstance, renderDetail } from "./detail.js";
import { selectGalaxy } from "./galaxies.js";
import { clickShown } from "./create.js";

const $ = (id) => document.getElementById(id);
const MAX_ROWS = 300;

const rows = new Map(); // instanceId -> <li>
const list = $("instance-list");

const newestFirst = (a, b) => Date.parse(b.createdAt) - Date.parse(a.createdAt) || (a.instanceId < b.instanceId ? 1 : -1);

/** The row of an instance, if it is shown. */
export const rowElement = (id) => rows.get(id);

function rowOptions(view) {
  return { open: state.openInstance === view.instanceId, error: state.rowErrors.get(view.instanceId) };
}

function newRow(view, fresh) {
  const li = instanceRow(view, rowOptions(view));
  if (fresh) li.classList.add("fresh");
  li.firstElementChild.addEventListener("click", () => openInstance(li.dataset.id));
  return li;
}

/** Redraws every row (the first snapshot, a filter change). */
export function renderAllRows() {
  list.replaceChildren();
  rows.clear();
  const views = [...state.instances.values()].filter((v) => matchesFilter(v)).sort(newestFirst).slice(0, MAX_ROWS);
  for (const v of views) {
    const li = newRow(v, false);
    rows.set(v.instanceId, li);
    list.append(li);
  }
  scheduleCounts();
}

/** Draws one instance's row: updated in place when shown, inserted in
 *  order when new, removed when the filter no longer matches. */
export function renderRow(view, isNew) {
  const old = rows.get(view.instanceId);
  if (!matchesFilter(view)) {
    if (old) { old.remove(); rows.delete(view.instanceId); scheduleCounts(); }
    return;
  }
  if (old) {
    updateInstanceRow(old, view, rowOptions(view));
    scheduleCounts();
    return;
  }
  const li = newRow(view, isNew);
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
  rows.set(view.instanceId, li);
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

// ---- store -> screen, once a frame -----------------------------------------
const dirty = new Map(); // instanceId -> isNew (since the last frame)
let flushFrame = 0;
const failuresTold = new Set(); // instance ids whose failure was announced

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
  for (const [id] of changed) clickShown(id, true);
}

subscribe("instance", ({ view, isNew }) => {
  if (!state.loaded) return;
  dirty.set(view.instanceId, dirty.get(view.instanceId) || isNew);
  if (!flushFrame) flushFrame = requestAnimationFrame(flush);
  // A failure seen live is told once, however often the row redraws.
  if (view.runtimeStatus === "Failed" && !isNew && !failuresTold.has(view.instanceId)) {
    failuresTold.add(view.instanceId);
    toastError(`${view.name} ${view.instanceId.slice(-8)} failed: ${view.failure ? view.failure.message : "unknown error"}`);
  }
});
subscribe("instance-removed", (id) => {
  dirty.delete(id);
  const el = rows.get(id);
  if (el) { el.remove(); rows.delete(id); }
  if (state.openInstance === id) renderDetail();
  scheduleCounts();
});
