// The galaxies: the map, and the selection that the card
// (galaxy-card.js) and the list (galaxy-list.js) follow. Draws what
// store.js holds; selecting a galaxy on the map opens the instance that
// made it.

import { state, subscribe, galaxyKey } from "./store.js";
import { createMap } from "./map.js";
import { openInstance } from "./detail.js";
import { renderCard } from "./galaxy-card.js";
import { renderGalaxyList, onListSelect, markSelected } from "./galaxy-list.js";

export { renderGalaxyList };

const $ = (id) => document.getElementById(id);

export const map = createMap({
  canvas: $("map-canvas"),
  tooltip: $("map-tooltip"),
  container: $("map"),
  onSelect: (key) => selectGalaxy(key, { fromMap: true }),
});
$("zoom-in").onclick = () => map.zoomIn();
$("zoom-out").onclick = () => map.zoomOut();
$("zoom-reset").onclick = () => map.reset();
onListSelect((key) => selectGalaxy(key));

/** Selects a galaxy (or none): the map, the card and the list follow. */
export function selectGalaxy(key, { fromMap = false } = {}) {
  state.selectedGalaxy = key;
  if (!fromMap) map.select(key, { center: true });
  const g = renderCard(key);
  if (g && fromMap) openInstance(g.instanceId);
  markSelected(key);
}

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
