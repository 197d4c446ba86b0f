// The one place that configures the generated client: same origin, the bearer token from localStorage.
import { client } from './client/client.gen';

const TOKEN_KEY = 'kavach.token';

export const getToken = (): string | null => localStorage.getItem(TOKEN_KEY);
export const setToken = (token: string) => localStorage.setItem(TOKEN_KEY, token.trim());
export const clearToken = () => localStorage.removeItem(TOKEN_KEY);

client.setConfig({ baseUrl: '', auth: () => getToken() ?? undefined });

export { client };

/** A job in one of these states will not change any more. */
export const FINISHED: ReadonlySet<string> = new Set(['done', 'failed', 'cancelled']);

/** FastAPI's error bodies: `{detail: string}` or `{detail: [{loc, msg}]}` (a 422). */
export type ApiError = { detail?: string | { loc: (string | number)[]; msg: string }[] };

/** A readable sentence for any error the client hands back. */
export function errorMessage(error: unknown): string {
  if (error && typeof error === 'object' && 'detail' in error) {
    const detail = (error as ApiError).detail;
    if (typeof detail === 'string') return detail;
    if (Array.isArray(detail)) return detail.map((d) => `${d.loc.slice(1).join('.')}: ${d.msg}`).join('; ');
  }
  if (error instanceof Error) return error.message;
  return String(error);
}

/** True when the API refused the token (401): the app then asks for a new one. */
export const isAuthError = (error: unknown): boolean =>
  !!error && typeof error === 'object' && 'detail' in error &&
  typeof (error as ApiError).detail === 'string' && /API token/.test((error as ApiError).detail as string);
