// Figures derived from a run summary, computed as `themis-daemon status` computes them.

/** A Date from a Themis time stamp: 1.x writes naive local times, Themis 4 UTC with Z/+00:00. */
export function parseTime(iso) {
  if (!iso) return null;
  // At most milliseconds: Python writes microseconds, which not every engine parses.
  const text = String(iso).replace(/(\.\d{3})\d+/, "$1");
  const date = new Date(text);
  return Number.isNaN(date.getTime()) ? null : date;
}

/** The samples the progress fraction counts (1.x: generated; Themis 4: scored or failed cases). */
export function samplesDone(run) {
  const expected = run.expected_samples;
  if (typeof run.progress !== "number" || !expected) return null;
  return Math.round(run.progress * expected);
}

/** Seconds the run has taken so far: to now while live (a 1.x run's updated_at stays at its
 * start), else (finished, or stalled) to its last change. */
export function elapsedSeconds(run, now = Date.now()) {
  const start = parseTime(run.created_at);
  if (!start) return null;
  const end = run.status === "in_progress" && !run.stalled ? now : (parseTime(run.completed_at || run.updated_at) || null);
  if (end === null) return null;
  return Math.max(0, ((end instanceof Date ? end.getTime() : end) - start.getTime()) / 1000);
}

/** Samples per minute over the run's time so far; null below a second (no rate yet). */
export function throughput(run, now = Date.now()) {
  const done = samplesDone(run);
  const elapsed = elapsedSeconds(run, now);
  if (!done || !elapsed || elapsed < 1) return null;
  return (done / elapsed) * 60;
}

/** Seconds left for a live run at its average rate so far; null when not live or unknown. */
export function etaSeconds(run, now = Date.now()) {
  if (run.status !== "in_progress" || run.stalled) return null;
  const p = run.progress;
  const elapsed = elapsedSeconds(run, now);
  if (!p || p >= 1 || !elapsed || elapsed < 1) return null;
  return (elapsed * (1 - p)) / p;
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

const RELATIVE = typeof Intl !== "undefined" && Intl.RelativeTimeFormat
  ? new Intl.RelativeTimeFormat(undefined, { numeric: "auto", style: "short" }) : null;

/** "3 min ago", "in 2 hr", "now". */
export function relativeTime(date, now = Date.now()) {
  if (!date) return "";
  const diff = (date.getTime() - now) / 1000;
  const abs = Math.abs(diff);
  const [value, unit] = abs < 45 ? [0, "second"] : abs < 3600 ? [Math.round(diff / 60), "minute"]
    : abs < 86400 ? [Math.round(diff / 3600), "hour"] : abs < 86400 * 30 ? [Math.round(diff / 86400), "day"]
      : abs < 86400 * 365 ? [Math.round(diff / (86400 * 30)), "month"] : [Math.round(diff / (86400 * 365)), "year"];
  if (value === 0) return "just now";
  return RELATIVE ? RELATIVE.format(value, unit) : `${Math.abs(value)} ${unit}s ${value < 0 ? "ago" : "from now"}`;
}

const LOCAL = new Intl.DateTimeFormat(undefined, {
  year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit",
});

/** The time in the browser's own zone. */
export function localTime(date) {
  return date ? LOCAL.format(date) : "–";
}
