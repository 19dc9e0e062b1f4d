// Small inline-SVG charts: lines over time and bars per day. Colours come
// from CSS classes (app.css), so the charts follow the light or dark theme.

const NS = 'http://www.w3.org/2000/svg';

function el(tag, attrs, text) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

/** A rounded axis top at or above `max` (1, 2 or 5 times a power of ten). */
function niceMax(max) {
  if (!(max > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(max));
  for (const m of [1, 2, 5, 10]) if (m * p >= max) return m * p;
  return 10 * p;
}

export function compact(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return '—';
  const a = Math.abs(n);
  if (a >= 1e9) return (n / 1e9).toFixed(1).replace(/\.0$/, '') + 'G';
  if (a >= 1e6) return (n / 1e6).toFixed(1).replace(/\.0$/, '') + 'M';
  if (a >= 1e4) return (n / 1e3).toFixed(1).replace(/\.0$/, '') + 'k';
  if (Number.isInteger(n)) return String(n);
  return String(parseFloat(n.toFixed(a < 10 ? 2 : 1)));
}

/**
 * Lines over time. `xs`: bucket starts (Unix s); `lines`: [{name, cls, values}]
 * with one value (or null) per x; `label(x)`: an x tick's text.
 */
export function lineChart({ xs, lines, label, title, empty }) {
  const W = 640, H = 220, L = 52, R = 10, T = 12, B = 28;
  const svg = el('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart lines', role: 'img', 'aria-label': title });
  const all = lines.flatMap((l) => l.values.filter((v) => v !== null && v !== undefined));
  const top = niceMax(Math.max(0, ...all));
  const n = xs.length;
  const x = (i) => L + (n <= 1 ? 0 : (i * (W - L - R)) / (n - 1));
  const y = (v) => T + (H - T - B) * (1 - v / top);
  for (let g = 0; g <= 4; g++) {
    const v = (top * g) / 4;
    svg.append(el('line', { x1: L, x2: W - R, y1: y(v), y2: y(v), class: 'grid' }));
    svg.append(el('text', { x: L - 4, y: y(v) + 4, 'text-anchor': 'end', class: 'tick' }, compact(v)));
  }
  const ticks = Math.min(6, n);
  for (let k = 0; k < ticks; k++) {
    const i = ticks <= 1 ? 0 : Math.round((k * (n - 1)) / (ticks - 1));
    svg.append(el('text', { x: x(i), y: H - 6, 'text-anchor': k === 0 ? 'start' : k === ticks - 1 ? 'end' : 'middle', class: 'tick' }, label(xs[i])));
  }
  if (all.length === 0 || all.every((v) => v === 0)) {
    svg.append(el('text', { x: (W + L) / 2, y: H / 2, 'text-anchor': 'middle', class: 'empty' }, empty));
  }
  for (const line of lines) {
    let d = '';
    let pen = false;
    line.values.forEach((v, i) => {
      if (v === null || v === undefined) { pen = false; return; }
      d += `${pen ? 'L' : 'M'}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
      pen = true;
    });
    if (d) svg.append(el('path', { d, class: `line ${line.cls}` }));
    // A value with no neighbour draws no segment: mark it with a dot.
    line.values.forEach((v, i) => {
      const lone = v !== null && v !== undefined && (line.values[i - 1] ?? null) === null && (line.values[i + 1] ?? null) === null;
      if (lone) svg.append(el('circle', { cx: x(i).toFixed(1), cy: y(v).toFixed(1), r: 3, class: `dot ${line.cls}` }));
    });
  }
  return svg;
}

/** Bars, one per item: [{label, value, title}]. */
export function barChart({ items, format, title }) {
  const W = 1000, H = 180, L = 8, R = 8, T = 40, B = 26;
  const svg = el('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart bars', role: 'img', 'aria-label': title });
  const top = niceMax(Math.max(0, ...items.map((i) => i.value)));
  const y = (v) => T + (H - T - B) * (1 - v / top);
  for (let g = 0; g <= 2; g++) {
    const v = (top * g) / 2;
    svg.append(el('line', { x1: L, x2: W - R, y1: y(v), y2: y(v), class: 'grid' }));
    if (g > 0) svg.append(el('text', { x: L, y: y(v) - 5, 'text-anchor': 'start', class: 'tick' }, format(v)));
  }
  const slot = (W - L - R) / Math.max(1, items.length);
  items.forEach((it, i) => {
    const h = Math.max(0, y(0) - y(it.value));
    const r = el('rect', { x: L + i * slot + slot * 0.15, y: y(0) - h, width: slot * 0.7, height: h, class: 'bar' });
    r.append(el('title', {}, it.title));
    svg.append(r);
    const last = items.length - 1;
    if (i === 0 || (i === last && last % 7 > 3) || (i % 7 === 0 && last - i > 3) || (i === last && last % 7 === 0)) {
      svg.append(el('text', { x: L + i * slot + slot / 2, y: H - 6, 'text-anchor': 'middle', class: 'tick' }, it.label));
    }
  });
  return svg;
}
