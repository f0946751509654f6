/**
 * HTTP client of the Ferry API, used by the CLI and the agent. Every failure becomes a FerryError: the
 * server's own error body when it sent one, `server-unreachable` (retryable) when it could not be
 * reached. JSON requests go over Node's fetch, which keeps connections alive between calls; binary
 * uploads (chunk batches, indexes) and binary downloads (indexes, chunk batches an agent applies) go
 * over node:http(s) with a keep-alive agent, because fetch copies a typed-array body twice before
 * sending it, which at hundreds of MB/s costs more CPU and memory than everything else the agent does
 * with the bytes.
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
  async postBinary<T>(path: string, body: Uint8Array | readonly Uint8Array[], timeoutMs = this.timeoutMs): Promise<T> {
    const parts = body instanceof Uint8Array ? [body] : body;
    const response = await this.exchange('POST', path, { contentType: 'application/octet-stream', parts, timeoutMs });
    return parseResponse<T>(response.status, response.body.toString('utf8'));
  }

  /**
   * GETs a binary body (an index, chunk bytes) and resolves to its bytes, whatever its content type.
   * Errors as `request`: a non-2xx answer throws the server's error, an unreachable server throws
   * server-unreachable (retryable).
   */
  async getBinary(path: string, query?: Query, timeoutMs = this.timeoutMs): Promise<Buffer> {
    const response = await this.exchange('GET', path, { query, timeoutMs });
    return binaryBody(response);
  }

  /** POSTs `json` and resolves to the binary body of the answer (a chunk batch, say). Errors as `getBinary`. */
  async postForBinary(path: string, json: unknown, timeoutMs = this.timeoutMs): Promise<Buffer> {
    const body = Buffer.from(JSON.stringify(json ?? {}), 'utf8');
    const response = await this.exchange('POST', path, { contentType: 'application/json', parts: [body], timeoutMs });
    return binaryBody(response);
  }

  /**
   * One request over node:http(s) with the keep-alive agent: sends `parts` back to back as the body
   * (no copy) and collects the answer's body into one buffer. Only a failure to reach the server or
   * to receive the whole answer rejects (server-unreachable); any status resolves.
   */
  private exchange(
    method: string,
    path: string,
    options: { query?: Query; contentType?: string; parts?: readonly Uint8Array[]; timeoutMs: number },
  ): Promise<{ status: number; body: Buffer }> {
    const url = new URL(`${this.baseUrl}/api/v1${path}`);
    for (const [key, value] of Object.entries(options.query ?? {})) if (value !== undefined) url.searchParams.set(key, String(value));
    const parts = options.parts ?? [];
    const headers: Record<string, string | number> = { 'content-length': parts.reduce((total, part) => total + part.byteLength, 0) };
    if (options.contentType) headers['content-type'] = options.contentType;
    if (this.token) headers.authorization = `Bearer ${this.token}`;
    const transport = url.protocol === 'https:' ? https : http;
    return new Promise((resolve, reject) => {
      const unreachable = (error: Error) =>
        reject(new FerryError('server-unreachable', `cannot reach Ferry server at ${this.baseUrl} (${(error as { code?: string }).code ?? error.name})`, { cause: error }));
      const request = transport.request(url, { method, headers, agent: this.uploadAgent, signal: AbortSignal.timeout(options.timeoutMs) }, (response) => {
        const received: Buffer[] = [];
        response.on('data', (piece: Buffer) => received.push(piece));
        response.on('error', unreachable);
        response.on('end', () => resolve({ status: response.statusCode ?? 0, body: received.length === 1 ? received[0]! : Buffer.concat(received) }));
        // A connection cut mid-body ends the response without 'end' (and, before Node 21, without 'error').
        response.on('close', () => {
          if (!response.complete) unreachable(Object.assign(new Error('connection closed before the whole answer arrived'), { code: 'ECONNRESET' }));
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

/** The body of a 2xx answer as bytes; for any other status, the server's error (as `parseResponse`). */
function binaryBody(response: { status: number; body: Buffer }): Buffer {
  if (response.status >= 200 && response.status <= 299) return response.body;
  return parseResponse<never>(response.status, response.body.toString('utf8'));
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
