// The create form's design section: layer and allocation, holdouts, approval, schedule,
// and a live sample-size planner ("needs about N users per arm, about D days").

import * as api from "../api.js";
import { field, h, replace, select } from "../dom.js";
import { integer } from "../format.js";
import { card } from "./common.js";

const PLAN_DELAY_MS = 300;

function utcInput(name) {
  return h("input", { class: "input", type: "datetime-local", name, step: "1" });
}

/** "2026-12-02T10:00" typed in the UTC field → ISO 8601 with an explicit offset. */
function utcValue(control) {
  return control.value ? `${control.value.length === 16 ? `${control.value}:00` : control.value}+00:00` : null;
}

/**
 * The section and its contribution to the request body.
 * `arms()` gives the number of variants (the planner plans for them); `metric()` the primary metric.
 * The form calls `replan()` on every change (it is debounced). `initial` is the draft being
 * edited: its values fill the fields, and cleared fields are sent as null so that they clear.
 */
export function designSection({ arms, metric, initial = null }) {
  const layers = [];
  const holdouts = [];
  const controls = {
    layer: select({ class: "input", name: "layer_id" }, [["", "No layer"]], ""),
    allocation: h("input", { class: "input", type: "number", name: "layer_allocation", min: "0.01", max: "100", step: "0.01", placeholder: "percent of the layer" }),
    holdouts: h("div", { class: "checks" }),
    category: h("input", { class: "input", name: "category", maxlength: 64, placeholder: "e.g. pricing, growth" }),
    requiresApproval: h("input", { type: "checkbox", name: "requires_approval" }),
    startAt: utcInput("start_at"),
    endAt: utcInput("end_at"),
    baseline: h("input", { class: "input", type: "number", step: "any", value: "0.1", "aria-label": "baseline" }),
    sd: h("input", { class: "input", type: "number", step: "any", min: "0", placeholder: "per-user standard deviation" }),
    kind: select({ class: "input" }, [["proportion", "a rate (conversion…)"], ["mean", "a mean (amount per user)"]], "proportion"),
    mde: h("input", { class: "input", type: "number", step: "any", value: "10", "aria-label": "minimum detectable effect" }),
    dailyUsers: h("input", { class: "input", type: "number", step: "1", min: "1", value: "1000" }),
    sequential: h("input", { type: "checkbox" }),
  };
  const layerFree = h("span", { class: "hint" });
  const approvalHint = h("span", { class: "hint" }, "pricing experiments always need a second person's approval");
  const plannerOut = h("div", { class: "callout", role: "status", "aria-live": "polite" }, "Fill in the baseline to see how many users you need.");

  const toLocal = (iso) => (iso ? new Date(iso).toISOString().slice(0, 19) : "");
  if (initial) {
    controls.allocation.value = initial.layer_allocation ?? "";
    controls.category.value = initial.category ?? "";
    controls.requiresApproval.checked = Boolean(initial.requires_approval);
    controls.startAt.value = toLocal(initial.start_at);
    controls.endAt.value = toLocal(initial.end_at);
  }

  function renderLayers() {
    const current = controls.layer.value || initial?.layer_id || "";
    replace(controls.layer, [["", "No layer"], ...layers.map((l) => [l.id, `${l.name} · ${l.largest_free_percent}% free`])].map(([value, label]) =>
      h("option", { value, selected: value === current }, label)));
  }

  function renderHoldouts() {
    replace(controls.holdouts, holdouts.length
      ? holdouts.map((o) => h("label", { class: "check" },
        h("input", { type: "checkbox", value: o.id, name: "holdout_ids", checked: Boolean(initial?.holdout_ids?.includes(o.id)) }), `${o.name} (${o.percent}%)`))
      : h("span", { class: "muted small" }, "No holdouts yet."));
  }

  let loaded = false;
  Promise.all([api.listLayers(), api.listHoldouts()]).then(([foundLayers, foundHoldouts]) => {
    loaded = true;
    layers.push(...foundLayers);
    holdouts.push(...foundHoldouts);
    renderLayers();
    renderHoldouts();
  }).catch(() => {
    replace(controls.holdouts, h("span", { class: "muted small" }, "Could not load layers and holdouts."));
  });

  function values() {
    const body = {};
    const problems = [];
    if (!loaded && initial?.layer_id) {
      Object.assign(body, { layer_id: initial.layer_id, layer_allocation: Number(controls.allocation.value) });
    } else if (controls.layer.value) {
      body.layer_id = controls.layer.value;
      body.layer_allocation = Number(controls.allocation.value);
      if (!(body.layer_allocation > 0 && body.layer_allocation <= 100)) problems.push(["layer_allocation", "a percent above 0 and at most 100"]);
      const layer = layers.find((l) => l.id === body.layer_id);
      replace(layerFree, layer ? `${layer.free_percent}% of this layer is free now (${layer.largest_free_percent}% in one piece)` : "");
    } else {
      replace(layerFree, "");
      if (initial) Object.assign(body, { layer_id: null, layer_allocation: null });
    }
    const chosen = [...controls.holdouts.querySelectorAll("input:checked")].map((box) => box.value);
    if (chosen.length || (initial && loaded)) body.holdout_ids = chosen;
    if (controls.category.value.trim()) body.category = controls.category.value.trim();
    else if (initial) body.category = null;
    const forced = body.category === "pricing";
    controls.requiresApproval.disabled = forced;
    if (forced) controls.requiresApproval.checked = true;
    if (controls.requiresApproval.checked) body.requires_approval = true;
    else if (initial && !forced) body.requires_approval = false;
    body.start_at = utcValue(controls.startAt);
    body.end_at = utcValue(controls.endAt);
    if (!body.start_at && !initial) delete body.start_at;
    if (!body.end_at && !initial) delete body.end_at;
    if (body.start_at && body.end_at && new Date(body.end_at) <= new Date(body.start_at)) problems.push(["end_at", "must be after the start"]);
    return { body, problems };
  }

  let timer = null;
  let sequence = 0;
  function plan() {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      const kind = controls.kind.value;
      const request = {
        metric_kind: kind,
        baseline: Number(controls.baseline.value),
        mde_relative: Number(controls.mde.value) / 100,
        arms: Math.max(2, arms()),
        daily_users: controls.dailyUsers.value ? Number(controls.dailyUsers.value) : null,
        sequential: controls.sequential.checked,
      };
      if (kind === "mean") request.sd = controls.sd.value ? Number(controls.sd.value) : null;
      if (!controls.baseline.value || !controls.mde.value) return;
      const mine = ++sequence;
      try {
        const answer = await api.planSampleSize(request);
        if (mine !== sequence) return;
        if (answer.users_per_arm === null) {
          replace(plannerOut, (controls.sequential.checked ? answer.sequential_plan : answer.fixed_horizon).message || "Out of reach.");
          return;
        }
        const other = controls.sequential.checked ? answer.fixed_horizon : answer.sequential_plan;
        replace(plannerOut,
          h("strong", {}, `Needs about ${integer(answer.users_per_arm)} users per arm`),
          answer.days !== null ? `, about ${integer(answer.days)} days at your traffic` : "",
          ` (${integer(answer.total_users)} in all, ${controls.sequential.checked ? "sequential: look any time" : "fixed horizon: decide once"}). `,
          h("span", { class: "muted small" }, `${controls.sequential.checked ? "Fixed horizon" : "Sequential"}: ${integer(other.users_per_arm)} per arm${other.days !== null ? `, ${integer(other.days)} days` : ""}.`));
      } catch (error) {
        if (mine !== sequence) return;
        const messages = Object.values(error.errors?.json || {}).flat();
        replace(plannerOut, messages.length ? messages.join(" ") : error.message);
      }
    }, PLAN_DELAY_MS);
  }

  const element = card("Design, governance and power",
    h("div", { class: "grid grid-3" },
      field("Layer (mutually exclusive experiments)", controls.layer, null, "layer_id"),
      field("Share of the layer (%)", controls.allocation, layerFree, "layer_allocation"),
      h("div", { class: "field" }, h("span", { class: "field-label" }, "Holdouts that keep users out"), controls.holdouts,
        h("span", { class: "field-error", dataset: { errorFor: "holdout_ids" } }))),
    h("div", { class: "grid grid-3" },
      field("Category", controls.category, null, "category"),
      h("label", { class: "check field" }, controls.requiresApproval, " Requires four-eyes approval to start", approvalHint,
        h("span", { class: "field-error", dataset: { errorFor: "requires_approval" } })),
      h("span")),
    h("div", { class: "grid grid-2" },
      field("Scheduled start (UTC)", controls.startAt, "beat starts it within a minute (approval and layer room permitting)", "start_at"),
      field("Scheduled stop (UTC)", controls.endAt, null, "end_at")),
    h("h3", {}, "How many users does it need?"),
    h("div", { class: "grid grid-3" },
      field("Metric kind", controls.kind),
      field("Baseline (control's rate or mean)", controls.baseline),
      field("Standard deviation (means)", controls.sd),
      field("Smallest effect worth detecting (% relative)", controls.mde),
      field("Users entering per day", controls.dailyUsers),
      h("label", { class: "check field" }, controls.sequential, " Plan for SIRA's sequential rule (look at any time)")),
    plannerOut);

  controls.kind.value = metric && metric() === "conversion" ? "proportion" : controls.kind.value;
  plan();
  return { element, values, replan: plan };
}
