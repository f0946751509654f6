/**
 * The portal's only way to the server: JSON calls to /api/v1 with the operator's token, and the
 * token's keeping. The token lives in sessionStorage only (gone when the tab closes) and is sent
 * nowhere but in the Authorization header of API calls.
 */

const TOKEN_KEY = 'ferry.token';

/** The API's error body, as docs/api.md describes it. */
interface ErrorBody {
  error?: { code?: string; message?: string; retryable?: boolean };
}

/** A failed API call: the HTTP status and the API's stable code and message (written for a person). */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly retryable: boolean,
  ) {
    super(message);
  }
}

/** The token of this browser session, or null when signed out. */
export function storedToken(): string | null {
  return sessionStorage.getItem(TOKEN_KEY);
}

/** Keeps `token` for this browser session. */
export function storeToken(token: string): void {
  sessionStorage.setItem(TOKEN_KEY, token);
}

/** Forgets the token (sign-out). */
export function clearToken(): void {
  sessionStorage.removeItem(TOKEN_KEY);
}

type UnauthorizedListener = (error: ApiError) => void;
const unauthorizedListeners = new Set<UnauthorizedListener>();

/** Calls `listener` whenever the server refuses the stored token (401), e.g. after a token was revoked. */
export function onUnauthorized(listener: UnauthorizedListener): () => void {
  unauthorizedListeners.add(listener);
  return () => unauthorizedListeners.delete(listener);
}

/** Reports a 401 to the listeners (the stream reader calls this too). */
export function reportUnauthorized(error: ApiError): void {
  for (const listener of unauthorizedListeners) listener(error);
}

/**
 * Calls `METHOD /api/v1{path}` and returns the parsed JSON. Throws ApiError for an error answer (with
 * the API's message) and for an unreachable server (status 0, code `server-unreachable`). `token`
 * overrides the stored one (the sign-in form checks a token before keeping it).
 */
export async function api<T>(method: string, path: string, body?: unknown, token: string | null = storedToken()): Promise<T> {
  const headers: Record<string, string> = { accept: 'application/json' };
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  let response: Response;
  try {
    response = await fetch(`/api/v1${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (error) {
    throw new ApiError(0, 'server-unreachable', `the Ferry server did not answer (${(error as Error).message}); check that it is running and reload`, true);
  }
  const text = await response.text();
  let parsed: unknown = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = null;
  }
  if (!response.ok) {
    const error = (parsed as ErrorBody | null)?.error;
    const failure = new ApiError(response.status, error?.code ?? 'internal', error?.message ?? `the server answered ${response.status} ${response.statusText}`, error?.retryable ?? false);
    if (response.status === 401 && token === storedToken()) reportUnauthorized(failure);
    throw failure;
  }
  return parsed as T;
}

/** `name` made safe for a URL path segment. */
export function segment(name: string): string {
  return encodeURIComponent(name);
}
