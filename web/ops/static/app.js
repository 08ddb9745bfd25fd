// The Ops dashboard: sign-in, session, hash router.

import * as api from "./api.js";
import { allowed, clearToken, consumeTokenFromUrl, currentClaims, decodeToken, getToken, isExpired, setMatrix, setToken } from "./auth.js";
import { h, replace } from "./dom.js";
import { dateTime, relative } from "./format.js";
import { clearBanners, clearErrors, inlineError, showError } from "./notify.js";
import { auditView } from "./views/audit.js";
import { createView, editView } from "./views/create.js";
import { detailView } from "./views/detail.js";
import { experimentsView } from "./views/experiments.js";
import { governanceView } from "./views/governance.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const sessionArea = document.getElementById("session");
let vocabulary = null;
let stopCurrentView = null;

function navigate(route) {
  const target = `#${route}`;
  if (window.location.hash === target) render();
  else window.location.hash = target;
}

function parseRoute() {
  const raw = window.location.hash.replace(/^#/, "") || "/experiments";
  const [path, query = ""] = raw.split("?");
  return { path, params: new URLSearchParams(query) };
}

function renderSession() {
  const claims = currentClaims();
  nav.hidden = !claims || !allowed("list", claims.roles);
  if (!claims) {
    replace(sessionArea);
    return;
  }
  for (const link of nav.querySelectorAll("[data-action]")) link.hidden = !allowed(link.dataset.action, claims.roles);
  replace(sessionArea,
    h("div", { class: "who" },
      h("span", { class: "who-sub", title: claims.iss ? `issuer ${claims.iss}` : "" }, claims.sub || "(no sub)"),
      h("span", { class: "who-roles" }, claims.roles.map((role) => h("span", { class: "chip chip-role" }, role))),
      claims.exp ? h("span", { class: ["who-exp", isExpired(claims) && "expired"], title: dateTime(claims.exp * 1000) },
        isExpired(claims) ? "expired" : `expires ${relative(claims.exp * 1000)}`) : null),
    h("button", { type: "button", class: "btn btn-small btn-ghost", onclick: signOut }, "Sign out"));
}

function signOut() {
  clearToken();
  clearBanners();
  renderSession();
  render();
}

function signInView(message) {
  const box = h("textarea", { class: "input mono", rows: 5, spellcheck: "false", placeholder: "eyJhbGciOiJSUzI1NiIs…", autocomplete: "off" });
  const error = h("div");
  replace(main,
    h("section", { class: "card signin" },
      h("h1", {}, "Sign in with a Molam ID token"),
      message ? h("div", { class: "callout callout-danger" }, message) : null,
      h("p", {}, "Paste a bearer token. It stays in this tab only (sessionStorage) and is sent to the API, which verifies it on every call; roles decide what you can do here."),
      h("p", { class: "muted small" }, "Development: ", h("code", {}, "make run"), " prints one token per role, or run ",
        h("code", {}, ".venv/bin/flask --app api dev-token --role ops_admin"), "."),
      h("form", {
        class: "stack",
        onsubmit: (event) => {
          event.preventDefault();
          const token = box.value.trim();
          try {
            const claims = decodeToken(token);
            if (isExpired(claims)) throw new Error(`this token expired ${relative(claims.exp * 1000)}`);
            if (!claims.roles.length) throw new Error("this token has no roles claim: the API will refuse it");
            setToken(token);
          } catch (failure) {
            replace(error, inlineError(failure, "Not a usable token"));
            return;
          }
          clearBanners();
          renderSession();
          render();
        },
      },
      h("label", { class: "field" }, h("span", { class: "field-label" }, "Bearer token"), box),
      error,
      h("div", {}, h("button", { type: "submit", class: "btn btn-primary" }, "Sign in")))));
  box.focus();
}

function render() {
  if (stopCurrentView) stopCurrentView();
  stopCurrentView = null;
  const claims = currentClaims();
  if (!claims || !getToken()) {
    signInView();
    return;
  }
  if (isExpired(claims)) {
    clearToken();
    renderSession();
    signInView("Your token has expired: paste a new one.");
    return;
  }
  if (!allowed("list", claims.roles)) {
    replace(main, h("section", { class: "card" }, h("h1", {}, "Nothing to show for these roles"),
      h("p", {}, `Roles ${claims.roles.join(", ")} are service roles (assign and track only). The dashboard is for ops_admin, marketing and data_science.`)));
    return;
  }
  const { path, params } = parseRoute();
  for (const link of nav.querySelectorAll("[data-nav]")) {
    link.classList.toggle("active", path === `/${link.dataset.nav}` || (link.dataset.nav === "experiments" && path.startsWith("/experiments")));
  }
  const context = { params, vocabulary, navigate };
  const detail = path.match(/^\/experiments\/([0-9a-fA-F-]{36})$/);
  const edit = path.match(/^\/experiments\/([0-9a-fA-F-]{36})\/edit$/);
  if (path === "/experiments" || path === "/" || path === "") stopCurrentView = experimentsView(main, context);
  else if (path === "/new") stopCurrentView = createView(main, context);
  else if (detail) stopCurrentView = detailView(main, { ...context, id: detail[1] });
  else if (edit) stopCurrentView = editView(main, { ...context, id: edit[1] });
  else if (path === "/audit") stopCurrentView = auditView(main, context);
  else if (path === "/governance") stopCurrentView = governanceView(main, context);
  else replace(main, h("section", { class: "card" }, h("h1", {}, "Not found"), h("p", {}, `No page at ${path}. `, h("a", { href: "#/experiments" }, "Back to experiments"))));
  window.scrollTo(0, 0);
}

function takeTokenFromUrl() {
  try {
    consumeTokenFromUrl();
  } catch (error) {
    showError(error, "The token in the URL is not usable");
  }
}

async function start() {
  window.addEventListener("unhandledrejection", (event) => showError(event.reason, "Unexpected error"));
  window.addEventListener("error", (event) => showError(event.error || new Error(event.message), "Unexpected error"));
  window.addEventListener("ops:unauthorized", (event) => {
    const claims = currentClaims();
    if (claims && isExpired(claims)) {
      clearToken();
      renderSession();
      signInView("Your token has expired: paste a new one.");
    } else {
      showError(event.detail, "The API refused the token (sign out and paste another)");
    }
  });
  takeTokenFromUrl();
  try {
    const [rbac, words] = await Promise.all([api.loadRbac(), api.loadVocabulary()]);
    setMatrix(rbac);
    vocabulary = words;
  } catch (error) {
    replace(main, inlineError(error, "Could not load the dashboard's configuration"));
    return;
  }
  renderSession();
  window.addEventListener("hashchange", () => {
    clearErrors();
    if (window.location.hash.startsWith("#token=")) takeTokenFromUrl();
    renderSession();
    render();
    // Keyboard and screen-reader users continue from the new page, not the old link.
    main.focus({ preventScroll: true });
  });
  document.getElementById("skip-link").addEventListener("click", () => main.focus());
  render();
  setInterval(renderSession, 60000);
}

start();
