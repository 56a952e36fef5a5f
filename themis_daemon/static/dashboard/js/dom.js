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
  return String(iso).replace("T", " ").replace(/\.\d+/, "");
}

export function statusBadge(status) {
  return h("span", { class: `badge status-${status || "unknown"}` }, (status || "unknown").replace("_", " "));
}

/** A progress bar; `fraction` null means unknown total. */
export function progressBar(fraction, label) {
  const pct = fraction === null || fraction === undefined ? null : Math.round(fraction * 1000) / 10;
  const bar = h("div", {
    class: "progress" + (pct === null ? " indeterminate" : ""),
    role: "progressbar",
    "aria-valuemin": 0,
    "aria-valuemax": 100,
    "aria-valuenow": pct === null ? null : pct,
    "aria-label": label || "progress",
    title: pct === null ? "total unknown" : `${pct}%`,
  }, h("div", { class: "fill", style: `width: ${pct === null ? 100 : pct}%` }));
  return h("div", { class: "progress-wrap" }, bar, h("span", { class: "progress-text" }, pct === null ? "?" : `${pct}%`));
}

export function errorBox(err, title) {
  const box = h("div", { class: "error", role: "alert" });
  box.append(h("strong", {}, title || err.title || "Error"), " ", err.message || String(err));
  return box;
}

export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}
