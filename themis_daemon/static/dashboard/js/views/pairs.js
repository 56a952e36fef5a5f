// The samples behind one compare row: a McNemar cell of a 0/1 metric (A right / B wrong, ...)
// or every pair by size of difference, with both responses side by side and what differs marked.

import { api } from "../api.js";
import { clear, errorBox, fmtNum, h, isLongId, runIdLabel, shortId, valueText } from "../dom.js";
import { diffPair, prettyText } from "../text.js";

const PAGE = 20;
export const KIND_LABELS = {
  a_only: "A right, B wrong",
  b_only: "A wrong, B right",
  both: "both right",
  neither: "both wrong",
  by_delta: "by size of difference",
};

/** The dashboard link to the samples of one compare row. */
export function pairsHref(runA, runB, metric, kind, extra = {}) {
  const q = new URLSearchParams({ run_a: runA, run_b: runB, metric, kind, ...extra });
  return "#/compare/samples?" + q.toString();
}

export function sampleHref(runId, sampleId) {
  return `#/runs/${encodeURIComponent(runId)}/samples/${encodeURIComponent(String(sampleId))}`;
}

export function mountPairs(root, params) {
  const runA = params.get("run_a") || "";
  const runB = params.get("run_b") || "";
  const metric = params.get("metric") || "";
  let kind = params.get("kind") || "by_delta";
  let offset = Math.max(0, Number.parseInt(params.get("offset") || "0", 10) || 0);
  const back = params.get("back");
  let alive = true;
  let request = 0;

  const head = h("div", { class: "pairs-head" });
  const tabs = h("div", { class: "kind-tabs", role: "tablist", id: "pair-kinds" });
  const list = h("div", { id: "pair-list" });
  const pager = h("div", { class: "pager", id: "pair-pager" });
  clear(root).append(
    h("p", {}, h("a", { href: back ? "#/compare?" + back : "#/compare" }, "← Back to the comparison")),
    head, tabs, list, pager);

  function go(newKind, newOffset) {
    kind = newKind;
    offset = newOffset;
    const q = new URLSearchParams({ run_a: runA, run_b: runB, metric, kind });
    if (offset) q.set("offset", String(offset));
    if (back) q.set("back", back);
    history.replaceState(null, "", "#/compare/samples?" + q.toString());
    load();
  }

  async function load() {
    const mine = ++request;
    clear(list).append(h("p", { class: "muted" }, "Loading samples…"));
    const q = new URLSearchParams({ run_a: runA, run_b: runB, metric, kind, limit: String(PAGE), offset: String(offset) });
    try {
      const { data } = await api("api/compare/samples?" + q.toString());
      if (!alive || mine !== request) return;
      render(data);
    } catch (err) {
      if (!alive || mine !== request) return;
      clear(list).append(errorBox(err));
      clear(pager);
    }
  }

  function render(data) {
    clear(head).append(
      h("h1", {}, "Samples of ", h("span", { class: "pair-metric" }, data.metric),
        data.lower_is_better ? h("span", { class: "badge lower", title: "lower is better" }, "↓ lower is better") : null),
      h("dl", { class: "facts pair-facts" },
        h("dt", {}, "Run A"), h("dd", { id: "pair-run-a" }, runIdLabel(data.run_a, { href: "#/runs/" + encodeURIComponent(data.run_a) })),
        h("dt", {}, "Run B"), h("dd", { id: "pair-run-b" }, runIdLabel(data.run_b, { href: "#/runs/" + encodeURIComponent(data.run_b) })),
        h("dt", {}, "Paired samples"), h("dd", {}, `${data.n}` + (data.n_only_a || data.n_only_b
          ? ` (not paired: ${data.n_only_a} only in A, ${data.n_only_b} only in B)` : "")),
        h("dt", {}, "Means on them"), h("dd", {}, `A ${fmtNum(data.mean_a)} · B ${fmtNum(data.mean_b)}`),
        data.counts ? [h("dt", {}, "2×2 table"), h("dd", {}, countsTable(data.counts))] : null));

    clear(tabs);
    const kinds = data.binary ? ["a_only", "b_only", "both", "neither", "by_delta"] : ["by_delta"];
    for (const k of kinds) {
      const count = k === "by_delta" ? data.n : data.counts[k];
      tabs.append(h("button", {
        type: "button", role: "tab", class: "kind-tab" + (k === kind ? " active" : ""), "aria-selected": String(k === kind),
        dataset: { kind: k }, onclick: () => go(k, 0),
      }, KIND_LABELS[k], " ", h("span", { class: "count" }, String(count))));
    }

    clear(list);
    if (!data.items.length) {
      list.append(h("p", { class: "muted empty", id: "pair-empty" }, data.total ? "No samples on this page." : "No paired sample is in this cell."));
    }
    for (const item of data.items) list.append(pairCard(data, item));
    const page = Math.floor(data.offset / data.limit);
    const pages = Math.max(1, Math.ceil(data.total / data.limit));
    clear(pager).append(
      h("button", { type: "button", disabled: data.offset === 0, onclick: () => go(kind, Math.max(0, data.offset - data.limit)) }, "‹ Previous"),
      h("span", { class: "muted", id: "pair-page" }, `page ${page + 1} of ${pages} · ${data.total} samples · ${KIND_LABELS[data.kind]}`),
      h("button", { type: "button", disabled: data.next_offset === null, onclick: () => go(kind, data.next_offset) }, "Next ›"));
  }

  function pairCard(data, item) {
    const [left, right] = diffPair(item.a.error ? "" : item.a.response, item.b.error ? "" : item.b.response);
    const side = (label, runId, s, score, node) => h("div", { class: "pair-side" },
      h("div", { class: "pair-side-head" },
        h("strong", {}, label), " ", h("span", { class: "muted small", title: isLongId(runId) ? runId : null }, shortId(runId)),
        h("span", { class: "score pair-score" + (score === 0 ? " zero" : score === 1 ? " one" : ""), dataset: { score: String(score) } },
          `${data.metric} ${fmtNum(score)}`)),
      s.error ? h("div", { class: "error-text" }, "⚠ ", s.error) : node,
      h("details", { class: "pair-more" }, h("summary", {}, "formatted · all scores"),
        prettyText(s.response),
        h("div", { class: "scores" }, Object.entries(s.scores || {}).map(([m, v]) => h("span", { class: "score" }, `${m} ${fmtNum(v)}`))),
        detailsList(s.details), errorsList(s.errors)));
    return h("article", { class: "card pair", dataset: { sampleId: String(item.id) } },
      h("header", { class: "pair-title" },
        h("a", { class: "sample-link", href: sampleHref(data.run_a, item.id), title: "this sample in run A" }, String(item.id)),
        h("span", { class: "muted small" }, ` Δ = ${fmtNum(item.delta)}`)),
      h("div", { class: "pair-prompt" },
        h("div", { class: "label muted small" }, item.prompt_b !== undefined ? "Prompt (A)" : "Prompt"),
        h("div", { class: "text" }, item.prompt),
        item.prompt_b !== undefined ? [h("div", { class: "label muted small" }, "Prompt (B)"), h("div", { class: "text" }, item.prompt_b)] : null),
      item.reference !== null && item.reference !== undefined
        ? h("div", { class: "pair-reference" }, h("span", { class: "label muted small" }, "Reference "),
          h("span", { class: "text mono reference" }, valueText(item.reference)),
          item.reference_b !== undefined ? h("span", { class: "muted small" }, ` (B: ${valueText(item.reference_b)})`) : null)
        : null,
      h("div", { class: "pair-sides" },
        side("A", data.run_a, item.a, item.score_a, left),
        side("B", data.run_b, item.b, item.score_b, right)));
  }

  load();
  return () => { alive = false; };
}

function countsTable(c) {
  return h("table", { class: "counts-table", id: "pair-counts" },
    h("thead", {}, h("tr", {}, h("th", {}), h("th", {}, "B right"), h("th", {}, "B wrong"))),
    h("tbody", {},
      h("tr", {}, h("th", {}, "A right"), h("td", { class: "num", dataset: { cell: "both" } }, String(c.both)),
        h("td", { class: "num discordant", dataset: { cell: "a_only" } }, String(c.a_only))),
      h("tr", {}, h("th", {}, "A wrong"), h("td", { class: "num discordant", dataset: { cell: "b_only" } }, String(c.b_only)),
        h("td", { class: "num", dataset: { cell: "neither" } }, String(c.neither)))));
}

/** One metric's stored details as "key: value, ..." (null shown as null). */
export function detailText(value) {
  return Object.entries(value || {}).map(([k, v]) => `${k}: ${valueText(v === null ? "null" : v)}`).join(", ");
}

export function detailsList(details) {
  const entries = Object.entries(details || {});
  if (!entries.length) return null;
  return h("dl", { class: "metric-details small" }, entries.map(([metric, value]) =>
    [h("dt", {}, metric), h("dd", { class: "mono" }, detailText(value))]));
}

function errorsList(errors) {
  const entries = Object.entries(errors || {});
  if (!entries.length) return null;
  return h("div", { class: "metric-errors" }, entries.map(([m, msg]) =>
    h("div", { class: "metric-error error-text small", dataset: { metric: m } }, "⚠ ", m, ": ", valueText(msg))));
}
