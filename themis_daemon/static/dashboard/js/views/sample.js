// One sample of one run, on its own page (a link people can share): prompt, response shown
// pretty (raw on demand), reference, every score with its details and errors.

import { api, runPath } from "../api.js";
import { clear, errorBox, fmtNum, h, isLongId, shortId, valueText } from "../dom.js";
import { prettyText } from "../text.js";
import { detailText } from "./pairs.js";

export function mountSample(root, runId, sampleId) {
  let alive = true;
  const body = h("div", { id: "sample-view" }, h("p", { class: "muted" }, "Loading…"));
  clear(root).append(
    h("p", {}, h("a", { href: "#/runs/" + encodeURIComponent(runId) }, "← Run ", isLongId(runId) ? shortId(runId) : runId)),
    body);

  async function load() {
    try {
      const { data } = await api(runPath(runId));
      if (!alive) return;
      const sample = (data.samples || []).find((s) => String(s.id) === sampleId);
      if (!sample) {
        clear(body).append(errorBox({ message: `Sample ${sampleId} is not in run ${runId} (yet).` }, "Not found."));
        return;
      }
      render(data, sample);
    } catch (err) {
      if (alive) clear(body).append(errorBox(err, err.status === 404 ? "Not found." : err.title));
    }
  }

  function render(run, sample) {
    const hasRef = sample.reference !== undefined && sample.reference !== null;
    const errors = Object.entries(sample.errors || {});
    clear(body).append(
      h("h1", { class: "sample-title" }, "Sample ", h("code", { id: "sample-id" }, String(sample.id))),
      h("p", { class: "muted" }, "Run ", h("span", { title: run.run_id }, shortId(run.run_id)), run.model ? ` · ${run.model}` : ""),
      h("section", { class: "card" }, h("h2", {}, "Prompt"), h("div", { class: "text", id: "sample-prompt" }, valueText(sample.prompt))),
      h("div", { class: "sample-grid" },
        h("section", { class: "card" }, h("h2", {}, "Response"),
          sample.error ? h("div", { class: "error-text", id: "sample-error" }, "⚠ ", sample.error) : null,
          h("div", { id: "sample-response" }, prettyText(sample.response, { cls: "response" })),
          Array.isArray(sample.candidates) && sample.candidates.length > 1
            ? h("details", { class: "candidates" }, h("summary", {}, `${sample.candidates.length} candidates`),
              h("ol", {}, sample.candidates.map((c) => h("li", {}, prettyText(c)))))
            : null),
        h("section", { class: "card" }, h("h2", {}, "Reference"),
          hasRef ? h("div", { id: "sample-reference" }, prettyText(sample.reference, { cls: "reference" }))
            : h("p", { class: "muted" }, "No reference stored."))),
      h("section", { class: "card" }, h("h2", {}, "Scores"), h("div", { class: "table-scroll" },
        h("table", { class: "metrics-table", id: "sample-scores" },
          h("thead", {}, h("tr", {}, h("th", {}, "Metric"), h("th", { class: "num" }, "Score"), h("th", {}, "Details"))),
          h("tbody", {}, [...new Set([...Object.keys(sample.scores || {}), ...errors.map(([m]) => m)])].sort().map((m) =>
            h("tr", { dataset: { metric: m } }, h("td", {}, m),
              h("td", { class: "num" }, m in (sample.scores || {}) ? fmtNum(sample.scores[m]) : "–"),
              h("td", {}, (sample.errors || {})[m] ? h("span", { class: "error-text" }, "⚠ ", valueText(sample.errors[m])) : null,
                sample.details && sample.details[m] ? h("span", { class: "mono small detail-text" }, detailText(sample.details[m])) : null))))))));
  }

  load();
  return () => { alive = false; };
}
