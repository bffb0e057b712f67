// Creating galaxies: the Create Galaxy button, creating in the cloud, and
// the click -> Completed timing the benchmark reads.

import { call } from "./api.js";
import { toastError } from "./toast.js";
import { state, putInstance, FILTERS } from "./store.js";
import { openInstance } from "./detail.js";
import { clickMeasured } from "./hooks.js";

const $ = (id) => document.getElementById(id);

// instanceId -> { t0: performance.now() of the click, invokeMs: when the
// create command answered }
const pendingClicks = new Map();

/** Records a click's timing once its instance shows Completed: measured
 *  once the frame that shows it is painted (a task queued from a frame
 *  callback runs after that frame's paint). `inFrame`: called from one. */
export function clickShown(id, inFrame = false) {
  const click = pendingClicks.get(id);
  const v = state.instances.get(id);
  if (click == null || !v || v.runtimeStatus !== "Completed") return;
  pendingClicks.delete(id);
  const shownMs = performance.now() - click.t0;
  const engineMs = Date.parse(v.lastUpdatedAt) - Date.parse(v.createdAt);
  const record = () => setTimeout(() => clickMeasured({
    id, ms: performance.now() - click.t0, invokeMs: click.invokeMs, shownMs, engineMs,
  }));
  if (inFrame) record(); else requestAnimationFrame(record);
}

export async function createGalaxy() {
  const t0 = performance.now();
  try {
    const id = await call("create_galaxy");
    pendingClicks.set(id, { t0, invokeMs: performance.now() - t0 });
    openInstance(id);
    clickShown(id);
  } catch (e) {
    toastError(`Could not create a galaxy: ${e.message}`);
  }
}
$("create").addEventListener("click", createGalaxy);

// A cloud instance, as far as the panel needs one (its states come from
// the cloud's live stream through Rust).
function cloudView(id, status, old) {
  const now = new Date().toISOString();
  return {
    instanceId: id, name: "Galaxy_Create", runtimeStatus: status, cloud: true,
    createdAt: old ? old.createdAt : now, lastUpdatedAt: now, version: old ? old.version + 1 : 0,
    tasks: [], timeline: [], durationMs: null, galaxy: null, failure: null,
  };
}

/** Shows a state of a Galaxy_Create this app started in the cloud. Its
 *  states cross: the live stream's (through Rust) can arrive before the
 *  create command's answer puts "Pending", so nothing goes back to
 *  "Pending" and nothing follows an end. */
export function putCloud({ instanceId, runtimeStatus }) {
  const old = state.instances.get(instanceId);
  if (old && (old.runtimeStatus === runtimeStatus || runtimeStatus === "Pending"
    || FILTERS.completed.includes(old.runtimeStatus) || FILTERS.failed.includes(old.runtimeStatus))) return;
  putInstance(cloudView(instanceId, runtimeStatus, old));
}
$("create-cloud").addEventListener("click", async () => {
  try {
    const id = await call("create_in_cloud");
    putCloud({ instanceId: id, runtimeStatus: "Pending" });
    openInstance(id);
  } catch (e) { toastError(`Could not create in the cloud: ${e.message}`); }
});
