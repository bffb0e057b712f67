// Hooks for the end-to-end tests and the benchmark: read-only views of the
// state, the click timings and the focus requests. Nothing in the app reads
// them; they exist so tests wait on state instead of sleeping.

export const metrics = { firstPaint: null, clicks: [], focusRequests: 0 };
const clickWaiters = []; // [n, resolve]: resolved once n clicks are measured

/** Records one click -> Completed timing (see create.js). */
export function clickMeasured(c) {
  metrics.clicks.push(c);
  for (let i = clickWaiters.length - 1; i >= 0; i--) {
    if (metrics.clicks.length >= clickWaiters[i][0]) clickWaiters.splice(i, 1)[0][1]();
  }
}

/** Counts a second launch that brought this window to the front. */
export function focusRequested() {
  metrics.focusRequests++;
}

/** Publishes `window.galaxyForge` over the app's state and map. */
export function installHooks({ state, map }) {
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
}
