// Pieces shared by the views: status badges, pagination, auto-refresh.

import { h } from "../dom.js";

export function statusBadge(status) {
  return h("span", { class: ["badge", `badge-${status}`] }, status);
}

export function modeBadge(mode) {
  return h("span", { class: ["badge", "badge-mode"], title: mode === "bandit" ? "SIRA shifts traffic to the best variant" : "fixed split by traffic shares" }, mode === "bandit" ? "Bandit" : "A/B");
}

/** Previous / next controls from flask-smorest's X-Pagination header. */
export function pager(pagination, onPage) {
  if (!pagination || !pagination.total_pages) return h("div", { class: "pager muted" }, pagination ? "No entries." : "");
  const { page = pagination.last_page, total_pages: pages, total } = pagination;
  return h(
    "div",
    { class: "pager" },
    h("button", { type: "button", class: "btn btn-small", disabled: !pagination.previous_page, onclick: () => onPage(pagination.previous_page) }, "← Previous"),
    h("span", { class: "muted" }, `Page ${page} of ${pages} · ${total} in all`),
    h("button", { type: "button", class: "btn btn-small", disabled: !pagination.next_page, onclick: () => onPage(pagination.next_page) }, "Next →"),
  );
}

/**
 * Call `tick` every `seconds` while the tab is visible; returns a stop function.
 * A tick never overlaps the previous one.
 */
export function autoRefresh(tick, seconds) {
  let running = false;
  const timer = setInterval(async () => {
    if (document.hidden || running) return;
    running = true;
    try {
      await tick();
    } finally {
      running = false;
    }
  }, seconds * 1000);
  return () => clearInterval(timer);
}

export function card(title, ...children) {
  return h("section", { class: "card" }, title ? h("h2", { class: "card-title" }, title) : null, ...children);
}

export function loading(text = "Loading…") {
  return h("p", { class: "muted loading" }, text);
}

export function definitionList(pairs) {
  return h("dl", { class: "dl" }, pairs.filter(Boolean).map(([term, value]) => [h("dt", {}, term), h("dd", {}, value ?? "–")]));
}
