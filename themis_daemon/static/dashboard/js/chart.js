// An SVG chart of each run's mean with 95% CI error bars for one metric, drawn by hand.

import { fmtNum, s } from "./dom.js";

const ROW = 34;
const LEFT = 140;
const RIGHT = 24;
const TOP = 30;
const WIDTH = 520;

function niceTicks(lo, hi, count = 5) {
  const span = hi - lo || 1;
  const step0 = span / count;
  const mag = 10 ** Math.floor(Math.log10(step0));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((st) => st >= step0) || step0;
  const start = Math.floor(lo / step) * step;
  const end = Math.ceil(hi / step - 1e-9) * step;
  const ticks = [];
  for (let v = start; v <= end + step * 1e-9; v += step) ticks.push(Math.round(v / step) * step);
  return ticks;
}

function shorten(label, max = 24) {
  return label.length > max ? label.slice(0, max - 1) + "…" : label;
}

/**
 * items: [{label, run, title, mean, low, high, best}] ; `run` (the full run id, default `label`)
 * goes in data-run and `title` (default `label`) in the tooltip. Returns an <svg> scaled to its container.
 */
export function errorBarChart(title, items, metric = title) {
  const values = items.flatMap((it) => [it.mean, it.low, it.high]).filter((v) => v !== null && Number.isFinite(v));
  let lo = Math.min(0, ...values);
  let hi = Math.max(...values, lo + 1e-9);
  if (hi - lo < 1e-9) hi = lo + 1;
  const ticks = niceTicks(lo, hi);
  lo = Math.min(lo, ticks[0]);
  hi = Math.max(hi, ticks[ticks.length - 1]);
  const height = TOP + items.length * ROW + 26;
  const x = (v) => LEFT + ((v - lo) / (hi - lo)) * (WIDTH - LEFT - RIGHT);

  const svg = s("svg", {
    viewBox: `0 0 ${WIDTH} ${height}`, class: "chart", role: "img",
    "aria-label": `${metric}: mean and 95% confidence interval per run`, "data-metric": metric,
  });
  svg.append(s("text", { x: 0, y: 16, class: "chart-title" }, title));
  for (const t of ticks) {
    svg.append(s("line", { x1: x(t), x2: x(t), y1: TOP - 6, y2: height - 22, class: "grid" }));
    svg.append(s("text", { x: x(t), y: height - 6, class: "tick", "text-anchor": "middle" }, fmtNum(t, 2)));
  }
  items.forEach((it, i) => {
    const y = TOP + i * ROW + ROW / 2;
    const group = s("g", { class: "bar" + (it.best ? " best" : ""), "data-run": it.run ?? it.label });
    group.append(s("title", {}, `${it.title ?? it.label}: mean ${fmtNum(it.mean)}` + (it.low !== null ? `, 95% CI [${fmtNum(it.low)}, ${fmtNum(it.high)}]` : "") + ` (n=${it.n})`));
    group.append(s("text", { x: LEFT - 10, y: y + 4, class: "label", "text-anchor": "end" }, shorten(it.label)));
    if (it.mean !== null) {
      group.append(s("rect", { x: x(Math.min(0, it.mean)), y: y - 8, width: Math.abs(x(it.mean) - x(0)), height: 16, class: "mean-bar" }));
      if (it.low !== null) {
        group.append(s("line", { x1: x(it.low), x2: x(it.high), y1: y, y2: y, class: "whisker" }));
        group.append(s("line", { x1: x(it.low), x2: x(it.low), y1: y - 7, y2: y + 7, class: "whisker" }));
        group.append(s("line", { x1: x(it.high), x2: x(it.high), y1: y - 7, y2: y + 7, class: "whisker" }));
      }
      group.append(s("circle", { cx: x(it.mean), cy: y, r: 4.5, class: "dot" }));
    }
    svg.append(group);
  });
  return svg;
}
