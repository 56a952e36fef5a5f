// The runs table: format, source, id, model, benchmark, status, progress, sample counts, metric
// means; filters; live updates.

import { clear, errorBox, fmtNum, fmtTime, formatBadge, h, progressBar, runIdLabel, statusLine } from "../dom.js";
import { store } from "../store.js";

const STATUSES = ["pending", "in_progress", "completed", "failed", "cancelled"];
const filters = { status: "", experiment: "", source: "" };
const COLUMNS = 9;

export function mountRuns(root) {
  const statusSelect = h("select", { id: "filter-status", onchange: (e) => { filters.status = e.target.value; render(); } },
    h("option", { value: "" }, "all statuses"),
    STATUSES.map((st) => h("option", { value: st }, st.replace("_", " "))));
  statusSelect.value = filters.status;
  const experimentSelect = h("select", { id: "filter-experiment", onchange: (e) => { filters.experiment = e.target.value; render(); } });
  const sourceSelect = h("select", { id: "filter-source", onchange: (e) => { filters.source = e.target.value; render(); } });
  const sourceLabel = h("label", { hidden: true }, "Source ", sourceSelect);
  const count = h("span", { class: "muted", id: "runs-count" });
  const message = h("div");
  const body = h("tbody");
  const table = h("table", { class: "runs", id: "runs-table" },
    h("thead", {}, h("tr", {},
      h("th", {}, "Run"), h("th", {}, "Source"), h("th", {}, "Model"),
      h("th", { title: "Themis 1.x: experiment; Themis 4: benchmark (or dataset)" }, "Benchmark"),
      h("th", {}, "Status"), h("th", { class: "col-progress" }, "Progress"),
      h("th", { class: "num" }, "Samples"), h("th", {}, "Metric means"), h("th", {}, "Created"))),
    body);

  clear(root).append(
    h("section", { class: "toolbar" },
      h("h1", {}, "Runs"),
      h("label", {}, "Status ", statusSelect),
      h("label", { title: "Themis 1.x experiment or Themis 4 benchmark" }, "Experiment ", experimentSelect),
      sourceLabel,
      count),
    message,
    h("div", { class: "table-scroll" }, table));

  function renderChoices(select, values, current, allLabel) {
    clear(select).append(h("option", { value: "" }, allLabel), ...values.map((v) => h("option", { value: v }, v)));
    select.value = values.includes(current) ? current : "";
  }

  function distinct(all, key) {
    return [...new Set(all.map((r) => r[key]).filter((v) => v !== null && v !== undefined))].map(String).sort();
  }

  function render() {
    const all = store.list();
    renderChoices(experimentSelect, distinct(all, "experiment_id"), filters.experiment, "all experiments");
    const sources = distinct(all, "source");
    renderChoices(sourceSelect, sources, filters.source, "all sources");
    // Only worth a filter when the daemon serves more than one store.
    sourceLabel.hidden = sources.length < 2 && !filters.source;
    const shown = all.filter((r) => (!filters.status || r.status === filters.status)
      && (!filters.experiment || r.experiment_id === filters.experiment)
      && (!filters.source || r.source === filters.source));
    clear(message);
    if (store.error) message.append(errorBox(store.error, store.error.title || "Cannot load runs:"));
    count.textContent = store.loaded ? `${shown.length} of ${all.length} runs` : store.error ? "" : "loading…";
    clear(body).append(...shown.map(row));
    if (store.loaded && shown.length === 0) {
      body.append(h("tr", {}, h("td", { colspan: COLUMNS, class: "muted empty" },
        all.length ? "No run matches these filters." : "No runs in the storage yet.")));
    }
  }

  render();
  return store.subscribe(render);
}

function row(run) {
  const link = "#/runs/" + encodeURIComponent(run.run_id);
  const expected = run.expected_samples;
  const done = run.evaluated ?? run.num_samples ?? 0;
  const samples = h("div", {},
    h("span", { class: "sample-count", title: "evaluated / expected" },
      `${done}${expected !== null && expected !== undefined ? " / " + expected : ""}`),
    run.failed ? h("span", { class: "failed-count", title: run.format === "themis-v4" ? "cases with a failure (generation or score)" : "failed generations" },
      ` ${run.failed} failed`) : null);
  const metrics = Object.entries(run.metrics || {}).map(([name, value]) =>
    h("span", { class: "metric" }, h("span", { class: "metric-name" }, name), " ", fmtNum(value)));
  const dash = h("span", { class: "muted" }, "–");
  return h("tr", { dataset: run.format ? { runId: run.run_id, status: run.status, format: run.format } : { runId: run.run_id, status: run.status }, class: run.error ? "has-error" : null },
    h("td", { "data-label": "Run" }, h("div", {},
      runIdLabel(run.run_id, { href: link, cls: "run-link" }),
      run.error ? h("div", { class: "error-text small" }, run.error) : null)),
    h("td", { "data-label": "Source", class: "col-source" }, h("div", { class: "source" },
      formatBadge(run.format), run.source ? h("span", { class: "source-name" }, run.source) : (run.format ? null : dash))),
    h("td", { "data-label": "Model", class: "col-model" }, run.model ? h("span", { class: "model" }, run.model) : dash),
    h("td", { "data-label": "Benchmark", class: "col-benchmark" },
      run.experiment_id !== null && run.experiment_id !== undefined ? h("span", { class: "benchmark" }, run.experiment_id) : dash),
    h("td", { "data-label": "Status" }, h("div", {},
      statusLine(run),
      run.error_message ? h("div", { class: "error-text small" }, run.error_message) : null)),
    h("td", { "data-label": "Progress", class: "col-progress" },
      progressBar(run.progress, `progress of ${run.run_id}`, { pending: run.status === "pending" })),
    h("td", { "data-label": "Samples", class: "num" }, samples),
    h("td", { "data-label": "Metrics" }, h("div", { class: "metrics" }, metrics.length ? metrics : h("span", { class: "muted" }, "–"))),
    h("td", { "data-label": "Created", class: "col-created" }, createdCell(run.created_at)));
}

/** Date and time, each kept on one line (the table may put them on two). */
function createdCell(iso) {
  const text = fmtTime(iso);
  const cut = text.indexOf(" ");
  if (cut < 0) return text;
  return h("span", {}, h("span", { class: "nowrap" }, text.slice(0, cut)), " ", h("span", { class: "nowrap" }, text.slice(cut + 1)));
}
