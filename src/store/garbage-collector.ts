/**
 * Garbage collection of the chunk store: mark and sweep with a cutoff time.
 *
 * Mark: read every index a committed point names and collect the object name of every chunk they name.
 * If any of those indexes cannot be read, stop with an error before deleting anything: a sweep on a
 * partial mark would delete chunks a point needs.
 *
 * Sweep: index objects first, then chunk containers (what names data goes before the data it names,
 * the mirror of the write order). An index is deleted if it is not marked and its `modifiedAt` is
 * before the cutoff. A chunk entry of a pack is live if the catalog reads the chunk from this pack and
 * the chunk is marked or was written or touched at or after the cutoff; a pack with no live entry is
 * deleted, and a pack whose dead entries hold at least `REPACK_DEAD_FRACTION` of its bytes is repacked
 * (its live entries copied into a new pack, then it is deleted). Loose chunk objects (the layout
 * before packs) are containers of one entry.
 *
 * The caller chooses the cutoff so that everything a point may still be committed with is newer
 * (store-maintenance.ts: before the grace period and before the oldest active replication job began);
 * StoreGuard makes sure that whatever an agent was told exists has been touched, and each container's
 * liveness check and its delete or repack happen in one exclusive section.
 *
 * This module knows nothing about the database: it gets the referenced index names and the cutoff.
 */
import { FerryError } from '../errors.js';
import type { ChunkContainer } from './chunk-catalog.js';
import { type ChunkStore, mapLimited } from './chunk-store.js';
import type { StoreGuard } from './store-guard.js';

/** Index objects checked and deleted per exclusive section (agent requests wait while one runs). */
const SWEEP_BATCH = 256;
/** Stat and delete calls in flight within one section. */
const SWEEP_CONCURRENCY = 8;
/** Chunk containers decided per exclusive section; a repack holds the section for one pack's copy. */
const CONTAINER_BATCH = 64;
/** A pack is rewritten once this share of its bytes belongs to dead entries. */
export const REPACK_DEAD_FRACTION = 0.2;

/** What one collection is told. */
export interface GarbageCollectionInput {
  /** Names of every index a committed point references: they and every chunk they name are kept. */
  referencedIndexes: Iterable<string>;
  /** Milliseconds since the epoch: unreferenced objects modified at or after this are kept. */
  cutoffMs: number;
  /** Stops the sweep between batches (what was deleted stays deleted; nothing referenced is touched). */
  signal?: AbortSignal;
}

/** What one collection did. Byte counts are stored sizes. */
export interface GarbageCollectionResult {
  /** Distinct indexes named by points, and distinct chunks those name (all kept). */
  marked: { indexes: number; chunks: number };
  /** Index objects and chunk objects (pack entries and loose objects) the sweep looked at. */
  scanned: { indexes: number; chunks: number };
  /** Index and chunk objects deleted (dropped from packs or deleted whole), and the bytes freed. */
  deleted: { indexes: number; chunks: number; bytes: number };
  /** Unreferenced objects kept because they were modified at or after the cutoff. */
  keptRecent: { indexes: number; chunks: number };
  /** Packs deleted whole, and packs rewritten without their dead entries. */
  packs: { deleted: number; repacked: number };
  /**
   * Dead chunk objects left in packs whose dead share is below the repack threshold, and their bytes:
   * space a later collection reclaims once more of those packs has died.
   */
  unreclaimed: { chunks: number; bytes: number };
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
    marked: { indexes: marked.indexKeys.size, chunks: marked.chunkNames.size },
    scanned: { indexes: 0, chunks: 0 },
    deleted: { indexes: 0, chunks: 0, bytes: 0 },
    keptRecent: { indexes: 0, chunks: 0 },
    packs: { deleted: 0, repacked: 0 },
    unreclaimed: { chunks: 0, bytes: 0 },
    interrupted: false,
  };

  let batch: string[] = [];
  const flushIndexes = async () => {
    const candidates = batch;
    batch = [];
    await guard.exclusive(() =>
      mapLimited(candidates, SWEEP_CONCURRENCY, async (key) => {
        // Age check and delete inside one exclusive section: no request can touch the object between them.
        const stat = await store.backend.stat(key);
        if (!stat) return;
        if (stat.modifiedAt >= input.cutoffMs) {
          result.keptRecent.indexes++;
          return;
        }
        await store.deleteObject(key);
        result.deleted.indexes++;
        result.deleted.bytes += stat.size;
      }),
    );
  };
  for await (const indexHash of store.listIndexHashes()) {
    if (input.signal?.aborted) {
      result.interrupted = true;
      return result;
    }
    const key = store.indexObjectKey(indexHash);
    result.scanned.indexes++;
    if (marked.indexKeys.has(key)) continue;
    batch.push(key);
    if (batch.length >= SWEEP_BATCH) await flushIndexes();
  }
  if (batch.length > 0) await flushIndexes();

  const catalog = await store.catalog();
  const containers = catalog.containers();
  const present = new Map<string, boolean>();
  for (let start = 0; start < containers.length; start += CONTAINER_BATCH) {
    if (input.signal?.aborted) {
      result.interrupted = true;
      return result;
    }
    await guard.exclusive(async () => {
      for (const container of containers.slice(start, start + CONTAINER_BATCH)) {
        if (catalog.container(container.key) !== container) continue; // already gone
        await sweepContainer(store, container, marked.chunkNames, input.cutoffMs, result, present);
      }
    });
  }
  return result;
}

/**
 * Decides one container: keep it, delete it, or repack it without its dead entries. `present` caches,
 * for this collection, whether a container still exists on the backend.
 */
async function sweepContainer(
  store: ChunkStore,
  container: ChunkContainer,
  marked: ReadonlySet<string>,
  cutoffMs: number,
  result: GarbageCollectionResult,
  present: Map<string, boolean>,
): Promise<void> {
  const catalog = await store.catalog();
  const live: string[] = [];
  let deadCount = 0; // entries to drop: unreferenced and old, or duplicates of a copy read elsewhere
  let deadChunks = 0; // of those, the chunks the catalog reads from here (duplicates are not chunks)
  let deadBytes = 0;
  for (const [position, name] of container.names.entries()) {
    let entry = catalog.get(name);
    // A referenced chunk whose catalogued copy is gone (its pack lost or deleted by hand) lives on in
    // this copy: read it from here rather than drop the last copy there is.
    if (marked.has(name) && entry?.container !== container && !(entry && (await stillThere(store, entry.container, present)))) {
      if (entry) catalog.forgetContainer(entry.container.key);
      entry = catalog.adopt(container, position);
    }
    const current = entry?.container === container;
    if (current) result.scanned.chunks++;
    if (current && marked.has(name)) live.push(name);
    else if (current && entry!.touchedAt >= cutoffMs) {
      live.push(name);
      result.keptRecent.chunks++;
    } else {
      deadCount++;
      if (current) {
        deadChunks++;
        deadBytes += entry!.length;
      }
    }
  }
  if (deadCount === 0) return;
  if (live.length === 0) {
    result.deleted.chunks += deadChunks;
    await store.deleteContainer(container);
    result.deleted.bytes += container.size;
    if (container.kind === 'pack') result.packs.deleted++;
    return;
  }
  const deadShare = (container.size - live.reduce((total, name) => total + catalog.get(name)!.length, 0)) / container.size;
  if (container.kind === 'pack' && deadShare >= REPACK_DEAD_FRACTION) {
    result.deleted.chunks += deadChunks;
    result.deleted.bytes += await store.repack(container, live);
    result.packs.repacked++;
    return;
  }
  result.unreclaimed.chunks += deadChunks;
  result.unreclaimed.bytes += deadBytes;
}

/** Whether `container` is still on the backend, asked once per collection. */
async function stillThere(store: ChunkStore, container: ChunkContainer, present: Map<string, boolean>): Promise<boolean> {
  let known = present.get(container.key);
  if (known === undefined) {
    known = await store.backend.has(container.key);
    present.set(container.key, known);
  }
  return known;
}

/**
 * The object keys of every referenced index and the object names of every chunk they name. Throws if
 * any referenced index cannot be read, so that no caller ever sweeps with a partial mark.
 */
export async function mark(store: ChunkStore, referencedIndexes: Iterable<string>): Promise<{ indexKeys: Set<string>; chunkNames: Set<string> }> {
  const indexKeys = new Set<string>();
  const chunkNames = new Set<string>();
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
      if (!index.isZeroAt(position)) chunkNames.add(store.chunkObjectName(index.hashAt(position).toString('hex')));
    }
  }
  return { indexKeys, chunkNames };
}
