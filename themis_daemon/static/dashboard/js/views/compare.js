// Compare runs: pick runs and a test, POST /api/compare, show the pairwise table and a chart.

import { api, runPath } from "../api.js";
import { errorBarChart } from "../chart.js";
import { clear, debounce, errorBox, fmtNum, fmtP, h, isLongId, runIdLabel, shortId } from "../dom.js";
import { meanCI } from "../stats.js";
import { store } from "../store.js";
import { pairsHref } from "./pairs.js";

const TESTS = [
  ["bootstrap", "bootstrap (paired, studentized)"],
  ["permutation", "permutation (paired sign-flip)"],
  ["t_test", "paired t-test"],
  ["wilcoxon", "Wilcoxon signed-rank"],
  ["mcnemar", "McNemar (0/1 metrics)"],
  ["auto", "auto"],
  ["none", "none (means only)"],
];
const CORRECTIONS = ["holm", "bh", "by", "bonferroni", "none"];
// The picker lists at most this many runs matching the search (selected runs always show).
const PICKER_LIMIT = 200;

export function mountCompare(root, params) {
  const selected = new Set((params.get("runs") || "").split(",").filter(Boolean));
  const picker = h("div", { class: "run-picker", id: "run-picker" });
  const testSelect = h("select", { id: "compare-test" }, TESTS.map(([v, label]) => h("option", { value: v }, label)));
  testSelect.value = params.get("test") || "bootstrap";
  const correctionSelect = h("select", { id: "compare-correction" }, CORRECTIONS.map((c) => h("option", { value: c }, c)));
  correctionSelect.value = params.get("correction") || "holm";
  const alphaInput = h("input", { id: "compare-alpha", type: "number", min: "0.0001", max: "0.5", step: "any", value: params.get("alpha") || "0.05" });
  const chosenMetrics = new Set((params.get("metrics") || "").split(",").map((m) => m.trim()).filter(Boolean));
  const lowerKnown = new Set();
  const metricsBox = h("div", { id: "compare-metrics", class: "metric-select", role: "group", "aria-label": "Metrics" });
  const button = h("button", { type: "submit", id: "compare-button" }, "Compare");
  const output = h("div", { id: "compare-output" });
  let runQuery = "";
  const runSearch = h("input", {
    type: "search", id: "run-search", placeholder: "Filter runs by id, model, benchmark, status…", "aria-label": "Filter runs",
    oninput: debounce((e) => { runQuery = e.target.value.trim().toLowerCase(); shownIds = ""; renderPicker(); }, 120),
  });
  const pickerInfo = h("span", { class: "muted small", id: "run-picker-info" });

  const form = h("form", { class: "card compare-form", onsubmit: (e) => { e.preventDefault(); run(); } },
    h("h2", {}, "Runs"), h("div", { class: "toolbar" }, runSearch, pickerInfo), picker,
    h("h2", {}, "Metrics ", h("span", { class: "muted small" }, "(none ticked: every metric the runs share)")), metricsBox,
    h("div", { class: "form-row" },
      h("label", {}, "Test ", testSelect),
      h("label", {}, "Correction ", correctionSelect),
      h("label", {}, "α ", alphaInput),
      button));
  clear(root).append(h("h1", {}, "Compare runs"), form, output);

  function pickable() {
    return store.list().filter((r) => (r.evaluated || r.num_samples) > 0);
  }

  function matchesQuery(r) {
    if (!runQuery) return true;
    const text = [r.run_id, r.model, r.experiment_id, r.status, r.source].filter(Boolean).join(" ").toLowerCase();
    return runQuery.split(/\s+/).every((word) => text.includes(word));
  }

  let shownMetrics = "";
  function renderMetrics() {
    // Metrics of the ticked runs: those every ticked run has can be picked, the others are
    // listed greyed out so a missing metric is not a mystery.
    const runs = [...selected].map((id) => store.get(id)).filter(Boolean);
    const all = new Set(chosenMetrics);
    let common = null;
    for (const r of runs) {
      const names = Object.keys(r.metrics || {});
      names.forEach((m) => all.add(m));
      common = common === null ? new Set(names) : new Set(names.filter((m) => common.has(m)));
    }
    const names = [...all].sort();
    const key = JSON.stringify([names, [...(common || [])], [...chosenMetrics], [...lowerKnown]]);
    if (key === shownMetrics) return;
    shownMetrics = key;
    clear(metricsBox);
    if (!names.length) {
      metricsBox.append(h("span", { class: "muted small" }, "Tick runs to list their metrics."));
      return;
    }
    for (const m of names) {
      const shared = common === null || common.has(m);
      metricsBox.append(h("label", { class: "metric-opt" + (shared ? "" : " unshared"), title: shared ? m : `${m}: not in every ticked run` },
        h("input", { type: "checkbox", dataset: { metric: m }, checked: chosenMetrics.has(m), disabled: !shared && !chosenMetrics.has(m),
          onchange: (e) => { if (e.target.checked) chosenMetrics.add(m); else chosenMetrics.delete(m); } }),
        " ", m, lowerKnown.has(m) ? h("span", { class: "lower-mark", title: "lower is better" }, " ↓") : null));
    }
  }

  let shownIds = "";
  function renderPicker() {
    renderMetrics();
    const all = pickable();
    const matching = all.filter((r) => selected.has(r.run_id) || matchesQuery(r));
    // Ticked runs first, then the newest matches, at most PICKER_LIMIT of them.
    const picked = matching.filter((r) => selected.has(r.run_id));
    const others = matching.filter((r) => !selected.has(r.run_id));
    const runs = picked.concat(others.slice(0, Math.max(0, PICKER_LIMIT - picked.length)));
    const hidden = matching.length - runs.length;
    pickerInfo.textContent = all.length
      ? `${selected.size} ticked · ${others.length} of ${all.length - picked.length} other runs match` + (hidden > 0 ? ` (first ${PICKER_LIMIT - picked.length} shown: refine the filter)` : "")
      : "";
    const ids = runs.map((r) => `${r.run_id} ${r.model || ""}`).join("\n");
    if (ids === shownIds) return;
    shownIds = ids;
    clear(picker);
    if (!runs.length) {
      picker.append(h("p", { class: "muted" }, !store.loaded ? "Loading runs…"
        : all.length ? "No run matches the filter." : "No run with evaluated samples yet."));
      return;
    }
    for (const r of runs) {
      const id = "pick-" + r.run_id;
      const long = isLongId(r.run_id);
      picker.append(h("label", { class: "pick", for: id, title: r.run_id },
        h("input", { type: "checkbox", id, value: r.run_id, checked: selected.has(r.run_id),
          onchange: (e) => { if (e.target.checked) selected.add(r.run_id); else selected.delete(r.run_id); renderMetrics(); } }),
        " ", h("span", { class: "pick-text" },
          h("span", { class: "pick-id" + (long ? " short-id" : "") }, shortId(r.run_id)), " ",
          // A 64-hex id says nothing by itself: name the model (and the benchmark) next to it.
          long && r.model ? [h("span", { class: "pick-model" }, r.model), " "] : null,
          h("span", { class: "muted small pick-meta" }, [
            long && r.experiment_id ? r.experiment_id : null,
            `${String(r.status || "unknown").replace("_", " ")}`,
            `${r.evaluated ?? r.num_samples ?? 0} samples`,
          ].filter(Boolean).join(", ")))));
    }
  }

  async function run() {
    const runIds = [...selected];
    const metrics = [...chosenMetrics];
    const body = {
      run_ids: runIds,
      statistical_test: testSelect.value,
      correction: correctionSelect.value,
      alpha: Number(alphaInput.value),
    };
    if (metrics.length) body.metrics = metrics;
    const hash = new URLSearchParams({ runs: runIds.join(","), test: body.statistical_test, correction: body.correction, alpha: alphaInput.value });
    if (metrics.length) hash.set("metrics", metrics.join(","));
    history.replaceState(null, "", "#/compare?" + hash.toString());
    if (runIds.length < 2) {
      clear(output).append(errorBox({ message: "Pick at least two runs to compare." }, "Nothing to compare:"));
      return;
    }
    button.disabled = true;
    clear(output).append(h("p", { class: "muted" }, "Comparing…"));
    try {
      const [{ data: result }, details] = await Promise.all([
        api("api/compare", { method: "POST", body }),
        Promise.all(runIds.map((id) => api(runPath(id)).then((r) => r.data))),
      ]);
      for (const m of (result.metadata || {}).lower_is_better || []) lowerKnown.add(m);
      renderMetrics();
      renderResult(result, details);
    } catch (err) {
      clear(output).append(errorBox(err));
    } finally {
      button.disabled = false;
    }
  }

  function renderResult(result, details) {
    const meta = result.metadata || {};
    const best = result.overall_best_run;
    clear(output).append(
      h("section", { class: "card" },
        h("h2", {}, "Pairwise results"),
        h("p", { class: "summary" }, "Overall best run: ", h("strong", { id: "overall-best", title: isLongId(best) ? best : null }, best ? shortId(best) : "–"),
          h("span", { class: "muted" }, ` · ${meta.statistical_test || ""}, α = ${meta.alpha ?? ""}, correction ${meta.correction || meta.multiple_comparison_correction || ""}`)),
        h("div", { class: "table-scroll" }, pairwiseTable(result, modelsOf(details), backQuery())),
        h("p", { class: "muted small" }, "Δ = mean A − mean B on the samples both runs have; CI of Δ; the winner is marked ✓ when significant after the correction. "
          + "Samples: for a 0/1 metric the discordant pairs McNemar counts (A✓B✗ = A right, B wrong; A✗B✓ = the reverse), each a link to those samples; for other metrics the pairs sorted by the size of their difference. ↓ marks a lower-is-better metric.")),
      h("section", { class: "card" },
        h("h2", {}, "Means with 95% confidence intervals"),
        h("p", { class: "muted small", id: "chart-basis" }, result.run_ids.length === 2
          ? "On the paired samples of the table (the samples both runs have)."
          : "On the samples every compared run has (the table pairs each two runs on the samples those two have)."),
        h("div", { class: "charts", id: "compare-charts" }, chartsFor(result, details))));
  }

  function backQuery() {
    const q = new URLSearchParams(window.location.hash.split("?")[1] || "");
    q.set("run", "1");
    return q.toString();
  }

  renderPicker();
  const unsubscribe = store.subscribe(renderPicker);
  if (params.get("run") === "1" && selected.size >= 2) run();
  return unsubscribe;
}

/** run id -> model, for labelling 64-hex ids. */
function modelsOf(details) {
  return new Map(details.map((d) => [d.run_id, d.model]));
}

/** How a run is named in the chart: a short id with its model for 64-hex ids. */
function runLabel(id, models) {
  if (!isLongId(id)) return id;
  const model = models.get(id);
  return model ? `${shortId(id, 8)} ${model}` : shortId(id);
}

/** The samples behind a row: discordant counts (links) for 0/1 metrics, else a link by Δ. */
function samplesCell(row, back) {
  const extra = { back };
  if (row.discordant_a_only !== null && row.discordant_a_only !== undefined) {
    return h("span", { class: "discordant" },
      h("a", { class: "cell-link", href: pairsHref(row.run_a, row.run_b, row.metric, "a_only", extra), dataset: { kind: "a_only" },
        title: "samples A got right and B got wrong" }, `A✓B✗ ${row.discordant_a_only}`),
      " · ",
      h("a", { class: "cell-link", href: pairsHref(row.run_a, row.run_b, row.metric, "b_only", extra), dataset: { kind: "b_only" },
        title: "samples A got wrong and B got right" }, `A✗B✓ ${row.discordant_b_only}`));
  }
  return h("a", { class: "cell-link", href: pairsHref(row.run_a, row.run_b, row.metric, "by_delta", extra), dataset: { kind: "by_delta" },
    title: "the paired samples, largest difference first" }, "by |Δ|");
}

function pairwiseTable(result, models, back) {
  return h("table", { class: "pairwise", id: "pairwise-table" },
    h("thead", {}, h("tr", {},
      h("th", {}, "Metric"), h("th", {}, "Run A"), h("th", {}, "Run B"), h("th", { class: "num" }, "Mean A"),
      h("th", { class: "num" }, "Mean B"), h("th", { class: "num" }, "Δ"), h("th", { class: "num" }, "CI of Δ"),
      h("th", { class: "num" }, "p"), h("th", {}, "Samples"), h("th", { class: "num" }, "corrected p"), h("th", {}, "Winner"))),
    h("tbody", {}, (result.pairwise_results || []).map((row) => {
      const significant = row.corrected_significant ?? row.significant;
      const winner = row.winner === null || row.winner === undefined ? "–" : row.winner;
      return h("tr", { dataset: { metric: row.metric, runA: row.run_a, runB: row.run_b, significant: String(Boolean(significant)) },
        class: significant ? "significant" : null },
        h("td", { "data-label": "Metric" }, row.metric,
          row.lower_is_better ? h("span", { class: "lower-mark", title: "lower is better" }, " ↓") : null),
        h("td", { "data-label": "Run A" }, runCell(row.run_a, models)),
        h("td", { "data-label": "Run B" }, runCell(row.run_b, models)),
        h("td", { "data-label": "Mean A", class: "num" }, fmtNum(row.run_a_mean)),
        h("td", { "data-label": "Mean B", class: "num" }, fmtNum(row.run_b_mean)),
        h("td", { "data-label": "Δ", class: "num" }, fmtNum(row.delta)),
        h("td", { "data-label": "CI of Δ", class: "num" }, row.ci_low === null || row.ci_low === undefined ? "–" : `[${fmtNum(row.ci_low)}, ${fmtNum(row.ci_high)}]`),
        h("td", { "data-label": "p", class: "num" }, fmtP(row.p_value)),
        h("td", { "data-label": "Samples", class: "samples-cell" }, samplesCell(row, back)),
        h("td", { "data-label": "corrected p", class: "num" }, fmtP(row.corrected_p_value)),
        h("td", { "data-label": "Winner", class: "winner" },
          significant && winner !== "tie" && winner !== "–"
            ? h("span", { class: "badge win", title: isLongId(winner) ? winner : null }, `✓ ${shortId(winner)}`)
            : h("span", { class: "muted", title: isLongId(winner) ? winner : null }, winner === "–" ? "–" : `${shortId(winner)} (not significant)`)));
    })));
}

function runCell(id, models) {
  if (!isLongId(id)) return id;
  const model = models.get(id);
  return h("div", {}, runIdLabel(id, { href: "#/runs/" + encodeURIComponent(id) }), model ? h("div", { class: "muted small" }, model) : null);
}

/** Per metric, each run's mean and CI on the samples every compared run has a score for:
 * the samples the table pairs (for two runs exactly those). */
function pairedStats(result, details) {
  const byRun = new Map(details.map((d) => [d.run_id, new Map((d.samples || []).map((s) => [sampleKey(s.id), s.scores || {}]))]));
  const out = {};
  for (const metric of result.metrics || []) {
    const maps = result.run_ids.map((id) => byRun.get(id) || new Map());
    const common = [...maps[0].keys()].filter((k) => maps.every((m) => Number.isFinite((m.get(k) || {})[metric])));
    out[metric] = new Map(result.run_ids.map((id, i) => [id, meanCI(common.map((k) => maps[i].get(k)[metric]))]));
  }
  return out;
}

function sampleKey(id) {
  return `${typeof id}:${id}`;
}

function chartsFor(result, details) {
  const models = modelsOf(details);
  const stats = pairedStats(result, details);
  const lower = new Set((result.metadata || {}).lower_is_better || []);
  return (result.metrics || []).map((metric) => {
    const best = (result.best_run_per_metric || {})[metric];
    const items = result.run_ids.map((id) => {
      const st = stats[metric].get(id) || { n: 0, mean: null, low: null, high: null };
      return { label: runLabel(id, models), run: id, title: id, ...st, best: id === best };
    });
    return h("figure", { class: "chart-box", dataset: { metric } },
      errorBarChart(lower.has(metric) ? `${metric} (lower is better)` : metric, items, metric));
  });
}
