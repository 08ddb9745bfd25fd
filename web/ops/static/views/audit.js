// The audit log: newest first, filter by experiment, verify the hash chain.

import * as api from "../api.js";
import { can } from "../auth.js";
import { h, replace } from "../dom.js";
import { dateTime, shortId } from "../format.js";
import { inlineError, showError } from "../notify.js";
import { card, loading, pager } from "./common.js";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function changedKeys(before, after) {
  const keys = new Set([...Object.keys(before || {}), ...Object.keys(after || {})]);
  return [...keys].filter((key) => JSON.stringify(before?.[key]) !== JSON.stringify(after?.[key]));
}

export function auditView(root, { params, navigate }) {
  if (!can("audit")) {
    replace(root, card("Audit log", h("p", {}, "Your roles may not read the audit log (ops_admin or data_science can).")));
    return null;
  }
  const experimentId = params.get("experiment_id") || "";
  const pageNumber = Number(params.get("page") || 1);
  const go = (changes) => {
    const next = new URLSearchParams({ experiment_id: experimentId, page: String(pageNumber), ...changes });
    for (const [key, value] of [...next.entries()]) if (!value || (key === "page" && value === "1")) next.delete(key);
    const query = next.toString();
    navigate(`/audit${query ? `?${query}` : ""}`);
  };

  const filterInput = h("input", { class: "input", name: "experiment_id", value: experimentId, placeholder: "experiment id (UUID)", size: 40 });
  const filterError = h("span", { class: "field-error" });
  const verifyResult = h("div");
  const tableArea = h("div", {}, loading());
  const verifyButton = h("button", { type: "button", class: "btn", onclick: () => verify() }, "Verify chain");

  replace(root,
    h("div", { class: "page-head" },
      h("h1", {}, "Audit log"),
      h("div", { class: "page-actions" }, verifyButton)),
    h("p", { class: "muted" }, "Every mutation, by whom, before and after. Entries are hash-chained and PostgreSQL refuses to update or delete them."),
    verifyResult,
    h("form", {
      class: "toolbar",
      onsubmit: (event) => {
        event.preventDefault();
        const value = filterInput.value.trim();
        if (value && !UUID.test(value)) {
          filterError.textContent = "not a UUID";
          return;
        }
        go({ experiment_id: value, page: "1" });
      },
    },
    h("label", { class: "inline-field" }, "Experiment ", filterInput),
    h("button", { type: "submit", class: "btn" }, "Filter"),
    experimentId ? h("button", { type: "button", class: "btn btn-ghost", onclick: () => go({ experiment_id: "", page: "1" }) }, "Clear") : null,
    experimentId ? h("a", { class: "btn btn-ghost", href: `#/experiments/${experimentId}` }, "Open experiment") : null,
    filterError),
    tableArea);

  async function verify() {
    verifyButton.disabled = true;
    replace(verifyResult, loading("Walking the chain…"));
    try {
      const result = await api.verifyAudit();
      replace(verifyResult, result.ok
        ? h("div", { class: "callout callout-ok", role: "status" }, h("strong", {}, "Chain intact. "),
          result.from_checkpoint
            ? `${result.entries} entries checked: up to #${result.from_checkpoint.entry_id} by signed checkpoint ${result.from_checkpoint.id}, ` +
              `${result.verified_entries} after it re-hashed; every hash and link matches.`
            : `${result.entries} entries checked; every hash and link matches.`)
        : h("div", { class: "callout callout-danger", role: "alert" }, h("strong", {}, "Chain broken. "),
          `${result.entries} entries checked; first bad entry #${result.first_bad_id}: ${result.reason}`));
    } catch (error) {
      replace(verifyResult, inlineError(error, "Could not verify the chain"));
      showError(error, "Verify chain");
    } finally {
      verifyButton.disabled = false;
    }
  }

  async function load() {
    try {
      const { items, pagination } = await api.listAudit({ experimentId: experimentId || undefined, page: pageNumber });
      replace(tableArea,
        items.length ? h("div", { class: "table-wrap table-card" }, h("table", { class: "table audit-table" },
          h("thead", {}, h("tr", {}, ["#", "When", "Actor", "Action", "Experiment", "Change", "Hash"].map((c) => h("th", {}, c)))),
          h("tbody", {}, items.map((entry) => {
            const keys = changedKeys(entry.before, entry.after);
            return h("tr", {},
              h("td", { class: "num" }, entry.id),
              h("td", { class: "nowrap" }, dateTime(entry.created_at)),
              h("td", {}, entry.actor, h("div", {}, (entry.actor_roles || []).map((r) => h("span", { class: "chip" }, r)))),
              h("td", {}, h("span", { class: "tag" }, entry.action)),
              h("td", {}, entry.experiment_id
                ? [h("a", { href: `#/experiments/${entry.experiment_id}`, title: entry.experiment_id }, entry.after?.name || entry.before?.name || shortId(entry.experiment_id)),
                  h("div", { class: "muted small mono" }, shortId(entry.experiment_id))]
                : "–"),
              h("td", {},
                keys.length ? h("span", { class: "muted small" }, keys.slice(0, 6).join(", ") + (keys.length > 6 ? "…" : "")) : null,
                entry.before || entry.after
                  ? h("details", {}, h("summary", {}, "before / after"),
                    h("div", { class: "grid grid-2" },
                      h("pre", { class: "code" }, JSON.stringify(entry.before, null, 2)),
                      h("pre", { class: "code" }, JSON.stringify(entry.after, null, 2))))
                  : null,
                entry.request_id ? h("div", { class: "muted small" }, `request ${entry.request_id}${entry.client_ip ? ` from ${entry.client_ip}` : ""}`) : null),
              h("td", { class: "mono small", title: `hash ${entry.hash}\nprev ${entry.prev_hash}` }, entry.hash.slice(0, 12)));
          })))) : h("p", { class: "muted" }, "No audit entries."),
        pager(pagination, (p) => go({ page: String(p) })));
    } catch (error) {
      replace(tableArea, inlineError(error, "Could not load the audit log"));
    }
  }

  load();
  return null;
}
