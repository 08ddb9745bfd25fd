// Experiments list: status filter, pagination, auto-refresh.

import * as api from "../api.js";
import { can } from "../auth.js";
import { h, replace } from "../dom.js";
import { dateTime, relative, shortTime } from "../format.js";
import { inlineError } from "../notify.js";
import { autoRefresh, loading, modeBadge, pager, statusBadge } from "./common.js";

const REFRESH_SECONDS = 15;

export function experimentsView(root, { params, vocabulary, navigate }) {
  const status = params.get("status") || "";
  const pageNumber = Number(params.get("page") || 1);
  const go = (changes) => {
    const next = new URLSearchParams({ status, page: String(pageNumber), ...changes });
    for (const [key, value] of [...next.entries()]) if (!value || (key === "page" && value === "1")) next.delete(key);
    const query = next.toString();
    navigate(`/experiments${query ? `?${query}` : ""}`);
  };

  const tableArea = h("div", {}, loading());
  const updated = h("span", { class: "muted small" });
  const filters = h(
    "div",
    { class: "segmented", role: "group", "aria-label": "Filter by status" },
    [["", "All"], ...vocabulary.statuses.map((s) => [s, s[0].toUpperCase() + s.slice(1)])].map(([value, label]) =>
      h("button", { type: "button", class: ["segment", value === status && "active"], "aria-pressed": String(value === status), onclick: () => go({ status: value, page: "1" }) }, label),
    ),
  );

  replace(
    root,
    h("div", { class: "page-head" },
      h("h1", {}, "Experiments"),
      h("div", { class: "page-actions" },
        updated,
        can("create") ? h("a", { class: "btn btn-primary", href: "#/new" }, "+ New experiment") : null)),
    h("div", { class: "toolbar" }, filters),
    tableArea,
  );

  async function load() {
    try {
      const { items, pagination } = await api.listExperiments({ status: status || undefined, page: pageNumber });
      replace(tableArea, table(items), pager(pagination, (p) => go({ page: String(p) })));
      replace(updated, `Updated ${shortTime(new Date())} · refreshes every ${REFRESH_SECONDS} s`);
    } catch (error) {
      replace(tableArea, inlineError(error, "Could not load experiments"));
    }
  }

  function table(items) {
    if (!items.length) {
      return h("div", { class: "empty" },
        h("p", {}, status ? `No ${status} experiments.` : "No experiments yet."),
        can("create") ? h("a", { class: "btn btn-primary", href: "#/new" }, "Create the first one") : null);
    }
    return h("div", { class: "table-wrap table-card" },
      h("table", { class: "table table-hover" },
        h("thead", {}, h("tr", {}, ["Name", "Status", "Mode", "Variants", "Primary metric", "Coverage", "Started", "Updated"].map((c) => h("th", {}, c)))),
        h("tbody", {}, items.map((e) =>
          h("tr", { class: "clickable", onclick: () => navigate(`/experiments/${e.id}`) },
            h("td", {}, h("a", { href: `#/experiments/${e.id}` }, e.name), e.description ? h("div", { class: "muted small clamp" }, e.description) : null),
            h("td", {}, statusBadge(e.status)),
            h("td", {}, modeBadge(e.mode)),
            h("td", {}, e.variants.map((v) => h("span", { class: ["chip", v.paused && "chip-paused"], title: v.paused ? `paused${v.paused_reason ? `: ${v.paused_reason}` : ""}` : "" }, `${v.name} ${v.traffic_share}%`))),
            h("td", {}, e.primary_metric),
            h("td", { class: "num" }, `${e.coverage}%`),
            h("td", { title: dateTime(e.started_at) }, e.started_at ? relative(e.started_at) : "–"),
            h("td", { title: dateTime(e.updated_at) }, relative(e.updated_at)),
          )))));
  }

  load();
  return autoRefresh(load, REFRESH_SECONDS);
}
