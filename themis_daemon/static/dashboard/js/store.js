// The run summaries the dashboard knows, kept current by live events or polling.

const runs = new Map();
const listeners = new Set();
let scheduled = false;
let lastError = null;

function notify() {
  if (scheduled) return;
  scheduled = true;
  // Coalesce bursts of events into one render per frame (falls back when the tab is hidden).
  const run = () => {
    scheduled = false;
    for (const fn of [...listeners]) fn();
  };
  if (document.hidden) setTimeout(run, 0);
  else window.requestAnimationFrame(run);
}

export const store = {
  loaded: false,
  get error() {
    return lastError;
  },
  setError(err) {
    lastError = err;
    notify();
  },
  /** Replace everything with a fresh GET /api/runs answer. */
  replace(list) {
    runs.clear();
    for (const summary of list) runs.set(summary.run_id, summary);
    this.loaded = true;
    lastError = null;
    notify();
  },
  upsert(summary) {
    runs.set(summary.run_id, summary);
    notify();
  },
  remove(runId) {
    runs.delete(runId);
    notify();
  },
  get(runId) {
    return runs.get(runId);
  },
  /** Newest first, as the API lists them. */
  list() {
    return [...runs.values()].sort((a, b) => String(b.created_at || "").localeCompare(String(a.created_at || ""))
      || a.run_id.localeCompare(b.run_id));
  },
  subscribe(fn) {
    listeners.add(fn);
    return () => listeners.delete(fn);
  },
};
