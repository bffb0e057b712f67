// Short notices in the corner; errors stay longer and are announced.
import { h } from "./format.js";

const box = () => document.getElementById("toasts");

export function toast(message, { error = false, timeout } = {}) {
  const close = () => el.remove();
  const el = h("div", { class: "toast" + (error ? " error" : ""), role: error ? "alert" : "status" },
    h("span", { class: "tmsg" }, message),
    h("button", { type: "button", "aria-label": "Dismiss", onclick: close }, "✕"));
  box().append(el);
  while (box().children.length > 5) box().firstElementChild.remove();
  setTimeout(close, timeout ?? (error ? 10000 : 4000));
  return el;
}

export const toastError = (message) => toast(message, { error: true });
