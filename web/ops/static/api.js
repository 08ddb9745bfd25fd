// Every call the dashboard makes, in one module. Paths are written as literal
// template strings so tests/api/test_dashboard.py can check each one against the
// app's OpenAPI document: the page cannot call an endpoint that does not exist.

import { getToken } from "./auth.js";

export class ApiError extends Error {
  constructor({ status, method, path, payload, message }) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.method = method;
    this.path = path;
    this.payload = payload;
    this.errors = payload?.errors ?? null;
  }
}

function urlFor(path, query) {
  const url = new URL(path, window.location.origin);
  for (const [key, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, value);
  }
  return url;
}

async function request(method, path, { query, body, accept = "application/json" } = {}) {
  const headers = { Accept: accept };
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  const init = { method, headers, cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(urlFor(path, query), init);
  } catch (error) {
    throw new ApiError({ status: 0, method, path, message: `network error on ${method} ${path}: ${error.message}` });
  }
  if (!response.ok) {
    let payload = null;
    const text = await response.text();
    try {
      payload = JSON.parse(text);
    } catch {
      payload = null;
    }
    // flask-smorest's 422 carries no message, only {code, status, errors}: the errors are shown field by field.
    const message = payload?.message
      || (payload?.errors ? `${payload.status || response.statusText}: see the fields below` : null)
      || (payload ? null : text.trim().slice(0, 300))
      || `${response.status} ${response.statusText}`;
    const error = new ApiError({ status: response.status, method, path, payload, message });
    if (response.status === 401) window.dispatchEvent(new CustomEvent("ops:unauthorized", { detail: error }));
    throw error;
  }
  return response;
}

async function json(method, path, options) {
  const response = await request(method, path, options);
  return response.status === 204 ? null : response.json();
}

async function page(path, query) {
  const response = await request("GET", path, { query });
  const header = response.headers.get("X-Pagination");
  return { items: await response.json(), pagination: header ? JSON.parse(header) : null };
}

// --- The dashboard's own documents (no token needed) ---------------------------

async function ownDocument(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" }, cache: "no-store" });
  if (!response.ok) throw new ApiError({ status: response.status, method: "GET", path, message: `${path}: ${response.status} ${response.statusText}` });
  return response.json();
}

export const loadRbac = () => ownDocument(`/ops/rbac.json`);
export const loadVocabulary = () => ownDocument(`/ops/vocabulary.json`);

// --- Experiments -----------------------------------------------------------------

export const listExperiments = ({ status, q, mode, createdBy, layerId, page: number = 1, pageSize = 20 } = {}) =>
  page(`/api/experiments`, { status, q, mode, created_by: createdBy, layer_id: layerId, page: number, page_size: pageSize });
export const getExperiment = (id) => json("GET", `/api/experiments/${id}`);
export const createExperiment = (body) => json("POST", `/api/experiments`, { body });
export const updateExperiment = (id, changes) => json("PATCH", `/api/experiments/${id}`, { body: changes });
export const deleteExperiment = (id) => json("DELETE", `/api/experiments/${id}`);
export const startExperiment = (id) => json("POST", `/api/experiments/${id}/start`);
export const stopExperiment = (id) => json("POST", `/api/experiments/${id}/stop`);
export const archiveExperiment = (id) => json("POST", `/api/experiments/${id}/archive`);

export const pauseVariant = (id, variantId, reason) =>
  json("POST", `/api/experiments/${id}/variants/${variantId}/pause`, { body: reason ? { reason } : {} });
export const resumeVariant = (id, variantId) => json("POST", `/api/experiments/${id}/variants/${variantId}/resume`, { body: {} });

export async function exportData(id, kind, format) {
  const response = await request("GET", `/api/experiments/${id}/export`, { query: { kind, format }, accept: "*/*" });
  return response.blob();
}

// --- SIRA ------------------------------------------------------------------------

export const getResults = (id) => json("GET", `/api/experiments/${id}/results`);
export const getInsights = (id) => json("GET", `/api/experiments/${id}/insights`);
export const getBanditHistory = (id, { limit = 500 } = {}) =>
  json("GET", `/api/experiments/${id}/bandit/history`, { query: { limit } });

export const listReports = ({ experimentId, page: number = 1, pageSize = 10 } = {}) =>
  page(`/api/reports`, { experiment_id: experimentId, page: number, page_size: pageSize });
export async function getReportMarkdown(reportId) {
  const response = await request("GET", `/api/reports/${reportId}`, { query: { format: "markdown" }, accept: "text/markdown" });
  return response.text();
}

// --- Audit -----------------------------------------------------------------------

export const listAudit = ({ experimentId, page: number = 1, pageSize = 50 } = {}) =>
  page(`/api/audit`, { experiment_id: experimentId, page: number, page_size: pageSize });
export const verifyAudit = () => json("GET", `/api/audit/verify`);

// --- Design and governance ---------------------------------------------------------

export const listLayers = () => json("GET", `/api/layers`);
export const createLayer = (body) => json("POST", `/api/layers`, { body });
export const listHoldouts = () => json("GET", `/api/holdouts`);
export const createHoldout = (body) => json("POST", `/api/holdouts`, { body });
export const getHoldoutResults = (id) => json("GET", `/api/holdouts/${id}/results`);
export const listApprovalRequests = ({ status } = {}) => json("GET", `/api/approval-requests`, { query: { status } });
export const listExperimentApprovals = (id) => json("GET", `/api/experiments/${id}/approval-requests`);
export const requestApproval = (id, comment) => json("POST", `/api/experiments/${id}/approval-requests`, { body: { comment } });
export const approveExperiment = (id, comment) => json("POST", `/api/experiments/${id}/approve`, { body: { comment } });
export const rejectExperiment = (id, comment) => json("POST", `/api/experiments/${id}/reject`, { body: { comment } });
export const listSchedules = () => json("GET", `/api/schedules`);
export const getExperimentSchedule = (id) => json("GET", `/api/experiments/${id}/schedule`);
export const planSampleSize = (body) => json("POST", `/api/planning/sample-size`, { body });
