// The experiment form: a new draft, a draft being edited (every field), or a clone of
// any experiment into a new draft. Checked in the browser first, then by the API, whose
// 422 errors are shown next to the field they concern.

import * as api from "../api.js";
import { can } from "../auth.js";
import { field, h, replace, select } from "../dom.js";
import { clearBanners, fieldErrors, FormError, inlineError, showError, showSuccess } from "../notify.js";
import { card, loading } from "./common.js";
import { designSection } from "./design.js";

const MAX_CONFIG_BYTES = 16 * 1024;
const MIN_VARIANTS = 2;
const MAX_VARIANTS = 20;

const TARGETING_HINTS = {
  country: ["Countries", "ISO 3166-1 alpha-2, e.g. SN, CI, FR", "upper"],
  lang: ["Languages", "ISO 639, e.g. fr, en, wo", "lower"],
  currency: ["Currencies", "ISO 4217, e.g. XOF, EUR", "upper"],
  region: ["Regions", "free text, e.g. dakar, abidjan", null],
  device: ["Devices", "e.g. android, ios, web", null],
};

function splitList(text, casing) {
  const values = String(text).split(/[\s,;]+/).map((v) => v.trim()).filter(Boolean);
  return values.map((v) => (casing === "upper" ? v.toUpperCase() : casing === "lower" ? v.toLowerCase() : v));
}

function cents(value) {
  return Math.round(Number(value) * 100);
}

function evenShares(count) {
  const base = Math.floor(10000 / count);
  return Array.from({ length: count }, (_, i) => ((base + (i < 10000 - base * count ? 1 : 0)) / 100).toString());
}

export function createView(root, context) {
  const from = context.params?.get("from");
  if (!can("create")) {
    replace(root, card("New experiment", h("p", {}, "Your roles may not create experiments (ops_admin or marketing can).")));
    return null;
  }
  if (!from) return experimentForm(root, context, { kind: "create" });
  replace(root, loading());
  api.getExperiment(from).then(
    (source) => experimentForm(root, context, { kind: "clone", source }),
    (error) => replace(root, inlineError(error, "Could not load the experiment to clone")));
  return null;
}

export function editView(root, context) {
  if (!can("update")) {
    replace(root, card("Edit experiment", h("p", {}, "Your roles may not edit experiments.")));
    return null;
  }
  replace(root, loading());
  api.getExperiment(context.id).then((source) => {
    if (source.status !== "draft") {
      replace(root, card("Edit experiment", h("p", {}, `“${source.name}” is ${source.status}: only a draft can be edited field by field (its name and description can be changed on its page). `,
        h("a", { href: `#/experiments/${source.id}` }, "Back to the experiment"), " · ",
        can("create") ? h("a", { href: `#/new?from=${source.id}` }, "Clone it into a new draft") : null)));
      return;
    }
    experimentForm(root, context, { kind: "edit", source });
  }, (error) => replace(root, inlineError(error, "Could not load the experiment")));
  return null;
}

function variantState(source) {
  if (!source) {
    return [
      { name: "Control", config: "{}", share: "50", control: true },
      { name: "Variant B", config: "{}", share: "50", control: false },
    ];
  }
  return source.variants.map((v) => ({ name: v.name, config: JSON.stringify(v.config ?? {}, null, 2), share: String(v.traffic_share), control: v.is_control }));
}

function experimentForm(root, { vocabulary, navigate }, { kind, source = null }) {
  const defaults = vocabulary.defaults;
  const state = { variants: variantState(source) };
  const initial = source || {};
  const editing = kind === "edit";
  const input = (attributes) => h("input", { class: "input", ...attributes });
  const controls = {
    name: input({ name: "name", required: true, maxlength: 200, placeholder: "e.g. Checkout Button Color",
      value: kind === "clone" ? `${initial.name} (copy)`.slice(0, 200) : initial.name }),
    description: h("textarea", { class: "input", name: "description", rows: 2, maxlength: 10000, placeholder: "What is tested and why", value: initial.description }),
    mode: select({ class: "input", name: "mode" }, vocabulary.modes.map((m) => [m, m === "ab" ? "A/B/n — fixed split" : "Bandit — SIRA shifts traffic"]), initial.mode || "ab"),
    primary_metric: select({ class: "input", name: "primary_metric" }, vocabulary.event_types, initial.primary_metric || "conversion"),
    coverage: input({ name: "coverage", type: "number", min: "0.01", max: "100", step: "0.01", value: String(initial.coverage ?? 100) }),
    targeting: Object.fromEntries(vocabulary.targeting_list_keys.map((key) => [key, input({ name: `targeting.${key}`, placeholder: TARGETING_HINTS[key]?.[1] ?? "",
      value: (initial.targeting?.[key] || []).join(", ") })])),
    min_txn: input({ name: "targeting.min_txn", type: "number", min: "0", step: "1", placeholder: "no minimum", value: initial.targeting?.min_txn ?? "" }),
    fail_fast_rule: select({ class: "input", name: "fail_fast.rule" }, vocabulary.fail_fast_rules.map((r) => [r, r === "sequential" ? "sequential — always-valid confidence sequence" : "bayesian — P(worse than best) > threshold"]), initial.fail_fast?.rule || defaults.fail_fast.rule),
    fail_fast_min_samples: input({ name: "fail_fast.min_samples", type: "number", min: "1", step: "1", value: String(initial.fail_fast?.min_samples ?? defaults.fail_fast.min_samples) }),
    fail_fast_threshold: input({ name: "fail_fast.threshold", type: "number", min: "0.5", max: "0.999999", step: "0.01", value: String(initial.fail_fast?.threshold ?? defaults.fail_fast.threshold) }),
    fail_fast_action: select({ class: "input", name: "fail_fast.action" }, vocabulary.fail_fast_actions, initial.fail_fast?.action || defaults.fail_fast.action),
    guardrails: vocabulary.event_types.map((type) =>
      h("label", { class: "check" }, h("input", { type: "checkbox", name: "guardrails", value: type, checked: (initial.guardrails || vocabulary.default_guardrails).includes(type) }), type)),
    guardrail_action: select({ class: "input", name: "guardrail_action" }, vocabulary.guardrail_actions, initial.guardrail_action || defaults.guardrail_action),
    bandit_min_samples: input({ name: "bandit.min_samples", type: "number", min: "0", step: "1", value: String(initial.bandit?.min_samples ?? defaults.bandit.min_samples) }),
    bandit_floor: input({ name: "bandit.floor", type: "number", min: "0", max: "0.5", step: "0.005", value: String(initial.bandit?.floor ?? defaults.bandit.floor) }),
  };

  const design = designSection({ arms: () => state.variants.length, metric: () => controls.primary_metric.value, initial: editing ? initial : null });
  const variantsArea = h("div", { class: "variants-editor" });
  const shareTotal = h("div", { class: "share-total" });
  const addButton = h("button", { type: "button", class: "btn", onclick: () => addVariant() }, "+ Add variant");
  const evenButton = h("button", { type: "button", class: "btn", onclick: () => splitEvenly() }, "Split evenly");
  const banditSettings = h("div", { class: "grid grid-2" },
    field("Burn-in: users per arm before adapting", controls.bandit_min_samples, "every arm gets this many users before SIRA shifts traffic", "bandit.min_samples"),
    field("Floor per arm", controls.bandit_floor, "minimum share each live arm keeps (0.01 = 1%)", "bandit.floor"));
  const banditCard = card("Bandit settings", h("p", { class: "muted" }, "SIRA re-weights arms by P(best) after the burn-in; paused arms get 0."), banditSettings);
  const summary = h("div", { class: "form-summary" });
  const preview = h("pre", { class: "code" });
  const createButton = h("button", { type: "submit", class: "btn btn-primary" }, editing ? "Save draft" : "Create draft");
  const startButton = can("start") ? h("button", { type: "button", class: "btn", onclick: () => submit(true) }, editing ? "Save and start" : "Create and start") : null;

  function renderVariants() {
    replace(
      variantsArea,
      state.variants.map((variant, index) => {
        const configBox = h("textarea", { class: ["input", "mono"], name: `variants.${index}.config`, "aria-label": `Variant ${index + 1} config (JSON object)`, rows: 3, spellcheck: "false", value: variant.config, oninput: (e) => { variant.config = e.target.value; refresh(); } });
        return h("div", { class: ["variant-card", variant.control && "is-control"] },
          h("div", { class: "variant-head" },
            h("span", { class: "variant-index" }, `#${index + 1}`),
            h("label", { class: "check" },
              h("input", { type: "radio", name: "control", "aria-label": `Variant ${index + 1} is the control`, checked: variant.control, onchange: () => { state.variants.forEach((v, j) => { v.control = j === index; }); renderVariants(); refresh(); } }),
              "Control"),
            h("button", { type: "button", class: "btn btn-small btn-ghost", "aria-label": `Remove variant ${index + 1}`, disabled: state.variants.length <= MIN_VARIANTS, title: `at least ${MIN_VARIANTS} variants`, onclick: () => { state.variants.splice(index, 1); if (!state.variants.some((v) => v.control)) state.variants[0].control = true; renderVariants(); refresh(); } }, "Remove")),
          h("div", { class: "grid grid-variant" },
            field("Name", h("input", { class: "input", name: `variants.${index}.name`, "aria-label": `Variant ${index + 1} name`, value: variant.name, maxlength: 200, oninput: (e) => { variant.name = e.target.value; refresh(); } }), null, `variants.${index}.name`),
            field("Share (%)", h("input", { class: "input", name: `variants.${index}.traffic_share`, "aria-label": `Variant ${index + 1} share (%)`, type: "number", min: "0", max: "100", step: "0.01", value: variant.share, oninput: (e) => { variant.share = e.target.value; refresh(); } }), null, `variants.${index}.traffic_share`)),
          field("Config (JSON object)", configBox, "what the product receives for this variant, e.g. {\"button_color\": \"green\"}", `variants.${index}.config`),
          h("span", { class: "field-error", dataset: { errorFor: `variants.${index}.is_control` } }));
      }),
    );
    addButton.disabled = state.variants.length >= MAX_VARIANTS;
  }

  function addVariant() {
    const letter = String.fromCharCode(65 + state.variants.length);
    state.variants.push({ name: `Variant ${letter}`, config: "{}", share: "0", control: false });
    renderVariants();
    refresh();
  }

  function splitEvenly() {
    evenShares(state.variants.length).forEach((share, i) => { state.variants[i].share = share; });
    renderVariants();
    refresh();
  }

  /** The request body and the problems found before sending it, keyed like the API's errors. */
  function build() {
    const problems = [];
    const body = {
      name: controls.name.value.trim(),
      description: controls.description.value,
      mode: controls.mode.value,
      primary_metric: controls.primary_metric.value,
      coverage: Number(controls.coverage.value),
      targeting: {},
      variants: [],
      fail_fast: {
        rule: controls.fail_fast_rule.value,
        min_samples: Number(controls.fail_fast_min_samples.value),
        threshold: Number(controls.fail_fast_threshold.value),
        action: controls.fail_fast_action.value,
      },
      guardrails: controls.guardrails.map((label) => label.querySelector("input")).filter((box) => box.checked).map((box) => box.value),
      guardrail_action: controls.guardrail_action.value,
    };
    if (!body.name) problems.push(["name", "a name is required"]);
    if (!(body.coverage > 0 && body.coverage <= 100)) problems.push(["coverage", "coverage must be more than 0 and at most 100"]);
    for (const key of vocabulary.targeting_list_keys) {
      const values = splitList(controls.targeting[key].value, TARGETING_HINTS[key]?.[2]);
      if (values.length) body.targeting[key] = values;
      if (new Set(values).size !== values.length) problems.push([`targeting.${key}`, "values must be unique"]);
    }
    if (controls.min_txn.value !== "") {
      const minTxn = Number(controls.min_txn.value);
      if (!Number.isInteger(minTxn) || minTxn < 0) problems.push(["targeting.min_txn", "a whole number ≥ 0"]);
      body.targeting.min_txn = minTxn;
    }
    if (!Number.isInteger(body.fail_fast.min_samples) || body.fail_fast.min_samples < 1) problems.push(["fail_fast.min_samples", "a whole number ≥ 1"]);
    if (!(body.fail_fast.threshold >= 0.5 && body.fail_fast.threshold <= 0.999999)) problems.push(["fail_fast.threshold", "between 0.5 and 0.999999"]);
    if (body.mode === "bandit") {
      body.bandit = { min_samples: Number(controls.bandit_min_samples.value), floor: Number(controls.bandit_floor.value) };
      if (!Number.isInteger(body.bandit.min_samples) || body.bandit.min_samples < 0) problems.push(["bandit.min_samples", "a whole number ≥ 0"]);
      if (!(body.bandit.floor >= 0 && body.bandit.floor <= 0.5)) problems.push(["bandit.floor", "between 0 and 0.5"]);
    }

    const names = new Map();
    state.variants.forEach((variant, index) => {
      const name = variant.name.trim();
      if (!name) problems.push([`variants.${index}.name`, "a name is required"]);
      if (names.has(name)) problems.push([`variants.${index}.name`, `same name as variant #${names.get(name) + 1}`]);
      names.set(name, index);
      let config = {};
      try {
        config = variant.config.trim() ? JSON.parse(variant.config) : {};
        if (typeof config !== "object" || config === null || Array.isArray(config)) {
          problems.push([`variants.${index}.config`, "must be a JSON object ({…})"]);
          config = {};
        } else {
          const size = new TextEncoder().encode(JSON.stringify(config)).length;
          if (size >= MAX_CONFIG_BYTES) problems.push([`variants.${index}.config`, `${size} bytes; must be under ${MAX_CONFIG_BYTES}`]);
        }
      } catch (error) {
        problems.push([`variants.${index}.config`, `invalid JSON: ${error.message}`]);
      }
      const share = Number(variant.share);
      if (variant.share === "" || !(share >= 0 && share <= 100)) problems.push([`variants.${index}.traffic_share`, "a percentage between 0 and 100"]);
      else if (cents(share) / 100 !== share) problems.push([`variants.${index}.traffic_share`, "at most two decimals"]);
      body.variants.push({ name, config, traffic_share: share, is_control: variant.control });
    });
    const total = state.variants.reduce((sum, v) => sum + cents(v.share || 0), 0);
    if (total !== 10000) problems.push(["variants", `traffic shares must sum to exactly 100, got ${(total / 100).toFixed(2)}`]);
    if (state.variants.filter((v) => v.control).length !== 1) problems.push(["variants", "exactly one variant must be the control"]);
    if (state.variants.length < MIN_VARIANTS || state.variants.length > MAX_VARIANTS) problems.push(["variants", `${MIN_VARIANTS} to ${MAX_VARIANTS} variants`]);
    const designed = design.values();
    Object.assign(body, designed.body);
    problems.push(...designed.problems);
    return { body, problems, total };
  }

  function showProblems(problems, { scroll = false } = {}) {
    for (const slot of form.querySelectorAll("[data-error-for]")) {
      slot.textContent = "";
      slot.closest(".field")?.classList.remove("invalid");
    }
    const unplaced = [];
    for (const [path, message] of problems) {
      let slot = null;
      const parts = path.split(".");
      while (parts.length && !slot) {
        slot = form.querySelector(`[data-error-for="${CSS.escape(parts.join("."))}"]`);
        parts.pop();
      }
      if (slot) {
        slot.textContent = slot.textContent ? `${slot.textContent} ${message}` : message;
        slot.closest(".field")?.classList.add("invalid");
      } else {
        unplaced.push([path, message]);
      }
    }
    replace(summary, unplaced.length ? h("ul", { class: "error-list" }, unplaced.map(([path, message]) => h("li", {}, path ? [h("code", {}, path), ": "] : null, message))) : null);
    if (scroll) form.querySelector(".invalid, .form-summary li")?.scrollIntoView({ behavior: "smooth", block: "center" });
  }

  let touched = false;
  function refresh() {
    const { body, problems, total } = build();
    shareTotal.className = ["share-total", total === 10000 ? "ok" : "bad"].join(" ");
    replace(shareTotal, `Total ${(total / 100).toFixed(2)}%`, total === 10000 ? " ✓" : ` — must be exactly 100 (${total > 10000 ? "over" : "short"} by ${(Math.abs(total - 10000) / 100).toFixed(2)})`);
    banditCard.hidden = controls.mode.value !== "bandit";
    preview.textContent = JSON.stringify(body, null, 2);
    design.replan();
    if (touched) showProblems(problems);
    return { body, problems };
  }

  let submitting = false;
  async function submit(andStart) {
    if (submitting) return;
    touched = true;
    const { body, problems } = refresh();
    if (problems.length) {
      showProblems(problems, { scroll: true });
      showError(new FormError(`${problems.length} problem${problems.length > 1 ? "s" : ""} to fix before ${editing ? "saving" : "creating"}`), "Check the form");
      return;
    }
    submitting = true;
    createButton.disabled = true;
    if (startButton) startButton.disabled = true;
    try {
      const experiment = editing ? await api.updateExperiment(source.id, body) : await api.createExperiment(body);
      clearBanners();
      showSuccess(editing ? `Saved draft “${experiment.name}”.` : kind === "clone" ? `Cloned into the draft “${experiment.name}”.` : `Created draft “${experiment.name}”.`);
      if (andStart) {
        try {
          await api.startExperiment(experiment.id);
          showSuccess(`Started “${experiment.name}”.`);
        } catch (error) {
          showError(error, editing ? "Saved, but could not start" : "Created, but could not start");
        }
      }
      navigate(`/experiments/${experiment.id}`);
    } catch (error) {
      const placed = fieldErrors(error).flatMap(([path, messages]) => messages.map((m) => [path, m]));
      if (placed.length) showProblems(placed, { scroll: true });
      showError(error, editing ? "The API refused the changes" : "The API refused the experiment");
    } finally {
      submitting = false;
      createButton.disabled = false;
      if (startButton) startButton.disabled = false;
    }
  }

  const t = controls.targeting;
  const form = h(
    "form",
    { class: "create-form", novalidate: true, oninput: () => refresh(), onchange: () => refresh(), onsubmit: (e) => { e.preventDefault(); submit(false); } },
    card("1 · What is tested",
      h("div", { class: "grid grid-2" },
        field("Name", controls.name, null, "name"),
        field("Description", controls.description, null, "description"))),
    card("2 · How it is measured",
      h("div", { class: "grid grid-3" },
        field("Mode", controls.mode, "A/B/n keeps the split; a bandit moves traffic to the winner", "mode"),
        field("Primary metric", controls.primary_metric, "the event type SIRA decides on", "primary_metric"),
        field("Coverage (%)", controls.coverage, "share of eligible users enrolled", "coverage"))),
    card("3 · Variants",
      h("p", { class: "muted" }, `${MIN_VARIANTS}–${MAX_VARIANTS} variants, unique names, exactly one control; shares sum to 100.`),
      variantsArea,
      h("div", { class: "variants-footer" }, h("div", { class: "btn-row" }, addButton, evenButton), shareTotal),
      h("span", { class: "field-error", dataset: { errorFor: "variants" } })),
    card("4 · Who is eligible (targeting)",
      h("p", { class: "muted" }, "Leave a list empty to accept everyone; separate values with commas or spaces."),
      h("div", { class: "grid grid-3" },
        vocabulary.targeting_list_keys.map((key) => field(TARGETING_HINTS[key]?.[0] ?? key, t[key], null, `targeting.${key}`)),
        field("Minimum transactions", controls.min_txn, "users with fewer are not enrolled", "targeting.min_txn")),
      h("span", { class: "field-error", dataset: { errorFor: "targeting" } })),
    card("5 · SIRA safety: fail-fast and guardrails",
      h("div", { class: "grid grid-2" },
        field("Fail-fast rule", controls.fail_fast_rule, null, "fail_fast.rule"),
        field("Action when an arm is flagged", controls.fail_fast_action, "recommend only, pause the arm, or stop the experiment", "fail_fast.action"),
        field("Minimum samples per arm", controls.fail_fast_min_samples, null, "fail_fast.min_samples"),
        field("Threshold (bayesian rule)", controls.fail_fast_threshold, "P(worse than best) above which an arm is flagged", "fail_fast.threshold")),
      h("div", { class: "field" },
        h("span", { class: "field-label" }, "Guardrail events (a variant credibly worse than control on these is flagged)"),
        h("div", { class: "checks" }, controls.guardrails),
        h("span", { class: "field-error", dataset: { errorFor: "guardrails" } })),
      h("div", { class: "grid grid-2" }, field("Guardrail action", controls.guardrail_action, null, "guardrail_action")),
      h("span", { class: "field-error", dataset: { errorFor: "fail_fast" } })),
    banditCard,
    design.element,
    card("6 · Review",
      h("details", { class: "preview" }, h("summary", {}, "Request body"), preview),
      summary,
      h("div", { class: "btn-row" }, createButton, startButton, h("a", { class: "btn btn-ghost", href: source ? `#/experiments/${source.id}` : "#/experiments" }, "Cancel"))),
  );

  const title = editing ? `Edit draft “${source.name}”` : kind === "clone" ? `Clone “${source.name}”` : "New experiment";
  replace(root,
    source ? h("a", { class: "back", href: `#/experiments/${source.id}` }, `← ${source.name}`) : null,
    h("div", { class: "page-head" }, h("h1", {}, title)),
    kind === "clone" ? h("p", { class: "muted" }, "A new draft with the same definition; nothing of the original's data or history is copied.") : null,
    form);
  renderVariants();
  refresh();
  return null;
}
