// The runs table: status, progress, sample counts, metric means; filters; live updates.

import { clear, errorBox, fmtNum, fmtTime, h, progressBar, statusBadge } from "../dom.js";
import { store } from "../store.js";

const STATUSES = ["in_progress", "completed", "failed", "cancelled"];
const filters = { status: "", experiment: "" };

export function mountRuns(root) {
  const statusSelect = h("select", { id: "filter-status", onchange: (e) => { filters.status = e.target.value; render(); } },
    h("option", { value: "" }, "all statuses"),
    STATUSES.map((st) => h("option", { value: st }, st.replace("_", " "))));
  statusSelect.value = filters.status;
  const experimentSelect = h("select", { id: "filter-experiment", onchange: (e) => { filters.experiment = e.target.value; render(); } });
  const count = h("span", { class: "muted", id: "runs-count" });
  const message = h("div");
  const body = h("tbody");
  const table = h("table", { class: "runs", id: "runs-table" },
    h("thead", {}, h("tr", {},
      h("th", {}, "Run"), h("th", {}, "Status"), h("th", { class: "col-progress" }, "Progress"),
      h("th", { class: "num" }, "Samples"), h("th", {}, "Metric means"), h("th", {}, "Created"))),
    body);

  clear(root).append(
    h("section", { class: "toolbar" },
      h("h1", {}, "Runs"),
      h("label", {}, "Status ", statusSelect),
      h("label", {}, "Experiment ", experimentSelect),
      count),
    message,
    h("div", { class: "table-scroll" }, table));

  function renderExperiments(all) {
    const experiments = [...new Set(all.map((r) => r.experiment_id))].sort();
    const current = filters.experiment;
    clear(experimentSelect).append(h("option", { value: "" }, "all experiments"),
      ...experiments.map((e) => h("option", { value: e }, e)));
    experimentSelect.value = experiments.includes(current) ? current : "";
  }

  function render() {
    const all = store.list();
    renderExperiments(all);
    const shown = all.filter((r) => (!filters.status || r.status === filters.status)
      && (!filters.experiment || r.experiment_id === filters.experiment));
    clear(message);
    if (store.error) message.append(errorBox(store.error, store.error.title || "Cannot load runs:"));
    count.textContent = store.loaded ? `${shown.length} of ${all.length} runs` : store.error ? "" : "loading…";
    clear(body).append(...shown.map(row));
    if (store.loaded && shown.length === 0) {
      body.append(h("tr", {}, h("td", { colspan: 6, class: "muted empty" },
        all.length ? "No run matches these filters." : "No runs in the storage yet.")));
    }
  }

  render();
  return store.subscribe(render);
}

function row(run) {
  const link = "#/runs/" + encodeURIComponent(run.run_id);
  const expected = run.expected_samples;
  const samples = h("div", {},
    h("span", { class: "sample-count", title: "evaluated / expected" },
      `${run.evaluated ?? run.num_samples}${expected !== null && expected !== undefined ? " / " + expected : ""}`),
    run.failed ? h("span", { class: "failed-count", title: "failed generations" }, ` ${run.failed} failed`) : null);
  const metrics = Object.entries(run.metrics || {}).map(([name, value]) =>
    h("span", { class: "metric" }, h("span", { class: "metric-name" }, name), " ", fmtNum(value)));
  return h("tr", { dataset: { runId: run.run_id, status: run.status }, class: run.error ? "has-error" : null },
    h("td", { "data-label": "Run" }, h("div", {},
      h("a", { href: link, class: "run-link" }, run.run_id),
      h("div", { class: "muted small" }, run.experiment_id, run.model ? " · " + run.model : ""),
      run.error ? h("div", { class: "error-text small" }, run.error) : null)),
    h("td", { "data-label": "Status" }, h("div", {},
      statusBadge(run.stalled && run.status === "in_progress" ? "stalled" : run.status),
      run.error_message ? h("div", { class: "error-text small" }, run.error_message) : null)),
    h("td", { "data-label": "Progress", class: "col-progress" }, progressBar(run.progress, `progress of ${run.run_id}`)),
    h("td", { "data-label": "Samples", class: "num" }, samples),
    h("td", { "data-label": "Metrics" }, h("div", { class: "metrics" }, metrics.length ? metrics : h("span", { class: "muted" }, "–"))),
    h("td", { "data-label": "Created" }, fmtTime(run.created_at)));
}
