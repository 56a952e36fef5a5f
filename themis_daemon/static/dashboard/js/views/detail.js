// One run: metadata, metric means with 95% CIs, and a paged, searchable sample table.

import { api, runPath } from "../api.js";
import {
  clear, copyButton, debounce, throttle, errorBox, fmtNum, fmtTime, formatBadge, h, isLongId, progressBar, shortId, statusLine, valueText,
} from "../dom.js";
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

  function searchable(sample) {
    return [sample.id, sample.prompt, sample.response, sample.error, valueText(sample.reference),
      ...metricErrors(sample).flat(), ...(Array.isArray(sample.candidates) ? sample.candidates.map(valueText) : [])];
  }

  function renderSamples() {
    if (!samplesBox.firstChild) {
      samplesBox.append(h("h2", {}, "Samples"), h("div", { class: "toolbar" }, search, failuresOnly), samplesTable, pager);
    }
    const all = detail.samples || [];
    const matches = all.filter((sample) => (!onlyFailures || isFailure(sample)) && (!query
      || searchable(sample).some((v) => v !== undefined && v !== null && String(v).toLowerCase().includes(query))));
    const pages = Math.max(1, Math.ceil(matches.length / PAGE_SIZE));
    page = Math.min(page, pages - 1);
    const shown = matches.slice(page * PAGE_SIZE, (page + 1) * PAGE_SIZE);
    // A Reference column only for runs whose samples carry one (Themis 4's expected output).
    const withReference = all.some(hasReference);
    const columns = withReference ? 5 : 4;
    const empty = all.length ? "No sample matches."
      : detail.status === "pending" ? "No samples yet: the run was submitted but has not started." : "No samples yet.";
    clear(samplesTable).append(h("table", { class: "samples" + (withReference ? " with-reference" : ""), id: "samples-table" },
      h("thead", {}, h("tr", {}, h("th", {}, "Id"), h("th", {}, "Prompt"), h("th", {}, "Response"),
        withReference ? h("th", {}, "Reference") : null, h("th", {}, "Scores"))),
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
    return h("tr", { class: isFailure(sample) ? "failure" : null, dataset: { sampleId: String(sample.id) } },
      h("td", { "data-label": "Id" }, String(sample.id)),
      h("td", { "data-label": "Prompt" }, h("div", { class: "text" }, valueText(sample.prompt))),
      h("td", { "data-label": "Response" }, h("div", {},
        sample.error
          ? h("div", { class: "error-text" }, "⚠ ", sample.error)
          : h("div", { class: "text mono response" }, valueText(sample.response)),
        candidatesBox(sample))),
      withReference ? h("td", { "data-label": "Reference" }, hasReference(sample)
        ? h("div", { class: "text mono reference", title: "expected answer" }, valueText(sample.reference))
        : h("span", { class: "muted" }, "–")) : null,
      h("td", { "data-label": "Scores" }, h("div", {},
        h("div", { class: "scores" }, scores.length ? scores
          : h("span", { class: "muted" }, sample.pending ? "not evaluated yet" : errors.length ? "" : "–")),
        errors.length ? h("div", { class: "metric-errors" }, errors) : null)));
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
