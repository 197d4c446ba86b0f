// Display helpers shared by the pages (tested in format.test.ts).

/**
 * A certified radius (or any certified figure) to `digits` decimals, rounded DOWN: a certificate may be
 * understated on screen, never overstated (0.79964 shows as 0.799, not 0.800).
 */
export function floorFixed(value: number, digits = 3): string {
  const scale = 10 ** digits;
  // the small epsilon keeps 0.3 (stored as 0.29999…) from showing as 0.299
  const floored = Math.floor(value * scale + 1e-9) / scale;
  return floored.toFixed(digits);
}

/** A certified accuracy in [0, 1] as a percentage with one decimal, rounded down. */
export const floorPercent = (fraction: number) => `${floorFixed(fraction * 100, 1)}%`;

/** Seconds as "42 s", "6 min 5 s", "2 h 3 min": rounded once, so 359.6 s reads 6 min 0 s, never "5 min 60 s". */
export function formatSeconds(s: number | null | undefined): string {
  if (s == null || !Number.isFinite(s) || s < 0) return '–';
  const total = Math.round(s);
  if (total < 60) return `${total} s`;
  if (total < 3600) return `${Math.floor(total / 60)} min ${total % 60} s`;
  const minutes = Math.round(total / 60);
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

/** A date and time in the reader's locale and time zone. */
export const formatDateTime = (iso: string | null | undefined) =>
  iso ? new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' }).format(new Date(iso)) : '–';

export const formatDate = (iso: string) => new Intl.DateTimeFormat(undefined, { dateStyle: 'medium' }).format(new Date(iso));

/** A route's numeric id, or null for anything else ("abc", "1.5", "-2"): such a page is not found, never fetched. */
export function routeId(raw: string | undefined): number | null {
  if (!raw || !/^\d{1,10}$/.test(raw)) return null;
  const id = Number(raw);
  return id >= 1 && id <= 2 ** 31 - 1 ? id : null;
}

/** True when the API said 404 (FastAPI's `{detail: "... not found"}`), for a not-found page instead of retries. */
export const isNotFound = (error: unknown, response?: Response) =>
  response?.status === 404 ||
  (!!error && typeof error === 'object' && 'detail' in error && /not found/i.test(String((error as { detail: unknown }).detail)));
