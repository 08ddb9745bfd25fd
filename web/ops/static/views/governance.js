// Governance: layer capacity, holdout results, the approval queue, scheduled starts and failures.

import * as api from "../api.js";
import { can, currentClaims } from "../auth.js";
import { h, replace, s, select } from "../dom.js";
import { dateTime, integer, interval, percent, relative, shortTime, signedPercent } from "../format.js";
import { inlineError, showError, showSuccess } from "../notify.js";
import { autoRefresh, card, loading, statusBadge } from "./common.js";

const REFRESH_SECONDS = 15;
const BAR_WIDTH = 600;
const BAR_HEIGHT = 22;

/** The layer's 10,000 buckets as a bar: owned ranges filled, free space empty. */
function capacityBar(layer) {
  const scale = BAR_WIDTH / layer.buckets;
  return s("svg", { class: "layer-bar", viewBox: `0 0 ${BAR_WIDTH} ${BAR_HEIGHT}`, width: "100%", height: BAR_HEIGHT, role: "img",
    "aria-label": `${layer.name}: ${layer.free_percent}% free` },
  s("rect", { x: 0, y: 0, width: BAR_WIDTH, height: BAR_HEIGHT, fill: "none", stroke: "currentColor", "stroke-opacity": "0.3" }),
  layer.ranges.map((range, index) =>
    s("rect", { x: range.start * scale, y: 1, width: Math.max(1, (range.end - range.start) * scale), height: BAR_HEIGHT - 2,
      fill: index % 2 ? "#2f7d6d" : "#3b6fb6" },
    s("title", {}, `${range.experiment_name}: buckets ${range.start}–${range.end - 1} (${range.allocation}%)`))));
}

function layersCard() {
  const body = h("div", {}, loading());
  const name = h("input", { class: "input", placeholder: "new layer name", "aria-label": "New layer name", maxlength: 200 });
  const form = can("create_layer")
    ? h("form", { class: "btn-row", onsubmit: async (event) => {
      event.preventDefault();
      try {
        await api.createLayer({ name: name.value.trim() });
        name.value = "";
        showSuccess("Layer created.");
        load();
      } catch (error) {
        showError(error, "Could not create the layer");
      }
    } }, name, h("button", { type: "submit", class: "btn" }, "+ Layer"))
    : null;

  async function load() {
    try {
      const layers = await api.listLayers();
      replace(body, layers.length ? layers.map((layer) =>
        h("div", { class: "layer" },
          h("div", { class: "layer-head" }, h("strong", {}, layer.name), " ",
            h("span", { class: "muted" }, `${layer.free_percent}% free · largest free piece ${layer.largest_free_percent}%`)),
          capacityBar(layer),
          h("ul", { class: "plain small" }, layer.experiments.map((e) =>
            h("li", {}, h("a", { href: `#/experiments/${e.id}` }, e.name), " ", statusBadge(e.status), ` ${e.allocation}%`,
              layer.ranges.find((r) => r.experiment_id === e.id) ? ` · buckets ${layer.ranges.find((r) => r.experiment_id === e.id).start}–${layer.ranges.find((r) => r.experiment_id === e.id).end - 1}` : ""))))) : h("p", { class: "muted" }, "No layers yet."));
    } catch (error) {
      replace(body, inlineError(error, "Could not load layers"));
    }
  }
  return { element: card("Layers: who owns which traffic", h("p", { class: "muted" }, "Experiments in a layer never share a user; each running one owns a range of the layer's 10,000 buckets."), form, body), load };
}

function holdoutsCard() {
  const body = h("div", {});
  const results = h("div", {});
  const chooser = select({ class: "input", "aria-label": "holdout" }, [["", "Choose a holdout…"]], "");
  chooser.addEventListener("change", () => showResults(chooser.value));

  async function showResults(id) {
    if (!id) {
      replace(results);
      return;
    }
    replace(results, loading());
    try {
      const data = await api.getHoldoutResults(id);
      replace(results,
        h("p", { class: "muted" }, `${integer(data.members)} holdout members vs ${integer(data.enrolled_users)} enrolled users in ${data.experiment_ids.length} experiment(s).`),
        h("div", { class: "table-wrap" }, h("table", { class: "table" },
          h("thead", {}, h("tr", {}, ["Metric", "Holdout rate", "Enrolled rate", "Uplift (enrolled vs holdout)", "Holdout value/user", "Enrolled value/user"].map((c) => h("th", {}, c)))),
          h("tbody", {}, Object.entries(data.metrics).map(([type, m]) =>
            h("tr", {},
              h("td", {}, type, m.lower_is_better ? h("span", { class: "muted small" }, " (fewer is better)") : null),
              h("td", {}, percent(m.holdout.rate), " ", h("span", { class: "muted small" }, interval(m.holdout.interval?.lower, m.holdout.interval?.upper))),
              h("td", {}, percent(m.enrolled.rate), " ", h("span", { class: "muted small" }, interval(m.enrolled.interval?.lower, m.enrolled.interval?.upper))),
              h("td", {}, m.uplift.estimate === null ? h("span", { class: "muted" }, m.uplift.message || "–")
                : [signedPercent(m.uplift.estimate), " ", h("span", { class: "muted small" }, interval(m.uplift.lower, m.uplift.upper, signedPercent))]),
              h("td", { class: "num" }, m.holdout.value_mean.toFixed(2)),
              h("td", { class: "num" }, m.enrolled.value_mean.toFixed(2))))))));
    } catch (error) {
      replace(results, inlineError(error, "Could not load the holdout's results"));
    }
  }

  async function load() {
    try {
      const holdouts = await api.listHoldouts();
      const current = chooser.value;
      replace(chooser, [["", "Choose a holdout…"], ...holdouts.map((o) => [o.id, `${o.name} (${o.percent}%, ${integer(o.members)} members)`])].map(([value, label]) =>
        h("option", { value, selected: value === current }, label)));
      replace(body, holdouts.length ? null : h("p", { class: "muted" }, "No holdouts yet."));
      if (current) showResults(current);
    } catch (error) {
      replace(body, inlineError(error, "Could not load holdouts"));
    }
  }
  return { element: card("Holdouts: members vs enrolled users", chooser, body, results), load };
}

function approvalsCard() {
  const body = h("div", {}, loading());
  const me = currentClaims()?.sub;

  async function decide(request, approve) {
    const comment = window.prompt(`${approve ? "Approve" : "Reject"} “${request.experiment_name}”: your comment`);
    if (!comment) return;
    try {
      await (approve ? api.approveExperiment : api.rejectExperiment)(request.experiment_id, comment);
      showSuccess(`${approve ? "Approved" : "Rejected"} “${request.experiment_name}”.`);
      load();
    } catch (error) {
      showError(error, "The decision was refused");
    }
  }

  async function ask(experiment) {
    const comment = window.prompt(`Ask for approval to start “${experiment.name}”: a note for the approver`) ?? null;
    if (comment === null) return;
    try {
      await api.requestApproval(experiment.id, comment);
      showSuccess(`Approval requested for “${experiment.name}”.`);
      load();
    } catch (error) {
      showError(error, "Could not request approval");
    }
  }

  function drafts(waiting) {
    if (!waiting.length) return null;
    return h("div", {},
      h("h3", {}, "Drafts that need approval and have not asked yet"),
      h("ul", { class: "plain" }, waiting.map((e) => h("li", {},
        h("a", { href: `#/experiments/${e.id}` }, e.name), e.category ? ` · ${e.category}` : "", " ",
        can("request_approval") ? h("button", { type: "button", class: "btn btn-small", onclick: () => ask(e) }, "Request approval") : null))));
  }

  async function load() {
    try {
      const [pending, approved, draftPage] = await Promise.all([
        api.listApprovalRequests({ status: "pending" }),
        api.listApprovalRequests({ status: "approved" }),
        api.listExperiments({ status: "draft", pageSize: 100 }),
      ]);
      const open = new Set([...pending, ...approved].map((r) => r.experiment_id));
      const waiting = draftPage.items.filter((e) => e.requires_approval && !open.has(e.id));
      replace(body, drafts(waiting), pending.length ? h("div", { class: "table-wrap" }, h("table", { class: "table" },
        h("thead", {}, h("tr", {}, ["Experiment", "Asked by", "When", "Comment", ""].map((c) => h("th", {}, c)))),
        h("tbody", {}, pending.map((r) => h("tr", {},
          h("td", {}, h("a", { href: `#/experiments/${r.experiment_id}` }, r.experiment_name || r.experiment_id)),
          h("td", {}, r.requested_by),
          h("td", { title: dateTime(r.requested_at) }, relative(r.requested_at)),
          h("td", {}, r.comment || h("span", { class: "muted" }, "–")),
          h("td", {}, can("approve") && r.requested_by !== me
            ? h("div", { class: "btn-row" },
              h("button", { type: "button", class: "btn btn-small btn-primary", onclick: () => decide(r, true) }, "Approve"),
              h("button", { type: "button", class: "btn btn-small", onclick: () => decide(r, false) }, "Reject"))
            : h("span", { class: "muted small" }, r.requested_by === me ? "yours: another ops_admin decides" : "an ops_admin decides")))))))
        : h("p", { class: "muted" }, "Nothing waiting for approval."));
    } catch (error) {
      replace(body, inlineError(error, "Could not load the approval queue"));
    }
  }
  return { element: card("Approval queue (four eyes)", body), load };
}

function schedulesCard() {
  const body = h("div", {}, loading());
  async function load() {
    try {
      const { upcoming, failures } = await api.listSchedules();
      replace(body,
        h("h3", {}, "Upcoming"),
        upcoming.length ? h("ul", { class: "plain" }, upcoming.map((u) => h("li", {},
          h("strong", {}, u.action), " ", h("a", { href: `#/experiments/${u.experiment_id}` }, u.name), " ",
          h("span", { title: dateTime(u.at) }, `${relative(u.at)} (${dateTime(u.at)})`)))) : h("p", { class: "muted" }, "Nothing scheduled."),
        h("h3", {}, "Failed attempts (retried)"),
        failures.length ? h("ul", { class: "plain" }, failures.map((f) => h("li", {},
          h("span", { class: "badge badge-stopped" }, f.action), " ", h("a", { href: `#/experiments/${f.experiment_id}` }, f.experiment_id.slice(0, 8)),
          ` at ${shortTime(f.attempted_at)}: `, f.error))) : h("p", { class: "muted" }, "No failures."));
    } catch (error) {
      replace(body, inlineError(error, "Could not load schedules"));
    }
  }
  return { element: card("Scheduled starts and stops", body), load };
}

export function governanceView(root) {
  const parts = [approvalsCard(), schedulesCard(), layersCard(), holdoutsCard()];
  replace(root, h("div", { class: "page-head" }, h("h1", {}, "Governance")), parts.map((p) => p.element));
  const loadAll = () => Promise.all(parts.map((p) => p.load()));
  loadAll();
  return autoRefresh(loadAll, REFRESH_SECONDS);
}
