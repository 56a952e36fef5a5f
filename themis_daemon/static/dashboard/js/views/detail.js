// One run: metadata, metric means with 95% CIs, and a paged, searchable sample table.

import { api, apiRoot, downloadWithKey, getKey, runPath, samplesDownloadPath } from "../api.js";
import {
  clear, copyButton, debounce, throttle, errorBox, fmtNum, fmtTime, formatBadge, h, isLongId, progressBar, shortId, statusLine, valueText,
} from "../dom.js";
import { metricStats } from "../stats.js";
import { store } from "../store.js";
import { prettyText } from "../text.js";
import { detailsList, sampleHref } from "./pairs.js";

const PAGE_SIZE = 20;

export function mountDetail(root, runId) {
  let detail = null;
  let query = "";
  let page = 0;
  let onlyFailures = false;
  let wrongOn = "";
  let sortKey = "";
  let sortDesc = false;
  let loading = false;
  const head = h("div");
  const metricsBox = h("section", { class: "card" });
  const samplesBox = h("section", { class: "card" });
  const message = h("div");

  clear(root).append(
    h("p", {}, h("a", { href: "#/runs" }, "← All runs")),
    message, head, metricsBox, samplesBox);

  async function load() {
    if (loading) return;
    loading = true;
    try {
      // Pending samples (generated, not evaluated yet) follow the evaluated ones.
      const { data } = await api(runPath(runId) + "?include_pending=true");
      detail = data;
      clear(message);
      renderHead();
      renderMetrics();
      renderSamples();
    } catch (err) {
      // The API's message names the run already ("Run not found: ..."): no second prefix.
      clear(message).append(errorBox(err, err.status === 404 ? "Not found." : err.title));
    } finally {
      loading = false;
    }
  }

  function renderHead() {
    const d = detail;
    const manifest = (d.metadata && d.metadata.config_snapshot && d.metadata.config_snapshot.reproducibility_manifest) || {};
    const sampling = manifest.sampling || {};
    const v4 = d.format === "themis-v4";
    const facts = [];
    if (d.format || d.source) {
      facts.push(["Source", h("span", { class: "source", id: "run-source" }, formatBadge(d.format), d.source ? h("span", { class: "source-name" }, d.source) : null)]);
    }
    if (isLongId(d.run_id)) facts.push(["Run id", h("span", { class: "id-with-copy" }, h("code", { class: "full-id", id: "full-run-id" }, d.run_id), copyButton(d.run_id))]);
    facts.push(
      [v4 ? "Benchmark" : "Experiment", d.experiment_id ?? "–"],
      ["Model", d.model || "–"],
      ["Status", statusLine(d)],
      ["Samples", d.status === "pending" && !d.generated && !d.evaluated
        ? "not started" + (d.expected_samples != null ? `, ${d.expected_samples} expected` : "")
        : `${d.evaluated ?? 0} evaluated, ${d.generated ?? 0} generated` + (d.expected_samples != null ? ` of ${d.expected_samples}` : "") + (d.failed ? `, ${d.failed} failed` : "")],
      ["Created", fmtTime(d.created_at)],
      ["Updated", fmtTime(d.updated_at)],
      ["Completed", fmtTime(d.completed_at)],
    );
    if (d.native_status) facts.push(["Themis status", h("span", { class: "native-status-fact" }, d.native_status)]);
    if (sampling.temperature !== undefined) facts.push(["Sampling", `temperature ${sampling.temperature}, top_p ${sampling.top_p}, max_tokens ${sampling.max_tokens}`]);
    if (manifest.dataset && manifest.dataset.fingerprint) facts.push(["Dataset", manifest.dataset.fingerprint.slice(0, 16) + "…"]);
    if (d.error_message) facts.push(["Error", h("span", { class: "error-text" }, d.error_message)]);
    if (d.error) facts.push(["Read error", h("span", { class: "error-text" }, d.error)]);
    clear(head).append(...[
      h("div", { class: "run-head" },
        h("h1", { class: "run-title" + (isLongId(d.run_id) ? " short-id" : ""), title: isLongId(d.run_id) ? d.run_id : null }, shortId(d.run_id)),
        isLongId(d.run_id) ? copyButton(d.run_id) : null),
      progressBar(d.progress, `progress of ${d.run_id}`, { pending: d.status === "pending" }),
      h("dl", { class: "facts" }, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
      d.metadata && d.metadata.config_snapshot
        ? h("details", {}, h("summary", {}, "Configuration snapshot"),
          h("pre", { class: "json" }, JSON.stringify(d.metadata.config_snapshot, null, 2)))
        : null,
      // Themis 4: the run's snapshot (identity, datasets, components) as the store keeps it.
      d.metadata && d.metadata.snapshot && !d.metadata.config_snapshot
        ? h("details", { id: "run-snapshot" }, h("summary", {}, "Themis snapshot"),
          h("pre", { class: "json" }, JSON.stringify(d.metadata.snapshot, null, 2)))
        : null,
    ].filter(Boolean));
  }

  function renderMetrics() {
    const stats = metricStats(detail.samples || []);
    const names = Object.keys(stats);
    clear(metricsBox).append(h("h2", {}, "Metrics"));
    if (!names.length) {
      metricsBox.append(h("p", { class: "muted" }, "No scores yet."));
      return;
    }
    metricsBox.append(h("div", { class: "table-scroll" }, h("table", { class: "metrics-table", id: "metrics-table" },
      h("thead", {}, h("tr", {}, h("th", {}, "Metric"), h("th", { class: "num" }, "Mean"),
        h("th", { class: "num" }, "95% CI"), h("th", { class: "num" }, "SD"), h("th", { class: "num" }, "n"))),
      h("tbody", {}, names.map((name) => {
        const st = stats[name];
        return h("tr", { dataset: { metric: name } }, h("td", {}, name), h("td", { class: "num" }, fmtNum(st.mean)),
          h("td", { class: "num", title: st.method ? `${st.method} interval` : null }, st.low === null ? "–" : `[${fmtNum(st.low)}, ${fmtNum(st.high)}]`),
          h("td", { class: "num" }, fmtNum(st.sd)), h("td", { class: "num" }, st.n));
      })))),
    h("p", { class: "muted small" }, "95% confidence intervals of the mean over the per-sample scores: Wilson score interval for 0/1 metrics, else mean ± t(0.975, n−1) · SD/√n."));
  }

  const search = h("input", {
    type: "search", id: "sample-search", placeholder: "Search id, prompt, response, error…",
    oninput: debounce((e) => { query = e.target.value.trim().toLowerCase(); page = 0; renderSamples(); }, 150),
  });
  const failuresOnly = h("label", { class: "inline" },
    h("input", { type: "checkbox", id: "failures-only", onchange: (e) => { onlyFailures = e.target.checked; page = 0; renderSamples(); } }),
    " failures only");
  const wrongSelect = h("select", {
    id: "wrong-on", "aria-label": "Show only samples wrong on a metric",
    onchange: (e) => { wrongOn = e.target.value; page = 0; renderSamples(); },
  });
  const sortSelect = h("select", {
    id: "sample-sort", "aria-label": "Sort samples by",
    onchange: (e) => { sortKey = e.target.value; page = 0; renderSamples(); },
  });
  const sortDir = h("button", {
    type: "button", id: "sample-sort-dir", title: "Reverse the order",
    onclick: () => { sortDesc = !sortDesc; page = 0; renderSamples(); },
  }, "↑");
  const downloads = h("span", { class: "downloads" }, ["csv", "jsonl"].map((fmt) => h("a", {
    id: `download-${fmt}`, class: "button-link", href: new URL(samplesDownloadPath(runId, fmt), apiRoot).href,
    download: `${runId.replace(/[^A-Za-z0-9._-]+/g, "_")}-samples.${fmt}`, title: `Download every sample as ${fmt.toUpperCase()}`,
    onclick: (e) => {
      if (!getKey()) return;  // no key: the browser streams the file itself
      e.preventDefault();
      downloadWithKey(samplesDownloadPath(detail ? detail.run_id : runId, fmt), e.currentTarget.getAttribute("download"))
        .catch((err) => clear(message).append(errorBox(err, "Download failed:")));
    },
  }, `⤓ ${fmt.toUpperCase()}`)));
  const samplesTable = h("div", { class: "table-scroll" });
  const pager = h("div", { class: "pager" });

  function metricErrors(sample) {
    return sample.errors && typeof sample.errors === "object" ? Object.entries(sample.errors) : [];
  }

  function isFailure(sample) {
    return Boolean(sample.error) || metricErrors(sample).length > 0;
  }

  function hasReference(sample) {
    return sample.reference !== undefined && sample.reference !== null;
  }

  /** Metrics whose scores in this run are all 0 or 1: "wrong" means a 0 (or no score because
   * the generation or the metric failed). */
  function binaryMetrics(all) {
    const seen = new Map();
    for (const sample of all) {
      for (const [m, v] of Object.entries(sample.scores || {})) seen.set(m, (seen.get(m) ?? true) && (v === 0 || v === 1));
      for (const [m] of metricErrors(sample)) if (!seen.has(m)) seen.set(m, true);
    }
    return [...seen].filter(([, binary]) => binary).map(([m]) => m).sort();
  }

  function isWrongOn(sample, metric) {
    const scores = sample.scores || {};
    if (metric in scores) return scores[metric] === 0;
    return !sample.pending && (Boolean(sample.error) || Boolean((sample.errors || {})[metric]));
  }

  function allMetrics(all) {
    const names = new Set();
    for (const sample of all) Object.keys(sample.scores || {}).forEach((m) => names.add(m));
    return [...names].sort();
  }

  function sortValue(sample, key) {
    if (key.startsWith("score:")) {
      const v = (sample.scores || {})[key.slice(6)];
      return typeof v === "number" && Number.isFinite(v) ? v : null;
    }
    const v = key === "reference" ? sample.reference : sample[key];
    if (v === null || v === undefined || v === "") return null;
    return typeof v === "number" ? v : valueText(v).toLowerCase();
  }

  /** Stable sort by one column; samples without a value go last in either direction. */
  function sorted(list) {
    if (!sortKey) return sortDesc ? list.slice().reverse() : list;
    const keyed = list.map((sample, i) => [sortValue(sample, sortKey), i, sample]);
    keyed.sort((x, y) => {
      if (x[0] === null || y[0] === null) return (x[0] === null) - (y[0] === null) || x[1] - y[1];
      let c = typeof x[0] === "number" && typeof y[0] === "number" ? x[0] - y[0]
        : String(x[0]).localeCompare(String(y[0]), undefined, { numeric: true });
      if (sortDesc) c = -c;
      return c || x[1] - y[1];
    });
    return keyed.map((k) => k[2]);
  }

  function syncOptions(select, options, current) {
    const key = JSON.stringify(options);
    if (select.dataset.options === key) return;
    select.dataset.options = key;
    clear(select).append(...options.map(([value, label]) => h("option", { value, selected: value === current }, label)));
    select.value = current;
  }

  function sortHeader(label, key) {
    const active = sortKey === key;
    return h("th", { "aria-sort": active ? (sortDesc ? "descending" : "ascending") : null },
      h("button", { type: "button", class: "sort-head" + (active ? " active" : ""), dataset: { sort: key },
        title: `Sort by ${label.toLowerCase()}`,
        onclick: () => { if (sortKey === key) sortDesc = !sortDesc; else { sortKey = key; sortDesc = false; } page = 0; renderSamples(); } },
      label, active ? (sortDesc ? " ▼" : " ▲") : ""));
  }

  function searchable(sample) {
    return [sample.id, sample.prompt, sample.response, sample.error, valueText(sample.reference),
      ...metricErrors(sample).flat(), ...(Array.isArray(sample.candidates) ? sample.candidates.map(valueText) : [])];
  }

  function renderSamples() {
    if (!samplesBox.firstChild) {
      samplesBox.append(h("h2", {}, "Samples"),
        h("div", { class: "toolbar" }, search, failuresOnly, wrongSelect,
          h("label", { class: "inline" }, "Sort ", sortSelect, " ", sortDir), downloads),
        samplesTable, pager);
    }
    const all = detail.samples || [];
    const binary = binaryMetrics(all);
    if (wrongOn && !binary.includes(wrongOn)) binary.push(wrongOn);
    syncOptions(wrongSelect, [["", "all samples"], ...binary.map((m) => [m, `wrong on ${m}`])], wrongOn);
    const metrics = allMetrics(all);
    syncOptions(sortSelect, [["", "dataset order"], ["id", "id"], ["prompt", "prompt"], ["response", "response"],
      ["reference", "reference"], ["error", "error"], ...metrics.map((m) => [`score:${m}`, `score: ${m}`])], sortKey);
    sortDir.textContent = sortDesc ? "↓" : "↑";
    sortDir.setAttribute("aria-label", sortDesc ? "descending" : "ascending");
    const matches = sorted(all.filter((sample) => (!onlyFailures || isFailure(sample))
      && (!wrongOn || isWrongOn(sample, wrongOn)) && (!query
      || searchable(sample).some((v) => v !== undefined && v !== null && String(v).toLowerCase().includes(query)))));
    const pages = Math.max(1, Math.ceil(matches.length / PAGE_SIZE));
    page = Math.min(page, pages - 1);
    const shown = matches.slice(page * PAGE_SIZE, (page + 1) * PAGE_SIZE);
    // A Reference column only for runs whose samples carry one (Themis 4's expected output).
    const withReference = all.some(hasReference);
    const columns = withReference ? 5 : 4;
    const empty = all.length ? "No sample matches."
      : detail.status === "pending" ? "No samples yet: the run was submitted but has not started." : "No samples yet.";
    clear(samplesTable).append(h("table", { class: "samples" + (withReference ? " with-reference" : ""), id: "samples-table" },
      h("thead", {}, h("tr", {}, sortHeader("Id", "id"), sortHeader("Prompt", "prompt"), sortHeader("Response", "response"),
        withReference ? sortHeader("Reference", "reference") : null,
        h("th", {}, "Scores", metrics.length ? [" ", h("span", { class: "score-sorts" }, metrics.map((m) => {
          const active = sortKey === `score:${m}`;
          return h("button", { type: "button", class: "sort-head small" + (active ? " active" : ""), dataset: { sort: `score:${m}` },
            title: `Sort by ${m}`,
            onclick: () => { if (active) sortDesc = !sortDesc; else { sortKey = `score:${m}`; sortDesc = false; } page = 0; renderSamples(); } },
          m, active ? (sortDesc ? " ▼" : " ▲") : "");
        }))] : null))),
      h("tbody", {}, shown.length ? shown.map((sample) => sampleRow(sample, withReference))
        : h("tr", {}, h("td", { colspan: columns, class: "muted empty" }, empty)))));
    clear(pager).append(
      h("button", { type: "button", disabled: page === 0, onclick: () => { page -= 1; renderSamples(); } }, "‹ Previous"),
      h("span", { class: "muted", id: "samples-page" }, `page ${page + 1} of ${pages} · ${matches.length} of ${all.length} samples`),
      h("button", { type: "button", disabled: page >= pages - 1, onclick: () => { page += 1; renderSamples(); } }, "Next ›"));
  }

  function candidatesBox(sample) {
    const candidates = Array.isArray(sample.candidates) ? sample.candidates : [];
    if (candidates.length < 2) return null;
    return h("details", { class: "candidates" },
      h("summary", {}, `${candidates.length} candidates`),
      h("ol", {}, candidates.map((c) => h("li", { class: "candidate text mono" }, valueText(c)))));
  }

  function sampleRow(sample, withReference) {
    const scores = Object.entries(sample.scores || {}).map(([name, value]) =>
      h("span", { class: "score" + (value === 0 ? " zero" : value === 1 ? " one" : "") }, `${name} ${fmtNum(value)}`));
    const errors = metricErrors(sample).map(([metric, message]) =>
      h("div", { class: "metric-error error-text small", dataset: { metric } }, "⚠ ", h("span", { class: "metric-name" }, metric), ": ", valueText(message)));
    const details = sample.details && Object.keys(sample.details).length
      ? h("details", { class: "metric-details-box" }, h("summary", { class: "small" }, "details"), detailsList(sample.details)) : null;
    return h("tr", { class: isFailure(sample) ? "failure" : null, dataset: { sampleId: String(sample.id) } },
      h("td", { "data-label": "Id" }, sample.pending || sample.id === null || sample.id === undefined ? String(sample.id)
        : h("a", { class: "sample-link", href: sampleHref(detail.run_id, sample.id), title: "Open this sample" }, String(sample.id))),
      h("td", { "data-label": "Prompt" }, h("div", { class: "text" }, valueText(sample.prompt))),
      h("td", { "data-label": "Response" }, h("div", {},
        sample.error
          ? h("div", { class: "error-text" }, "⚠ ", sample.error)
          : prettyText(sample.response, { cls: "response" }),
        candidatesBox(sample))),
      withReference ? h("td", { "data-label": "Reference" }, hasReference(sample)
        ? h("div", { class: "text mono reference", title: "expected answer" }, valueText(sample.reference))
        : h("span", { class: "muted" }, "–")) : null,
      h("td", { "data-label": "Scores" }, h("div", {},
        h("div", { class: "scores" }, scores.length ? scores
          : h("span", { class: "muted" }, sample.pending ? "not evaluated yet" : errors.length ? "" : "–")),
        errors.length ? h("div", { class: "metric-errors" }, errors) : null, details)));
  }

  // Follow a live run: reload when its counts change, at most every 700 ms (throttled, so a
  // run that changes at every poll still updates).
  const reloadSoon = throttle(load, 700);
  const unsubscribe = store.subscribe(() => {
    // The route may name a unique prefix of a Themis 4 id: follow the run it resolved to.
    const now = store.get(detail ? detail.run_id : runId);
    if (!detail && now) {
      reloadSoon();  // opened before the run existed: it has appeared
    } else if (detail && now && (now.generated !== detail.generated || now.evaluated !== detail.evaluated || now.status !== detail.status)) {
      reloadSoon();
    }
  });
  load();
  return unsubscribe;
}
