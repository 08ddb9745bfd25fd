// The operator's Molam ID token (sessionStorage: gone when the tab closes) and the
// RBAC matrix served by /ops/rbac.json. The payload is decoded only to show who is
// signed in and to hide what the roles cannot do: the API verifies every call.

const TOKEN_KEY = "molam.ops.token";
let matrix = null;

export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(token) {
  decodeToken(token); // refuse what is not a JWT before storing it
  sessionStorage.setItem(TOKEN_KEY, token);
}

export function clearToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

function base64UrlDecode(part) {
  const base64 = part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "=");
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}

/** The token's claims, unverified. Throws with a readable message on anything else. */
export function decodeToken(token) {
  const parts = String(token || "").trim().split(".");
  if (parts.length !== 3) throw new Error("a Molam ID token has three dot-separated parts (header.payload.signature)");
  let claims;
  try {
    claims = JSON.parse(base64UrlDecode(parts[1]));
  } catch {
    throw new Error("the token's payload is not base64url-encoded JSON");
  }
  if (typeof claims !== "object" || claims === null) throw new Error("the token's payload is not a JSON object");
  return {
    sub: typeof claims.sub === "string" ? claims.sub : "",
    roles: Array.isArray(claims.roles) ? claims.roles.filter((r) => typeof r === "string") : [],
    exp: typeof claims.exp === "number" ? claims.exp : null,
    iss: claims.iss ?? null,
  };
}

export function currentClaims() {
  const token = getToken();
  if (!token) return null;
  try {
    return decodeToken(token);
  } catch {
    return null;
  }
}

export function isExpired(claims, now = Date.now()) {
  return claims?.exp !== null && claims?.exp !== undefined && claims.exp * 1000 <= now;
}

/**
 * Take a token handed over in the URL fragment (`/ops#token=…&to=/audit`), store it
 * and remove it from the address bar and history. Returns the route to open.
 * Only the fragment: it never reaches the server, so no access log records the token.
 */
export function consumeTokenFromUrl() {
  const url = new URL(window.location.href);
  const fragment = new URLSearchParams(url.hash.startsWith("#token=") ? url.hash.slice(1) : "");
  const token = fragment.get("token");
  if (!token) return null;
  const route = fragment.get("to") || "/experiments";
  url.hash = route.startsWith("/") ? route : `/${route}`;
  history.replaceState(null, "", url.pathname + url.search + url.hash);
  setToken(token);
  return route;
}

export function setMatrix(document) {
  matrix = document;
}

/** Mirror of core.rbac.allowed(action, roles). */
export function allowed(action, roles) {
  if (!matrix) return false;
  const permitted = matrix.actions[action];
  if (!permitted) return false;
  const { placeholder, suffix } = matrix.service_role;
  return roles.some(
    (role) =>
      permitted.includes(role) ||
      (permitted.includes(placeholder) && role.endsWith(suffix) && role.length > suffix.length),
  );
}

export function can(action) {
  const claims = currentClaims();
  return claims ? allowed(action, claims.roles) : false;
}
