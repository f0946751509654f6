/**
 * The storage boundary of the recovery site: a flat namespace of immutable objects addressed by key.
 * Every place replica data can live (a local directory today, an S3-compatible store later) implements
 * `StoreBackend`, and every implementation passes the shared conformance suite in
 * test/unit/store-backend-conformance.ts.
 *
 * Contract:
 * - Keys are relative paths of segments joined by "/", e.g. "chunks/ab/ab12...": each segment is
 *   [a-z0-9_.-], does not start with "." (backends may use such names for their own temporary files),
 *   and no key is a prefix-directory of another ("a" and "a/b" cannot both be objects). An invalid key
 *   is refused with FerryError 'invalid-request' (not retryable) by every operation.
 * - `put` is atomic and durable: when it resolves, `get` returns exactly these bytes even after a crash
 *   or power loss; a crash before it resolves leaves either no object or the previous one, never a
 *   partial one. Writing the same key with the same bytes again is harmless (idempotent).
 * - `get` of a key that does not exist throws FerryError 'not-found'.
 * - `getRange(key, offset, length)` returns exactly the `length` bytes at `offset` of the object (what
 *   `get(key).subarray(offset, offset + length)` would), reading no more than needed: pack files are read
 *   a chunk at a time. 'not-found' when there is no object; 'corrupt-data' (not retryable) when the
 *   object ends before `offset + length` (a truncated object); 'invalid-request' for a negative or
 *   non-integer offset or length.
 * - `has` answers from durable state only: true means a `get` will succeed.
 * - `delete` of a missing key is not an error (idempotent).
 * - `list(prefix)` yields every key starting with `prefix` that existed before the call began; keys
 *   written or deleted during the listing may or may not appear. `prefix` is "" or a valid key, optionally
 *   ending in "/" (invalid-request otherwise); a prefix matching nothing yields nothing.
 * - `stat` resolves null for a key that is not an object (missing, or only a prefix of other keys); for an
 *   object it gives `size` (its byte length) and `modifiedAt` (milliseconds since the epoch of its last
 *   `put` or `touch`, by the backend's clock, possibly rounded down to the medium's resolution, e.g.
 *   whole seconds).
 * - `touch` sets an object's `modifiedAt` to now without changing its bytes and resolves true; for a key
 *   that is not an object it creates nothing and resolves false. A touch need not be durable: after a
 *   crash `modifiedAt` may be older. Garbage collection relies on it (see garbage-collector.ts).
 * - Errors of the underlying medium are FerryError 'io-error' and retryable.
 */
import { FerryError } from '../errors.js';

export interface StoreBackend {
  /** Human-readable location, for logs and `ferry store stats`. */
  readonly location: string;
  /** Stores `data`, or the concatenation of a list of buffers (written without joining them first). */
  put(key: string, data: Uint8Array | readonly Uint8Array[]): Promise<void>;
  get(key: string): Promise<Buffer>;
  /** `length` bytes of the object at `offset`; see the contract above for every refusal. */
  getRange(key: string, offset: number, length: number): Promise<Buffer>;
  /**
   * Optional: `getRange` into the caller's buffer (`target.length` bytes at `offset`), same errors, so a
   * reader that streams much data (a restore) reuses its buffers instead of allocating one per read.
   */
  getRangeInto?(key: string, offset: number, target: Uint8Array): Promise<void>;
  has(key: string): Promise<boolean>;
  delete(key: string): Promise<void>;
  list(prefix: string): AsyncIterable<string>;
  /** Size and last-write-or-touch time of an object, or null when there is no object at `key`. */
  stat(key: string): Promise<ObjectStat | null>;
  /** Refreshes an object's `modifiedAt` to now; false (and nothing created) when there is no object at `key`. */
  touch(key: string): Promise<boolean>;
}

/** What `StoreBackend.stat` reports about one object. */
export interface ObjectStat {
  /** Byte length of the object as stored. */
  size: number;
  /** Milliseconds since the epoch of the last `put` or `touch` (backend clock, medium resolution). */
  modifiedAt: number;
}

const keyPattern = /^[a-z0-9_-][a-z0-9_.-]*(\/[a-z0-9_-][a-z0-9_.-]*)*$/;

/** Throws invalid-request unless `key` is a well-formed backend key (see the contract above). */
export function assertValidKey(key: string): void {
  if (!keyPattern.test(key)) {
    throw new FerryError('invalid-request', `invalid store key '${key}': segments of [a-z0-9_.-] joined by '/', none starting with '.'`);
  }
}

/** Throws invalid-request unless `prefix` is "" or a valid key optionally ending in "/". */
export function assertValidPrefix(prefix: string): void {
  if (prefix === '') return;
  assertValidKey(prefix.endsWith('/') ? prefix.slice(0, -1) : prefix);
}

/** Throws invalid-request unless `offset` and `length` are non-negative safe integers. */
export function assertValidRange(key: string, offset: number, length: number): void {
  if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
    throw new FerryError('invalid-request', `invalid range of '${key}': offset ${offset}, length ${length}`);
  }
}
