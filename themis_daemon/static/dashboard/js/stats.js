// Descriptive statistics for the run detail and the compare chart.

// Two-sided 95% Student t quantiles (0.975) for 1..30 degrees of freedom.
const T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
  2.16, 2.145, 2.131, 2.12, 2.11, 2.101, 2.093, 2.086, 2.08, 2.074, 2.069, 2.064, 2.06, 2.056,
  2.052, 2.048, 2.045, 2.042];

export function t975(df) {
  if (df < 1) return NaN;
  if (df <= 30) return T975[df - 1];
  // Cornish-Fisher expansion around the normal quantile; accurate to 1e-4 above 30 df.
  const z = 1.959964;
  return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2);
}

/** Wilson score interval (95%) of a proportion: stays inside [0, 1], sensible at 0 and 1. */
export function wilson(successes, n) {
  const z = 1.959964;
  const p = successes / n;
  const denom = 1 + z * z / n;
  const centre = (p + z * z / (2 * n)) / denom;
  const half = (z / denom) * Math.sqrt(p * (1 - p) / n + z * z / (4 * n * n));
  return [Math.max(0, centre - half), Math.min(1, centre + half)];
}

/**
 * Mean with a 95% confidence interval of the finite values: Wilson for 0/1 scores, else
 * mean ± t(0.975, n−1)·SD/√n. The interval is null below 2 values.
 */
export function meanCI(values) {
  const xs = values.filter((v) => typeof v === "number" && Number.isFinite(v));
  const n = xs.length;
  if (n === 0) return { n, mean: null, sd: null, low: null, high: null, method: null };
  const mean = xs.reduce((a, b) => a + b, 0) / n;
  if (n < 2) return { n, mean, sd: null, low: null, high: null, method: null };
  const variance = xs.reduce((a, b) => a + (b - mean) ** 2, 0) / (n - 1);
  const sd = Math.sqrt(variance);
  if (xs.every((v) => v === 0 || v === 1)) {
    const [low, high] = wilson(mean * n, n);
    return { n, mean, sd, low, high, method: "Wilson" };
  }
  const half = t975(n - 1) * sd / Math.sqrt(n);
  return { n, mean, sd, low: mean - half, high: mean + half, method: "t" };
}

/** Per-metric mean and CI of a run detail's samples. */
export function metricStats(samples) {
  const byMetric = new Map();
  for (const sample of samples) {
    for (const [name, value] of Object.entries(sample.scores || {})) {
      if (!byMetric.has(name)) byMetric.set(name, []);
      byMetric.get(name).push(value);
    }
  }
  const out = {};
  for (const name of [...byMetric.keys()].sort()) out[name] = meanCI(byMetric.get(name));
  return out;
}
