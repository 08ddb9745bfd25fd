// The experiment over time, from SIRA's history (a snapshot per recompute that changed
// something; fixed splits are recorded too): traffic weights, P(best), the posterior
// (α/β) of each arm and the cumulative uplift versus control with its band.

import { lineChart } from "../charts.js";
import { h, replace } from "../dom.js";
import { percent, signedPercent } from "../format.js";

const finite = (value) => typeof value === "number" && Number.isFinite(value);

const SERIES = [
  ["uplift", "Uplift vs control"],
  ["difference", "Difference (always-valid)"],
  ["prob_best", "P(best)"],
  ["posterior", "Posterior (α/β)"],
  ["weight", "Traffic weight"],
];

function series(history, pick, { skipControl = false } = {}) {
  return history.variants.map((variant, index) => ({ variant, index })).filter(({ variant }) => !(skipControl && variant.is_control)).map(({ variant, index }) => {
    const points = [];
    const band = [];
    for (const snapshot of history.snapshots) {
      const arm = snapshot.arms.find((a) => a.variant_id === variant.variant_id);
      if (!arm) continue;
      const at = new Date(snapshot.computed_at).getTime();
      const [value, lower, upper] = pick(arm);
      points.push([at, value]);
      if (finite(lower) && finite(upper)) band.push([at, lower, upper]);
    }
    return { label: `${variant.name}${variant.is_control ? " (control)" : ""}`, color: index, points, band };
  });
}

function chartFor(history, kind) {
  const metric = history.primary_metric || "primary metric";
  const pp = (x) => `${x > 0 ? "+" : ""}${(x * 100).toFixed(2)} pp`;
  if (kind === "weight") {
    return lineChart(series(history, (arm) => [arm.weight]), { domain: [0, 1], label: "Traffic weight per variant over time",
      caption: history.mode === "bandit" ? "Share of new users each arm receives (SIRA moves it towards the best arm)." : "Fixed split: the weights are the configured shares." });
  }
  if (kind === "prob_best") {
    return lineChart(series(history, (arm) => [arm.prob_best]), { domain: [0, 1], label: `P(best) per variant over time (${metric})`,
      caption: "Posterior probability that each arm has the best rate." });
  }
  if (kind === "posterior") {
    return lineChart(series(history, (arm) => [arm.posterior_mean ?? arm.alpha / (arm.alpha + arm.beta), arm.credible_interval?.lower, arm.credible_interval?.upper]).map((line) => ({ ...line, bandLabel: "95% credible interval" })),
      { label: `Posterior mean α/(α+β) per arm with 95% credible band (${metric}${history.lower_is_better ? ", users without the event" : ""})`,
        caption: "Beta(α, β) posterior of each arm's rate: mean and 95% credible band." });
  }
  if (kind === "difference") {
    return lineChart(series(history, (arm) => [arm.difference?.estimate, arm.difference?.always_valid_lower, arm.difference?.always_valid_upper], { skipControl: true })
      .map((line) => ({ ...line, bandLabel: "95% always-valid band" })),
    { zero: true, format: pp, label: `Cumulative difference of ${metric} rate versus control with its always-valid band`,
      caption: "The band stays valid however often it is looked at: a variant is credibly different once the band leaves zero." });
  }
  // Uplift: the always-valid band when the server sends it, else the fixed-horizon interval.
  const alwaysValid = history.snapshots.some((snap) => snap.arms.some((arm) => finite(arm.uplift?.always_valid_lower)));
  return lineChart(series(history, (arm) => alwaysValid
    ? [arm.uplift?.estimate, arm.uplift?.always_valid_lower, arm.uplift?.always_valid_upper]
    : [arm.uplift?.estimate, arm.uplift?.lower, arm.uplift?.upper], { skipControl: true })
    .map((line) => ({ ...line, bandLabel: alwaysValid ? "95% always-valid band" : "95% fixed-horizon interval" })),
  { zero: true, format: (x) => signedPercent(x, 1), label: `Cumulative relative uplift of ${metric} versus control`,
    caption: alwaysValid ? "Band: 95% always-valid (safe to peek)." : "Band: 95% fixed-horizon interval at each point (valid for one look; see the always-valid difference)." });
}

/** Render the history into `container`; `state.kind` is the series shown (kept across refreshes). */
export function renderOverTime(container, history, experiment, state) {
  if (!history.snapshots.length) {
    replace(container, h("p", { class: "muted" },
      experiment.status === "draft"
        ? "No history yet: SIRA records a snapshot of every arm once the experiment runs."
        : "No history recorded yet: SIRA appends a snapshot whenever a recompute changes counts or weights."));
    return;
  }
  state.kind = state.kind || (history.mode === "bandit" ? "weight" : "uplift");
  const last = history.snapshots[history.snapshots.length - 1];
  replace(container,
    h("div", { class: "segmented", role: "group", "aria-label": "Series shown over time" },
      SERIES.map(([value, label]) =>
        h("button", { type: "button", class: ["segment", state.kind === value && "active"], "aria-pressed": String(state.kind === value),
          onclick: () => { state.kind = value; renderOverTime(container, history, experiment, state); } }, label))),
    chartFor(history, state.kind) || h("p", { class: "muted" }, "Not enough data for this series yet."),
    h("p", { class: "muted small" }, `${history.snapshots.length} snapshot${history.snapshots.length === 1 ? "" : "s"}; latest: `,
      last.arms.map((arm) => {
        const variant = history.variants.find((v) => v.variant_id === arm.variant_id);
        return `${variant?.name ?? "?"} ${percent(arm.users ? arm.event_users / arm.users : null, 1)} of ${arm.users}`;
      }).join(" · ")));
}
