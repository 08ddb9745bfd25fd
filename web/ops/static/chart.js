// An SVG line chart of the bandit's per-arm weight (or P(best)) over time.

import { h, s } from "./dom.js";
import { dateTime, percent, shortTime } from "./format.js";

export const PALETTE = ["#2563eb", "#16a34a", "#ea580c", "#9333ea", "#0891b2", "#db2777", "#65a30d", "#ca8a04", "#475569", "#dc2626"];

const WIDTH = 760;
const HEIGHT = 280;
const PAD = { top: 16, right: 20, bottom: 34, left: 48 };

/** history: the /bandit/history document; metric: "weight" | "prob_best". */
export function historyChart(history, metric = "weight") {
  const snapshots = history.snapshots;
  const times = snapshots.map((snap) => new Date(snap.computed_at).getTime());
  const start = Math.min(...times);
  const end = Math.max(...times);
  const span = end - start || 1;
  const plotWidth = WIDTH - PAD.left - PAD.right;
  const plotHeight = HEIGHT - PAD.top - PAD.bottom;
  const x = (t) => PAD.left + (snapshots.length === 1 ? plotWidth / 2 : ((t - start) / span) * plotWidth);
  const y = (v) => PAD.top + (1 - v) * plotHeight;

  const grid = [0, 0.25, 0.5, 0.75, 1].map((v) => [
    s("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: y(v), y2: y(v), class: "chart-grid" }),
    s("text", { x: PAD.left - 8, y: y(v) + 4, class: "chart-label", "text-anchor": "end" }, `${v * 100}%`),
  ]);
  const ticks = snapshots.length === 1 ? [start] : [start, start + span / 2, end];
  const xLabels = ticks.map((t, index) =>
    s("text", {
      x: x(t), y: HEIGHT - 10, class: "chart-label",
      "text-anchor": snapshots.length === 1 ? "middle" : ["start", "middle", "end"][index],
    }, shortTime(t)),
  );

  const series = history.variants.map((variant, index) => {
    const color = PALETTE[index % PALETTE.length];
    const points = snapshots
      .map((snap, j) => {
        const arm = snap.arms.find((a) => a.variant_id === variant.variant_id);
        return arm ? [x(times[j]), y(arm[metric]), arm[metric], snap.computed_at] : null;
      })
      .filter(Boolean);
    const path = points.length > 1
      ? s("polyline", { points: points.map(([px, py]) => `${px.toFixed(1)},${py.toFixed(1)}`).join(" "), class: "chart-line", stroke: color })
      : null;
    const last = points[points.length - 1];
    const dots = (points.length <= 40 ? points : [last]).filter(Boolean).map(([px, py, value, at]) =>
      s("circle", { cx: px, cy: py, r: 3, fill: color }, s("title", {}, `${variant.name}: ${percent(value, 1)} at ${dateTime(at)}`)),
    );
    return s("g", {}, path, dots);
  });

  const svg = s(
    "svg",
    { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, class: "chart", role: "img", "aria-label": `${metric === "weight" ? "Weight" : "P(best)"} per variant over time` },
    grid, xLabels, series,
  );
  const legend = h(
    "ul",
    { class: "legend" },
    history.variants.map((variant, index) => {
      const lastArm = snapshots[snapshots.length - 1].arms.find((a) => a.variant_id === variant.variant_id);
      return h("li", {},
        h("span", { class: "swatch", dataset: { color: String(index % PALETTE.length) } }),
        `${variant.name}${variant.is_control ? " (control)" : ""}`,
        lastArm ? h("span", { class: "muted" }, ` ${percent(lastArm[metric], 1)}`) : null);
    }),
  );
  return h("figure", { class: "chart-figure" }, svg, legend,
    h("figcaption", { class: "muted" }, `${snapshots.length} snapshot${snapshots.length === 1 ? "" : "s"}, ${dateTime(start)} → ${dateTime(end)}`));
}
