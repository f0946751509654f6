/**
 * Ferry's typed errors. Every failure a person or a program may see is a `FerryError` with a stable
 * `code`, a message written for a person, and `retryable`: whether trying the same thing again later
 * can succeed. One place maps codes to HTTP statuses (`httpStatusOf`), one place to CLI exit codes
 * (`exitCodeOf`); nothing else formats errors.
 */

/** Stable error codes. Clients may switch on these; never rename one. */
export type ErrorCode =
  | 'unauthorized' // no token, or a token the server does not know
  | 'forbidden' // a known token whose role may not do this
  | 'invalid-request' // malformed body, query or parameter; the message names the field
  | 'not-found' // a named resource (machine, site, policy, point, job) does not exist
  | 'conflict' // the request is well-formed but the resource's state does not allow it
  | 'chunk-hash-mismatch' // uploaded bytes do not hash to the name they were sent under
  | 'chunk-missing' // an index names a chunk the store does not hold
  | 'delta-base-missing' // a chunk uploaded as changed blocks over a base chunk the store cannot provide: send it whole
  | 'corrupt-data' // stored data failed its integrity check
  | 'disk-unreadable' // a source disk does not exist or cannot be read
  | 'hook-failed' // a pre/post-point hook failed or timed out
  | 'server-unreachable' // the client could not reach the server
  | 'io-error' // a local file system operation failed
  | 'wrong-key' // an encrypted chunk store was opened with a key (or passphrase) that is not its own
  | 'internal'; // a bug: logged with its stack

const httpStatusByCode: Record<ErrorCode, number> = {
  unauthorized: 401,
  forbidden: 403,
  'invalid-request': 400,
  'not-found': 404,
  conflict: 409,
  'chunk-hash-mismatch': 400,
  'chunk-missing': 409,
  'delta-base-missing': 409,
  'corrupt-data': 500,
  'disk-unreadable': 422,
  'hook-failed': 422,
  'server-unreachable': 503,
  'io-error': 500,
  // A server-side configuration fault, not something the API client did: 500, never 401/403, so a
  // client does not take it for a problem with its own token.
  'wrong-key': 500,
  internal: 500,
};

const retryableByDefault: Partial<Record<ErrorCode, boolean>> = {
  'server-unreachable': true,
  'io-error': true,
  'disk-unreadable': true,
};

/**
 * The one error type Ferry throws on purpose. `retryable` tells a caller whether the same request may
 * succeed later (a server that was restarting) or never will (a malformed body).
 */
export class FerryError extends Error {
  readonly code: ErrorCode;
  readonly retryable: boolean;
  readonly details?: Record<string, unknown>;

  constructor(code: ErrorCode, message: string, options: { retryable?: boolean; details?: Record<string, unknown>; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'FerryError';
    this.code = code;
    this.retryable = options.retryable ?? retryableByDefault[code] ?? false;
    this.details = options.details;
  }

  /** The JSON body the API sends for this error, and that `FerryError.fromBody` reads back. */
  toBody(): ErrorBody {
    return { error: { code: this.code, message: this.message, retryable: this.retryable, ...(this.details ? { details: this.details } : {}) } };
  }

  /** Rebuilds an error sent by the server; unknown shapes become an `internal` error. */
  static fromBody(status: number, body: unknown): FerryError {
    const error = (body as ErrorBody | undefined)?.error;
    if (error && typeof error.code === 'string' && typeof error.message === 'string') {
      return new FerryError(error.code as ErrorCode, error.message, { retryable: Boolean(error.retryable), details: error.details });
    }
    return new FerryError(status >= 500 ? 'server-unreachable' : 'internal', `server answered HTTP ${status}`, { retryable: status >= 500 });
  }
}

/** Shape of an error response body from the API. */
export interface ErrorBody {
  error: { code: string; message: string; retryable: boolean; details?: Record<string, unknown> };
}

/** HTTP status for an error code (the server's one mapping). */
export function httpStatusOf(code: ErrorCode): number {
  return httpStatusByCode[code] ?? 500;
}

/** CLI exit code for an error (the CLI's one mapping): 2 bad usage/input, 3 not found, 4 refused, 5 unreachable, 1 otherwise. */
export function exitCodeOf(error: FerryError): number {
  switch (error.code) {
    case 'invalid-request':
      return 2;
    case 'not-found':
      return 3;
    case 'unauthorized':
    case 'forbidden':
    case 'conflict':
    case 'wrong-key':
      return 4;
    case 'server-unreachable':
      return 5;
    default:
      return 1;
  }
}

/** Shorthand for the common "X 'name' not found" error. */
export function notFound(kind: string, name: string): FerryError {
  return new FerryError('not-found', `${kind} '${name}' not found`, { details: { kind, name } });
}

/** Wraps anything thrown into a FerryError, keeping FerryErrors as they are. */
export function asFerryError(error: unknown): FerryError {
  if (error instanceof FerryError) return error;
  const message = error instanceof Error ? error.message : String(error);
  return new FerryError('internal', message, { cause: error });
}
