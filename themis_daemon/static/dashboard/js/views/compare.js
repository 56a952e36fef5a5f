// Compare runs: pick runs and a test, POST /api/compare, show the pairwise table and a chart.

import { api, runPath } from "../api.js";
import { errorBarChart } from "../chart.js";
import { clear, errorBox, fmtNum, fmtP, h, isLongId, runIdLabel, shortId } from "../dom.js";
import { metricStats } from "../stats.js";
import { store } from "../store.js";

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

export function mountCompare(root, params) {
  const selected = new Set((params.get("runs") || "").split(",").filter(Boolean));
  const picker = h("div", { class: "run-picker", id: "run-picker" });
  const testSelect = h("select", { id: "compare-test" }, TESTS.map(([v, label]) => h("option", { value: v }, label)));
  testSelect.value = params.get("test") || "bootstrap";
  const correctionSelect = h("select", { id: "compare-correction" }, CORRECTIONS.map((c) => h("option", { value: c }, c)));
  correctionSelect.value = params.get("correction") || "holm";
  const alphaInput = h("input", { id: "compare-alpha", type: "number", min: "0.0001", max: "0.5", step: "any", value: params.get("alpha") || "0.05" });
  const metricsInput = h("input", { id: "compare-metrics", type: "text", placeholder: "all common metrics", value: params.get("metrics") || "" });
  const button = h("button", { type: "submit", id: "compare-button" }, "Compare");
  const output = h("div", { id: "compare-output" });

  const form = h("form", { class: "card compare-form", onsubmit: (e) => { e.preventDefault(); run(); } },
    h("h2", {}, "Runs"), picker,
    h("div", { class: "form-row" },
      h("label", {}, "Test ", testSelect),
      h("label", {}, "Correction ", correctionSelect),
      h("label", {}, "α ", alphaInput),
      h("label", { class: "grow" }, "Metrics ", metricsInput),
      button));
  clear(root).append(h("h1", {}, "Compare runs"), form, output);

  let shownIds = "";
  function renderPicker() {
    const runs = store.list().filter((r) => (r.evaluated || r.num_samples) > 0);
    const ids = runs.map((r) => `${r.run_id} ${r.model || ""}`).join("\n");
    if (ids === shownIds) return;
    shownIds = ids;
    clear(picker);
    if (!runs.length) {
      picker.append(h("p", { class: "muted" }, store.loaded ? "No run with evaluated samples yet." : "Loading runs…"));
      return;
    }
    for (const r of runs) {
      const id = "pick-" + r.run_id;
      const long = isLongId(r.run_id);
      picker.append(h("label", { class: "pick", for: id, title: r.run_id },
        h("input", { type: "checkbox", id, value: r.run_id, checked: selected.has(r.run_id),
          onchange: (e) => { if (e.target.checked) selected.add(r.run_id); else selected.delete(r.run_id); } }),
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
    const metrics = metricsInput.value.split(",").map((m) => m.trim()).filter(Boolean);
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
        h("div", { class: "table-scroll" }, pairwiseTable(result, modelsOf(details))),
        h("p", { class: "muted small" }, "Δ = mean A − mean B on the samples both runs have; CI of Δ; the winner is marked ✓ when significant after the correction.")),
      h("section", { class: "card" },
        h("h2", {}, "Means with 95% confidence intervals"),
        h("div", { class: "charts", id: "compare-charts" }, chartsFor(result, details))));
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

function pairwiseTable(result, models) {
  return h("table", { class: "pairwise", id: "pairwise-table" },
    h("thead", {}, h("tr", {},
      h("th", {}, "Metric"), h("th", {}, "Run A"), h("th", {}, "Run B"), h("th", { class: "num" }, "Mean A"),
      h("th", { class: "num" }, "Mean B"), h("th", { class: "num" }, "Δ"), h("th", { class: "num" }, "CI of Δ"),
      h("th", { class: "num" }, "p"), h("th", { class: "num" }, "corrected p"), h("th", {}, "Winner"))),
    h("tbody", {}, (result.pairwise_results || []).map((row) => {
      const significant = row.corrected_significant ?? row.significant;
      const winner = row.winner === null || row.winner === undefined ? "–" : row.winner;
      return h("tr", { dataset: { metric: row.metric, runA: row.run_a, runB: row.run_b, significant: String(Boolean(significant)) },
        class: significant ? "significant" : null },
        h("td", { "data-label": "Metric" }, row.metric),
        h("td", { "data-label": "Run A" }, runCell(row.run_a, models)),
        h("td", { "data-label": "Run B" }, runCell(row.run_b, models)),
        h("td", { "data-label": "Mean A", class: "num" }, fmtNum(row.run_a_mean)),
        h("td", { "data-label": "Mean B", class: "num" }, fmtNum(row.run_b_mean)),
        h("td", { "data-label": "Δ", class: "num" }, fmtNum(row.delta)),
        h("td", { "data-label": "CI of Δ", class: "num" }, row.ci_low === null || row.ci_low === undefined ? "–" : `[${fmtNum(row.ci_low)}, ${fmtNum(row.ci_high)}]`),
        h("td", { "data-label": "p", class: "num" }, fmtP(row.p_value)),
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

function chartsFor(result, details) {
  const models = modelsOf(details);
  const stats = new Map(details.map((d) => [d.run_id, metricStats(d.samples || [])]));
  return (result.metrics || []).map((metric) => {
    const best = (result.best_run_per_metric || {})[metric];
    const items = result.run_ids.map((id) => {
      const st = (stats.get(id) || {})[metric] || { n: 0, mean: null, low: null, high: null };
      return { label: runLabel(id, models), run: id, title: id, ...st, best: id === best };
    });
    return h("figure", { class: "chart-box" }, errorBarChart(metric, items));
  });
}
