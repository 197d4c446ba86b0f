import { describe, expect, it } from 'vitest';
import { floorFixed, floorPercent, formatSeconds, routeId } from './format';

describe('format', () => {
  it('rounds certified figures down, never up', () => {
    expect(floorFixed(0.79964)).toBe('0.799');
    expect(floorFixed(0.3)).toBe('0.300');
    expect(floorFixed(1.9999999)).toBe('1.999');
    expect(floorPercent(0.99996)).toBe('99.9%');
  });
  it('formats durations without "60 s"', () => {
    expect(formatSeconds(359.6)).toBe('6 min 0 s');
    expect(formatSeconds(419.7)).toBe('7 min 0 s');
    expect(formatSeconds(42.4)).toBe('42 s');
    expect(formatSeconds(7199.9)).toBe('2 h 0 min');
    expect(formatSeconds(null)).toBe('–');
  });
  it('accepts only whole positive ids from a route', () => {
    expect(routeId('12')).toBe(12);
    for (const bad of ['abc', 'NaN', '1.5', '-2', '0', '', undefined, '99999999999']) expect(routeId(bad)).toBeNull();
  });
});
