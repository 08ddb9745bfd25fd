// Banners at the top of the page: every failure is shown with the API's own message.

import { h } from "./dom.js";

const USER_ERRORS = new Set(["ApiError", "FormError"]);

/** Something the user has to correct (not a failure of the page). */
export class FormError extends Error {
  constructor(message) {
    super(message);
    this.name = "FormError";
  }
}

/** [["variants.0.config", ["message", ...]], ...] from a marshmallow/flask-smorest errors object. */
export function flattenErrors(errors, prefix = "") {
  const out = [];
  if (errors === null || errors === undefined) return out;
  if (Array.isArray(errors) && errors.every((e) => typeof e === "string")) {
    out.push([prefix, errors]);
  } else if (typeof errors === "string") {
    out.push([prefix, [errors]]);
  } else if (typeof errors === "object") {
    for (const [key, value] of Object.entries(errors)) {
      const path = key === "_schema" ? prefix : prefix ? `${prefix}.${key}` : key;
      out.push(...flattenErrors(value, path));
    }
  }
  return out;
}

/** The request-location level ("json", "query") is noise for the user. */
export function fieldErrors(error) {
  const errors = error?.errors;
  if (!errors || typeof errors !== "object") return [];
  const locations = ["json", "query", "path", "headers", "form", "files"];
  const scoped = Object.keys(errors).every((k) => locations.includes(k));
  return scoped ? Object.values(errors).flatMap((inner) => flattenErrors(inner)) : flattenErrors(errors);
}

export function describe(error) {
  if (error?.name === "ApiError") {
    const where = error.status ? `${error.status} on ${error.method} ${error.path}` : `${error.method} ${error.path}`;
    return { message: error.message, where, details: fieldErrors(error) };
  }
  return { message: error?.message || String(error), where: "", details: [] };
}

function area() {
  return document.getElementById("banners");
}

function banner(kind, title, body, { timeout } = {}) {
  const node = h(
    "div",
    { class: ["banner", `banner-${kind}`], role: kind === "error" ? "alert" : "status" },
    h("div", { class: "banner-body" }, h("strong", {}, title), body),
    h("button", { class: "banner-close", type: "button", "aria-label": "Dismiss", onclick: () => node.remove() }, "×"),
  );
  area().prepend(node);
  while (area().children.length > 5) area().lastElementChild.remove();
  if (timeout) setTimeout(() => node.remove(), timeout);
  return node;
}

export function errorDetails(error) {
  const { where, details } = describe(error);
  return [
    where ? h("span", { class: "banner-where" }, where) : null,
    details.length
      ? h("ul", { class: "error-list" }, details.map(([path, messages]) => h("li", {}, path ? h("code", {}, path) : null, path ? ": " : "", messages.join(" "))))
      : null,
  ];
}

export function showError(error, context) {
  const { message } = describe(error);
  // A refused API call or a form to correct is the user's news, shown in the banner;
  // anything else is a bug and goes to the console too.
  if (!USER_ERRORS.has(error?.name)) console.error(context || "error", error);
  return banner("error", context ? `${context}: ` : "", [h("span", {}, message), ...errorDetails(error)]);
}

export function showSuccess(message) {
  return banner("success", "", h("span", {}, message), { timeout: 5000 });
}

export function clearBanners() {
  area().replaceChildren();
}

/** On navigation: errors about the page being left no longer apply. */
export function clearErrors() {
  for (const node of area().querySelectorAll(".banner-error")) node.remove();
}

/** An inline error block for a card that failed to load. */
export function inlineError(error, context) {
  const { message } = describe(error);
  return h("div", { class: "inline-error", role: "alert" }, h("strong", {}, context ? `${context}: ` : ""), message, ...errorDetails(error));
}
