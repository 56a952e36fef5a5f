// HTTP calls to the daemon, with the API key from localStorage and readable errors.

const KEY_STORAGE = "themis.apiKey";

/** The daemon's root: the dashboard lives at <root>/dashboard/. */
export const apiRoot = new URL("../", window.location.href.split("#")[0]);

export function getKey() {
  try {
    return window.localStorage.getItem(KEY_STORAGE) || "";
  } catch (e) {
    return "";
  }
}

export function setKey(value) {
  try {
    if (value) window.localStorage.setItem(KEY_STORAGE, value);
    else window.localStorage.removeItem(KEY_STORAGE);
  } catch (e) {
    /* storage disabled: the key lives for this page only */
  }
}

export class ApiError extends Error {
  constructor(status, title, detail, body) {
    super(detail);
    this.status = status;
    this.title = title;
    this.body = body;
  }
}

const HINTS = {
  401: "This daemon requires an API key: enter it in the “API key” field at the top.",
  403: "The API key was rejected: check the “API key” field at the top.",
};

/** fetch a JSON API path (relative to the daemon root); throws ApiError with a readable message. */
export async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  const key = getKey();
  if (key) headers["X-API-Key"] = key;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(new URL(path, apiRoot), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-cache",
    });
  } catch (e) {
    throw new ApiError(0, "Daemon unreachable", `Cannot reach the daemon at ${apiRoot.host} (${e.message}).`);
  }
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (e) {
    data = null;
  }
  if (!resp.ok) {
    const title = (data && data.title) || resp.statusText || "Error";
    let detail = (data && data.detail) || `${resp.status} ${resp.statusText}`;
    if (HINTS[resp.status]) detail = `${detail}. ${HINTS[resp.status]}`;
    if (data && Array.isArray(data.errors) && data.errors.length) {
      detail += " — " + data.errors.map((e) => `${e.pointer || "/"}: ${e.message}`).join("; ");
    }
    throw new ApiError(resp.status, `${resp.status} ${title}:`, detail, data);
  }
  return { data, headers: resp.headers };
}

export function runPath(runId) {
  return "api/runs/" + encodeURIComponent(runId);
}

/**
 * The /ws URL. Browsers cannot set headers on a WebSocket, and a key in the URL would end up in
 * logs, so with a key the page first asks for a short-lived single-use ticket (POST, key in a
 * header) and opens /ws?ticket=... with it.
 */
export async function wsUrl() {
  const url = new URL("ws", apiRoot);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  if (getKey()) {
    const { data } = await api("api/ws-ticket", { method: "POST" });
    url.searchParams.set("ticket", data.ticket);
  }
  return url.href;
}

/** The streamed CSV/JSONL download of a run's samples. */
export function samplesDownloadPath(runId, format) {
  return runPath(runId) + "/samples?format=" + format;
}

/**
 * Save an API download. Without an API key the browser follows the link itself (streamed to
 * disk); with one the key must go in a header, so the file is fetched and handed over as a blob.
 */
export async function downloadWithKey(path, filename) {
  const resp = await fetch(new URL(path, apiRoot), { headers: { "X-API-Key": getKey() }, cache: "no-cache" });
  if (!resp.ok) {
    let detail = `${resp.status} ${resp.statusText}`;
    try {
      detail = (await resp.json()).detail || detail;
    } catch (e) {
      /* not JSON */
    }
    throw new ApiError(resp.status, `${resp.status}:`, detail);
  }
  const url = URL.createObjectURL(await resp.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}
