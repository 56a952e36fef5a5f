// Model text as people want to read it: JSON pretty-printed, Markdown rendered (safely: DOM
// nodes and text only, never innerHTML), raw on demand; and a word-level diff of two answers.

import { h, valueText } from "./dom.js";

/** The parsed value when `text` is a JSON object or array, else undefined. */
export function parseJson(text) {
  if (typeof text !== "string") return text !== null && typeof text === "object" ? text : undefined;
  const t = text.trim();
  if (!(t.startsWith("{") && t.endsWith("}")) && !(t.startsWith("[") && t.endsWith("]"))) return undefined;
  try {
    const v = JSON.parse(t);
    return v !== null && typeof v === "object" ? v : undefined;
  } catch (e) {
    return undefined;
  }
}

const MD_HINT = /(^|\n)\s{0,3}(#{1,6}\s|[-*+]\s|\d+[.)]\s|```|>\s)|\*\*[^*\n]+\*\*|`[^`\n]+`/;

/** Whether `text` looks like Markdown worth rendering (headings, lists, fences, emphasis, code). */
export function looksLikeMarkdown(text) {
  return typeof text === "string" && text.includes("\n") && MD_HINT.test(text)
    || (typeof text === "string" && /```|\*\*[^*\n]+\*\*/.test(text));
}

/** Inline Markdown (code, bold, italic) as nodes; everything else stays text. */
function inline(text) {
  const out = [];
  const re = /`([^`]+)`|\*\*([^*]+)\*\*|__([^_]+)__|\*([^*\s][^*]*)\*/g;
  let last = 0;
  let m;
  while ((m = re.exec(text)) !== null) {
    if (m.index > last) out.push(text.slice(last, m.index));
    if (m[1] !== undefined) out.push(h("code", {}, m[1]));
    else if (m[2] !== undefined || m[3] !== undefined) out.push(h("strong", {}, m[2] ?? m[3]));
    else out.push(h("em", {}, m[4]));
    last = re.lastIndex;
  }
  if (last < text.length) out.push(text.slice(last));
  return out;
}

/** A small, safe Markdown renderer: headings, paragraphs, lists, quotes, fenced code. */
export function renderMarkdown(text) {
  const root = h("div", { class: "md" });
  const lines = String(text).replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  let para = [];
  const flush = () => {
    if (para.length) root.append(h("p", {}, inline(para.join(" "))));
    para = [];
  };
  while (i < lines.length) {
    const line = lines[i];
    const fence = /^\s{0,3}```\s*([\w+-]*)\s*$/.exec(line);
    if (fence) {
      flush();
      const body = [];
      i += 1;
      while (i < lines.length && !/^\s{0,3}```\s*$/.test(lines[i])) body.push(lines[i++]);
      i += 1;
      root.append(h("pre", { class: "code" }, h("code", { dataset: fence[1] ? { lang: fence[1] } : null }, body.join("\n"))));
      continue;
    }
    const heading = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/.exec(line);
    if (heading) {
      flush();
      root.append(h(`h${Math.min(6, heading[1].length + 2)}`, {}, inline(heading[2])));
      i += 1;
      continue;
    }
    const item = /^\s{0,3}([-*+]|\d+[.)])\s+(.*)$/.exec(line);
    if (item) {
      flush();
      const ordered = /\d/.test(item[1]);
      const list = h(ordered ? "ol" : "ul");
      while (i < lines.length) {
        const it = /^\s{0,3}([-*+]|\d+[.)])\s+(.*)$/.exec(lines[i]);
        if (!it || /\d/.test(it[1]) !== ordered) break;
        list.append(h("li", {}, inline(it[2])));
        i += 1;
      }
      root.append(list);
      continue;
    }
    if (/^\s{0,3}>\s?/.test(line)) {
      flush();
      const quote = [];
      while (i < lines.length && /^\s{0,3}>\s?/.test(lines[i])) quote.push(lines[i++].replace(/^\s{0,3}>\s?/, ""));
      root.append(h("blockquote", {}, inline(quote.join(" "))));
      continue;
    }
    if (!line.trim()) flush();
    else para.push(line.trim());
    i += 1;
  }
  flush();
  return root;
}

/**
 * A response (or any model text) shown pretty — JSON indented, Markdown rendered — with a
 * "raw" toggle; plain text stays as it is.
 */
export function prettyText(value, { cls = "" } = {}) {
  const raw = valueText(value);
  const json = parseJson(value);
  const kind = json !== undefined ? "json" : looksLikeMarkdown(raw) ? "markdown" : null;
  if (!kind) return h("div", { class: `text mono raw ${cls}`.trim() }, raw);
  const rawNode = h("div", { class: "text mono raw" }, raw);
  const pretty = kind === "json"
    ? h("pre", { class: "json pretty" }, JSON.stringify(json, null, 2))
    : h("div", { class: "pretty" }, renderMarkdown(raw));
  const box = h("div", { class: `pretty-box ${cls}`.trim(), dataset: { kind, view: "pretty" } });
  const toggle = h("button", {
    type: "button", class: "raw-toggle", title: "Show the text exactly as stored",
    onclick: () => {
      const showRaw = box.dataset.view === "pretty";
      box.dataset.view = showRaw ? "raw" : "pretty";
      toggle.textContent = showRaw ? kind : "raw";
      toggle.title = showRaw ? `Show it as ${kind}` : "Show the text exactly as stored";
      pretty.hidden = showRaw;
      rawNode.hidden = !showRaw;
    },
  }, "raw");
  rawNode.hidden = true;
  box.append(h("div", { class: "pretty-bar" }, h("span", { class: "kind muted small" }, kind), toggle), pretty, rawNode);
  return box;
}

// ------------------------------------------------------------------------------ word diff

const MAX_CELLS = 4_000_000; // beyond this many LCS cells the texts are shown without marks

/** Words and the whitespace between them, so joining the tokens gives the text back. */
export function tokens(text) {
  return String(text).match(/\s+|[\p{L}\p{N}_]+|[^\s\p{L}\p{N}_]/gu) || [];
}

/**
 * Word-level diff of `a` and `b` by longest common subsequence: [{op: "same"|"del"|"add", text}].
 * `del` parts are only in a, `add` parts only in b. Null when the texts are too long to diff.
 */
export function wordDiff(a, b) {
  const x = tokens(a);
  const y = tokens(b);
  let start = 0;
  while (start < x.length && start < y.length && x[start] === y[start]) start += 1;
  let endX = x.length;
  let endY = y.length;
  while (endX > start && endY > start && x[endX - 1] === y[endY - 1]) { endX -= 1; endY -= 1; }
  const n = endX - start;
  const m = endY - start;
  if ((n + 1) * (m + 1) > MAX_CELLS) return null;
  const table = new Uint32Array((n + 1) * (m + 1));
  const w = m + 1;
  for (let i = n - 1; i >= 0; i -= 1) {
    for (let j = m - 1; j >= 0; j -= 1) {
      table[i * w + j] = x[start + i] === y[start + j]
        ? table[(i + 1) * w + j + 1] + 1
        : Math.max(table[(i + 1) * w + j], table[i * w + j + 1]);
    }
  }
  const out = [];
  const push = (op, text) => {
    const last = out[out.length - 1];
    if (last && last.op === op) last.text += text;
    else out.push({ op, text });
  };
  if (start) push("same", x.slice(0, start).join(""));
  let i = 0;
  let j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && x[start + i] === y[start + j]) { push("same", x[start + i]); i += 1; j += 1; }
    else if (j < m && (i >= n || table[i * w + j + 1] >= table[(i + 1) * w + j])) { push("add", y[start + j]); j += 1; }
    else { push("del", x[start + i]); i += 1; }
  }
  if (endX < x.length) push("same", x.slice(endX).join(""));
  return out;
}

/** Two texts side by side with what only one of them says marked: [nodeA, nodeB]. */
export function diffPair(a, b) {
  const ta = valueText(a);
  const tb = valueText(b);
  const parts = wordDiff(ta, tb);
  if (parts === null) {
    return [h("div", { class: "text mono diff", title: "too long to compare word by word" }, ta),
      h("div", { class: "text mono diff" }, tb)];
  }
  const left = h("div", { class: "text mono diff" });
  const right = h("div", { class: "text mono diff" });
  for (const part of parts) {
    if (part.op === "same") { left.append(part.text); right.append(part.text); }
    else if (part.op === "del") left.append(h("del", { class: "diff-del", title: "only in run A" }, part.text));
    else right.append(h("ins", { class: "diff-add", title: "only in run B" }, part.text));
  }
  return [left, right];
}
