// The side panel's tabs (Orchestrations, Galaxies), with the keyboard
// behaviour of a tab list: only the selected tab is in the Tab order, the
// arrow keys (and Home, End) move between tabs and select them.

import { renderGalaxyList } from "./galaxies.js";

const $ = (id) => document.getElementById(id);
const TABS = [["tab-orchestrations", "orchestrations"], ["tab-galaxies", "galaxies"]];

/** Shows one tab's panel ("orchestrations" or "galaxies"). */
export function showTab(name) {
  for (const [tab, body] of TABS) {
    const on = body === name;
    $(tab).setAttribute("aria-selected", String(on));
    $(tab).tabIndex = on ? 0 : -1;
    $(body).hidden = !on;
  }
  renderGalaxyList();
}

for (const [tab, body] of TABS) {
  $(tab).onclick = () => showTab(body);
  $(tab).addEventListener("keydown", (e) => {
    const i = TABS.findIndex(([t]) => t === tab);
    const to = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: TABS.length - 1 }[e.key];
    if (to === undefined) return;
    e.preventDefault();
    const [next, nextBody] = TABS[(to + TABS.length) % TABS.length];
    showTab(nextBody);
    $(next).focus();
  });
}
