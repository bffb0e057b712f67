// The galaxies: the map, the dock's galaxy card (rename, delete) and the
// searchable list in the side panel. Draws what store.js holds; selecting a
// galaxy on the map opens the instance that made it.

import { call } from "./api.js";
import { toast, toastError } from "./toast.js";
import { h } from "./format.js";
import { state, subscribe, upsertGalaxy, removeGalaxy, galaxyKey } from "./store.js";
import { createMap } from "./map.js";
import { galaxyCard, galaxyItem } from "./views.js";
import { openInstance } from "./detail.js";
import { armedLabel, pressTwice } from "./confirm.js";

const $ = (id) => document.getElementById(id);
const MAX_GALAXY_ITEMS = 400;

export const map = createMap({
  canvas: $("map-canvas"),
  tooltip: $("map-tooltip"),
  container: $("map"),
  onSelect: (key) => selectGalaxy(key, { fromMap: true }),
});
$("zoom-in").onclick = () => map.zoomIn();
$("zoom-out").onclick = () => map.zoomOut();
$("zoom-reset").onclick = () => map.reset();

/** Selects a galaxy (or none): the map, the card and the list follow. */
export function selectGalaxy(key, { fromMap = false } = {}) {
  state.selectedGalaxy = key;
  if (!fromMap) map.select(key, { center: true });
  const g = renderCard(key);
  if (g && fromMap) openInstance(g.instanceId);
  for (const li of $("galaxy-list").children) {
    const on = li.dataset.key === key;
    li.classList.toggle("selected", on);
    if (on) li.firstElementChild.setAttribute("aria-current", "true");
    else li.firstElementChild.removeAttribute("aria-current");
  }
}

/** Draws the dock's galaxy card for `key` (or the hint); returns the
 *  galaxy shown. */
function renderCard(key) {
  const g = key && state.galaxies.get(key);
  const card = $("galaxy-card");
  // A redraw of the same galaxy (renamed here or elsewhere, synced) keeps
  // a name being typed, the message beside it, and the focus.
  const shown = card.firstElementChild?.dataset.key;
  const input = card.querySelector(".rename-input");
  const typed = shown === key && input && input.value !== input.defaultValue ? input.value : null;
  const error = shown === key ? card.querySelector("#rename-error")?.textContent : "";
  const focused = card.contains(document.activeElement)
    ? ["rename-input", "rename", "delete", "link"].find((c) => document.activeElement.classList.contains(c)) || "hint"
    : null;
  if (!g) card.replaceChildren(h("p", { class: "hint", tabIndex: -1 }, "Select a galaxy on the map to see its details."));
  else {
    card.replaceChildren(galaxyCard(g, openInstance, galaxyEdits));
    if (typed !== null) card.querySelector(".rename-input").value = typed;
    if (error) renameError(error, { again: true });
  }
  if (focused) (card.querySelector(`.${focused}`) || card.querySelector(".hint, h3"))?.focus();
  return g;
}

/** Shows why a rename was refused beside the field, or clears it. Spoken
 *  once: the paragraph is an alert, except when a redraw shows the same
 *  message `again`. */
function renameError(message, { again = false } = {}) {
  const p = $("rename-error");
  const input = $("galaxy-card").querySelector(".rename-input");
  if (!p || !input) return;
  if (again) p.removeAttribute("role");
  p.textContent = message;
  p.hidden = !message;
  if (message) input.setAttribute("aria-invalid", "true");
  else input.removeAttribute("aria-invalid");
}

// A delete reaches every device of the player: it acts on a second press.
const deleteKey = (g) => `delete:${galaxyKey(g)}`;
const galaxyEdits = {
  rename: async (g, name) => {
    try {
      const renamed = await call("rename_galaxy", { rowKey: g.rowKey, name });
      renameError("");
      upsertGalaxy(renamed);
      toast(`Renamed to ${name.trim()}`);
    } catch (e) { renameError(e.message); }
  },
  remove: (g) => pressTwice(deleteKey(g), async () => {
    try {
      await call("delete_galaxy", { rowKey: g.rowKey });
      removeGalaxy(galaxyKey(g));
      toast(`Deleted ${g.name}`);
    } catch (e) { toastError(e.message); }
  }, () => { if (state.selectedGalaxy === galaxyKey(g)) renderCard(galaxyKey(g)); }),
  removeLabel: (g) => armedLabel(deleteKey(g), "Delete"),
};

// The list's entries by galaxy key, with what they show: a redraw keeps
// the node of every entry still listed (a changed one takes its new
// content inside the same button), so the focused entry keeps focus and a
// screen reader is not told it again. Only shown entries are kept.
const items = new Map();

function itemFor(key, g) {
  const shows = `${g.name}\u0000${g.coords.x},${g.coords.y}\u0000${g.origin || ""}`;
  const had = items.get(key);
  if (had && had.shows === shows) return had.li;
  const fresh = galaxyItem(g, key, false, selectGalaxy);
  if (!had) {
    items.set(key, { li: fresh, shows });
    return fresh;
  }
  had.li.dataset.origin = fresh.dataset.origin;
  had.li.firstElementChild.replaceChildren(...fresh.firstElementChild.childNodes);
  had.shows = shows;
  return had.li;
}

let galaxyListFrame = 0;
/** Redraws the list (at most once a frame, and only while it shows). */
export function renderGalaxyList() {
  if (galaxyListFrame || $("galaxies").hidden) return;
  galaxyListFrame = requestAnimationFrame(() => {
    galaxyListFrame = 0;
    const list = $("galaxy-list");
    const q = $("galaxy-search").value.trim().toLowerCase();
    const all = [...state.galaxies.entries()].reverse();
    const shown = all.filter(([, g]) => !q || g.name.toLowerCase().includes(q)).slice(0, MAX_GALAXY_ITEMS);
    const focused = list.contains(document.activeElement) ? document.activeElement.closest("li") : null;
    const focusedAt = focused ? [...list.children].indexOf(focused) : -1;
    const wanted = shown.map(([k, g]) => itemFor(k, g));
    const keep = new Set(wanted);
    for (const li of [...list.children]) if (!keep.has(li)) li.remove();
    for (const key of [...items.keys()]) if (!keep.has(items.get(key).li)) items.delete(key);
    // New entries go in before the ones they precede; entries in place
    // are not moved (moving a node would take its focus away).
    let cursor = list.firstElementChild;
    for (const li of wanted) {
      if (li === cursor) cursor = cursor.nextElementSibling;
      else list.insertBefore(li, cursor);
      const on = li.dataset.key === state.selectedGalaxy;
      li.classList.toggle("selected", on);
      if (on) li.firstElementChild.setAttribute("aria-current", "true");
      else li.firstElementChild.removeAttribute("aria-current");
    }
    if (focused && document.activeElement !== focused.firstElementChild) {
      // Its galaxy left the list (deleted, renamed past the search) or
      // moved: focus stays in the list, at the same place.
      const at = focused.isConnected ? focused : list.children[Math.min(focusedAt, list.children.length - 1)];
      (at ? at.firstElementChild : $("galaxy-search")).focus();
    }
    $("galaxies-empty").hidden = shown.length > 0;
  });
}
$("galaxy-search").addEventListener("input", renderGalaxyList);

export function updateGalaxyCount() {
  $("galaxy-count").textContent = state.galaxies.size;
  $("map-empty").hidden = state.galaxies.size > 0;
}

/** Draws everything from the first snapshot. */
export function drawGalaxies() {
  map.setGalaxies([...state.galaxies.values()], galaxyKey);
  updateGalaxyCount();
  renderGalaxyList();
}

subscribe("galaxy", ({ galaxy, fresh }) => {
  if (!state.loaded) return;
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
