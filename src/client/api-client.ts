/**
 * HTTP client of the Ferry API, used by the CLI and the agent. Every failure becomes a FerryError: the
 * server's own error body when it sent one, `server-unreachable` (retryable) when it could not be
 * reached. JSON requests go over Node's fetch, which keeps connections alive between calls; binary
 * uploads (chunk batches, indexes) go over node:http(s) with a keep-alive agent, because fetch copies
 * a typed-array body twice before sending it, which at hundreds of MB/s costs more CPU and memory than
 * everything else the agent does with the bytes.
 */
import http from 'node:http';
import https from 'node:https';
import { FerryError } from '../errors.js';
import { sleep } from '../util/time.js';

/** Where the server is and how to authenticate. */
export interface ApiClientOptions {
  baseUrl: string;
  token?: string;
  /** Per-request timeout; long polls pass their own. */
  timeoutMs?: number;
}

type Query = Record<string, string | number | boolean | undefined>;

/** A thin, typed wrapper over fetch for /api/v1. */
export class ApiClient {
  readonly baseUrl: string;
  private readonly token?: string;
  private readonly timeoutMs: number;
  private readonly uploadAgent: http.Agent;

  constructor(options: ApiClientOptions) {
    this.baseUrl = options.baseUrl.replace(/\/+$/, '');
    this.token = options.token;
    this.timeoutMs = options.timeoutMs ?? 60_000;
    this.uploadAgent = this.baseUrl.startsWith('https:') ? new https.Agent({ keepAlive: true }) : new http.Agent({ keepAlive: true });
  }

  get<T>(path: string, query?: Query, timeoutMs?: number): Promise<T> {
    return this.request<T>('GET', path, { query, timeoutMs });
  }

  post<T>(path: string, json?: unknown): Promise<T> {
    return this.request<T>('POST', path, { json: json ?? {} });
  }

  patch<T>(path: string, json: unknown): Promise<T> {
    return this.request<T>('PATCH', path, { json });
  }

  delete<T>(path: string): Promise<T> {
    return this.request<T>('DELETE', path, {});
  }

  /**
   * POSTs raw bytes (chunk batches, indexes) as application/octet-stream: `body` is the bytes, or a list
   * of buffers sent one after another as one body without being copied together. Errors as `request`.
   */
  postBinary<T>(path: string, body: Uint8Array | readonly Uint8Array[], timeoutMs = this.timeoutMs): Promise<T> {
    const parts = body instanceof Uint8Array ? [body] : body;
    const url = new URL(`${this.baseUrl}/api/v1${path}`);
    const headers: Record<string, string | number> = {
      'content-type': 'application/octet-stream',
      'content-length': parts.reduce((total, part) => total + part.byteLength, 0),
    };
    if (this.token) headers.authorization = `Bearer ${this.token}`;
    const transport = url.protocol === 'https:' ? https : http;
    return new Promise<T>((resolve, reject) => {
      const unreachable = (error: Error) =>
        reject(new FerryError('server-unreachable', `cannot reach Ferry server at ${this.baseUrl} (${(error as { code?: string }).code ?? error.name})`, { cause: error }));
      const request = transport.request(url, { method: 'POST', headers, agent: this.uploadAgent, signal: AbortSignal.timeout(timeoutMs) }, (response) => {
        const received: Buffer[] = [];
        response.on('data', (piece: Buffer) => received.push(piece));
        response.on('error', unreachable);
        response.on('end', () => {
          try {
            resolve(parseResponse<T>(response.statusCode ?? 0, Buffer.concat(received).toString('utf8')));
          } catch (error) {
            reject(error);
          }
        });
      });
      request.on('error', unreachable);
      for (const part of parts) request.write(part);
      request.end();
    });
  }

  /** One request; resolves to the parsed JSON body (undefined for 204). */
  async request<T>(method: string, path: string, options: { json?: unknown; body?: Uint8Array; query?: Query; timeoutMs?: number }): Promise<T> {
    const url = new URL(`${this.baseUrl}/api/v1${path}`);
    for (const [key, value] of Object.entries(options.query ?? {})) if (value !== undefined) url.searchParams.set(key, String(value));
    const headers: Record<string, string> = {};
    if (this.token) headers.authorization = `Bearer ${this.token}`;
    let body: string | Uint8Array | undefined;
    if (options.json !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(options.json);
    } else if (options.body !== undefined) {
      headers['content-type'] = 'application/octet-stream';
      body = options.body;
    }
    let response: Response;
    try {
      response = await fetch(url, { method, headers, body, signal: AbortSignal.timeout(options.timeoutMs ?? this.timeoutMs) });
    } catch (error) {
      const cause = (error as { cause?: { code?: string } }).cause?.code ?? (error as Error).name;
      throw new FerryError('server-unreachable', `cannot reach Ferry server at ${this.baseUrl} (${cause})`, { cause: error });
    }
    return parseResponse<T>(response.status, await response.text().catch(() => ''));
  }
}

/** The JSON body of a response (undefined when empty or not JSON); throws the server's error for a non-2xx status. */
function parseResponse<T>(status: number, text: string): T {
  let parsed: unknown = undefined;
  if (text) {
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = undefined;
    }
  }
  if (status < 200 || status > 299) throw FerryError.fromBody(status, parsed);
  return parsed as T;
}

/** How long `withRetry` keeps retrying an error the server itself sent (a transient fault it reported). */
export const SERVER_ERROR_RETRY_MS = 15_000;

/**
 * Runs `operation` until it succeeds, a non-retryable error occurs, the time allowed passes or `signal`
 * aborts, backing off from 200 ms to 5 s between tries; the last error is rethrown. While the server
 * cannot be reached, it retries for `deadlineMs` (a server restart); a retryable error the server
 * answered with is retried for at most `serverErrorMs`, so a persistent fault surfaces quickly.
 */
export async function withRetry<T>(
  operation: () => Promise<T>,
  options: { deadlineMs: number; serverErrorMs?: number; signal?: AbortSignal; onRetry?: (error: FerryError) => void },
): Promise<T> {
  const started = Date.now();
  let delay = 200;
  for (;;) {
    try {
      return await operation();
    } catch (error) {
      if (!(error instanceof FerryError) || !error.retryable || options.signal?.aborted) throw error;
      const allowed = error.code === 'server-unreachable' ? options.deadlineMs : Math.min(options.deadlineMs, options.serverErrorMs ?? SERVER_ERROR_RETRY_MS);
      if (Date.now() + delay > started + allowed) throw error;
      options.onRetry?.(error);
      await sleep(delay, options.signal);
      delay = Math.min(delay * 2, 5000);
    }
  }
}
