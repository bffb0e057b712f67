// Short notices in the corner; errors stay longer. Each notice is spoken
// once: its text goes to one of two live regions that exist from the start
// (a polite one and an assertive one for errors), so a screen reader hears
// it when it is shown, never again when a panel repaints.
import { h } from "./format.js";

const $ = (id) => document.getElementById(id);

// Notices waiting for the next frame, per region: several told in one
// task are spoken together, not each overwriting the one before.
const waiting = new Map();

function announce(message, error) {
  const region = $(error ? "announce-alert" : "announce-status");
  if (!region) return;
  if (waiting.has(region)) {
    waiting.get(region).push(message);
    return;
  }
  waiting.set(region, [message]);
  // Same text twice in a row still counts as a new announcement.
  region.textContent = "";
  requestAnimationFrame(() => {
    region.textContent = waiting.get(region).map((m) => m.replace(/[.\s]+$/, "")).join(". ");
    waiting.delete(region);
  });
}

export function toast(message, { error = false, timeout } = {}) {
  const close = () => el.remove();
  const el = h("div", { class: "toast" + (error ? " error" : "") },
    h("span", { class: "tmsg" }, message),
    h("button", { type: "button", "aria-label": "Dismiss", onclick: close }, "✕"));
  $("toasts").append(el);
  while ($("toasts").children.length > 5) $("toasts").firstElementChild.remove();
  setTimeout(close, timeout ?? (error ? 10000 : 4000));
  announce(message, error);
  return el;
}

export const toastError = (message) => toast(message, { error: true });
