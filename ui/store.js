// The page's state: instances and galaxies as last seen, merged from the
// first snapshot and then from pushed events, in any order (see isNewer).

const listeners = new Map();

export const state = {
  instances: new Map(),   // instanceId -> InstanceView (from Rust)
  galaxies: new Map(),    // "pk|rk" -> Galaxy
  sync: null,
  syncLoop: null,         // the sync loop's status (phase, pending, last sync)
  settings: null,         // { cloudUrl, playerId, deviceId }
  dataDir: "",
  pid: 0,
  filter: "all",
  openInstance: null,     // instanceId shown in the dock
  selectedGalaxy: null,   // galaxy key selected on the map
  rowErrors: new Map(),   // instanceId -> message of a failed command on that row
  loaded: false,          // the first snapshot is drawn (panels draw events after it)
};

export function subscribe(topic, fn) {
  if (!listeners.has(topic)) listeners.set(topic, new Set());
  listeners.get(topic).add(fn);
}

export function publish(topic, payload) {
  for (const fn of listeners.get(topic) || []) fn(payload);
}

export const galaxyKey = (g) => `${g.partitionKey}|${g.rowKey}`;

/** True when `b` is a later view of the same instance than `a`. Views are
 *  whole objects and their version (history length) only grows, so the
 *  newest wins whatever order snapshot and events arrive in. */
export function isNewer(a, b) {
  if (!a) return true;
  const ca = Date.parse(a.createdAt), cb = Date.parse(b.createdAt);
  if (cb !== ca) return cb > ca;
  if (b.version !== a.version) return b.version > a.version;
  return Date.parse(b.lastUpdatedAt) >= Date.parse(a.lastUpdatedAt) && b.runtimeStatus !== a.runtimeStatus;
}

/** Stores a view if it is newer; returns whether it changed anything. */
export function putInstance(view) {
  const old = state.instances.get(view.instanceId);
  if (!isNewer(old, view)) return false;
  state.instances.set(view.instanceId, view);
  publish("instance", { view, isNew: !old });
  return true;
}

export function removeInstance(id) {
  if (state.instances.delete(id)) publish("instance-removed", id);
}

/** Stores a galaxy unless known; returns whether it is new. */
export function putGalaxy(galaxy, { fresh = false } = {}) {
  const key = galaxyKey(galaxy);
  if (state.galaxies.has(key)) return false;
  state.galaxies.set(key, galaxy);
  publish("galaxy", { galaxy, fresh });
  return true;
}

/** Stores a galaxy, replacing an older copy (a rename, a sync). */
export function upsertGalaxy(galaxy) {
  const key = galaxyKey(galaxy);
  const old = state.galaxies.get(key);
  state.galaxies.set(key, galaxy);
  if (old) publish("galaxy-changed", { galaxy, key });
  else publish("galaxy", { galaxy, fresh: true });
}

/** Forgets a galaxy (deleted here or on another device). */
export function removeGalaxy(key) {
  if (state.galaxies.delete(key)) publish("galaxy-removed", key);
}

/** Which statuses each filter shows. */
export const FILTERS = {
  all: null,
  live: ["Pending", "Running", "Suspended", "ContinuedAsNew"],
  completed: ["Completed"],
  failed: ["Failed", "Terminated", "Canceled"],
};

export function matchesFilter(view, filter = state.filter) {
  const allowed = FILTERS[filter];
  return !allowed || allowed.includes(view.runtimeStatus);
}
