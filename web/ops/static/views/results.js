// Results of one experiment as charts people read (the numbers follow in a table):
// the rate per variant with its intervals, the uplift versus control on a zero-centred
// axis (fixed-horizon and always-valid side by side), the arms' posterior densities,
// revenue per user in the reporting currency with its per-currency breakdown, and the
// guardrails against their margins. Fields a server does not send yet are left out.

import { colorOf, densityChart, intervalChart } from "../charts.js";
import { h, replace, select } from "../dom.js";
import { decimal, integer, interval, percent, shortTime, signedPercent } from "../format.js";

const INTERVAL_KINDS = {
  fixed: "95% fixed-horizon",
  always_valid: "95% always-valid (safe to peek)",
  credible: "95% credible (Bayesian)",
};

const finite = (value) => typeof value === "number" && Number.isFinite(value);

function money(amount, currency) {
  if (!finite(amount)) return "–";
  try {
    return new Intl.NumberFormat("en-US", { style: "currency", currency, maximumFractionDigits: 2 }).format(amount);
  } catch {
    return `${amount.toFixed(2)} ${currency || ""}`.trim();
  }
}

/** Fixed-horizon and always-valid intervals of a comparison; a bound the server leaves
 *  open (null, e.g. an uplift over a control not yet bounded away from 0) is drawn open. */
function comparisonIntervals(block) {
  if (!block) return [];
  return [
    { kind: "fixed", lower: block.lower, upper: block.upper },
    { kind: "always_valid", lower: block.always_valid_lower, upper: block.always_valid_upper },
  ].filter((i) => finite(i.lower) || finite(i.upper))
    .map((i) => ({ ...i, openLower: !finite(i.lower), openUpper: !finite(i.upper) }));
}

/** The revenue block of a metric, wherever the server puts it. */
function revenueOf(variant, metric) {
  return variant.metrics?.[metric]?.revenue ?? variant.revenue?.[metric] ?? null;
}

function section(title, ...children) {
  return h("section", { class: "results-section", "aria-label": title }, h("h3", {}, title), ...children);
}

function rateChart(results, metric) {
  const rows = results.variants.map((v, index) => {
    const m = v.metrics[metric] || {};
    return {
      label: v.name,
      color: colorOf(index),
      estimate: m.rate,
      intervals: [
        { kind: "fixed", lower: m.interval?.lower, upper: m.interval?.upper },
        m.always_valid_interval
          ? { kind: "always_valid", lower: m.always_valid_interval.lower, upper: m.always_valid_interval.upper }
          : { kind: "credible", lower: m.credible_interval?.lower, upper: m.credible_interval?.upper },
      ],
    };
  });
  return intervalChart(rows, { label: `${metric} rate per variant with 95% intervals`, kinds: INTERVAL_KINDS });
}

function upliftChart(results, metric, key = "uplift") {
  const rows = results.variants.map((v, index) => ({ v, index })).filter(({ v }) => !v.is_control).map(({ v, index }) => {
    const block = v.metrics[metric]?.[key];
    return { label: v.name, color: colorOf(index), estimate: block?.estimate, message: block?.message, intervals: comparisonIntervals(block) };
  });
  if (!rows.length) return null;
  const format = key === "difference" ? (x) => `${x > 0 ? "+" : ""}${(x * 100).toFixed(2)} pp` : (x) => signedPercent(x, 1);
  return intervalChart(rows, {
    zeroCentred: true, format, kinds: INTERVAL_KINDS,
    label: key === "difference" ? `Difference of ${metric} rate versus control, percentage points` : `Relative uplift of ${metric} versus control`,
  });
}

function revenueSection(results, metric) {
  const blocks = results.variants.map((v) => revenueOf(v, metric));
  if (blocks.some(Boolean)) {
    const currency = blocks.find(Boolean)?.currency || results.reporting_currency || "";
    const rows = results.variants.map((v, index) => {
      const perUser = blocks[index]?.per_user || {};
      return { label: v.name, color: colorOf(index), estimate: perUser.estimate, intervals: [{ kind: "fixed", lower: perUser.lower, upper: perUser.upper }] };
    });
    const currencies = [...new Set(blocks.flatMap((b) => Object.keys(b?.by_currency || {})))].sort();
    const unconverted = blocks.reduce((sum, b) => sum + (b?.unconverted_events || 0), 0);
    const net = results.variants.some((v) => v.net_revenue?.per_user) && metric === "conversion"
      ? intervalChart(results.variants.map((v, index) => ({
        label: v.name, color: colorOf(index), estimate: v.net_revenue?.per_user?.estimate,
        intervals: [{ kind: "fixed", lower: v.net_revenue?.per_user?.lower, upper: v.net_revenue?.per_user?.upper }],
      })), { label: `Net revenue per user (conversions minus refunds) in ${currency}`, format: (x) => money(x, currency), kinds: INTERVAL_KINDS })
      : null;
    return section(`Revenue per user (${currency})`,
      intervalChart(rows, { label: `Revenue per user in ${currency} with 95% intervals`, format: (x) => money(x, currency), kinds: INTERVAL_KINDS }),
      net ? [h("h4", {}, "Net revenue per user (conversions minus refunds)"), net] : null,
      unconverted ? h("div", { class: "callout callout-danger" }, `${integer(unconverted)} money events have no exchange rate for their day and are not in these totals.`) : null,
      currencies.length ? h("div", { class: "table-wrap" }, h("table", { class: "table" },
        h("caption", { class: "muted small" }, "Per original currency (before conversion)"),
        h("thead", {}, h("tr", {}, h("th", {}, "Variant"), h("th", { class: "num" }, `Total (${currency})`),
          currencies.map((c) => h("th", { class: "num" }, `${c} per user`)))),
        h("tbody", {}, results.variants.map((v, index) => h("tr", {},
          h("td", {}, v.name),
          h("td", { class: "num" }, money(blocks[index]?.total, currency)),
          currencies.map((c) => {
            const entry = blocks[index]?.by_currency?.[c];
            return h("td", { class: "num" }, entry ? [money(entry.per_user?.estimate, c), h("div", { class: "muted small" }, `${integer(entry.users)} users`)] : "–");
          })))))) : null);
  }
  // No money metrics from the server: the plain mean of `value` per assigned user.
  if (!results.variants.some((v) => (v.metrics[metric]?.value_count ?? 0) > 0)) return null;
  const rows = results.variants.map((v, index) => {
    const m = v.metrics[metric] || {};
    return { label: v.name, color: colorOf(index), estimate: m.value_mean, intervals: [{ kind: "fixed", lower: m.value_interval?.lower, upper: m.value_interval?.upper }] };
  });
  return section(`Value per user (${metric})`,
    intervalChart(rows, { label: `Mean ${metric} value per assigned user`, format: (x) => decimal(x, 2), kinds: INTERVAL_KINDS }),
    h("p", { class: "muted small" }, "Mean of the events' value per assigned user, as sent (no currency conversion)."));
}

// Guardrails are judged as ratios per converter when the server computes them (a variant
// that sells more with the same refund habits is not worse); else on the event's rate.
const GUARDRAIL_RATIOS = {
  refund: [["refunds_per_converter", "refunds per converter"], ["refunded_amount_per_revenue", "refunded amount per revenue"]],
  fraud_alert: [["fraud_alerts_per_converter", "fraud alerts per converter"]],
};

function guardrailSection(results, experiment) {
  const guardrails = experiment?.guardrails || [];
  if (!guardrails.length) return null;
  const margin = experiment.guardrail_margin ?? results.guardrail_margin ?? null;
  const charts = guardrails.flatMap((event) => {
    const ratios = (GUARDRAIL_RATIOS[event] || []).filter(([key]) => results.variants.some((v) => v.ratios?.[key]));
    const measures = ratios.length
      ? ratios.map(([key, title]) => [title, (v) => v.ratios?.[key]?.uplift])
      : [[`${event} rate`, (v) => v.metrics[event]?.uplift]];
    return measures.map(([title, pick]) => {
      const rows = results.variants.map((v, index) => ({ v, index })).filter(({ v }) => !v.is_control).map(({ v, index }) => {
        const block = pick(v);
        return { label: v.name, color: colorOf(index), estimate: block?.estimate, message: block?.message, intervals: comparisonIntervals(block) };
      });
      const lowerIsBetter = (results.lower_is_better || []).includes(event);
      const reference = finite(margin) ? (lowerIsBetter ? margin : -margin) : null;
      return h("div", { class: "guardrail" },
        h("h4", {}, title),
        intervalChart(rows, {
          zeroCentred: true, format: (x) => signedPercent(x, 1), kinds: INTERVAL_KINDS, reference,
          referenceLabel: finite(margin) ? `margin ${signedPercent(reference, 0)}` : "",
          label: `${title} versus control${finite(margin) ? `, against a ${percent(margin, 0)} margin` : ""}`,
        }) || h("p", { class: "muted" }, "No data yet."));
    });
  });
  return section("Guardrails versus control",
    h("p", { class: "muted small" }, finite(margin)
      ? `An arm is flagged only when credibly worse than control by more than the ${percent(margin, 0)} margin (dashed line).`
      : "A variant credibly worse than control on these events is flagged."),
    charts);
}

function numbersTable(results, metric, lowerIsBetter) {
  const hasValues = results.variants.some((v) => (v.metrics[metric]?.value_count ?? 0) > 0);
  const maturedOf = (v) => v.metrics[metric]?.matured_users ?? v.matured_users;
  const matured = results.variants.some((v) => finite(maturedOf(v)));
  return h("div", { class: "table-wrap" },
    h("table", { class: "table results-table" },
      h("caption", { class: "muted small" }, `${metric}: the numbers behind the charts`),
      h("thead", {}, h("tr", {},
        h("th", { scope: "col" }, "Variant"),
        ["Assigned users", matured ? "Matured users" : null, `Users with ${metric}`, "Rate [95% CI]", "Uplift vs control [95% CI]", "P(beat control)", "P(best)", "Weight", hasValues ? "Value / user [95% CI]" : null]
          .filter(Boolean).map((label) => h("th", { class: "num", scope: "col" }, label)),
        h("th", { scope: "col" }, "State"))),
      h("tbody", {}, results.variants.map((v) => {
        const m = v.metrics[metric] || {};
        const uplift = m.uplift;
        const upliftClass = uplift?.lower > 0 ? (lowerIsBetter ? "worse" : "better") : uplift?.upper < 0 ? (lowerIsBetter ? "better" : "worse") : "";
        return h("tr", { class: v.paused ? "row-paused" : "" },
          h("th", { scope: "row" }, v.name, v.is_control ? h("span", { class: "tag" }, "control") : null),
          h("td", { class: "num" }, integer(v.assigned_users)),
          matured ? h("td", { class: "num", title: "users whose attribution window has closed (what the bandit and fail-fast count)" }, integer(maturedOf(v))) : null,
          h("td", { class: "num", title: `${integer(m.users)} of ${integer(v.assigned_users)} assigned users had at least one ${metric} event (${integer(m.events)} events)` }, integer(m.users)),
          h("td", { class: "num" }, h("strong", {}, percent(m.rate)), h("div", { class: "muted small" }, interval(m.interval?.lower, m.interval?.upper))),
          h("td", { class: ["num", upliftClass] }, v.is_control ? h("span", { class: "muted" }, "baseline")
            : uplift ? [signedPercent(uplift.estimate), h("div", { class: "muted small" }, interval(uplift.lower, uplift.upper, signedPercent) || uplift.message || ""),
              finite(uplift.always_valid_lower) ? h("div", { class: "muted small", title: "always-valid" }, `AV ${interval(uplift.always_valid_lower, uplift.always_valid_upper, signedPercent)}`) : null] : "–"),
          h("td", { class: "num" }, v.is_control ? "–" : percent(m.prob_beat_control, 1)),
          h("td", { class: "num" }, percent(v.prob_best, 1)),
          h("td", { class: "num" }, percent(v.weight, 1)),
          hasValues ? h("td", { class: "num" }, decimal(m.value_mean, 2), h("div", { class: "muted small" }, interval(m.value_interval?.lower, m.value_interval?.upper, (x) => decimal(x, 2)))) : null,
          h("td", {}, v.paused ? h("span", { class: "badge badge-paused" }, "paused") : h("span", { class: "badge badge-live" }, "live")));
      }))));
}

function chartsFor(results, experiment, metric, lowerIsBetter) {
  const hasDifference = results.variants.some((v) => v.metrics[metric]?.difference);
  return [
    section(`${metric} rate per variant`, rateChart(results, metric)),
    section(`Uplift of ${metric} versus control`, upliftChart(results, metric) || h("p", { class: "muted" }, "No comparison yet.")),
    hasDifference ? section("Difference versus control (percentage points)", upliftChart(results, metric, "difference")) : null,
    metric === results.primary_metric
      ? section("Posterior densities", densityChart(results.variants.map((v, index) => ({ label: v.name, colorIndex: index, color: colorOf(index), alpha: v.alpha, beta: v.beta })),
        { label: `Posterior densities of ${metric}${lowerIsBetter ? " (users without the event)" : ""} per arm` }))
      : null,
    revenueSection(results, metric),
    guardrailSection(results, experiment),
  ];
}

/** Render results into `container`; `state.metric` is the metric shown (kept across refreshes). */
export function renderResults(container, results, experiment, state) {
  const types = Object.keys(results.variants[0]?.metrics || {});
  state.metric = state.metric && types.includes(state.metric) ? state.metric : results.primary_metric;
  const metric = state.metric;
  const lowerIsBetter = (results.lower_is_better || []).includes(metric);
  const srm = results.srm;
  const hasData = results.variants.some((v) => v.assigned_users > 0);
  replace(container,
    h("div", { class: "toolbar" },
      h("label", { class: "inline-field" }, "Metric ",
        select({ class: "input input-small", name: "results-metric", onchange: (event) => { state.metric = event.target.value; renderResults(container, results, experiment, state); } },
          types.map((t) => [t, t === results.primary_metric ? `${t} (primary)` : t]), metric)),
      lowerIsBetter ? h("span", { class: "tag tag-warn" }, "fewer is better") : null,
      results.burn_in ? h("span", { class: "tag" }, "bandit burn-in") : null,
      finite(results.periods) ? h("span", { class: "tag", title: "allocation periods: estimates are stratified by period" }, `${results.periods} period${results.periods === 1 ? "" : "s"}`) : null,
      h("span", { class: "muted small" }, `computed ${shortTime(results.computed_at)}`)),
    srm ? h("div", { class: ["callout", srm.flagged ? "callout-danger" : finite(srm.p_value) ? "callout-ok" : "callout-neutral"], role: srm.flagged ? "alert" : null },
      h("strong", {}, srm.flagged ? "Sample ratio mismatch" : "SRM check"), " ",
      finite(srm.p_value) ? `χ² = ${decimal(srm.chi2, 2)}, p = ${Number(srm.p_value).toPrecision(3)}. ` : "",
      srm.message) : null,
    hasData ? null : h("p", { class: "muted" }, "No assigned users yet: the charts appear as traffic arrives."),
    hasData ? chartsFor(results, experiment, metric, lowerIsBetter) : null,
    numbersTable(results, metric, lowerIsBetter),
    h("p", { class: "muted small" }, "Rates are per assigned user (a user counts once). Fixed-horizon intervals hold for one look at a planned sample size; always-valid ones stay valid however often you look. P(best) is on the primary metric; weight is the share of new users the arm receives now."),
  );
}
