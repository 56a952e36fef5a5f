// One run: metadata, metric means with 95% CIs, and a paged, searchable sample table.

import { api, runPath } from "../api.js";
import { clear, debounce, errorBox, fmtNum, fmtTime, h, progressBar, statusBadge } from "../dom.js";
import { metricStats } from "../stats.js";
import { store } from "../store.js";

const PAGE_SIZE = 20;

export function mountDetail(root, runId) {
  let detail = null;
  let query = "";
  let page = 0;
  let onlyFailures = false;
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
      clear(message).append(errorBox(err, err.status === 404 ? "Run not found:" : err.title));
    } finally {
      loading = false;
    }
  }

  function renderHead() {
    const d = detail;
    const manifest = (d.metadata && d.metadata.config_snapshot && d.metadata.config_snapshot.reproducibility_manifest) || {};
    const sampling = manifest.sampling || {};
    const facts = [
      ["Experiment", d.experiment_id],
      ["Model", d.model || "–"],
      ["Status", statusBadge(d.status)],
      ["Samples", `${d.evaluated} evaluated, ${d.generated} generated` + (d.expected_samples != null ? ` of ${d.expected_samples}` : "") + (d.failed ? `, ${d.failed} failed` : "")],
      ["Created", fmtTime(d.created_at)],
      ["Updated", fmtTime(d.updated_at)],
      ["Completed", fmtTime(d.completed_at)],
    ];
    if (sampling.temperature !== undefined) facts.push(["Sampling", `temperature ${sampling.temperature}, top_p ${sampling.top_p}, max_tokens ${sampling.max_tokens}`]);
    if (manifest.dataset && manifest.dataset.fingerprint) facts.push(["Dataset", manifest.dataset.fingerprint.slice(0, 16) + "…"]);
    if (d.error_message) facts.push(["Error", h("span", { class: "error-text" }, d.error_message)]);
    if (d.error) facts.push(["Read error", h("span", { class: "error-text" }, d.error)]);
    clear(head).append(
      h("h1", { class: "run-title" }, d.run_id),
      progressBar(d.progress, `progress of ${d.run_id}`),
      h("dl", { class: "facts" }, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
      d.metadata && d.metadata.config_snapshot
        ? h("details", {}, h("summary", {}, "Configuration snapshot"),
          h("pre", { class: "json" }, JSON.stringify(d.metadata.config_snapshot, null, 2)))
        : null);
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
  const samplesTable = h("div", { class: "table-scroll" });
  const pager = h("div", { class: "pager" });

  function isFailure(sample) {
    return Boolean(sample.error);
  }

  function renderSamples() {
    if (!samplesBox.firstChild) {
      samplesBox.append(h("h2", {}, "Samples"), h("div", { class: "toolbar" }, search, failuresOnly), samplesTable, pager);
    }
    const all = detail.samples || [];
    const matches = all.filter((sample) => (!onlyFailures || isFailure(sample)) && (!query
      || [sample.id, sample.prompt, sample.response, sample.error].some((v) => v !== undefined && v !== null && String(v).toLowerCase().includes(query))));
    const pages = Math.max(1, Math.ceil(matches.length / PAGE_SIZE));
    page = Math.min(page, pages - 1);
    const shown = matches.slice(page * PAGE_SIZE, (page + 1) * PAGE_SIZE);
    clear(samplesTable).append(h("table", { class: "samples", id: "samples-table" },
      h("thead", {}, h("tr", {}, h("th", {}, "Id"), h("th", {}, "Prompt"), h("th", {}, "Response"), h("th", {}, "Scores"))),
      h("tbody", {}, shown.length ? shown.map(sampleRow)
        : h("tr", {}, h("td", { colspan: 4, class: "muted empty" }, all.length ? "No sample matches." : "No samples yet.")))));
    clear(pager).append(
      h("button", { type: "button", disabled: page === 0, onclick: () => { page -= 1; renderSamples(); } }, "‹ Previous"),
      h("span", { class: "muted", id: "samples-page" }, `page ${page + 1} of ${pages} · ${matches.length} of ${all.length} samples`),
      h("button", { type: "button", disabled: page >= pages - 1, onclick: () => { page += 1; renderSamples(); } }, "Next ›"));
  }

  function sampleRow(sample) {
    const scores = Object.entries(sample.scores || {}).map(([name, value]) =>
      h("span", { class: "score" + (value === 0 ? " zero" : value === 1 ? " one" : "") }, `${name} ${fmtNum(value)}`));
    return h("tr", { class: isFailure(sample) ? "failure" : null },
      h("td", { "data-label": "Id" }, String(sample.id)),
      h("td", { "data-label": "Prompt" }, h("div", { class: "text" }, sample.prompt)),
      h("td", { "data-label": "Response" }, sample.error
        ? h("div", { class: "error-text" }, "⚠ ", sample.error)
        : h("div", { class: "text mono" }, sample.response)),
      h("td", { "data-label": "Scores" }, h("div", { class: "scores" }, scores.length ? scores
        : h("span", { class: "muted" }, sample.pending ? "not evaluated yet" : "–"))));
  }

  // Follow a live run: reload when its counts change.
  const reloadSoon = debounce(load, 700);
  const unsubscribe = store.subscribe(() => {
    const now = store.get(runId);
    if (detail && now && (now.generated !== detail.generated || now.evaluated !== detail.evaluated || now.status !== detail.status)) {
      reloadSoon();
    }
  });
  load();
  return unsubscribe;
}
