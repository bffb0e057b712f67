// Destructive buttons (delete a galaxy, terminate or purge an instance) act
// on a second press: the first arms the button ("Press again to …") for a
// few seconds. Armed buttons are kept here by key, so a panel redrawn
// meanwhile (a running instance updates often) still shows them armed.

const ARMED_FOR_MS = 5000;
const armed = new Map();

/** Whether the button of `key` is armed now. */
export function isArmed(key) {
  const until = armed.get(key);
  return until !== undefined && until > performance.now();
}

/** The label of the button of `key`: `label`, or the second-press prompt. */
export function armedLabel(key, label) {
  return isArmed(key) ? `Press again to ${label.toLowerCase()}` : label;
}

/** Press handler for `key`: the first press arms it and calls `redraw`,
 *  the second (while armed) runs `act`; it disarms by itself. */
export function pressTwice(key, act, redraw) {
  if (isArmed(key)) {
    armed.delete(key);
    return act();
  }
  armed.set(key, performance.now() + ARMED_FOR_MS);
  redraw();
  setTimeout(() => {
    if (armed.has(key) && !isArmed(key)) {
      armed.delete(key);
      redraw();
    }
  }, ARMED_FOR_MS + 50);
}
