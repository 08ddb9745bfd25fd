// The experiment page's governance card: four-eyes approval (request, approve or reject
// with a comment — never one's own request), the schedule and its attempts, the layer.

import * as api from "../api.js";
import { can, currentClaims } from "../auth.js";
import { h, replace } from "../dom.js";
import { dateTime, relative } from "../format.js";
import { inlineError } from "../notify.js";
import { definitionList } from "./common.js";

const STATUS_CLASS = { pending: "badge-draft", approved: "badge-running", rejected: "badge-stopped", invalidated: "badge-archived" };

function requestLine(request) {
  return h("li", {},
    h("span", { class: ["badge", STATUS_CLASS[request.status] || ""] }, request.status), " ",
    `asked by ${request.requested_by} ${relative(request.requested_at)}`,
    request.comment ? h("span", { class: "muted" }, ` — “${request.comment}”`) : null,
    request.decided_by ? h("div", { class: "small" }, `${request.status} by ${request.decided_by} ${relative(request.decided_at)}`,
      request.decision_comment ? h("span", { class: "muted" }, ` — “${request.decision_comment}”`) : null) : null,
    request.invalidated_at ? h("div", { class: "small muted" }, `invalidated ${relative(request.invalidated_at)}: the draft changed after the decision`) : null);
}

/**
 * Fill `body` for `experiment`; `act(label, call, message)` runs a mutation the way the
 * experiment page does (banner, refresh). Returns a promise.
 */
export async function renderGovernance(body, experiment, act) {
  const me = currentClaims()?.sub;
  let requests = [];
  let schedule = null;
  try {
    [requests, schedule] = await Promise.all([
      can("list_approvals") ? api.listExperimentApprovals(experiment.id) : Promise.resolve([]),
      can("schedules") && (experiment.start_at || experiment.end_at) ? api.getExperimentSchedule(experiment.id) : Promise.resolve(null),
    ]);
  } catch (error) {
    replace(body, inlineError(error, "Could not load approvals and schedule"));
    return;
  }
  const latest = requests[0] || null;
  const open = latest && (latest.status === "pending" || latest.status === "approved");
  const startable = experiment.status === "draft" || experiment.status === "stopped";
  const ask = (approve) => {
    const comment = window.prompt(`${approve ? "Approve" : "Reject"} “${experiment.name}”: your comment (required)`);
    if (!comment || !comment.trim()) return;
    act(approve ? "approve" : "reject", () => (approve ? api.approveExperiment : api.rejectExperiment)(experiment.id, comment.trim()),
      `${approve ? "Approved" : "Rejected"} “${experiment.name}”.`);
  };
  const actions = [];
  if (experiment.requires_approval && startable && !open && can("request_approval")) {
    actions.push(h("button", {
      type: "button", class: "btn btn-small btn-primary", dataset: { mutation: "request_approval" },
      onclick: () => {
        const comment = window.prompt(`Ask a second ops_admin to approve starting “${experiment.name}”. Comment (optional):`, "");
        if (comment === null) return;
        act("request approval", () => api.requestApproval(experiment.id, comment.trim()), `Approval requested for “${experiment.name}”.`);
      },
    }, "Request approval"));
  }
  if (latest?.status === "pending") {
    if (latest.requested_by === me) actions.push(h("span", { class: "muted small" }, "Your request: another ops_admin decides."));
    else if (can("approve")) {
      actions.push(
        h("button", { type: "button", class: "btn btn-small btn-primary", dataset: { mutation: "approve" }, onclick: () => ask(true) }, "Approve"),
        h("button", { type: "button", class: "btn btn-small", dataset: { mutation: "reject" }, onclick: () => ask(false) }, "Reject"));
    }
  }
  const attempts = schedule?.attempts || [];
  replace(body,
    definitionList([
      ["Approval", experiment.requires_approval
        ? (latest ? h("span", { class: ["badge", STATUS_CLASS[latest.status] || ""] }, latest.status) : h("span", { class: "muted" }, "required; not requested yet"))
        : h("span", { class: "muted" }, "not required")],
      experiment.category ? ["Category", experiment.category] : null,
      ["Layer", experiment.layer_id
        ? [`${experiment.layer_allocation ?? "–"}% of layer `, h("span", { class: "mono small" }, String(experiment.layer_id).slice(0, 8)),
          experiment.layer_range ? h("span", { class: "muted small" }, ` · buckets ${experiment.layer_range.start}–${experiment.layer_range.end - 1}`) : null]
        : h("span", { class: "muted" }, "none")],
      ["Holdouts", (experiment.holdout_ids || []).length ? `${experiment.holdout_ids.length} holdout(s)` : h("span", { class: "muted" }, "none")],
      ["Scheduled start", experiment.start_at ? `${dateTime(experiment.start_at)} (${relative(experiment.start_at)})` : "–"],
      ["Scheduled stop", experiment.end_at ? `${dateTime(experiment.end_at)} (${relative(experiment.end_at)})` : "–"],
    ]),
    actions.length ? h("div", { class: "btn-row governance-actions" }, actions) : null,
    requests.length ? [h("h3", {}, "Approval history"), h("ul", { class: "findings" }, requests.map(requestLine))] : null,
    attempts.length ? [h("h3", {}, "Schedule attempts"), h("ul", { class: "findings" }, attempts.map((a) =>
      h("li", {}, h("span", { class: ["badge", a.succeeded ? "badge-running" : "badge-stopped"] }, a.succeeded ? "done" : "failed"), " ",
        `${a.action} due ${dateTime(a.scheduled_for)}, tried ${relative(a.attempted_at)}`, a.error ? h("span", { class: "muted" }, `: ${a.error}`) : null)))] : null);
}

