// Pure data shaping for the charts: plain arrays in, plain rows out (tested in shape.test.ts).

export interface CurveSeries {
  name: string;
  radius: number[]; // ascending
  accuracy: number[]; // certified accuracy at each radius, in [0, 1]
}

/**
 * Certified accuracy at radius r from a curve sampled on a grid. Accuracy only falls as r grows, so
 * between grid points we read the next grid point at or above r (never overstating); beyond: 0.
 */
export function accuracyAtRadius(radius: number[], accuracy: number[], r: number): number {
  for (let i = 0; i < radius.length; i++) if (radius[i] >= r - 1e-12) return accuracy[i];
  return 0;
}

/** Rows for one line chart over every series' radii: `{radius, [series name]: accuracy}`. */
export function overlayCurves(series: CurveSeries[]): Record<string, number>[] {
  const grid = [...new Set(series.flatMap((s) => s.radius))].sort((a, b) => a - b);
  return grid.map((r) => {
    const row: Record<string, number> = { radius: r };
    for (const s of series) row[s.name] = accuracyAtRadius(s.radius, s.accuracy, r);
    return row;
  });
}

export interface Bin {
  from: number;
  to: number;
  label: string;
  count: number;
}

/** Histogram of certified radii (abstentions, radius < 0 or prediction -1, are left out by the caller). */
export function radiusHistogram(radii: number[], binCount = 10): Bin[] {
  if (radii.length === 0) return [];
  const max = Math.max(...radii);
  const width = max > 0 ? max / binCount : 1;
  const bins: Bin[] = Array.from({ length: binCount }, (_, i) => ({
    from: i * width, to: (i + 1) * width, label: `${(i * width).toFixed(2)}–${((i + 1) * width).toFixed(2)}`, count: 0,
  }));
  for (const r of radii) bins[Math.min(binCount - 1, Math.floor(r / width))].count += 1;
  return bins;
}

/** A legend name for a job's config: what differs between jobs one compares. */
export function configLabel(jobId: number, c: {
  method?: string; noise?: string; k?: number; sigma?: number; q_sigma?: number | null; n?: number;
  iss_delta?: number | null; sequential_delta?: number | null; denoiser_id?: number | null;
}): string {
  const parts = [`#${jobId}`, (c.method ?? 'np').toUpperCase()];
  parts.push(c.noise === 'general_gaussian' ? `GG k=${c.k}` : 'Gaussian');
  parts.push(`σ=${c.sigma}`);
  if (c.method === 'dsrs' && c.q_sigma != null) parts.push(`Qσ=${c.q_sigma}`);
  parts.push(`N=${c.n}`);
  if (c.iss_delta != null) parts.push(`ISS ${c.iss_delta}`);
  if (c.sequential_delta != null) parts.push(`seq ${c.sequential_delta}`);
  if (c.denoiser_id != null) parts.push(`denoiser #${c.denoiser_id}`);
  return parts.join(' ');
}
