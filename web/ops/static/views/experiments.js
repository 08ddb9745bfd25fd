// Experiments list: search by name, filter by status, mode, layer and owner (the server filters,
// so pagination counts stay right), a sparkline of the primary metric's uplift for each
// running experiment, auto-refresh.

import * as api from "../api.js";
import { can, currentClaims } from "../auth.js";
import { sparkline } from "../charts.js";
import { h, replace, select } from "../dom.js";
import { dateTime, relative, shortTime, signedPercent } from "../format.js";
import { inlineError } from "../notify.js";
import { autoRefresh, loading, modeBadge, pager, statusBadge } from "./common.js";

const REFRESH_SECONDS = 15;
const TREND_SNAPSHOTS = 40;
const FILTERS = ["q", "status", "mode", "created_by", "layer_id"];

/** The uplift series of the leading non-control arm (highest P(best) now) of a history document. */
export function upliftTrend(history) {
  const last = history.snapshots[history.snapshots.length - 1];
  if (!last) return null;
  const controlIds = new Set(history.variants.filter((v) => v.is_control).map((v) => v.variant_id));
  const leader = last.arms.filter((arm) => !controlIds.has(arm.variant_id)).sort((a, b) => b.prob_best - a.prob_best)[0];
  if (!leader) return null;
  const values = history.snapshots.map((snap) => snap.arms.find((arm) => arm.variant_id === leader.variant_id)?.uplift?.estimate ?? null);
  if (!values.some((v) => typeof v === "number")) return null;
  return { name: history.variants.find((v) => v.variant_id === leader.variant_id)?.name ?? "", values };
}

export function experimentsView(root, { params, vocabulary, navigate }) {
  const current = Object.fromEntries(FILTERS.map((key) => [key, params.get(key) || ""]));
  const pageNumber = Number(params.get("page") || 1);
  const go = (changes) => {
    const next = new URLSearchParams({ ...current, page: String(pageNumber), ...changes });
    for (const [key, value] of [...next.entries()]) if (!value || (key === "page" && value === "1")) next.delete(key);
    const query = next.toString();
    navigate(`/experiments${query ? `?${query}` : ""}`);
  };
  const trends = new Map();

  const tableArea = h("div", {}, loading());
  const updated = h("span", { class: "muted small", role: "status" });
  const statusFilter = h(
    "div",
    { class: "segmented", role: "group", "aria-label": "Filter by status" },
    [["", "All"], ...vocabulary.statuses.map((s) => [s, s[0].toUpperCase() + s.slice(1)])].map(([value, label]) =>
      h("button", { type: "button", class: ["segment", value === current.status && "active"], "aria-pressed": String(value === current.status), onclick: () => go({ status: value, page: "1" }) }, label),
    ),
  );
  const search = h("input", { class: "input", type: "search", name: "q", value: current.q, placeholder: "Search by name", "aria-label": "Search experiments by name", maxlength: 200 });
  const mode = select({ class: "input input-small", name: "mode", "aria-label": "Filter by mode" },
    [["", "Any mode"], ...vocabulary.modes.map((m) => [m, m === "ab" ? "A/B/n" : "Bandit"])], current.mode);
  const layer = select({ class: "input input-small", name: "layer_id", "aria-label": "Filter by layer" }, [["", "Any layer"]], current.layer_id);
  if (can("list_layers")) {
    api.listLayers().then((layers) => {
      replace(layer, [["", "Any layer"], ...layers.map((l) => [l.id, l.name])].map(([value, label]) =>
        h("option", { value, selected: value === current.layer_id }, label)));
    }, () => { layer.hidden = true; });
  } else {
    layer.hidden = true;
  }
  const owner = h("input", { class: "input input-small", name: "created_by", value: current.created_by, placeholder: "Owner", "aria-label": "Filter by owner", maxlength: 200, size: 14 });
  const me = currentClaims()?.sub;
  const toolbar = h("form", {
    class: "toolbar filters", role: "search",
    onsubmit: (event) => {
      event.preventDefault();
      go({ q: search.value.trim(), mode: mode.value, layer_id: layer.value, created_by: owner.value.trim(), page: "1" });
    },
  },
  search, mode, layer, owner,
  h("button", { type: "submit", class: "btn" }, "Filter"),
  me && current.created_by !== me ? h("button", { type: "button", class: "btn btn-ghost", onclick: () => go({ created_by: me, page: "1" }) }, "Mine") : null,
  FILTERS.some((key) => current[key]) ? h("button", { type: "button", class: "btn btn-ghost", onclick: () => navigate("/experiments") }, "Clear filters") : null);
  mode.addEventListener("change", () => toolbar.requestSubmit());
  layer.addEventListener("change", () => toolbar.requestSubmit());

  replace(
    root,
    h("div", { class: "page-head" },
      h("h1", {}, "Experiments"),
      h("div", { class: "page-actions" },
        updated,
        can("create") ? h("a", { class: "btn btn-primary", href: "#/new" }, "+ New experiment") : null)),
    h("div", { class: "toolbar" }, statusFilter),
    toolbar,
    tableArea,
  );

  async function loadTrends(items) {
    const running = items.filter((e) => e.status === "running" && can("results"));
    await Promise.all(running.map(async (e) => {
      try {
        trends.set(e.id, upliftTrend(await api.getBanditHistory(e.id, { limit: TREND_SNAPSHOTS })));
      } catch {
        trends.set(e.id, null); // the row still shows; the trend cell says it is missing
      }
    }));
  }

  async function load() {
    try {
      const { items, pagination } = await api.listExperiments({
        status: current.status || undefined, q: current.q || undefined, mode: current.mode || undefined,
        createdBy: current.created_by || undefined, layerId: current.layer_id || undefined, page: pageNumber,
      });
      await loadTrends(items);
      replace(tableArea, table(items), pager(pagination, (p) => go({ page: String(p) })));
      replace(updated, `Updated ${shortTime(new Date())} · refreshes every ${REFRESH_SECONDS} s`);
    } catch (error) {
      replace(tableArea, inlineError(error, "Could not load experiments"));
    }
  }

  function trendCell(e) {
    if (e.status !== "running") return h("span", { class: "muted" }, "–");
    const trend = trends.get(e.id);
    if (!trend) return h("span", { class: "muted small" }, "no data yet");
    const last = trend.values.filter((v) => typeof v === "number").slice(-1)[0];
    return h("div", { class: "trend" }, sparkline(trend.values, { label: `${e.primary_metric} uplift of ${trend.name}` }),
      h("span", { class: "small" }, signedPercent(last, 1)));
  }

  function table(items) {
    if (!items.length) {
      const filtered = FILTERS.some((key) => current[key]);
      return h("div", { class: "empty" },
        h("p", {}, filtered ? "No experiment matches these filters." : "No experiments yet."),
        can("create") && !filtered ? h("a", { class: "btn btn-primary", href: "#/new" }, "Create the first one") : null);
    }
    return h("div", { class: "table-wrap table-card" },
      h("table", { class: "table table-hover experiments-table" },
        h("caption", { class: "sr-only" }, "Experiments"),
        h("thead", {}, h("tr", {}, ["Name", "Status", "Mode", "Uplift trend", "Variants", "Primary metric", "Owner", "Coverage", "Started", "Updated"].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, items.map((e) =>
          h("tr", { class: "clickable", onclick: (event) => { if (!event.target.closest("a")) navigate(`/experiments/${e.id}`); } },
            h("td", {}, h("a", { href: `#/experiments/${e.id}` }, e.name), e.description ? h("div", { class: "muted small clamp" }, e.description) : null),
            h("td", {}, statusBadge(e.status)),
            h("td", {}, modeBadge(e.mode)),
            h("td", {}, trendCell(e)),
            h("td", {}, e.variants.map((v) => h("span", { class: ["chip", v.paused && "chip-paused"], title: v.paused ? `paused${v.paused_reason ? `: ${v.paused_reason}` : ""}` : "" }, `${v.name} ${v.traffic_share}%`))),
            h("td", {}, e.primary_metric),
            h("td", { class: "small" }, e.created_by),
            h("td", { class: "num" }, `${e.coverage}%`),
            h("td", { title: dateTime(e.started_at) }, e.started_at ? relative(e.started_at) : "–"),
            h("td", { title: dateTime(e.updated_at) }, relative(e.updated_at)),
          )))));
  }

  load();
  return autoRefresh(load, REFRESH_SECONDS);
}
