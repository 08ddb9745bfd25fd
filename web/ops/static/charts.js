// The dashboard's charts, drawn as SVG by hand (no library, nothing from the network).
// Every chart is a <figure> with an accessible name (role="img" + aria-label) and a
// caption; values sit in <title> elements so a pointer or a screen reader gets them.
// A chart given missing values leaves them out rather than drawing a zero.

import { h, s } from "./dom.js";
import { dateTime, percent, shortTime, signedPercent } from "./format.js";

export const PALETTE = ["#2563eb", "#16a34a", "#ea580c", "#9333ea", "#0891b2", "#db2777", "#65a30d", "#ca8a04", "#475569", "#dc2626"];

const finite = (value) => typeof value === "number" && Number.isFinite(value);

/**
 * The drawing width in SVG units: the viewport's width up to 760, so that on a phone a
 * chart is drawn for its size (text stays legible) instead of a laptop chart scaled down.
 * Views re-render their charts when the window is resized.
 */
export function chartWidth() {
  const viewport = document.documentElement.clientWidth || 760;
  return Math.round(Math.max(300, Math.min(760, viewport - 56)));
}

export function colorOf(index) {
  return PALETTE[index % PALETTE.length];
}

function figure(svg, caption, legend) {
  return h("figure", { class: "chart-figure" }, svg, legend || null, caption ? h("figcaption", { class: "muted small" }, caption) : null);
}

function svgRoot(width, height, label, ...children) {
  return s("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": label, preserveAspectRatio: "xMidYMid meet" },
    s("title", {}, label), ...children);
}

/** Round tick values covering [low, high]. */
export function niceTicks(low, high, count = 5) {
  if (!(high > low)) return [low];
  const raw = (high - low) / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((m) => m >= raw) || raw;
  const ticks = [];
  for (let value = Math.ceil(low / step) * step; value <= high + step * 1e-9; value += step) ticks.push(Number(value.toFixed(12)));
  return ticks;
}

export function legend(items) {
  return h("ul", { class: "legend" }, items.map(({ label, color, detail, dashed }) =>
    h("li", {}, h("span", { class: ["swatch", dashed && "swatch-band"], dataset: { color: String(color) } }), label,
      detail ? h("span", { class: "muted" }, ` ${detail}`) : null)));
}

// --- Intervals per variant ---------------------------------------------------------

/**
 * Horizontal interval bars, one row per variant and up to two intervals per row
 * (e.g. fixed-horizon and always-valid, side by side).
 * rows: [{label, color, estimate, intervals: [{kind, lower, upper}]}]
 * options: {zeroCentred, reference (x of a reference line), format, label, kinds: {kind: text}}
 */
export function intervalChart(rows, { zeroCentred = false, reference = null, referenceLabel = "", format = percent, label, kinds = {}, markers = [] } = {}) {
  const values = rows.flatMap((row) => [row.estimate, ...row.intervals.flatMap((i) => [i.lower, i.upper])]).filter(finite);
  for (const marker of markers) if (finite(marker.value)) values.push(marker.value);
  if (finite(reference)) values.push(reference);
  if (!values.length) return null;
  let low = Math.min(...values);
  let high = Math.max(...values);
  if (zeroCentred) {
    const reach = Math.max(Math.abs(low), Math.abs(high)) * 1.1 || 0.01;
    low = -reach;
    high = reach;
  } else {
    const pad = (high - low) * 0.1 || Math.abs(high) * 0.1 || 0.01;
    low = Math.max(0, low - pad);
    high += pad;
  }
  const kindList = [...new Set(rows.flatMap((row) => row.intervals.map((i) => i.kind)))];
  const rowHeight = 14 + 12 * Math.max(1, kindList.length);
  const width = chartWidth();
  const labelWidth = width < 500 ? 92 : 150;
  const maxLabel = width < 500 ? 13 : 22;
  const top = 8;
  const height = top + rows.length * rowHeight + 30;
  const x = (v) => labelWidth + ((v - low) / (high - low || 1)) * (width - labelWidth - 24);
  const ticks = niceTicks(low, high, width < 500 ? 4 : 6);
  const grid = ticks.map((t) => [
    s("line", { x1: x(t), x2: x(t), y1: top, y2: height - 24, class: t === 0 && zeroCentred ? "chart-zero" : "chart-grid" }),
    s("text", { x: x(t), y: height - 8, class: "chart-label", "text-anchor": "middle" }, zeroCentred ? signedPercent(t, 0) : format(t)),
  ]);
  const referenceLine = finite(reference)
    ? s("g", {}, s("line", { x1: x(reference), x2: x(reference), y1: top, y2: height - 24, class: "chart-reference" }),
      s("text", { x: x(reference) + 4, y: top + 10, class: "chart-label chart-reference-label" }, referenceLabel))
    : null;
  const body = rows.map((row, index) => {
    const y0 = top + index * rowHeight;
    const bars = row.intervals.map((interval) => {
      const slot = kindList.indexOf(interval.kind);
      const y = y0 + 10 + slot * 12;
      const from = finite(interval.lower) ? interval.lower : interval.openLower ? low : null;
      const to = finite(interval.upper) ? interval.upper : interval.openUpper ? high : null;
      if (!finite(from) || !finite(to)) return null;
      const bound = (value) => (finite(value) ? format(value) : "unbounded");
      return s("g", {},
        s("line", { x1: x(from), x2: x(to), y1: y, y2: y, class: ["chart-interval", `chart-interval-${slot}`].join(" "), stroke: row.color }),
        finite(interval.lower) ? s("line", { x1: x(from), x2: x(from), y1: y - 4, y2: y + 4, class: "chart-cap", stroke: row.color }) : null,
        finite(interval.upper) ? s("line", { x1: x(to), x2: x(to), y1: y - 4, y2: y + 4, class: "chart-cap", stroke: row.color }) : null,
        s("title", {}, `${row.label}: ${kinds[interval.kind] || interval.kind} [${bound(interval.lower)}, ${bound(interval.upper)}]`));
    });
    const dot = finite(row.estimate)
      ? s("circle", { cx: x(row.estimate), cy: y0 + 10, r: 4.5, fill: row.color, class: "chart-estimate" }, s("title", {}, `${row.label}: ${format(row.estimate)}`))
      : s("text", { x: labelWidth + 4, y: y0 + 14, class: "chart-label" }, row.message || "no estimate yet");
    const rowMarkers = markers.filter((m) => m.row === index && finite(m.value)).map((m) =>
      s("path", { d: `M${x(m.value)},${y0 + 2} l4,-6 h-8 z`, class: "chart-marker" }, s("title", {}, m.title)));
    return s("g", {},
      s("text", { x: labelWidth - 10, y: y0 + 14, class: "chart-row-label", "text-anchor": "end" }, row.label.length > maxLabel ? `${row.label.slice(0, maxLabel - 1)}…` : row.label, s("title", {}, row.label)),
      bars, dot, rowMarkers);
  });
  const svg = svgRoot(width, height, label, grid, referenceLine, body);
  const key = kindList.length > 1 || kinds[kindList[0]]
    ? h("ul", { class: "legend" }, kindList.map((kind, slot) => h("li", {}, h("span", { class: ["interval-key", `interval-key-${slot}`] }), kinds[kind] || kind)))
    : null;
  return figure(svg, null, key);
}

// --- Posterior densities -------------------------------------------------------------

// Lanczos approximation (g = 7): enough for plotting a density.
const LANCZOS = [0.99999999999980993, 676.5203681218851, -1259.1392167224028, 771.32342877765313, -176.61502916214059,
  12.507343278686905, -0.13857109526572012, 9.9843695780195716e-6, 1.5056327351493116e-7];
function logGamma(z) {
  if (z < 0.5) return Math.log(Math.PI / Math.sin(Math.PI * z)) - logGamma(1 - z);
  const shifted = z - 1;
  let sum = LANCZOS[0];
  for (let i = 1; i < 9; i += 1) sum += LANCZOS[i] / (shifted + i);
  const t = shifted + 7.5;
  return 0.5 * Math.log(2 * Math.PI) + (shifted + 0.5) * Math.log(t) - t + Math.log(sum);
}

export function betaDensity(x, a, b) {
  if (x <= 0 || x >= 1) return 0;
  return Math.exp((a - 1) * Math.log(x) + (b - 1) * Math.log1p(-x) + logGamma(a + b) - logGamma(a) - logGamma(b));
}

/** arms: [{label, color, alpha, beta}] — Beta(α, β) posteriors of the conversion rate. */
export function densityChart(arms, { label = "Posterior densities of the arms", format = percent } = {}) {
  const usable = arms.filter((arm) => finite(arm.alpha) && finite(arm.beta) && arm.alpha > 0 && arm.beta > 0);
  if (!usable.length) return null;
  const moments = usable.map(({ alpha, beta }) => {
    const mean = alpha / (alpha + beta);
    const sd = Math.sqrt((alpha * beta) / ((alpha + beta) ** 2 * (alpha + beta + 1)));
    return [mean, sd];
  });
  const low = Math.max(0, Math.min(...moments.map(([m, sd]) => m - 4.5 * sd)));
  const high = Math.min(1, Math.max(...moments.map(([m, sd]) => m + 4.5 * sd)));
  const width = chartWidth();
  const height = width < 500 ? 170 : 200;
  const pad = { top: 10, right: 16, bottom: 30, left: 16 };
  const steps = 160;
  const xs = Array.from({ length: steps + 1 }, (_, i) => low + ((high - low) * i) / steps);
  const curves = usable.map((arm) => xs.map((v) => betaDensity(v, arm.alpha, arm.beta)));
  const peak = Math.max(...curves.flat().filter(finite)) || 1;
  const x = (v) => pad.left + ((v - low) / (high - low || 1)) * (width - pad.left - pad.right);
  const y = (d) => height - pad.bottom - (d / peak) * (height - pad.top - pad.bottom);
  const ticks = niceTicks(low, high, width < 500 ? 4 : 6);
  const grid = ticks.map((t) => [
    s("line", { x1: x(t), x2: x(t), y1: pad.top, y2: height - pad.bottom, class: "chart-grid" }),
    s("text", { x: x(t), y: height - 10, class: "chart-label", "text-anchor": "middle" }, format(t, 1)),
  ]);
  const paths = usable.map((arm, index) => {
    const points = xs.map((v, i) => `${x(v).toFixed(1)},${y(curves[index][i]).toFixed(1)}`);
    return s("g", {},
      s("path", { d: `M${x(low).toFixed(1)},${y(0)} L${points.join(" L")} L${x(high).toFixed(1)},${y(0)} Z`, class: "chart-density", fill: arm.color, stroke: arm.color },
        s("title", {}, `${arm.label}: Beta(${arm.alpha.toFixed(0)}, ${arm.beta.toFixed(0)}), mean ${format(moments[index][0])}`)));
  });
  const svg = svgRoot(width, height, label, grid, s("line", { x1: pad.left, x2: width - pad.right, y1: y(0), y2: y(0), class: "chart-axis" }), paths);
  return figure(svg, "Where each arm's conversion rate plausibly lies (Beta posterior from a uniform prior); overlap means the data cannot yet tell them apart.",
    legend(usable.map((arm, index) => ({ label: arm.label, color: arm.colorIndex ?? index, detail: `mean ${format(moments[index][0])}` }))));
}

// --- Over time ---------------------------------------------------------------------

/**
 * A time series chart. series: [{label, color (palette index), points: [[time ms, value]],
 * band: [[time ms, lower, upper]], bandLabel}]; options: {format, domain: [low, high] | null, zero: bool, label}.
 */
export function lineChart(series, { format = percent, domain = null, zero = false, label, caption } = {}) {
  const all = series.flatMap((line) => [...line.points.map(([, v]) => v), ...(line.band || []).flatMap(([, l, u]) => [l, u])]).filter(finite);
  const times = series.flatMap((line) => [...line.points.map(([t]) => t), ...(line.band || []).map(([t]) => t)]);
  if (!all.length || !times.length) return null;
  let [low, high] = domain || [Math.min(...all), Math.max(...all)];
  if (!domain) {
    if (zero) {
      low = Math.min(low, 0);
      high = Math.max(high, 0);
    }
    const pad = (high - low) * 0.08 || Math.abs(high) * 0.1 || 0.01;
    low -= pad;
    high += pad;
  }
  const start = Math.min(...times);
  const end = Math.max(...times);
  const span = end - start || 1;
  const width = chartWidth();
  const height = width < 500 ? 220 : 260;
  const pad = { top: 12, right: 18, bottom: 30, left: 56 };
  const single = start === end;
  const x = (t) => pad.left + (single ? (width - pad.left - pad.right) / 2 : ((t - start) / span) * (width - pad.left - pad.right));
  const y = (v) => pad.top + (1 - (Math.min(Math.max(v, low), high) - low) / (high - low || 1)) * (height - pad.top - pad.bottom);
  const ticks = niceTicks(low, high, 5);
  const grid = ticks.map((t) => [
    s("line", { x1: pad.left, x2: width - pad.right, y1: y(t), y2: y(t), class: t === 0 && zero ? "chart-zero" : "chart-grid" }),
    s("text", { x: pad.left - 8, y: y(t) + 4, class: "chart-label", "text-anchor": "end" }, format(t, 1)),
  ]);
  const timeTicks = single ? [start] : [start, start + span / 2, end];
  const xLabels = timeTicks.map((t, index) => s("text", {
    x: x(t), y: height - 9, class: "chart-label", "text-anchor": single ? "middle" : ["start", "middle", "end"][index],
  }, shortTime(t)));
  const drawn = series.map((line) => {
    const color = colorOf(line.color);
    const band = (line.band || []).filter(([, l, u]) => finite(l) && finite(u));
    const bandPath = band.length > 1
      ? s("path", {
        d: `M${band.map(([t, l]) => `${x(t).toFixed(1)},${y(l).toFixed(1)}`).join(" L")} L${[...band].reverse().map(([t, , u]) => `${x(t).toFixed(1)},${y(u).toFixed(1)}`).join(" L")} Z`,
        class: "chart-band", fill: color,
      }, s("title", {}, `${line.label}: ${line.bandLabel || "band"}`))
      : band.map(([t, l, u]) => s("line", { x1: x(t), x2: x(t), y1: y(l), y2: y(u), class: "chart-interval", stroke: color }));
    const points = line.points.filter(([, v]) => finite(v));
    const path = points.length > 1
      ? s("polyline", { points: points.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" "), class: "chart-line", stroke: color })
      : null;
    const dots = (points.length <= 40 ? points : points.slice(-1)).map(([t, v]) =>
      s("circle", { cx: x(t), cy: y(v), r: 2.75, fill: color }, s("title", {}, `${line.label}: ${format(v)} at ${dateTime(t)}`)));
    return s("g", {}, bandPath, path, dots);
  });
  const svg = svgRoot(width, height, label, grid, xLabels, drawn);
  return figure(svg, caption || `${dateTime(start)} → ${dateTime(end)}`,
    legend(series.map((line) => {
      const last = line.points.filter(([, v]) => finite(v)).slice(-1)[0];
      return { label: line.label, color: line.color, detail: last ? format(last[1]) : "" };
    })));
}

/** A tiny inline trend; values: numbers (null for gaps). */
export function sparkline(values, { label, format = signedPercent } = {}) {
  const points = values.map((v, i) => [i, v]).filter(([, v]) => finite(v));
  if (!points.length) return null;
  const width = 96;
  const height = 24;
  const vs = points.map(([, v]) => v);
  const low = Math.min(0, ...vs);
  const high = Math.max(0, ...vs);
  const x = (i) => (values.length === 1 ? width / 2 : 2 + (i / (values.length - 1)) * (width - 4));
  const y = (v) => 2 + (1 - (v - low) / (high - low || 1)) * (height - 4);
  const last = vs[vs.length - 1];
  const trend = last > 0 ? "up" : last < 0 ? "down" : "flat";
  return s("svg", { viewBox: `0 0 ${width} ${height}`, width, height, class: ["sparkline", `sparkline-${trend}`].join(" "), role: "img", "aria-label": `${label}: ${format(last)} now` },
    s("title", {}, `${label}: ${points.map(([, v]) => format(v)).join(" → ")}`),
    s("line", { x1: 0, x2: width, y1: y(0), y2: y(0), class: "sparkline-zero" }),
    points.length > 1
      ? s("polyline", { points: points.map(([i, v]) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" "), class: "sparkline-line" })
      : null,
    s("circle", { cx: x(points[points.length - 1][0]), cy: y(last), r: 2, class: "sparkline-dot" }));
}
