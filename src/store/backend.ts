/**
 * The storage boundary of the recovery site: a flat namespace of immutable objects addressed by key.
 * Every place replica data can live (a local directory today, an S3-compatible store later) implements
 * `StoreBackend`, and every implementation passes the shared conformance suite in
 * test/unit/store-backend-conformance.ts.
 *
 * Contract:
 * - Keys are relative paths of [a-z0-9-_.] segments joined by "/", e.g. "chunks/ab/ab12...". Never
 *   absolute, never "..".
 * - `put` is atomic and durable: when it resolves, `get` returns exactly these bytes even after a crash
 *   or power loss; a crash before it resolves leaves either no object or the previous one, never a
 *   partial one. Writing the same key with the same bytes again is harmless (idempotent).
 * - `get` of a key that does not exist throws FerryError 'not-found'.
 * - `has` answers from durable state only: true means a `get` will succeed.
 * - `delete` of a missing key is not an error (idempotent).
 * - `list(prefix)` yields every key starting with `prefix` that existed before the call began; keys
 *   written or deleted during the listing may or may not appear.
 * - Errors of the underlying medium are FerryError 'io-error' and retryable.
 */
export interface StoreBackend {
  /** Human-readable location, for logs and `ferry store stats`. */
  readonly location: string;
  put(key: string, data: Uint8Array): Promise<void>;
  get(key: string): Promise<Buffer>;
  has(key: string): Promise<boolean>;
  delete(key: string): Promise<void>;
  list(prefix: string): AsyncIterable<string>;
}

const keyPattern = /^[a-z0-9_.-]+(\/[a-z0-9_.-]+)*$/;

/** Throws unless `key` is a well-formed backend key (see the contract above). */
export function assertValidKey(key: string): void {
  if (!keyPattern.test(key) || key.split('/').some((segment) => segment === '.' || segment === '..')) {
    throw new Error(`invalid store key '${key}'`);
  }
}
