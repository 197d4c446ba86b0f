import { describe, expect, it } from 'vitest';
import { accuracyAtRadius, configLabel, overlayCurves, radiusHistogram } from './shape';

describe('accuracyAtRadius', () => {
  const radius = [0, 0.25, 0.5, 0.75];
  const accuracy = [0.9, 0.7, 0.4, 0.1];
  it('reads a grid point exactly', () => expect(accuracyAtRadius(radius, accuracy, 0.5)).toBe(0.4));
  it('between grid points takes the next one up, never overstating', () =>
    expect(accuracyAtRadius(radius, accuracy, 0.3)).toBe(0.4));
  it('is 0 beyond the grid', () => expect(accuracyAtRadius(radius, accuracy, 2)).toBe(0));
});

describe('overlayCurves', () => {
  it('puts every series on the union of radii', () => {
    const rows = overlayCurves([
      { name: 'NP', radius: [0, 0.5], accuracy: [0.8, 0.4] },
      { name: 'DSRS', radius: [0, 0.25, 0.5], accuracy: [0.8, 0.6, 0.5] },
    ]);
    expect(rows).toEqual([
      { radius: 0, NP: 0.8, DSRS: 0.8 },
      { radius: 0.25, NP: 0.4, DSRS: 0.6 },
      { radius: 0.5, NP: 0.4, DSRS: 0.5 },
    ]);
  });
  it('gives no rows for no series', () => expect(overlayCurves([])).toEqual([]));
});

describe('radiusHistogram', () => {
  it('counts every radius once, the largest in the last bin', () => {
    const bins = radiusHistogram([0, 0.1, 0.5, 0.99, 1.0], 4);
    expect(bins.map((b) => b.count)).toEqual([2, 0, 1, 2]);
    expect(bins.reduce((n, b) => n + b.count, 0)).toBe(5);
    expect(bins[0].from).toBe(0);
    expect(bins[3].to).toBe(1);
  });
  it('handles all-zero radii and no radii', () => {
    expect(radiusHistogram([0, 0], 3).map((b) => b.count)).toEqual([2, 0, 0]);
    expect(radiusHistogram([])).toEqual([]);
  });
});

describe('configLabel', () => {
  it('names what differs between configs', () => {
    expect(configLabel(3, { method: 'np', noise: 'gaussian', sigma: 0.25, n: 1000 })).toBe('#3 NP Gaussian σ=0.25 N=1000');
    expect(configLabel(4, { method: 'dsrs', noise: 'general_gaussian', k: 2, sigma: 0.5, q_sigma: 0.4, n: 500, denoiser_id: 7 }))
      .toBe('#4 DSRS GG k=2 σ=0.5 Qσ=0.4 N=500 denoiser #7');
    expect(configLabel(5, { method: 'np', sigma: 0.25, n: 4000, sequential_delta: 0.1 })).toBe('#5 NP Gaussian σ=0.25 N=4000 seq 0.1');
  });
});
