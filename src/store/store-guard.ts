/**
 * Keeps garbage collection from deleting an object that a client has just been told exists.
 *
 * The danger: an agent asks which chunks the store lacks, is told chunk X is present (so it will not
 * send it), and the index it uploads later names X; meanwhile garbage collection, which saw X
 * unreferenced and old, deletes it. Two things close this:
 *
 * 1. Every answer "present" is preceded by a `touch` of the object, so its `modifiedAt` is after the
 *    start of any replication job that can still commit a point naming it, and the collector keeps
 *    everything modified after the oldest such job began (see garbage-collector.ts).
 * 2. A touch-and-answer and the collector's check-age-and-delete of the same object never interleave:
 *    requests hold this guard's lock shared, the collector's sweep holds it exclusively, one small
 *    batch of objects at a time. So either the collector deleted X before the touch (the answer is
 *    "missing" and the agent sends X again), or it checks X's age after the touch and keeps it.
 *
 * The lock lives in this process: this is correct while one server process writes the store (the
 * embedded default). Several server nodes will need a shared lock or a two-phase delete.
 */
import { FerryError } from '../errors.js';
import type { ChunkStore, ChunkUpload } from './chunk-store.js';
import { isHashHex } from './chunking.js';
import type { DiskIndex } from './disk-index.js';

/** How many chunks one request checks and touches under one hold of the shared lock. */
const TOUCH_BATCH = 4096;
/** A stored index that vanishes right after it was written or checked is retried this often. */
const VANISHED_RETRIES = 3;

/**
 * The store-writing operations of the agent protocol, made safe against a concurrent garbage
 * collection, and the exclusive section the collector sweeps in. One per chunk store per process.
 */
export class StoreGuard {
  private readonly lock = new SharedExclusiveLock();

  constructor(readonly store: ChunkStore) {}

  /**
   * Of `hashes`, those the store does not hold (input order, no duplicates), like
   * `ChunkStore.missingChunks`; every chunk reported present has been touched, so garbage collection
   * keeps it for as long as the replication job asking may still commit. Throws invalid-request for a
   * name that is not a SHA-256 hex string.
   */
  async missingChunks(hashes: readonly string[]): Promise<string[]> {
    const unique = [...new Set(hashes)];
    for (const hash of unique) if (!isHashHex(hash)) throw new FerryError('invalid-request', `'${hash}' is not a SHA-256 hex name`);
    const missing: string[] = [];
    for (let start = 0; start < unique.length; start += TOUCH_BATCH) {
      const batch = unique.slice(start, start + TOUCH_BATCH);
      const present = await this.touch(batch);
      batch.forEach((hash, position) => {
        if (!present[position]) missing.push(hash);
      });
    }
    return missing;
  }

  /** `ChunkStore.putChunk`, except that a chunk found already present is touched under the lock. */
  async putChunk(hashHex: string, data: Uint8Array): Promise<'stored' | 'already-present'> {
    const { stored } = await this.putChunkBatch([{ hashHex, data }]);
    return stored === 1 ? 'stored' : 'already-present';
  }

  /**
   * Stores a batch of uploaded chunks (`ChunkStore.putChunks`): deltas are rebuilt from their bases
   * (delta-base-missing when the store cannot provide one) and every chunk is checked first (bytes hash
   * to their name, not all zeros), so a batch with one bad chunk stores nothing; chunks the store already
   * holds are touched under the lock, so they outlive the job that sent them; the rest are written as
   * one pack, durably, before this resolves. A base is read outside the lock: if a collection deletes it
   * meanwhile, the batch is refused with delta-base-missing and the agent sends the chunk whole.
   */
  async putChunkBatch(chunks: readonly ChunkUpload[]): Promise<{ received: number; stored: number }> {
    return this.store.putChunks(chunks, (hashes) => this.touch(hashes));
  }

  /**
   * `ChunkStore.putIndex` (refused with chunk-missing unless every chunk it names is stored), after
   * touching every chunk the index names, and touching the index itself afterwards: whatever a new
   * point will name stays until the job commits it. Returns the index's hash.
   */
  async putIndex(index: DiskIndex): Promise<string> {
    // Touch first; putIndex then checks presence again and throws the one chunk-missing error the
    // protocol documents. Touched chunks cannot go away in between: they are newer than any cutoff.
    await this.missingChunks([...index.distinctHashes()]);
    for (let attempt = 1; ; attempt++) {
      const indexHash = await this.store.putIndex(index);
      // putIndex does not rewrite an index it already holds; an identical index left by an expired point
      // may be old, so refresh it (or store it again if a collection deleted it just now).
      if (await this.lock.shared(() => this.store.backend.touch(this.store.indexObjectKey(indexHash)))) return indexHash;
      if (attempt >= VANISHED_RETRIES) throw vanished(`index ${indexHash}`);
    }
  }

  /**
   * Runs `section` while no request is between touching an object and answering that it exists. The
   * garbage collector checks an object's age and deletes it inside one such section; keep sections
   * short (a batch of objects), since agent requests wait for them.
   */
  exclusive<T>(section: () => Promise<T>): Promise<T> {
    return this.lock.exclusive(section);
  }

  /** Touches and answers presence under the shared lock (see the module comment). */
  private touch(hashes: readonly string[]): Promise<boolean[]> {
    return this.lock.shared(() => this.store.touchChunks(hashes));
  }
}

function vanished(what: string): FerryError {
  return new FerryError('io-error', `${what} disappeared from the store right after it was stored ${VANISHED_RETRIES} times; is something else deleting objects?`, {
    retryable: true,
  });
}

/**
 * A readers-writer lock for async code. Waiters are served in arrival order, a run of shared waiters
 * together; a waiting exclusive holder stops later shared ones from overtaking it, so a sweep is never
 * starved by a stream of agent requests.
 */
export class SharedExclusiveLock {
  private sharedHolders = 0;
  private exclusiveHeld = false;
  private readonly waiters: { exclusive: boolean; wake: () => void }[] = [];

  /** Runs `section` with the lock held shared (alongside other shared holders). */
  async shared<T>(section: () => Promise<T>): Promise<T> {
    if (this.exclusiveHeld || this.waiters.length > 0) await new Promise<void>((wake) => this.waiters.push({ exclusive: false, wake }));
    else this.sharedHolders++;
    try {
      return await section();
    } finally {
      this.sharedHolders--;
      this.wakeWaiters();
    }
  }

  /** Runs `section` with the lock held by it alone. */
  async exclusive<T>(section: () => Promise<T>): Promise<T> {
    if (this.exclusiveHeld || this.sharedHolders > 0 || this.waiters.length > 0) await new Promise<void>((wake) => this.waiters.push({ exclusive: true, wake }));
    else this.exclusiveHeld = true;
    try {
      return await section();
    } finally {
      this.exclusiveHeld = false;
      this.wakeWaiters();
    }
  }

  /** Hands the lock to the next waiters; a woken waiter already counts as a holder. */
  private wakeWaiters(): void {
    while (this.waiters.length > 0 && !this.exclusiveHeld) {
      const next = this.waiters[0]!;
      if (next.exclusive) {
        if (this.sharedHolders > 0) return;
        this.exclusiveHeld = true;
      } else {
        this.sharedHolders++;
      }
      this.waiters.shift();
      next.wake();
    }
  }
}
