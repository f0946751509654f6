/**
 * Store statistics on a small data set whose every number is known: chunk numbers come from the
 * catalog (a chunk counts once, whichever packs hold it), stored chunk bytes are whole pack files, and
 * what is not a referenced chunk object (pack overhead, garbage, duplicate copies) counts as unreferenced.
 */
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ChunkStore } from '../../src/store/chunk-store.js';
import { hashChunk } from '../../src/store/chunking.js';
import { FilesystemBackend } from '../../src/store/fs-backend.js';
import { type PointForStats, storeStats } from '../../src/store/stats.js';
import { locateStored, objectKeys, publishIndex, storeRandomChunk, tempDirFor } from './helpers.js';

const CHUNK = 4096;

test('storeStats: logical sizes, unique and stored bytes, unreferenced objects and ratios', async (t) => {
  const store = new ChunkStore(new FilesystemBackend(path.join(await tempDirFor(t), 'store')));
  const chunk = () => storeRandomChunk(store, CHUNK);
  const index = (hashes: (string | null)[]) => publishIndex(store, hashes, CHUNK);
  const size = async (key: string) => (await store.backend.stat(key))!.size;

  const [r1, r2, r3, r4, garbage] = [await chunk(), await chunk(), await chunk(), await chunk(), await chunk()];
  const first = await index([r1, r2, null, r3]); // 16 KiB disk, 12 KiB of data
  const second = await index([r1, r2, r4, null]); // the same disk later: one chunk changed
  const orphan = await index([garbage]); // uploaded by a cycle that never committed
  const points: PointForStats[] = [
    { machine: 'vm', pointId: 'p1', takenAt: 1, disks: [{ indexHash: first, sizeBytes: 4 * CHUNK }] },
    { machine: 'vm', pointId: 'p2', takenAt: 2, disks: [{ indexHash: second, sizeBytes: 4 * CHUNK }] },
    // Two identical disks (a mirror): both name the same index.
    { machine: 'twin', pointId: 'p3', takenAt: 1, disks: [{ indexHash: first, sizeBytes: 4 * CHUNK }, { indexHash: first, sizeBytes: 4 * CHUNK }] },
  ];

  // Each chunk is in a pack of its own: its object's length, and its pack file's size.
  const objectLength = async (hash: string) => (await locateStored(store, hash)).length;
  const packSize = async (hash: string) => size((await locateStored(store, hash)).key);
  const referencedChunkBytes = (await Promise.all([r1, r2, r3, r4].map(objectLength))).reduce((a, b) => a + b, 0);
  const chunkBytes = (await Promise.all([r1, r2, r3, r4, garbage].map(packSize))).reduce((a, b) => a + b, 0);
  const indexBytes = [await size(store.indexObjectKey(first)), await size(store.indexObjectKey(second)), await size(store.indexObjectKey(orphan))];

  const stats = await storeStats(store, points);
  assert.deepEqual(stats, {
    points: 3,
    machines: 2,
    logicalBytes: 4 * 4 * CHUNK, // four disks of 16 KiB
    latestLogicalBytes: 3 * 4 * CHUNK, // vm's p2 and twin's two disks
    logicalDataBytes: 4 * 3 * CHUNK, // every disk holds three non-zero chunks
    uniqueChunks: 4,
    uniqueChunkBytes: 4 * CHUNK,
    referencedIndexes: 2,
    unreadableIndexes: 0,
    stored: {
      chunks: 5,
      chunkBytes,
      packs: 5,
      indexes: 3,
      indexBytes: indexBytes[0]! + indexBytes[1]! + indexBytes[2]!,
      totalBytes: chunkBytes + indexBytes[0]! + indexBytes[1]! + indexBytes[2]!,
    },
    referencedStoredChunkBytes: referencedChunkBytes,
    // The garbage chunk's pack, and every pack's magic, directory and trailer.
    unreferenced: { chunks: 1, chunkBytes: chunkBytes - referencedChunkBytes, indexes: 1, indexBytes: indexBytes[2]! },
    dedupeRatio: 3, // 48 KiB of disk data held in 16 KiB of unique chunks
    compressionRatio: Math.round(((4 * CHUNK) / referencedChunkBytes) * 1000) / 1000,
  });
  assert.ok(stats.compressionRatio! > 0.9 && stats.compressionRatio! <= 1, 'uncompressed chunks: ratio just under 1 (object headers)');
});

test('storeStats of an empty store has no ratios; an unreadable index is counted, not fatal', async (t) => {
  const store = new ChunkStore(new FilesystemBackend(path.join(await tempDirFor(t), 'store')));
  const empty = await storeStats(store, []);
  assert.equal(empty.points, 0);
  assert.equal(empty.stored.totalBytes, 0);
  assert.equal(empty.dedupeRatio, null);
  assert.equal(empty.compressionRatio, null);
  const lost = await storeStats(store, [{ machine: 'vm', pointId: 'p1', takenAt: 1, disks: [{ indexHash: 'a'.repeat(64), sizeBytes: 100 }] }]);
  assert.equal(lost.unreadableIndexes, 1);
  assert.equal(lost.logicalBytes, 100);
  assert.equal(lost.uniqueChunks, 0);
});

test('storeStats over shared packs: a chunk held twice counts once; the second copy is unreferenced bytes', async (t) => {
  const store = new ChunkStore(new FilesystemBackend(path.join(await tempDirFor(t), 'store')));
  const batch = Array.from({ length: 3 }, () => {
    const data = randomBytes(CHUNK);
    return { hashHex: hashChunk(data).toString('hex'), data };
  });
  const [r1, r2, garbage] = batch.map((chunk) => chunk.hashHex) as [string, string, string];
  await store.putChunks(batch); // one pack of three
  await store.putChunks([batch[0]!], async (asked) => asked.map(() => false)); // r1 again, in a second pack
  const packs = await objectKeys(store, 'packs/');
  assert.equal(packs.length, 2);
  const index = await publishIndex(store, [r1, r2], CHUNK);
  const sizes = await Promise.all(packs.map(async (key) => (await store.backend.stat(key))!.size));
  const chunkBytes = sizes[0]! + sizes[1]!;
  const referenced = (await locateStored(store, r1)).length + (await locateStored(store, r2)).length;

  const stats = await storeStats(store, [{ machine: 'vm', pointId: 'p1', takenAt: 1, disks: [{ indexHash: index, sizeBytes: 2 * CHUNK }] }]);
  assert.equal(stats.uniqueChunks, 2);
  assert.deepEqual({ chunks: stats.stored.chunks, packs: stats.stored.packs, chunkBytes: stats.stored.chunkBytes }, { chunks: 3, packs: 2, chunkBytes });
  assert.equal(stats.referencedStoredChunkBytes, referenced, 'r1 counts once, though two packs hold it');
  assert.deepEqual({ chunks: stats.unreferenced.chunks, chunkBytes: stats.unreferenced.chunkBytes }, { chunks: 1, chunkBytes: chunkBytes - referenced });
  assert.ok(stats.unreferenced.chunkBytes > (await locateStored(store, garbage)).length + (await locateStored(store, r1)).length, 'the garbage chunk and the second copy of r1, at least');
});
