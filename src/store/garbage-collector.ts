/**
 * Garbage collection of the chunk store: mark and sweep with a cutoff time.
 *
 * Mark: read every index a committed point names and collect the object key of every chunk they name.
 * If any of those indexes cannot be read, stop with an error before deleting anything: a sweep on a
 * partial mark would delete chunks a point needs.
 *
 * Sweep: list index objects, then chunk objects (what names data goes before the data it names, the
 * mirror of the write order). Delete an object only if it is not marked AND its `modifiedAt` is before
 * the cutoff. The caller chooses the cutoff so that everything a point may still be committed with is
 * newer (store-maintenance.ts: before the grace period and before the oldest active replication job
 * began); StoreGuard makes sure that whatever an agent was told exists has been touched, and that the
 * age check and the delete of one object happen in one exclusive section.
 *
 * This module knows nothing about the database: it gets the referenced index names and the cutoff.
 */
import { FerryError } from '../errors.js';
import { type ChunkStore, mapLimited } from './chunk-store.js';
import type { StoreGuard } from './store-guard.js';

/** Objects checked and deleted per exclusive section (agent requests wait while one runs). */
const SWEEP_BATCH = 256;
/** Stat and delete calls in flight within one section. */
const SWEEP_CONCURRENCY = 8;

/** What one collection is told. */
export interface GarbageCollectionInput {
  /** Names of every index a committed point references: they and every chunk they name are kept. */
  referencedIndexes: Iterable<string>;
  /** Milliseconds since the epoch: unreferenced objects modified at or after this are kept. */
  cutoffMs: number;
  /** Stops the sweep between batches (what was deleted stays deleted; nothing referenced is touched). */
  signal?: AbortSignal;
}

/** What one collection did. Byte counts are stored object sizes. */
export interface GarbageCollectionResult {
  /** Distinct indexes named by points, and distinct chunk objects those name (all kept). */
  marked: { indexes: number; chunks: number };
  /** Objects the sweep listed. */
  scanned: { indexes: number; chunks: number };
  /** Objects deleted, and the bytes they held. */
  deleted: { indexes: number; chunks: number; bytes: number };
  /** Unreferenced objects kept because they were modified at or after the cutoff. */
  keptRecent: { indexes: number; chunks: number };
  /** True when the signal stopped the sweep before it had looked at every object. */
  interrupted: boolean;
}

/**
 * Deletes every index and chunk object that no referenced index names and that was last written or
 * touched before `cutoffMs`. Throws (deleting nothing) when a referenced index cannot be read: code
 * io-error (retryable) when the medium failed, corrupt-data when the index is missing or damaged.
 */
export async function collectGarbage(store: ChunkStore, guard: StoreGuard, input: GarbageCollectionInput): Promise<GarbageCollectionResult> {
  const marked = await mark(store, input.referencedIndexes);
  const result: GarbageCollectionResult = {
    marked: { indexes: marked.indexKeys.size, chunks: marked.chunkKeys.size },
    scanned: { indexes: 0, chunks: 0 },
    deleted: { indexes: 0, chunks: 0, bytes: 0 },
    keptRecent: { indexes: 0, chunks: 0 },
    interrupted: false,
  };

  const sweep = async (kind: 'indexes' | 'chunks', keys: AsyncIterable<string>, keep: Set<string>) => {
    let batch: string[] = [];
    const flush = async () => {
      const candidates = batch;
      batch = [];
      await guard.exclusive(() =>
        mapLimited(candidates, SWEEP_CONCURRENCY, async (key) => {
          // Age check and delete inside one exclusive section: no request can touch the object between them.
          const stat = await store.backend.stat(key);
          if (!stat) return;
          if (stat.modifiedAt >= input.cutoffMs) {
            result.keptRecent[kind]++;
            return;
          }
          await store.deleteObject(key);
          result.deleted[kind]++;
          result.deleted.bytes += stat.size;
        }),
      );
    };
    for await (const key of keys) {
      if (input.signal?.aborted) {
        result.interrupted = true;
        return;
      }
      result.scanned[kind]++;
      if (keep.has(key)) continue;
      batch.push(key);
      if (batch.length >= SWEEP_BATCH) await flush();
    }
    if (batch.length > 0) await flush();
  };

  await sweep('indexes', indexObjectKeys(store), marked.indexKeys);
  if (!result.interrupted) await sweep('chunks', store.listChunkObjectKeys(), marked.chunkKeys);
  return result;
}

/**
 * The object keys of every referenced index and every chunk they name. Throws if any referenced index
 * cannot be read, so that no caller ever sweeps with a partial mark.
 */
export async function mark(store: ChunkStore, referencedIndexes: Iterable<string>): Promise<{ indexKeys: Set<string>; chunkKeys: Set<string> }> {
  const indexKeys = new Set<string>();
  const chunkKeys = new Set<string>();
  for (const indexHash of new Set(referencedIndexes)) {
    indexKeys.add(store.indexObjectKey(indexHash));
    let index;
    try {
      index = await store.getIndex(indexHash);
    } catch (error) {
      const retryable = error instanceof FerryError && error.code === 'io-error';
      throw new FerryError(
        retryable ? 'io-error' : 'corrupt-data',
        `garbage collection stopped before deleting anything: index ${indexHash}, which a recovery point references, cannot be read (${(error as Error).message}); run \`ferry store verify\``,
        { retryable, cause: error, details: { index: indexHash } },
      );
    }
    for (let position = 0; position < index.chunkCount; position++) {
      if (!index.isZeroAt(position)) chunkKeys.add(store.chunkObjectKey(index.hashAt(position).toString('hex')));
    }
  }
  return { indexKeys, chunkKeys };
}

async function* indexObjectKeys(store: ChunkStore): AsyncIterable<string> {
  for await (const indexHash of store.listIndexHashes()) yield store.indexObjectKey(indexHash);
}
