// The bridge to Rust: commands (invoke) and pushed events (listen).
// Only this module touches window.__TAURI__ (app.withGlobalTauri).

const tauri = window.__TAURI__;

/** Turns whatever a command rejected with into a readable message. */
export function errorMessage(err) {
  if (err == null) return "Something went wrong.";
  if (typeof err === "string") return err;
  if (typeof err.message === "string") return err.message;
  try { return JSON.stringify(err); } catch { return String(err); }
}

/** Invokes a Rust command; rejects with an Error carrying a readable message. */
export async function call(cmd, args) {
  if (!tauri) throw new Error("This page must run inside the Galaxy Forge app.");
  try {
    return await tauri.core.invoke(cmd, args);
  } catch (err) {
    const e = new Error(errorMessage(err));
    e.kind = err && err.kind;
    throw e;
  }
}

/** Registers a listener; resolves once Rust knows about it. */
export function on(event, handler) {
  if (!tauri) return Promise.resolve(() => {});
  return tauri.event.listen(event, (e) => handler(e.payload));
}
