// One experiment: definition, lifecycle, variants (pause/resume), results per
// variant, SIRA insights, bandit history chart and reports.

import * as api from "../api.js";
import { can } from "../auth.js";
import { h, replace } from "../dom.js";
import { dateTime, percent, relative, shortTime } from "../format.js";
import { renderMarkdown } from "../markdown.js";
import { inlineError, showError, showSuccess } from "../notify.js";
import { autoRefresh, card, definitionList, loading, modeBadge, pager, statusBadge } from "./common.js";
import { renderGovernance } from "./approval_panel.js";
import { renderOverTime } from "./over_time.js";
import { renderResults } from "./results.js";

const REFRESH_SECONDS = 15;

const LIFECYCLE = [
  { action: "start", label: "Start", done: "Started", from: ["draft", "stopped"], call: api.startExperiment, style: "btn-primary" },
  { action: "stop", label: "Stop", done: "Stopped", from: ["running"], call: api.stopExperiment, style: "btn-warning",
    confirm: "Stop this experiment? New users stop being assigned; existing assignments are kept and start resumes it." },
  { action: "archive", label: "Archive", done: "Archived", from: ["draft", "stopped"], call: api.archiveExperiment, style: "",
    confirm: "Archive this experiment? Archiving is final." },
  { action: "delete", label: "Delete", from: ["draft"], call: api.deleteExperiment, style: "btn-danger",
    confirm: "Delete this draft for good?" },
];

function targetingText(targeting) {
  const entries = Object.entries(targeting || {});
  if (!entries.length) return "everyone";
  return h("div", { class: "stack-xs" }, entries.map(([key, value]) =>
    h("div", {}, h("span", { class: "muted" }, `${key}: `), Array.isArray(value) ? value.map((v) => h("span", { class: "chip" }, v)) : String(value))));
}

function json(value) {
  return h("pre", { class: "code code-inline" }, JSON.stringify(value, null, 2));
}

function downloadBlob(blob, filename) {
  const url = URL.createObjectURL(blob);
  const link = h("a", { href: url, download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

/** Auto-refresh re-renders a card only when its data changed, so open <details> and focus survive. */
function changed(cache, key, data) {
  const { computed_at: _ignored, ...stable } = data || {};
  const signature = JSON.stringify(stable);
  if (cache[key] === signature) return false;
  cache[key] = signature;
  return true;
}

export function detailView(root, { id, navigate }) {
  const rendered = {};
  let experiment = null;
  let results = null;
  let history = null;
  const resultsState = {};
  const overTimeState = {};
  let busy = false;

  const head = h("div", { class: "page-head" }, loading());
  const definitionBody = h("div", {}, loading());
  const variantsBody = h("div", {}, loading());
  const governanceBody = h("div", {}, loading());
  const governanceCard = card("Governance", governanceBody);
  governanceCard.hidden = true;
  const resultsBody = h("div", {}, loading());
  const insightsBody = h("div", {}, loading());
  const historyBody = h("div", {}, loading());
  const reportsBody = h("div", {}, loading());
  const reportViewer = h("div", { class: "report-viewer" });
  const updated = h("span", { class: "muted small" });
  let reportsPage = 1;

  replace(
    root,
    h("a", { class: "back", href: "#/experiments" }, "← Experiments"),
    head,
    h("div", { class: "grid grid-detail" },
      card("Definition", definitionBody),
      card("Variants", variantsBody)),
    governanceCard,
    can("results") ? card("Results", resultsBody) : null,
    can("insights") ? card("SIRA insights", insightsBody) : null,
    can("results") ? card("Over time", historyBody) : null,
    can("reports") ? card("SIRA reports", reportsBody, reportViewer) : null,
  );

  async function act(label, call, successMessage) {
    if (busy) return;
    busy = true;
    for (const button of root.querySelectorAll("button[data-mutation]")) button.disabled = true;
    try {
      await call();
      showSuccess(successMessage);
      return true;
    } catch (error) {
      showError(error, `Could not ${label}`);
      return false;
    } finally {
      busy = false;
      delete rendered.experiment; // re-render the buttons this disabled, even if nothing changed
      await refreshAll();
    }
  }

  function renderHead() {
    const actions = LIFECYCLE.filter((step) => step.from.includes(experiment.status) && can(step.action)).map((step) =>
      h("button", {
        type: "button", class: ["btn", step.style], dataset: { mutation: step.action },
        onclick: async () => {
          if (step.confirm && !window.confirm(step.confirm)) return;
          if (step.action === "delete") {
            try {
              await step.call(id);
              showSuccess(`Deleted “${experiment.name}”.`);
              navigate("/experiments");
            } catch (error) {
              showError(error, "Could not delete");
            }
            return;
          }
          await act(step.action, () => step.call(id), `${step.done} “${experiment.name}”.`);
        },
      }, step.label));
    const exports = can("export")
      ? ["events", "assignments"].map((kind) =>
        h("button", {
          type: "button", class: "btn btn-ghost",
          onclick: async () => {
            try {
              downloadBlob(await api.exportData(id, kind, "csv"), `${experiment.name.replace(/[^\w-]+/g, "_")}-${kind}.csv`);
            } catch (error) {
              showError(error, `Could not export ${kind}`);
            }
          },
        }, `Export ${kind} (CSV)`))
      : [];
    const editable = can("update") && experiment.status !== "archived";
    replace(
      head,
      h("div", { class: "title-block" },
        h("h1", {}, experiment.name, " ", statusBadge(experiment.status), " ", modeBadge(experiment.mode)),
        h("div", { class: "muted small" }, `id ${experiment.id} · version ${experiment.version} · created by ${experiment.created_by} ${relative(experiment.created_at)}`)),
      h("div", { class: "page-actions" },
        updated,
        editable && experiment.status === "draft" ? h("a", { class: "btn btn-ghost", href: `#/experiments/${experiment.id}/edit` }, "Edit draft") : null,
        editable && experiment.status !== "draft" ? h("button", { type: "button", class: "btn btn-ghost", onclick: () => editNameDescription() }, "Rename") : null,
        can("create") ? h("a", { class: "btn btn-ghost", href: `#/new?from=${experiment.id}` }, "Clone") : null,
        exports,
        can("audit") ? h("a", { class: "btn btn-ghost", href: `#/audit?experiment_id=${experiment.id}` }, "Audit trail") : null,
        actions),
    );
  }

  function editNameDescription() {
    const name = h("input", { class: "input", value: experiment.name, maxlength: 200 });
    const description = h("textarea", { class: "input", rows: 3, value: experiment.description });
    const error = h("div");
    replace(definitionBody,
      h("form", {
        class: "stack",
        onsubmit: async (event) => {
          event.preventDefault();
          try {
            experiment = await api.updateExperiment(id, { name: name.value.trim(), description: description.value });
            showSuccess("Saved.");
            renderAll();
          } catch (failure) {
            replace(error, inlineError(failure, "Not saved"));
          }
        },
      },
      h("label", { class: "field" }, h("span", { class: "field-label" }, "Name"), name),
      h("label", { class: "field" }, h("span", { class: "field-label" }, "Description"), description),
      error,
      h("div", { class: "btn-row" },
        h("button", { type: "submit", class: "btn btn-primary" }, "Save"),
        h("button", { type: "button", class: "btn btn-ghost", onclick: () => renderDefinition() }, "Cancel"))));
  }

  function renderDefinition() {
    const e = experiment;
    replace(definitionBody, definitionList([
      ["Description", e.description || h("span", { class: "muted" }, "none")],
      ["Primary metric", e.primary_metric],
      ["Coverage", `${e.coverage}% of eligible users`],
      ["Targeting", targetingText(e.targeting)],
      ["Fail-fast", `${e.fail_fast?.rule ?? "–"} · min ${e.fail_fast?.min_samples ?? "–"} samples · threshold ${e.fail_fast?.threshold ?? "–"} · action ${e.fail_fast?.action ?? "–"}`],
      ["Guardrails", [(e.guardrails || []).map((g) => h("span", { class: "chip" }, g)), ` → ${e.guardrail_action ?? "–"}`]],
      e.mode === "bandit" ? ["Bandit", `burn-in ${e.bandit?.min_samples ?? "–"} users per arm · floor ${percent(e.bandit?.floor, 1)}`] : null,
      ["Started", e.started_at ? `${dateTime(e.started_at)} (${relative(e.started_at)})` : "–"],
      ["Stopped", e.stopped_at ? dateTime(e.stopped_at) : "–"],
      ["Updated", dateTime(e.updated_at)],
    ]));
  }

  function renderVariants() {
    const mayPause = can("pause_variant") && experiment.status !== "archived";
    replace(variantsBody, h("div", { class: "table-wrap" },
      h("table", { class: "table variants-table" },
        h("thead", {}, h("tr", {}, ["Variant", "Share", "Config", "State", "Actions"].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, experiment.variants.map((v) => h("tr", {},
          h("td", {}, v.name, v.is_control ? h("span", { class: "tag" }, "control") : null),
          h("td", { class: "num" }, `${v.traffic_share}%`),
          h("td", {}, json(v.config)),
          h("td", {}, v.paused ? h("span", { class: "badge badge-paused", title: v.paused_reason || "" }, "paused") : h("span", { class: "badge badge-live" }, "live"),
            v.paused && v.paused_reason ? h("div", { class: "muted small" }, v.paused_reason) : null),
          h("td", { class: "actions" }, mayPause
            ? (v.paused
              ? h("button", { type: "button", class: "btn btn-small", dataset: { mutation: "resume" }, onclick: () => act("resume the variant", () => api.resumeVariant(id, v.id), `Resumed “${v.name}”.`) }, "Resume")
              : h("button", {
                type: "button", class: "btn btn-small btn-warning", dataset: { mutation: "pause" },
                onclick: () => {
                  const reason = window.prompt(`Pause “${v.name}”: it receives no new users (users already in it keep it).\nReason (optional):`, "");
                  if (reason === null) return;
                  act("pause the variant", () => api.pauseVariant(id, v.id, reason.trim() || undefined), `Paused “${v.name}”.`);
                },
              }, "Pause"))
            : null)))))));
  }

  function renderResultsCard() {
    if (results) renderResults(resultsBody, results, experiment, resultsState);
  }

  function findingList(items, emptyText) {
    if (!items?.length) return h("p", { class: "muted" }, emptyText);
    return h("ul", { class: "findings" }, items.map((item) =>
      h("li", {},
        item.variant ? h("strong", {}, `${item.variant}: `) : null,
        item.message,
        item.action ? h("span", { class: "tag" }, item.outcome ? `${item.action} → ${item.outcome}` : item.action) : null,
        item.created_at ? h("span", { class: "muted small" }, ` ${dateTime(item.created_at)}`) : null)));
  }

  function renderInsights(insights) {
    const ff = insights.fail_fast || {};
    const guard = insights.guardrails || {};
    const names = Object.fromEntries(experiment.variants.map((v) => [v.id, v.name]));
    const named = (items) => (items || []).map((item) => ({ ...item, variant: item.variant || names[item.variant_id] }));
    replace(insightsBody,
      h("div", { class: "callout callout-info" }, h("strong", {}, "Recommendation "), insights.recommendation || "–"),
      h("div", { class: "grid grid-2" },
        h("div", {},
          h("h3", {}, "Fail-fast ", h("span", { class: "muted small" }, `${ff.rule ?? ""} · min ${ff.min_samples ?? "–"} · action ${ff.action ?? "–"}`)),
          findingList(named(ff.flags), "No arm flagged now."),
          ff.recommendations?.length ? [h("h4", {}, "Recorded"), findingList(named(ff.recommendations), "")] : null),
        h("div", {},
          h("h3", {}, "Guardrails ", h("span", { class: "muted small" }, `${(guard.event_types || []).join(", ") || "none"} · action ${guard.action ?? "–"}`)),
          findingList(named(guard.flags), "No guardrail breached."),
          guard.recommendations?.length ? [h("h4", {}, "Recorded"), findingList(named(guard.recommendations), "")] : null)),
      h("h3", {}, "Suggested next experiments"),
      insights.suggestions?.length
        ? h("ul", { class: "suggestions" }, insights.suggestions.map((suggestion) => {
          const { kind, title, detail, message, ...rest } = suggestion;
          return h("li", {},
            h("div", {}, h("span", { class: "tag tag-kind" }, (kind || "suggestion").replace(/_/g, " ")), " ", h("strong", {}, title || "")),
            detail || message ? h("div", {}, detail || message) : null,
            Object.keys(rest).length ? h("details", {}, h("summary", {}, "figures"), json(rest)) : null);
        }))
        : h("p", { class: "muted" }, "None yet: SIRA suggests follow-ups once there is data."),
      h("p", { class: "muted small" }, `computed ${dateTime(insights.computed_at)}`),
    );
  }

  async function loadReports() {
    try {
      const { items, pagination } = await api.listReports({ experimentId: id, page: reportsPage });
      replace(reportsBody,
        items.length
          ? h("div", { class: "table-wrap" }, h("table", { class: "table table-hover" },
            h("thead", {}, h("tr", {}, ["Date", "Recommendation", ""].map((c) => h("th", {}, c)))),
            h("tbody", {}, items.map((report) => h("tr", {},
              h("td", {}, report.report_date),
              h("td", {}, report.recommendation || "–"),
              h("td", { class: "actions" }, h("button", { type: "button", class: "btn btn-small", onclick: () => openReport(report) }, "Read")))))))
          : h("p", { class: "muted" }, "No report yet: SIRA writes one a day for running experiments."),
        items.length ? pager(pagination, (p) => { reportsPage = p; loadReports(); }) : null);
    } catch (error) {
      replace(reportsBody, inlineError(error, "Could not load reports"));
    }
  }

  async function openReport(report) {
    replace(reportViewer, loading());
    try {
      const markdown = await api.getReportMarkdown(report.id);
      replace(reportViewer,
        h("div", { class: "report-head" },
          h("strong", {}, `Report of ${report.report_date}`),
          h("button", { type: "button", class: "btn btn-small btn-ghost", onclick: () => replace(reportViewer) }, "Close")),
        renderMarkdown(markdown));
      reportViewer.scrollIntoView({ behavior: "smooth", block: "start" });
    } catch (error) {
      replace(reportViewer, inlineError(error, "Could not load the report"));
    }
  }

  function renderAll() {
    renderHead();
    renderDefinition();
    renderVariants();
    // Servers without approvals and schedules send none of these fields: no card then.
    governanceCard.hidden = !("requires_approval" in experiment);
    if (!governanceCard.hidden) renderGovernance(governanceBody, experiment, act);
  }

  async function refreshAll() {
    try {
      experiment = await api.getExperiment(id);
    } catch (error) {
      replace(head, h("div", {}, inlineError(error, "Could not load the experiment")));
      replace(definitionBody);
      replace(variantsBody);
      return;
    }
    if (changed(rendered, "experiment", experiment)) renderAll();
    const failed = (key, body, context) => (error) => {
      delete rendered[key];
      replace(body, inlineError(error, context));
    };
    const jobs = [];
    if (can("results")) {
      jobs.push(api.getResults(id).then((r) => {
        results = r;
        if (changed(rendered, "results", r)) renderResultsCard();
      }, failed("results", resultsBody, "Could not load results")));
      jobs.push(api.getBanditHistory(id).then((loaded) => {
        history = loaded;
        if (changed(rendered, "history", loaded)) renderOverTime(historyBody, loaded, experiment, overTimeState);
      }, failed("history", historyBody, "Could not load the bandit history")));
    }
    if (can("insights")) {
      jobs.push(api.getInsights(id).then((insights) => {
        if (changed(rendered, "insights", insights)) renderInsights(insights);
      }, failed("insights", insightsBody, "Could not load insights")));
    }
    if (can("reports")) jobs.push(loadReports());
    await Promise.all(jobs);
    replace(updated, `Updated ${shortTime(new Date())}`);
  }

  // Charts are drawn for the window's width: draw them again when it changes.
  let resizeTimer = null;
  let lastWidth = document.documentElement.clientWidth;
  const onResize = () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      if (document.documentElement.clientWidth === lastWidth) return;
      lastWidth = document.documentElement.clientWidth;
      renderResultsCard();
      if (history) renderOverTime(historyBody, history, experiment, overTimeState);
    }, 100);
  };
  window.addEventListener("resize", onResize);

  refreshAll();
  const stopRefresh = autoRefresh(() => (busy || root.querySelector("form") ? Promise.resolve() : refreshAll()), REFRESH_SECONDS);
  return () => {
    stopRefresh();
    clearTimeout(resizeTimer);
    window.removeEventListener("resize", onResize);
  };
}
