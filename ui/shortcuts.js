// The app-wide keys: N creates a galaxy, / searches the galaxies. Not
// while typing; the map's canvas has keys of its own, but not these.

import { createGalaxy } from "./create.js";
import { showTab } from "./tabs.js";

const $ = (id) => document.getElementById(id);

document.addEventListener("keydown", (e) => {
  const typing = e.target.closest && e.target.closest("input, textarea, dialog");
  if (typing || e.ctrlKey || e.metaKey || e.altKey) return;
  // A held N creates one galaxy, not one per key repeat.
  if ((e.key === "n" || e.key === "N") && !e.repeat) { e.preventDefault(); createGalaxy(); }
  if (e.key === "/") { e.preventDefault(); showTab("galaxies"); $("galaxy-search").focus(); }
});
