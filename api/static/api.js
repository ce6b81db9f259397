// The API client: every failure becomes an ApiError whose message is the API's own `error`
// sentence. An API key, when set, is kept in localStorage and sent as a Bearer token.

const API_KEY = "cascade.apiKey";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function apiKey() {
  return localStorage.getItem(API_KEY) || "";
}

export function setApiKey(key) {
  if (key) localStorage.setItem(API_KEY, key);
  else localStorage.removeItem(API_KEY);
}

function authHeaders(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : { ...extra };
}

// A link as this page fetches it: links are absolute where the service has a public URL
// (CASCADE_PUBLIC_URL), and the page asks the origin that served it, whatever that URL says
// (its Content-Security-Policy allows no other).
export function onThisOrigin(link) {
  const url = new URL(link, window.location.origin);
  return url.pathname + url.search;
}

export async function api(link, { method = "GET", json, form, signal } = {}) {
  const path = onThisOrigin(link);
  const init = { method, headers: authHeaders(), signal };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form) {
    init.body = form;
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, `The service could not be reached (${error.message}).`);
  }
  if (!response.ok) {
    let message = `HTTP ${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      if (body && typeof body.error === "string") message = body.error;
    } catch {
      // not JSON: keep the status line
    }
    throw new ApiError(response.status, message);
  }
  if (response.status === 204) return null;
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.blob();
}
