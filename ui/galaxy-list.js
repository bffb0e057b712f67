// The searchable galaxies list of the side panel, keyed: a redraw keeps
// the node of every entry still listed (a changed one takes its new
// content inside the same button), so the focused entry keeps focus and a
// screen reader is not told it again.

import { state } from "./store.js";
import { galaxyItem } from "./views.js";

const $ = (id) => document.getElementById(id);
const MAX_GALAXY_ITEMS = 400;

// What choosing an entry does (set by galaxies.js, which selects).
let onSelect = () => {};
export function onListSelect(f) {
  onSelect = f;
}

// The list's entries by galaxy key, with what they show (only shown
// entries are kept).
const items = new Map();

function itemFor(key, g) {
  const shows = `${g.name}\u0000${g.coords.x},${g.coords.y}\u0000${g.origin || ""}`;
  const had = items.get(key);
  if (had && had.shows === shows) return had.li;
  const fresh = galaxyItem(g, key, false, (k) => onSelect(k));
  if (!had) {
    items.set(key, { li: fresh, shows });
    return fresh;
  }
  had.li.dataset.origin = fresh.dataset.origin;
  had.li.firstElementChild.replaceChildren(...fresh.firstElementChild.childNodes);
  had.shows = shows;
  return had.li;
}

function mark(li, on) {
  li.classList.toggle("selected", on);
  if (on) li.firstElementChild.setAttribute("aria-current", "true");
  else li.firstElementChild.removeAttribute("aria-current");
}

/** Marks the entry of the selected galaxy `key` (or none). */
export function markSelected(key) {
  for (const li of $("galaxy-list").children) mark(li, li.dataset.key === key);
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
      mark(li, li.dataset.key === state.selectedGalaxy);
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
