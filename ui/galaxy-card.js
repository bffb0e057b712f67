// The dock's galaxy card: the selected galaxy's details, renaming (a
// refusal said beside the field) and deleting (on a second press). A
// redraw of the same galaxy keeps a name being typed, its message and the
// focus.

import { call } from "./api.js";
import { toast, toastError } from "./toast.js";
import { h } from "./format.js";
import { state, upsertGalaxy, removeGalaxy, galaxyKey } from "./store.js";
import { galaxyCard } from "./views.js";
import { openInstance } from "./detail.js";
import { armedLabel, pressTwice } from "./confirm.js";

const $ = (id) => document.getElementById(id);

/** Draws the dock's galaxy card for `key` (or the hint); returns the
 *  galaxy shown. */
export function renderCard(key) {
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
