/**
 * Store statistics: how much the recovery points hold, how much the store keeps on its medium, and
 * the ratios between them. Computed on demand by reading every referenced index and listing (and
 * stat-ing) every object, so it costs a pass over the store; nothing here runs on a hot path.
 *
 * Definitions (all sizes in bytes):
 * - logicalBytes: the sum of disk sizes over every disk of every point: what restoring every point
 *   would write. latestLogicalBytes: the same over each machine's newest point only.
 * - logicalDataBytes: like logicalBytes but counting only non-zero chunks (all-zero chunks are never
 *   stored, so they cost nothing).
 * - uniqueChunks / uniqueChunkBytes: the distinct non-zero chunks the points reference, and their
 *   total length before any compression (from the indexes).
 * - stored: every object in the store, by kind, with its size on the medium (including unreferenced
 *   objects that garbage collection has not removed yet). Chunks live in packs: stored.chunks counts
 *   distinct chunk objects, stored.chunkBytes the packs' sizes (with their directories and the dead
 *   entries garbage collection has not reclaimed yet), stored.packs the packs.
 * - referencedStoredChunkBytes: stored size of the chunk objects the points reference.
 * - unreferenced.chunkBytes: stored.chunkBytes minus referencedStoredChunkBytes (pack overhead included).
 * - unreferenced: objects no point references: garbage collection deletes them once they are older
 *   than its cutoff (uploads of a replication in progress are among them until the point commits).
 * - dedupeRatio = logicalDataBytes / uniqueChunkBytes: how many times each stored chunk is used on
 *   average, across points, disks and machines. null when nothing is stored.
 * - compressionRatio = uniqueChunkBytes / referencedStoredChunkBytes: chunk bytes per stored byte;
 *   a little under 1 while chunks are stored uncompressed (each object has a small header).
 *   Both ratios are rounded to three decimals.
 */
import { type ChunkStore, mapLimited } from './chunk-store.js';

/** One committed point as stats sees it. */
export interface PointForStats {
  machine: string;
  pointId: string;
  takenAt: number;
  disks: readonly { indexHash: string; sizeBytes: number }[];
}

/** The numbers `ferry store stats` shows; see the module comment for each definition. */
export interface StoreStats {
  points: number;
  machines: number;
  logicalBytes: number;
  latestLogicalBytes: number;
  logicalDataBytes: number;
  uniqueChunks: number;
  uniqueChunkBytes: number;
  referencedIndexes: number;
  /** Referenced indexes that could not be read: the numbers above leave them out (run verify). */
  unreadableIndexes: number;
  stored: { chunks: number; chunkBytes: number; packs: number; indexes: number; indexBytes: number; totalBytes: number };
  referencedStoredChunkBytes: number;
  unreferenced: { chunks: number; chunkBytes: number; indexes: number; indexBytes: number };
  dedupeRatio: number | null;
  compressionRatio: number | null;
}

/** Objects stat-ed at once. */
const STAT_WINDOW = 256;
const STAT_CONCURRENCY = 16;

/** Computes `StoreStats` for the given points over `store`. */
export async function storeStats(store: ChunkStore, points: readonly PointForStats[], signal?: AbortSignal): Promise<StoreStats> {
  const usesByIndex = new Map<string, number>();
  let logicalBytes = 0;
  const newestByMachine = new Map<string, PointForStats>();
  for (const point of points) {
    for (const disk of point.disks) {
      logicalBytes += disk.sizeBytes;
      usesByIndex.set(disk.indexHash, (usesByIndex.get(disk.indexHash) ?? 0) + 1);
    }
    const newest = newestByMachine.get(point.machine);
    if (!newest || point.takenAt > newest.takenAt) newestByMachine.set(point.machine, point);
  }
  let latestLogicalBytes = 0;
  for (const point of newestByMachine.values()) for (const disk of point.disks) latestLogicalBytes += disk.sizeBytes;

  const referencedIndexKeys = new Set<string>();
  const referencedChunkNames = new Set<string>();
  let logicalDataBytes = 0;
  let uniqueChunkBytes = 0;
  let unreadableIndexes = 0;
  for (const [indexHash, uses] of usesByIndex) {
    signal?.throwIfAborted();
    referencedIndexKeys.add(store.indexObjectKey(indexHash));
    const index = await store.getIndex(indexHash).catch(() => null);
    if (!index) {
      unreadableIndexes++;
      continue;
    }
    let dataBytes = 0;
    for (let position = 0; position < index.chunkCount; position++) {
      if (index.isZeroAt(position)) continue;
      const length = index.lengthAt(position);
      dataBytes += length;
      const name = store.chunkObjectName(index.hashAt(position).toString('hex'));
      if (!referencedChunkNames.has(name)) {
        referencedChunkNames.add(name);
        uniqueChunkBytes += length;
      }
    }
    logicalDataBytes += dataBytes * uses;
  }

  const stored = { chunks: 0, chunkBytes: 0, packs: 0, indexes: 0, indexBytes: 0, totalBytes: 0 };
  const unreferenced = { chunks: 0, chunkBytes: 0, indexes: 0, indexBytes: 0 };
  let referencedStoredChunkBytes = 0;
  // Chunks: from the catalog. A pack's size (its directory and any dead entries included) counts as
  // stored chunk bytes; a referenced chunk counts its own object's length.
  const catalog = await store.catalog();
  for (const container of catalog.containers()) {
    stored.chunkBytes += container.size;
    if (container.kind === 'pack') stored.packs++;
    for (const name of container.names) {
      const entry = catalog.get(name);
      if (entry?.container !== container) continue; // a duplicate copy: its bytes are in chunkBytes
      stored.chunks++;
      if (referencedChunkNames.has(name)) referencedStoredChunkBytes += entry.length;
      else unreferenced.chunks++;
    }
  }
  unreferenced.chunkBytes = stored.chunkBytes - referencedStoredChunkBytes;
  await forEachStat(store, indexKeys(store), signal, (key, size) => {
    stored.indexes++;
    stored.indexBytes += size;
    if (!referencedIndexKeys.has(key)) {
      unreferenced.indexes++;
      unreferenced.indexBytes += size;
    }
  });
  stored.totalBytes = stored.chunkBytes + stored.indexBytes;

  return {
    points: points.length,
    machines: newestByMachine.size,
    logicalBytes,
    latestLogicalBytes,
    logicalDataBytes,
    uniqueChunks: referencedChunkNames.size,
    uniqueChunkBytes,
    referencedIndexes: usesByIndex.size,
    unreadableIndexes,
    stored,
    referencedStoredChunkBytes,
    unreferenced,
    dedupeRatio: ratio(logicalDataBytes, uniqueChunkBytes),
    compressionRatio: ratio(uniqueChunkBytes, referencedStoredChunkBytes),
  };
}

/** Stats every listed object, a window at a time; objects gone by the time of their stat are skipped. */
async function forEachStat(store: ChunkStore, keys: AsyncIterable<string>, signal: AbortSignal | undefined, visit: (key: string, size: number) => void): Promise<void> {
  let window: string[] = [];
  const flush = async () => {
    const stats = await mapLimited(window, STAT_CONCURRENCY, (key) => store.backend.stat(key));
    window.forEach((key, position) => {
      const stat = stats[position];
      if (stat) visit(key, stat.size);
    });
    window = [];
  };
  for await (const key of keys) {
    window.push(key);
    if (window.length >= STAT_WINDOW) {
      signal?.throwIfAborted();
      await flush();
    }
  }
  await flush();
}

async function* indexKeys(store: ChunkStore): AsyncIterable<string> {
  for await (const indexHash of store.listIndexHashes()) yield store.indexObjectKey(indexHash);
}

function ratio(numerator: number, denominator: number): number | null {
  return denominator > 0 ? Math.round((numerator / denominator) * 1000) / 1000 : null;
}
