// The runs table: format, source, id, model, benchmark, status, progress with ETA, samples,
// duration and throughput, metric means, creation time; search, filters, sortable columns; live.

import { clear, errorBox, fmtNum, formatBadge, h, progressBar, runIdLabel, statusLine } from "../dom.js";
import { elapsedSeconds, etaSeconds, fmtDuration, localTime, parseTime, relativeTime, samplesDone, throughput } from "../figures.js";
import { store } from "../store.js";

const STATUSES = ["pending", "in_progress", "completed", "failed", "cancelled"];
const filters = { status: "", experiment: "", source: "", search: "" };
// The default order is the API's (newest first); a click on a column header sorts by it.
const sortState = { key: "created", dir: "desc" };
const REFRESH_MS = 10_000; // relative times and ETAs move without events too

const NUMBER_SORT = { progress: true, samples: true, duration: true, created: true };
const SORTS = {
  run: (r) => r.run_id,
  source: (r) => [r.format, r.source].filter(Boolean).join(" ") || null,
  model: (r) => r.model,
  benchmark: (r) => r.experiment_id,
  status: (r) => (r.stalled && r.status === "in_progress" ? "stalled" : r.status),
  progress: (r) => r.progress,
  samples: (r) => samplesDone(r) ?? r.num_samples,
  duration: (r) => elapsedSeconds(r),
  created: (r) => parseTime(r.created_at)?.getTime() ?? null,
};
const HEADERS = [
  ["run", "Run"], ["source", "Source"], ["model", "Model"],
  ["benchmark", "Benchmark", { title: "Themis 1.x: experiment; Themis 4: benchmark (or dataset)" }],
  ["status", "Status"], ["progress", "Progress", { class: "col-progress" }],
  ["samples", "Samples", { class: "num", title: "samples done (what the progress counts) / expected" }],
  ["duration", "Duration", { class: "num", title: "run time so far, and samples per minute" }],
  [null, "Metric means"], ["created", "Created"],
];
const COLUMNS = HEADERS.length;

function compareRuns(a, b) {
  const get = SORTS[sortState.key];
  const va = get(a);
  const vb = get(b);
  const missingA = va === null || va === undefined;
  const missingB = vb === null || vb === undefined;
  if (missingA || missingB) return missingA === missingB ? 0 : missingA ? 1 : -1; // unknowns last
  // Ids compare by code point (hex ids would not survive a "numeric" collation); names as people read them.
  const order = NUMBER_SORT[sortState.key] ? va - vb
    : sortState.key === "run" ? (va < vb ? -1 : va > vb ? 1 : 0) : String(va).localeCompare(String(vb));
  return sortState.dir === "asc" ? order : -order;
}

function haystack(run) {
  return [run.run_id, run.model, run.experiment_id, run.source, run.format, run.status, run.native_status,
    run.stalled ? "stalled" : "", run.error_message, ...Object.keys(run.metrics || {})]
    .filter((v) => v !== null && v !== undefined).join(" ").toLowerCase();
}

export function mountRuns(root) {
  const statusSelect = h("select", { id: "filter-status", onchange: (e) => { filters.status = e.target.value; render(); } },
    h("option", { value: "" }, "all statuses"),
    STATUSES.map((st) => h("option", { value: st }, st.replace("_", " "))));
  statusSelect.value = filters.status;
  const experimentSelect = h("select", { id: "filter-experiment", onchange: (e) => { filters.experiment = e.target.value; render(); } });
  const sourceSelect = h("select", { id: "filter-source", onchange: (e) => { filters.source = e.target.value; render(); } });
  const sourceLabel = h("label", { hidden: true }, "Source ", sourceSelect);
  const search = h("input", {
    type: "search", id: "runs-search", placeholder: "Search id, model, benchmark, metric…", "aria-label": "Search runs",
    value: filters.search, spellcheck: "false", oninput: (e) => { filters.search = e.target.value; render(); },
  });
  const count = h("span", { class: "muted", id: "runs-count" });
  const message = h("div");
  const body = h("tbody");
  const headRow = h("tr", {});
  const table = h("table", { class: "runs", id: "runs-table" }, h("thead", {}, headRow), body);

  function renderHeaders() {
    clear(headRow).append(...HEADERS.map(([key, label, attrs = {}]) => {
      if (!key) return h("th", attrs, label);
      const active = sortState.key === key;
      return h("th", { ...attrs, "aria-sort": active ? (sortState.dir === "asc" ? "ascending" : "descending") : "none" },
        h("button", {
          type: "button", class: "sort" + (active ? " active" : ""), dataset: { sort: key },
          title: `Sort by ${label.toLowerCase()}`,
          onclick: () => {
            if (sortState.key === key) sortState.dir = sortState.dir === "asc" ? "desc" : "asc";
            else Object.assign(sortState, { key, dir: NUMBER_SORT[key] ? "desc" : "asc" });
            render();
          },
        }, label, h("span", { class: "sort-mark", "aria-hidden": "true" }, active ? (sortState.dir === "asc" ? " ▲" : " ▼") : "")));
    }));
  }

  clear(root).append(
    h("section", { class: "toolbar" },
      h("h1", {}, "Runs"),
      search,
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
    renderHeaders();
    renderChoices(experimentSelect, distinct(all, "experiment_id"), filters.experiment, "all experiments");
    const sources = distinct(all, "source");
    renderChoices(sourceSelect, sources, filters.source, "all sources");
    // Only worth a filter when the daemon serves more than one store.
    sourceLabel.hidden = sources.length < 2 && !filters.source;
    const terms = filters.search.toLowerCase().split(/\s+/).filter(Boolean);
    const shown = all.filter((r) => (!filters.status || r.status === filters.status)
      && (!filters.experiment || r.experiment_id === filters.experiment)
      && (!filters.source || r.source === filters.source)
      && (!terms.length || terms.every((t) => haystack(r).includes(t))));
    // A stable sort over the API's order: ties keep newest first.
    if (!(sortState.key === "created" && sortState.dir === "desc")) shown.sort(compareRuns);
    clear(message);
    if (store.error) message.append(errorBox(store.error, store.error.title || "Cannot load runs:"));
    count.textContent = store.loaded ? `${shown.length} of ${all.length} runs` : store.error ? "" : "loading…";
    const now = Date.now();
    clear(body).append(...shown.map((run) => row(run, now)));
    if (store.loaded && shown.length === 0) {
      body.append(h("tr", {}, h("td", { colspan: COLUMNS, class: "muted empty" },
        all.length ? "No run matches these filters." : "No runs in the storage yet.")));
    }
  }

  render();
  const unsubscribe = store.subscribe(render);
  const timer = setInterval(render, REFRESH_MS);
  return () => {
    clearInterval(timer);
    unsubscribe();
  };
}

function row(run, now) {
  const link = "#/runs/" + encodeURIComponent(run.run_id);
  const expected = run.expected_samples;
  // The figure the progress bar shows, so the two always agree; the counts behind it on hover.
  const done = samplesDone(run) ?? run.num_samples ?? 0;
  const counts = [`generated ${run.generated ?? "?"}`, `evaluated ${run.evaluated ?? "?"}`, `failed ${run.failed ?? 0}`,
    `with scores ${run.num_samples ?? "?"}`].join(" · ");
  const samples = h("div", {},
    h("span", { class: "sample-count", title: counts },
      `${done}${expected !== null && expected !== undefined ? " / " + expected : ""}`),
    run.failed ? h("span", { class: "failed-count", title: run.format === "themis-v4" ? "cases with a failure (generation or score)" : "failed generations" },
      ` ${run.failed} failed`) : null);
  const metrics = Object.entries(run.metrics || {}).map(([name, value]) =>
    h("span", { class: "metric" }, h("span", { class: "metric-name" }, name), " ", fmtNum(value)));
  const dash = h("span", { class: "muted" }, "–");
  const eta = etaSeconds(run, now);
  const rate = throughput(run, now);
  const elapsed = elapsedSeconds(run, now);
  return h("tr", { dataset: run.format ? { runId: run.run_id, status: run.status, format: run.format } : { runId: run.run_id, status: run.status }, class: run.error ? "has-error" : null },
    h("td", { "data-label": "Run", class: "col-run" }, h("div", {},
      idLabel(run.run_id, link),
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
      progressBar(run.progress, `progress of ${run.run_id}`, { pending: run.status === "pending" }),
      eta !== null ? h("div", { class: "eta small muted", title: "at the run's average rate so far" }, `ETA ${fmtDuration(eta)}`) : null),
    h("td", { "data-label": "Samples", class: "num" }, samples),
    h("td", { "data-label": "Duration", class: "num col-duration" },
      elapsed === null ? dash : h("div", { class: "duration" + (run.status === "in_progress" ? " running" : "") }, fmtDuration(elapsed)),
      rate === null ? null : h("div", { class: "rate small muted", title: "samples per minute" }, `${fmtNum(rate, 1)} /min`)),
    h("td", { "data-label": "Metrics" }, h("div", { class: "metrics" }, metrics.length ? metrics : h("span", { class: "muted" }, "–"))),
    h("td", { "data-label": "Created", class: "col-created" }, timeCell(run.created_at, now)));
}

/** The run id as a link; ids cut by the column width keep the full id on hover. */
function idLabel(runId, href) {
  const label = runIdLabel(runId, { href, cls: "run-link" });
  const anchor = label.matches("a") ? label : label.querySelector("a");
  if (anchor && !anchor.title) anchor.title = runId;
  return label;
}

/** The time in the browser's zone, with a relative hint; the stored stamp on hover. */
function timeCell(iso, now) {
  const date = parseTime(iso);
  if (!date) return h("span", { class: "muted" }, "–");
  return h("span", { class: "when" },
    h("time", { datetime: date.toISOString(), title: `stored as ${iso}`, class: "nowrap" }, localTime(date)),
    h("span", { class: "relative small muted nowrap" }, relativeTime(date, now)));
}
