// The galaxy map: a canvas with a starfield, galaxies as soft glowing
// points at their (x, y) coordinates (size from z, tint from the name),
// names on hover, on selection and when zoomed in; new galaxies pulse in
// (unless the player prefers reduced motion).
// Pan by dragging or arrow keys, zoom with the wheel or + / -, 0 resets,
// [ and ] step through galaxies. Draws only when something changed.

import { hueOf } from "./format.js";

const EXTENT = 1000;          // the universe is [-1000, 1000]² (galaxy::coords)
const PULSE_MS = 1600;
const HIT_PX = 14;

export function createMap({ canvas, tooltip, container, onSelect }) {
  const ctx = canvas.getContext("2d");
  const points = [];            // {key, galaxy, x, y, z, hue, born}
  const byKey = new Map();
  const sprites = new Map();    // hue -> pre-rendered glow
  let dpr = 1, width = 0, height = 0;
  let stars = null;             // offscreen starfield for the current size
  let view = { cx: 0, cy: 0, scale: 1 };
  let fitScale = 1;
  let hovered = null, selected = null;
  let frame = 0;
  let drag = null;

  // ---- geometry -------------------------------------------------------
  const toScreen = (p) => [width / 2 + (p.x - view.cx) * view.scale, height / 2 - (p.y - view.cy) * view.scale];
  const toWorld = (sx, sy) => [view.cx + (sx - width / 2) / view.scale, view.cy - (sy - height / 2) / view.scale];

  function fit() {
    fitScale = Math.min(width, height) / (2 * EXTENT * 1.08) || 1;
    view = { cx: 0, cy: 0, scale: fitScale };
  }

  function zoomAt(factor, sx = width / 2, sy = height / 2) {
    const [wx, wy] = toWorld(sx, sy);
    view.scale = Math.min(fitScale * 40, Math.max(fitScale * 0.5, view.scale * factor));
    // keep the world point under the cursor where it was
    view.cx = wx - (sx - width / 2) / view.scale;
    view.cy = wy + (sy - height / 2) / view.scale;
    render();
  }

  function pan(dx, dy) {
    view.cx -= dx / view.scale;
    view.cy += dy / view.scale;
    render();
  }

  // ---- drawing --------------------------------------------------------
  function sprite(hue) {
    if (sprites.has(hue)) return sprites.get(hue);
    const s = document.createElement("canvas");
    s.width = s.height = 64;
    const g = s.getContext("2d");
    const grad = g.createRadialGradient(32, 32, 0, 32, 32, 32);
    grad.addColorStop(0, `hsla(${hue}, 100%, 92%, 1)`);
    grad.addColorStop(0.12, `hsla(${hue}, 95%, 75%, 0.85)`);
    grad.addColorStop(0.4, `hsla(${hue}, 90%, 60%, 0.28)`);
    grad.addColorStop(1, `hsla(${hue}, 90%, 50%, 0)`);
    g.fillStyle = grad;
    g.fillRect(0, 0, 64, 64);
    sprites.set(hue, s);
    return s;
  }

  function makeStars() {
    const c = document.createElement("canvas");
    c.width = Math.max(1, Math.floor(width * dpr));
    c.height = Math.max(1, Math.floor(height * dpr));
    const g = c.getContext("2d");
    g.scale(dpr, dpr);
    const bg = g.createLinearGradient(0, 0, width, height);
    bg.addColorStop(0, "#050816");
    bg.addColorStop(1, "#02030a");
    g.fillStyle = bg;
    g.fillRect(0, 0, width, height);
    for (const [x, y, r, hue, a] of [[0.25, 0.3, 0.55, 265, 0.13], [0.8, 0.75, 0.5, 200, 0.1], [0.6, 0.15, 0.35, 320, 0.06]]) {
      const n = g.createRadialGradient(x * width, y * height, 0, x * width, y * height, r * Math.max(width, height));
      n.addColorStop(0, `hsla(${hue}, 80%, 55%, ${a})`);
      n.addColorStop(1, "hsla(0, 0%, 0%, 0)");
      g.fillStyle = n;
      g.fillRect(0, 0, width, height);
    }
    let seed = 7;
    const rnd = () => ((seed = (seed * 16807) % 2147483647) / 2147483647);
    const count = Math.round((width * height) / 1400);
    for (let i = 0; i < count; i++) {
      const a = 0.15 + rnd() * 0.55;
      g.fillStyle = `rgba(${200 + rnd() * 55 | 0}, ${210 + rnd() * 45 | 0}, 255, ${a})`;
      const s = rnd() < 0.97 ? 1 : 1.8;
      g.fillRect(rnd() * width, rnd() * height, s, s);
    }
    stars = c;
  }

  function drawGrid(g) {
    g.save();
    g.strokeStyle = "rgba(120, 140, 255, 0.07)";
    g.lineWidth = 1;
    const [ox, oy] = toScreen({ x: 0, y: 0 });
    for (const r of [250, 500, 750, 1000]) {
      g.beginPath();
      g.arc(ox, oy, r * view.scale, 0, Math.PI * 2);
      g.stroke();
    }
    g.beginPath();
    g.moveTo(ox - EXTENT * view.scale, oy); g.lineTo(ox + EXTENT * view.scale, oy);
    g.moveTo(ox, oy - EXTENT * view.scale); g.lineTo(ox, oy + EXTENT * view.scale);
    g.stroke();
    g.restore();
  }

  // The settled galaxies (not pulsing) with the starfield and the grid,
  // drawn once per view into an offscreen layer: a frame then costs one
  // copy plus whatever animates. Without a GPU, 1,000 glows per frame were
  // most of a 76 ms frame.
  let layer = null;
  let layerKey = "";
  let layerDirty = true;

  function glow(g, p, sx, sy, base, now) {
    const depth = 0.75 + ((p.z + 100) / 200) * 0.6;
    let r = base * depth;
    const age = now - p.born;
    if (age < PULSE_MS) {
      const t = age / PULSE_MS;
      r *= 1 + 1.6 * (1 - t) * (1 - t);
    }
    g.drawImage(sprite(p.hue), sx - r * 2, sy - r * 2, r * 4, r * 4);
  }

  /** Draws `[point, sx, sy]` glows; they add up ("lighter"). */
  function glows(g, list, base, now) {
    g.globalCompositeOperation = "lighter";
    for (const [p, sx, sy] of list) glow(g, p, sx, sy, base, now);
    g.globalCompositeOperation = "source-over";
  }

  /** Redraws the layer from the `visible` points if the view changed or
   *  it is dirty; returns whether it did. */
  function drawLayer(visible, base, now) {
    const key = `${width}x${height}@${dpr}:${view.cx},${view.cy},${view.scale}`;
    if (layer && !layerDirty && key === layerKey) return false;
    if (!layer) layer = document.createElement("canvas");
    if (layer.width !== canvas.width || layer.height !== canvas.height) {
      layer.width = canvas.width;
      layer.height = canvas.height;
    }
    const g = layer.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.globalCompositeOperation = "source-over";
    if (stars) g.drawImage(stars, 0, 0, width, height);
    else g.clearRect(0, 0, width, height);
    drawGrid(g);
    glows(g, visible.filter(([p]) => now - p.born >= PULSE_MS), base, now);
    layerKey = key;
    layerDirty = false;
    return true;
  }

  // A galaxy whose pulse ended joins the layer as one more glow: glows add
  // up, so this equals a redraw of the layer, which with 1,000 galaxies
  // in software cost a frame of its own at every click.
  function settle(settled, base, now) {
    const g = layer.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    glows(g, settled, base, now);
  }

  function draw(now) {
    frame = 0;
    const zoom = view.scale / fitScale;
    const base = 7 * Math.min(2.2, Math.sqrt(zoom));
    const visible = [];
    const pulsing = [];
    const settled = [];
    for (const p of points) {
      const [sx, sy] = toScreen(p);
      if (sx < -40 || sy < -40 || sx > width + 40 || sy > height + 40) continue;
      visible.push([p, sx, sy]);
      if (now - p.born < PULSE_MS) pulsing.push([p, sx, sy]);
      else if (p.pulsing) { p.pulsing = false; settled.push([p, sx, sy]); }
    }
    if (!drawLayer(visible, base, now) && settled.length) settle(settled, base, now);
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.drawImage(layer, 0, 0);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    glows(ctx, pulsing, base, now);
    for (const [p, sx, sy] of pulsing) {
      const t = (now - p.born) / PULSE_MS;
      ctx.strokeStyle = `hsla(${p.hue}, 100%, 80%, ${0.9 * (1 - t)})`;
      ctx.lineWidth = 2;
      ctx.beginPath();
      ctx.arc(sx, sy, 6 + 46 * t, 0, Math.PI * 2);
      ctx.stroke();
    }
    // selection marker
    const sel = selected && byKey.get(selected);
    if (sel) {
      const [sx, sy] = toScreen(sel);
      ctx.strokeStyle = "rgba(102, 224, 255, 0.95)";
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      ctx.arc(sx, sy, 14, 0, Math.PI * 2);
      ctx.stroke();
      for (const [dx, dy] of [[1, 0], [-1, 0], [0, 1], [0, -1]]) {
        ctx.beginPath();
        ctx.moveTo(sx + dx * 18, sy + dy * 18);
        ctx.lineTo(sx + dx * 26, sy + dy * 26);
        ctx.stroke();
      }
    }
    // names: when zoomed in or few, and always for hovered / selected
    const showAll = visible.length <= 40 || (zoom >= 2.5 && visible.length <= 250);
    ctx.font = "12px Inter, Cantarell, 'DejaVu Sans', sans-serif";
    ctx.textBaseline = "middle";
    const isStrong = (p) => p.key === selected || p.key === hovered;
    const taken = [];   // label boxes drawn so far: no overlapping names
    const ordered = visible.filter(([p]) => showAll || isStrong(p))
      .sort((a, b) => isStrong(b[0]) - isStrong(a[0]));
    for (const [p, sx, sy] of ordered) {
      const strong = isStrong(p);
      const w = ctx.measureText(p.galaxy.name).width;
      const box = [sx + 10, sy - 18, sx + 10 + w, sy - 2];
      if (!strong && taken.some((t) => box[0] < t[2] && box[2] > t[0] && box[1] < t[3] && box[3] > t[1])) continue;
      taken.push(box);
      ctx.fillStyle = strong ? "rgba(240, 246, 255, 1)" : "rgba(200, 212, 255, 0.72)";
      ctx.shadowColor = "rgba(0, 0, 0, 0.9)";
      ctx.shadowBlur = 4;
      ctx.fillText(p.galaxy.name, sx + 10, sy - 10);
      ctx.shadowBlur = 0;
    }
    if (pulsing.length) render();
  }

  function render() {
    if (!frame) frame = requestAnimationFrame(draw);
  }

  function resize() {
    const rect = canvas.getBoundingClientRect();
    const first = width === 0;
    dpr = window.devicePixelRatio || 1;
    width = Math.max(1, rect.width);
    height = Math.max(1, rect.height);
    canvas.width = Math.floor(width * dpr);
    canvas.height = Math.floor(height * dpr);
    const keep = first ? null : view.scale / fitScale;
    fit();
    if (keep) view.scale = fitScale * keep;
    makeStars();
    layerDirty = true;
    // Drawn now, not on the next frame: resizing cleared the canvas.
    if (frame) cancelAnimationFrame(frame);
    draw(performance.now());
  }

  // ---- interaction ----------------------------------------------------
  function nearest(sx, sy) {
    let best = null, bestD = HIT_PX * HIT_PX;
    for (const p of points) {
      const [px, py] = toScreen(p);
      const d = (px - sx) ** 2 + (py - sy) ** 2;
      if (d < bestD) { bestD = d; best = p; }
    }
    return best;
  }

  function showTooltip(p) {
    if (!p) { tooltip.hidden = true; return; }
    const [sx, sy] = toScreen(p);
    tooltip.textContent = `${p.galaxy.name}  ·  (${p.x}, ${p.y}, ${p.z})`;
    tooltip.style.left = `${sx}px`;
    tooltip.style.top = `${sy}px`;
    tooltip.hidden = false;
  }

  function local(e) {
    const r = canvas.getBoundingClientRect();
    return [e.clientX - r.left, e.clientY - r.top];
  }

  canvas.addEventListener("pointerdown", (e) => {
    const [x, y] = local(e);
    drag = { x, y, moved: 0 };
    canvas.setPointerCapture(e.pointerId);
  });
  canvas.addEventListener("pointermove", (e) => {
    const [x, y] = local(e);
    if (drag) {
      drag.moved += Math.abs(x - drag.x) + Math.abs(y - drag.y);
      pan(x - drag.x, y - drag.y);
      drag.x = x; drag.y = y;
      showTooltip(null);
      return;
    }
    const p = nearest(x, y);
    const key = p ? p.key : null;
    if (key !== hovered) { hovered = key; render(); }
    showTooltip(p);
  });
  canvas.addEventListener("pointerup", (e) => {
    const [x, y] = local(e);
    if (drag && drag.moved < 5) {
      const p = nearest(x, y);
      select(p ? p.key : null, { notify: true });
    }
    drag = null;
  });
  canvas.addEventListener("pointerleave", () => { hovered = null; showTooltip(null); render(); });
  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    const [x, y] = local(e);
    zoomAt(Math.pow(1.0015, -e.deltaY), x, y);
  }, { passive: false });
  canvas.addEventListener("keydown", (e) => {
    const step = 60;
    const keys = {
      ArrowLeft: () => pan(step, 0), ArrowRight: () => pan(-step, 0),
      ArrowUp: () => pan(0, step), ArrowDown: () => pan(0, -step),
      "+": () => zoomAt(1.25), "=": () => zoomAt(1.25), "-": () => zoomAt(0.8), "_": () => zoomAt(0.8),
      "0": () => { fit(); render(); },
      "]": () => stepSelection(1), "[": () => stepSelection(-1),
      Escape: () => select(null, { notify: true }),
    };
    const fn = keys[e.key];
    if (fn) { e.preventDefault(); fn(); }
  });

  function stepSelection(dir) {
    if (!points.length) return;
    const i = points.findIndex((p) => p.key === selected);
    const next = points[(i + dir + points.length) % points.length];
    select(next.key, { notify: true, center: true });
  }

  function select(key, { notify = false, center = false } = {}) {
    selected = key && byKey.has(key) ? key : null;
    const p = selected && byKey.get(selected);
    if (p && center) {
      const [sx, sy] = toScreen(p);
      if (sx < 40 || sy < 40 || sx > width - 40 || sy > height - 40) { view.cx = p.x; view.cy = p.y; }
    }
    render();
    if (notify) onSelect(selected);
  }

  // Players who ask for less motion see new galaxies appear, not pulse.
  const calm = window.matchMedia("(prefers-reduced-motion: reduce)");

  function add(galaxy, key, fresh) {
    if (byKey.has(key)) return;
    fresh = fresh && !calm.matches;
    const p = {
      key, galaxy,
      x: galaxy.coords.x, y: galaxy.coords.y, z: galaxy.coords.z,
      hue: hueOf(galaxy.name),
      born: fresh ? performance.now() : -Infinity,
      pulsing: fresh,   // joins the cached layer once its pulse ends
    };
    points.push(p);
    byKey.set(key, p);
    if (!fresh) layerDirty = true;
  }

  function updateCount() {
    container.dataset.count = String(points.length);
  }

  new ResizeObserver(resize).observe(canvas);
  resize();

  return {
    /** Replaces all points (snapshot). */
    setGalaxies(list, keyOf) {
      points.length = 0; byKey.clear();
      for (const g of list) add(g, keyOf(g), false);
      layerDirty = true;
      updateCount();
      render();
    },
    /** Replaces a galaxy's data (a rename changes its colour). */
    updateGalaxy(galaxy, key) {
      const p = byKey.get(key);
      if (!p) return;
      p.galaxy = galaxy;
      p.hue = hueOf(galaxy.name);
      layerDirty = true;
      render();
    },
    /** Removes a galaxy. */
    removeGalaxy(key) {
      const p = byKey.get(key);
      if (!p) return;
      points.splice(points.indexOf(p), 1);
      byKey.delete(key);
      if (selected === key) selected = null;
      layerDirty = true;
      updateCount();
      render();
    },
    /** Adds one galaxy; `fresh` ones pulse in. */
    addGalaxy(galaxy, key, fresh) {
      add(galaxy, key, fresh);
      updateCount();
      render();
    },
    select,
    has: (key) => byKey.has(key),
    count: () => points.length,
    zoomIn: () => zoomAt(1.25),
    zoomOut: () => zoomAt(0.8),
    reset: () => { fit(); render(); },
  };
}
