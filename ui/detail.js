// The dock's instance detail: the open instance's timeline, history, input
// and output, and its actions (suspend, resume, terminate, purge).

import { call } from "./api.js";
import { toast, toastError } from "./toast.js";
import { h } from "./format.js";
import { state, putInstance, removeInstance } from "./store.js";
import { instanceDetail } from "./views.js";
import { rowElement, renderRow } from "./instances.js";
import { selectGalaxy } from "./galaxies.js";
import { armedLabel, pressTwice } from "./confirm.js";

const $ = (id) => document.getElementById(id);

// Terminate and purge cannot be undone: they act on a second press.
const twice = new Set(["terminate", "purge"]);
const actions = {
  terminate: (id) => pressTwice(`terminate:${id}`, () => act(id, "terminate_instance", "Terminated"), renderDetail),
  suspend: (id) => act(id, "suspend_instance", "Suspend requested"),
  resume: (id) => act(id, "resume_instance", "Resume requested"),
  purge: (id) => pressTwice(`purge:${id}`, async () => {
    if (await act(id, "purge_instance", "Purged")) {
      removeInstance(id);
    }
  }, renderDetail),
  label: (name, id, label) => (twice.has(name) ? armedLabel(`${name}:${id}`, label) : label),
};

async function act(id, cmd, done) {
  try {
    await call(cmd, { instanceId: id });
    state.rowErrors.delete(id);
    toast(`${done}: ${id.slice(-8)}`);
    return true;
  } catch (e) {
    state.rowErrors.set(id, e.message);
    toastError(e.message);
    const v = state.instances.get(id);
    if (v) { renderRow(v, false); if (state.openInstance === id) renderDetail(); }
    return false;
  }
}

/** Redraws the detail of the open instance. */
export function renderDetail() {
  const box = $("instance-detail");
  const v = state.openInstance && state.instances.get(state.openInstance);
  if (v && v.cloud) {
    box.replaceChildren(h("div", { class: "detail", dataset: { id: v.instanceId, status: v.runtimeStatus } },
      h("div", { class: "detail-head" }, h("h3", {}, `${v.name} ☁`), h("code", { title: v.instanceId }, v.instanceId.slice(-8)),
        h("span", { class: "status", dataset: { status: v.runtimeStatus } }, v.runtimeStatus)),
      h("p", { class: "hint" }, "Runs on galaxy-cloud for your account; its galaxy arrives here through sync.")));
    return;
  }
  // Focus inside the detail stays inside it across the redraw: on the
  // same action, or (that action now disabled, say Suspend once
  // suspended) the first one enabled, or the detail itself.
  const hadFocus = box.contains(document.activeElement);
  const focused = document.activeElement?.closest?.("#instance-detail [data-action]")?.dataset.action;
  if (!v) {
    box.replaceChildren(h("p", { class: "hint", tabIndex: -1 }, state.openInstance
      ? "This instance was purged." : "Open an orchestration to see its history as a timeline."));
    if (hadFocus) box.firstElementChild.focus();
    return;
  }
  box.replaceChildren(instanceDetail(v, actions, state.rowErrors.get(v.instanceId)));
  if (!hadFocus) return;
  const same = focused && box.querySelector(`[data-action="${focused}"]:not(:disabled)`);
  const next = same || box.querySelector("[data-action]:not(:disabled)");
  if (next) next.focus();
  else {
    const head = box.querySelector(".detail-head h3");
    head.tabIndex = -1;
    head.focus();
  }
}

/** Opens an instance in the dock (fetching it if unknown) and selects its
 *  galaxy. */
export async function openInstance(id) {
  const previous = state.openInstance;
  state.openInstance = id;
  for (const pid of [previous, id]) {
    const el = pid && rowElement(pid);
    if (el) {
      el.classList.toggle("open", pid === id);
      if (pid === id) el.firstElementChild.setAttribute("aria-current", "true");
      else el.firstElementChild.removeAttribute("aria-current");
    }
  }
  if (!state.instances.has(id)) {
    try { putInstance(await call("get_instance", { instanceId: id })); }
    catch (e) { toastError(e.message); }
  }
  renderDetail();
  const g = state.instances.get(id)?.galaxy;
  const key = g && `${g.partitionKey}|${g.rowKey}`;
  if (key && state.galaxies.has(key) && state.selectedGalaxy !== key) selectGalaxy(key);
}
