// Pure renderers: an InstanceView (built in Rust, galaxy::view) or a
// galaxy in, DOM out. No state, no calls to Rust.

import { h, shortId, ms, clock, dateTime, json, hueOf } from "./format.js";

const ICON = { Completed: "✓", Failed: "✗", Scheduled: "…" };

function taskChip(task) {
  const state = task.state;
  return h("span", { class: "task", dataset: { state, task: task.name } },
    h("span", { class: "ticon", "aria-hidden": "true" }, ICON[state] || "•"),
    h("span", { class: "tname" }, task.name),
    h("span", { class: "tstate" }, state === "Scheduled" ? "running" : state === "Failed" ? "failed" : ms(task.durationMs)));
}

/** Tasks grouped so that the ones scheduled in the same turn (a fan-out)
 *  sit side by side, and the next group below them (the fan-in). */
export function taskGroups(tasks) {
  const groups = [];
  for (const t of tasks) {
    const last = groups[groups.length - 1];
    if (last && last[0].scheduledAt === t.scheduledAt) last.push(t);
    else groups.push([t]);
  }
  return groups;
}

export function statusBadge(status) {
  return h("span", { class: "status", dataset: { status } }, status);
}

/** One row of the orchestrations panel: an `li` holding a button (the
 *  row itself) and, below it, any error. Filled by [updateInstanceRow]. */
export function instanceRow(view, opts) {
  const li = h("li", {}, h("button", { type: "button", class: "row" }));
  updateInstanceRow(li, view, opts);
  return li;
}

/** Brings a row made by [instanceRow] up to date in place: the `li` and
 *  its button stay the same nodes, so keyboard focus stays where it was.
 *  Errors are plain text here; toasts announce them, once. */
export function updateInstanceRow(li, view, { open = false, error = null } = {}) {
  const failure = view.failure ? `${view.failure.kind}: ${view.failure.message}` : null;
  const took = view.durationMs != null ? ms(view.durationMs) : clock(view.createdAt);
  li.classList.add("instance");
  li.classList.toggle("open", open);
  Object.assign(li.dataset, { id: view.instanceId, status: view.runtimeStatus, cloud: view.cloud ? "true" : "false" });
  const button = li.firstElementChild;
  button.setAttribute("aria-label", `${view.name} ${shortId(view.instanceId)} ${view.runtimeStatus}${view.galaxy ? `, galaxy ${view.galaxy.name}` : ""}`);
  if (open) button.setAttribute("aria-current", "true"); else button.removeAttribute("aria-current");
  // replaceChildren would write a null part as the text "null".
  button.replaceChildren(...[
    h("span", { class: "instance-head" },
      h("span", { class: "instance-name" }, view.name, view.cloud ? h("span", { class: "cloud-mark", title: "runs on galaxy-cloud" }, " ☁ cloud") : null),
      h("span", { class: "instance-id", title: view.instanceId }, shortId(view.instanceId)),
      h("span", { class: "right" }, h("span", { class: "took" }, took), statusBadge(view.runtimeStatus))),
    view.tasks.length ? h("span", { class: "tasks" },
      taskGroups(view.tasks).map((g) => h("span", { class: "task-group" }, g.map(taskChip)))) : null,
    view.galaxy ? h("span", { class: "instance-note" }, "galaxy ", h("span", { class: "gname" }, view.galaxy.name)) : null,
  ].filter(Boolean));
  for (const old of li.querySelectorAll(":scope > .instance-error")) old.remove();
  for (const text of [failure, error]) if (text) li.append(h("div", { class: "instance-error" }, text));
}

/** The Gantt-like timeline: the orchestrator's turns on one lane, each
 *  task as a bar from scheduled to finished on its own lane. */
function gantt(view) {
  const origin = Date.parse(view.createdAt);
  const end = view.durationMs != null ? view.durationMs
    : Math.max(1, Date.now() - origin, ...view.timeline.map((e) => e.offsetMs));
  const span = Math.max(end, 1);
  const pct = (offset) => `${Math.min(100, (offset / span) * 100).toFixed(2)}%`;
  const turnMarks = view.timeline.filter((e) => e.kind === "OrchestratorStarted")
    .map((e) => h("span", { class: "mark", style: { left: pct(e.offsetMs) }, title: `turn at +${ms(e.offsetMs)}` }));
  const endEvent = view.timeline.find((e) => ["ExecutionCompleted", "ExecutionFailed", "ExecutionTerminated"].includes(e.kind));
  if (endEvent) {
    turnMarks.push(h("span", { class: "mark end" + (endEvent.error ? " error" : ""), style: { left: `calc(${pct(endEvent.offsetMs)} - 3px)` }, title: endEvent.label }));
  }
  const lanes = [h("div", { class: "lane" }, h("span", { class: "lname" }, "orchestrator"), h("div", { class: "track" }, turnMarks))];
  for (const t of view.tasks) {
    const start = Date.parse(t.scheduledAt) - origin;
    const stop = t.finishedAt ? Date.parse(t.finishedAt) - origin : end;
    const width = Math.max(((stop - start) / span) * 100, 1.5);
    lanes.push(h("div", { class: "lane", dataset: { task: t.name } },
      h("span", { class: "lname", title: t.name }, t.name),
      h("div", { class: "track" },
        h("span", { class: "bar", dataset: { state: t.state }, style: { left: pct(start), width: `${Math.min(width, 100)}%` },
          title: `${t.name}: ${t.state}${t.durationMs != null ? ", " + ms(t.durationMs) : ""}${t.error ? " — " + t.error : ""}` }))));
  }
  return h("div", { class: "gantt", "aria-label": "timeline" },
    lanes,
    h("div", { class: "axis" }, h("span", {}, "0"), h("span", {}, ms(span / 2)), h("span", {}, ms(span))));
}

function eventList(view) {
  return h("ol", { class: "events", "aria-label": "history events" },
    view.timeline.filter((e) => e.kind !== "OrchestratorStarted").map((e) =>
      h("li", { class: e.error ? "error" : "", dataset: { kind: e.kind } },
        h("span", { class: "eid" }, e.eventId),
        h("span", { class: "eat", title: dateTime(e.at) }, `+${ms(e.offsetMs)}`),
        h("span", { class: "elabel" }, e.label),
        h("span", { class: "edur" }, e.durationMs != null ? ms(e.durationMs) : ""))));
}

/** The dock's instance detail: header with actions, timeline, events, I/O. */
export function instanceDetail(view, actions, error) {
  const s = view.runtimeStatus;
  const live = ["Pending", "Running", "Suspended", "ContinuedAsNew"].includes(s);
  const btn = (label, name, enabled, cls = "ghost") =>
    h("button", { type: "button", class: cls, disabled: !enabled, dataset: { action: name }, onclick: () => actions[name](view.instanceId) },
      actions.label ? actions.label(name, view.instanceId, label) : label);
  return h("div", { class: "detail", dataset: { id: view.instanceId, status: s } },
    h("div", { class: "detail-head" },
      h("h3", {}, view.name),
      h("code", { title: view.instanceId }, shortId(view.instanceId)),
      statusBadge(s),
      view.durationMs != null ? h("span", { class: "took" }, `total ${ms(view.durationMs)}`) : null,
      h("div", { class: "actions" },
        btn("Suspend", "suspend", live && s !== "Suspended"),
        btn("Resume", "resume", s === "Suspended"),
        btn("Terminate", "terminate", live, "ghost danger"),
        btn("Purge", "purge", !live, "ghost danger"))),
    view.failure ? h("div", { class: "instance-error" }, `${view.failure.kind}: ${view.failure.message}`) : null,
    error ? h("div", { class: "instance-error" }, error) : null,
    h("div", { class: "detail-body" }, gantt(view), eventList(view)),
    h("div", { class: "io" },
      h("div", {}, h("h4", {}, "Input"), h("pre", {}, json(view.input))),
      h("div", {}, h("h4", {}, "Output"), h("pre", {}, json(view.output))),
      h("div", {}, h("h4", {}, "Custom status"), h("pre", {}, json(view.customStatus)))));
}

/** The dock's galaxy card. */
export function galaxyCard(galaxy, openInstance, { rename, remove, removeLabel } = {}) {
  // No maxlength: the page would count UTF-16 units where the rule counts
  // characters; the app's own check says what is wrong.
  const input = h("input", { class: "rename-input", value: galaxy.name, "aria-label": "New name", "aria-describedby": "rename-error" });
  const edit = rename ? h("form", { class: "galaxy-edit", onsubmit: (e) => { e.preventDefault(); rename(galaxy, input.value); } },
    input,
    h("button", { type: "submit", class: "rename" }, "Rename"),
    h("button", { type: "button", class: "delete ghost", onclick: () => remove(galaxy) }, removeLabel ? removeLabel(galaxy) : "Delete"),
    h("p", { class: "settings-error", id: "rename-error", role: "alert", hidden: true })) : null;
  return h("div", { dataset: { key: `${galaxy.partitionKey}|${galaxy.rowKey}` } },
    h("h3", { class: "glow-name", style: { color: `hsl(${hueOf(galaxy.name)}, 90%, 82%)` } }, galaxy.name),
    h("dl", { class: "kv" },
      h("dt", {}, "From"), h("dd", { class: "origin" }, galaxy.origin ? `device ${galaxy.origin}` : "this device"),
      h("dt", {}, "Coordinates"), h("dd", {}, `(${galaxy.coords.x}, ${galaxy.coords.y}, ${galaxy.coords.z})`),
      h("dt", {}, "Created"), h("dd", {}, dateTime(galaxy.timestamp)),
      h("dt", {}, "Realm"), h("dd", {}, galaxy.partitionKey),
      h("dt", {}, "Row key"), h("dd", { class: "mono", title: galaxy.rowKey }, shortId(galaxy.rowKey)),
      h("dt", {}, "Created by"), h("dd", {},
        h("button", { type: "button", class: "link", onclick: () => openInstance(galaxy.instanceId) }, `Galaxy_Create ${shortId(galaxy.instanceId)}`))),
    edit);
}

/** One entry of the galaxies list: an `li` holding the button that
 *  selects the galaxy. */
export function galaxyItem(galaxy, key, selected, onSelect) {
  return h("li", { class: "galaxy-item" + (selected ? " selected" : ""), dataset: { key, origin: galaxy.origin || "" } },
    h("button", { type: "button", class: "row", "aria-current": selected ? "true" : null, onclick: () => onSelect(key) },
      h("span", { class: "swatch", style: { background: `hsl(${hueOf(galaxy.name)}, 90%, 70%)`, boxShadow: `0 0 8px hsl(${hueOf(galaxy.name)}, 90%, 60%)` } }),
      h("span", { class: "gname" }, galaxy.name),
      h("span", { class: "gcoords" }, `${galaxy.coords.x}, ${galaxy.coords.y}`)));
}
