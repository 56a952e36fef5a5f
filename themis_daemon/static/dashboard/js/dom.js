// Tiny DOM and formatting helpers shared by the views.

/** h("div", {class: "x", onclick: fn}, child, ...): build an element; strings become text. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name === "value" || name === "checked" || name === "selected") el[name] = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** SVG element with attributes. */
export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined) el.setAttribute(name, String(value));
  }
  append(el, children);
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export function fmtNum(x, digits = 3) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  if (Number.isInteger(x)) return String(x);
  const abs = Math.abs(x);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e6)) return x.toExponential(2);
  return x.toFixed(digits).replace(/\.?0+$/, (m) => (m.startsWith(".") ? "" : m));
}

export function fmtP(p) {
  if (p === null || p === undefined) return "–";
  if (p < 1e-4) return p.toExponential(1);
  return p.toFixed(4);
}

/** Themis time stamps are naive local ISO strings: show them as they are, to the second. */
export function fmtTime(iso) {
  if (!iso) return "–";
  // Themis 4 stamps are UTC (…+00:00 or …Z): say so instead of showing the offset.
  return String(iso).replace("T", " ").replace(/\.\d+/, "").replace(/(?:\+00:?00|Z)$/, " UTC");
}

export function statusBadge(status) {
  return h("span", { class: `badge status-${status || "unknown"}` }, (status || "unknown").replace("_", " "));
}

// Themis 4's own status that each daemon status stands for: anything else is worth showing.
const NATIVE_OF = { pending: "pending", in_progress: "running", completed: "completed", failed: "failed" };

/** The Themis 4 status when it says more than the daemon status (e.g. partial_failure), else null. */
export function nativeDifference(status, nativeStatus) {
  if (!nativeStatus || NATIVE_OF[status] === nativeStatus) return null;
  return nativeStatus;
}

/** The status badge (stalled runs as "stalled"), followed by Themis' own status where it differs. */
export function statusLine(run) {
  const shown = run.stalled && run.status === "in_progress" ? "stalled" : run.status;
  const native = nativeDifference(run.status, run.native_status);
  return h("span", { class: "status-line" }, statusBadge(shown),
    native ? [h("span", { class: "native-sep", "aria-hidden": "true" }, " · "),
      h("span", { class: `native-status native-${native}`, title: `Themis 4 status: ${native}` }, native)] : null);
}

/** Themis 4 run ids are 64 lowercase hex characters: shown shortened. */
export function isLongId(id) {
  return typeof id === "string" && /^[0-9a-f]{64}$/.test(id);
}

export function shortId(id, length = 10) {
  return isLongId(id) ? id.slice(0, length) : String(id);
}

/** The small "v1"/"v4" badge of a run's `format`; null when the daemon does not say. */
export function formatBadge(format) {
  if (!format) return null;
  const m = /^themis-(v\d+)$/.exec(format);
  const label = m ? m[1] : format;
  return h("span", { class: `fmt fmt-${label}`, title: m ? `Themis ${label.slice(1)} store` : format }, label);
}

async function writeClipboard(text) {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      return true;
    }
  } catch (e) {
    /* permission refused: fall back to a selection */
  }
  const area = h("textarea", { readonly: true, style: "position: fixed; top: 0; left: 0; opacity: 0;" });
  area.value = text;
  document.body.append(area);
  area.select();
  let ok = false;
  try {
    ok = document.execCommand("copy");
  } catch (e) {
    ok = false;
  }
  area.remove();
  return ok;
}

/** A small button that copies `text` (a full run id) to the clipboard. */
export function copyButton(text, what = "run id") {
  const button = h("button", {
    type: "button", class: "copy-id", title: `Copy the full ${what}`, "aria-label": `Copy the full ${what} ${text}`,
    dataset: { copy: text },
    onclick: async (e) => {
      e.preventDefault();
      e.stopPropagation();
      const ok = await writeClipboard(text);
      button.dataset.copied = ok ? "true" : "false";
      button.textContent = ok ? "copied" : "copy failed";
      clearTimeout(button.resetTimer);
      button.resetTimer = setTimeout(() => { button.textContent = "copy"; delete button.dataset.copied; }, 1500);
    },
  }, "copy");
  return button;
}

/** A run id as shown: 64-hex ids shortened (full id in the title, plus a copy button); a link when `href`. */
export function runIdLabel(id, { href = null, cls = "run-id" } = {}) {
  const long = isLongId(id);
  const text = h(href ? "a" : "span", { class: cls + (long ? " short-id" : ""), href, title: long ? id : null }, shortId(id));
  return long ? h("span", { class: "id-with-copy" }, text, copyButton(id)) : text;
}

/** Any JSON value as text: strings as they are, the rest as JSON. */
export function valueText(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "string") return value;
  try {
    return JSON.stringify(value);
  } catch (e) {
    return String(value);
  }
}

/**
 * A progress bar; `fraction` null means unknown total, except for a `pending` run (submitted,
 * not started), whose bar is empty and says so.
 */
export function progressBar(fraction, label, { pending = false } = {}) {
  const known = typeof fraction === "number" && Number.isFinite(fraction);
  const pct = known ? Math.round(Math.min(1, Math.max(0, fraction)) * 1000) / 10 : null;
  const waiting = pct === null && pending;
  const bar = h("div", {
    class: "progress" + (waiting ? " pending" : pct === null ? " indeterminate" : ""),
    role: "progressbar",
    "aria-valuemin": 0,
    "aria-valuemax": 100,
    "aria-valuenow": pct === null ? null : pct,
    "aria-valuetext": waiting ? "not started" : null,
    "aria-label": label || "progress",
    title: waiting ? "pending: not started yet" : pct === null ? "total unknown" : `${pct}%`,
  }, h("div", { class: "fill", style: `width: ${waiting ? 0 : pct === null ? 100 : pct}%` }));
  return h("div", { class: "progress-wrap" }, bar,
    h("span", { class: "progress-text" }, waiting ? "–" : pct === null ? "?" : `${pct}%`));
}

export function errorBox(err, title) {
  const box = h("div", { class: "error", role: "alert" });
  box.append(h("strong", {}, title || err.title || "Error"), " ", err.message || String(err));
  return box;
}

// At most one call per `ms`, and always one after the last request: unlike a debounce, a
// steady stream of requests (a live run's events every poll) cannot postpone it for ever.
export function throttle(fn, ms) {
  let last = 0;
  let timer = null;
  return (...args) => {
    if (timer) return;
    const wait = last + ms - Date.now();
    if (wait <= 0) {
      last = Date.now();
      fn(...args);
      return;
    }
    timer = setTimeout(() => { timer = null; last = Date.now(); fn(...args); }, wait);
  };
}

export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}
