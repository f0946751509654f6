/**
 * Garbage collection over a real FilesystemBackend: what it deletes, what it keeps (referenced, recent,
 * touched by a request), and that it deletes nothing when it cannot read a referenced index.
 * Object ages are set on the files directly (utimes), since waiting an hour is not an option.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { encodeChunkObject } from '../../src/store/chunk-object.js';
import { ChunkStore } from '../../src/store/chunk-store.js';
import { hashChunk } from '../../src/store/chunking.js';
import { DiskIndex } from '../../src/store/disk-index.js';
import { FilesystemBackend } from '../../src/store/fs-backend.js';
import { collectGarbage } from '../../src/store/garbage-collector.js';
import { StoreGuard } from '../../src/store/store-guard.js';
import { collect, ferryError, publishIndex, storeRandomChunk, tempDirFor } from './helpers.js';

const CHUNK = 4096;
const HOUR = 3600_000;

async function freshStore(t: TestContext) {
  const root = path.join(await tempDirFor(t), 'store');
  const store = new ChunkStore(new FilesystemBackend(root));
  const guard = new StoreGuard(store);
  /** Sets an object's modification time to `ms` (epoch milliseconds). */
  const setModified = async (key: string, ms: number) => {
    const when = new Date(ms);
    await fs.utimes(path.join(root, ...key.split('/')), when, when);
  };
  /** Stores a random chunk and returns its hash. */
  const chunk = () => storeRandomChunk(store, CHUNK);
  /** Publishes an index of the given chunks (null = zero chunk) and returns its name. */
  const index = (hashes: (string | null)[]) => publishIndex(store, hashes, CHUNK);
  /** Every object in the store. */
  const objects = async () => (await collect(store.backend.list(''))).sort();
  /** Ages every object in the store to `ms`. */
  const ageAll = async (ms: number) => {
    for (const key of await objects()) await setModified(key, ms);
  };
  return { root, store, guard, setModified, chunk, index, objects, ageAll };
}

describe('collectGarbage', () => {
  test('deletes unreferenced objects older than the cutoff and keeps referenced and recent ones', async (t) => {
    const { store, guard, chunk, index, setModified, ageAll } = await freshStore(t);
    const now = Date.now();
    const [kept1, kept2, shared, garbage1, garbage2, recent] = [await chunk(), await chunk(), await chunk(), await chunk(), await chunk(), await chunk()];
    const referenced = await index([kept1, null, shared]);
    const referencedToo = await index([shared, kept2]);
    const orphanIndex = await index([garbage1, shared]); // an index no point names (an aborted cycle)
    await ageAll(now - 2 * HOUR);
    await setModified(store.chunkObjectKey(recent), now - 60_000); // unreferenced but after the cutoff

    const garbageBytes = (await store.backend.stat(store.chunkObjectKey(garbage1)))!.size * 2 + (await store.backend.stat(store.indexObjectKey(orphanIndex)))!.size;
    const result = await collectGarbage(store, guard, { referencedIndexes: [referenced, referencedToo, referenced], cutoffMs: now - HOUR });

    for (const hash of [kept1, kept2, shared, recent]) assert.equal(await store.hasChunk(hash), true, `chunk ${hash} must be kept`);
    for (const hash of [garbage1, garbage2]) assert.equal(await store.hasChunk(hash), false, `chunk ${hash} must be deleted`);
    assert.equal(await store.hasIndex(referenced), true);
    assert.equal(await store.hasIndex(referencedToo), true);
    assert.equal(await store.hasIndex(orphanIndex), false);
    assert.deepEqual(result, {
      marked: { indexes: 2, chunks: 3 },
      scanned: { indexes: 3, chunks: 6 },
      deleted: { indexes: 1, chunks: 2, bytes: garbageBytes },
      keptRecent: { indexes: 0, chunks: 1 },
      interrupted: false,
    });
    // Every kept point still reads back.
    for (const name of [referenced, referencedToo]) {
      const kept = await store.getIndex(name);
      for (const hash of kept.distinctHashes()) await store.getChunk(hash);
    }
  });

  test('an object modified exactly at the cutoff is kept', async (t) => {
    const { store, guard, chunk, setModified } = await freshStore(t);
    const hash = await chunk();
    const cutoff = Math.floor(Date.now() / 1000) * 1000 - HOUR; // whole seconds: every file system can hold it
    await setModified(store.chunkObjectKey(hash), cutoff);
    await collectGarbage(store, guard, { referencedIndexes: [], cutoffMs: cutoff });
    assert.equal(await store.hasChunk(hash), true);
    await collectGarbage(store, guard, { referencedIndexes: [], cutoffMs: cutoff + 1000 });
    assert.equal(await store.hasChunk(hash), false);
  });

  test('a referenced index that is missing stops the collection before anything is deleted', async (t) => {
    const { store, guard, chunk, index, objects, ageAll } = await freshStore(t);
    const garbage = await chunk();
    const good = await index([await chunk()]);
    const lost = await index([await chunk(), await chunk()]);
    await store.deleteObject(store.indexObjectKey(lost));
    await ageAll(Date.now() - 2 * HOUR);
    const before = await objects();
    await assert.rejects(
      collectGarbage(store, guard, { referencedIndexes: [good, lost], cutoffMs: Date.now() }),
      ferryError('corrupt-data', [lost, 'before deleting anything']),
    );
    assert.deepEqual(await objects(), before, 'a failed mark deletes nothing');
    assert.equal(await store.hasChunk(garbage), true);
  });

  test('a referenced index that is damaged stops the collection before anything is deleted', async (t) => {
    const { root, store, guard, chunk, index, objects, ageAll } = await freshStore(t);
    await chunk(); // garbage the sweep would take
    const damaged = await index([await chunk()]);
    const file = path.join(root, ...store.indexObjectKey(damaged).split('/'));
    const bytes = await fs.readFile(file);
    bytes[30]! ^= 0x01;
    await fs.writeFile(file, bytes);
    await ageAll(Date.now() - 2 * HOUR);
    const before = await objects();
    await assert.rejects(collectGarbage(store, guard, { referencedIndexes: [damaged], cutoffMs: Date.now() }), ferryError('corrupt-data', [damaged]));
    assert.deepEqual(await objects(), before);
  });

  test('an aborted signal stops the sweep and reports it interrupted; referenced objects stay', async (t) => {
    const { store, guard, chunk, index, ageAll } = await freshStore(t);
    const kept = await chunk();
    const referenced = await index([kept]);
    for (let n = 0; n < 5; n++) await chunk();
    await ageAll(Date.now() - 2 * HOUR);
    const controller = new AbortController();
    controller.abort();
    const result = await collectGarbage(store, guard, { referencedIndexes: [referenced], cutoffMs: Date.now(), signal: controller.signal });
    assert.equal(result.interrupted, true);
    assert.equal(result.deleted.chunks, 0);
    assert.equal(await store.hasChunk(kept), true);
  });

  test('a chunk an agent was told is present survives a collection whose cutoff is after its last write', async (t) => {
    const { store, guard, chunk, ageAll } = await freshStore(t);
    const told = await chunk();
    const untold = await chunk();
    await ageAll(Date.now() - 2 * HOUR);
    // The agent asks; the answer "present" means it will not send the chunk again.
    assert.deepEqual(await guard.missingChunks([told, 'f'.repeat(64)]), ['f'.repeat(64)]);
    const cutoff = Date.now() - 30_000; // what store maintenance computes for a job created 30 s ago
    const result = await collectGarbage(store, guard, { referencedIndexes: [], cutoffMs: cutoff });
    assert.equal(await store.hasChunk(told), true, 'the touched chunk is kept');
    assert.equal(await store.hasChunk(untold), false, 'the same collection does delete an old untouched chunk');
    assert.equal(result.keptRecent.chunks, 1);
  });

  test('publishing an index through the guard refreshes the old chunks it names and the index itself', async (t) => {
    const { store, guard, chunk, index, ageAll } = await freshStore(t);
    const old = [await chunk(), await chunk()];
    const name = await index(old); // an identical index left by a point that has since expired
    await ageAll(Date.now() - 2 * HOUR);
    const again = DiskIndex.empty(2 * CHUNK, CHUNK);
    old.forEach((hash, position) => again.setHash(position, Buffer.from(hash, 'hex')));
    assert.equal(await guard.putIndex(again), name);
    await collectGarbage(store, guard, { referencedIndexes: [], cutoffMs: Date.now() - 30_000 });
    assert.equal(await store.hasIndex(name), true, 'the re-uploaded index is kept until its point commits');
    for (const hash of old) assert.equal(await store.hasChunk(hash), true);
  });

  test('storing a chunk that is already present through the guard refreshes it', async (t) => {
    const { store, guard, ageAll } = await freshStore(t);
    const data = randomBytes(CHUNK);
    const hash = hashChunk(data).toString('hex');
    await store.putChunk(hash, data);
    await ageAll(Date.now() - 2 * HOUR);
    assert.equal(await guard.putChunk(hash, data), 'already-present');
    await collectGarbage(store, guard, { referencedIndexes: [], cutoffMs: Date.now() - 30_000 });
    assert.equal(await store.hasChunk(hash), true);
  });

  // The race the guard's lock closes: an answer "present" given while the sweep runs must still hold
  // after the sweep. Many old unreferenced chunks, a sweep deleting them, and requests touching them.
  test('every chunk reported present while a sweep runs is still there after it', async (t) => {
    const { root, store, guard } = await freshStore(t);
    // Written straight to files (no fsync per chunk, which would take the test most of a minute).
    const hashes: string[] = [];
    const old = new Date(Date.now() - 2 * HOUR);
    for (let n = 0; n < 1500; n++) {
      const data = randomBytes(256);
      const hash = hashChunk(data).toString('hex');
      const file = path.join(root, ...store.chunkObjectKey(hash).split('/'));
      await fs.mkdir(path.dirname(file), { recursive: true });
      await fs.writeFile(file, encodeChunkObject(data));
      await fs.utimes(file, old, old);
      hashes.push(hash);
    }
    const cutoff = Date.now() - 1000;
    const reportedPresent = new Set<string>();
    let sweeping = true;
    const sweep = collectGarbage(store, guard, { referencedIndexes: [], cutoffMs: cutoff }).finally(() => (sweeping = false));
    let queries = 0;
    while (sweeping && queries < 10_000) {
      const sample = Array.from({ length: 64 }, () => hashes[Math.floor(Math.random() * hashes.length)]!);
      const missing = new Set(await guard.missingChunks(sample));
      for (const hash of sample) if (!missing.has(hash)) reportedPresent.add(hash);
      queries++;
    }
    const result = await sweep;
    assert.ok(queries > 1, 'requests ran while the sweep did');
    assert.ok(result.deleted.chunks > 0 && reportedPresent.size > 0, `the test exercised both sides (deleted ${result.deleted.chunks}, present ${reportedPresent.size})`);
    for (const hash of reportedPresent) assert.equal(await store.hasChunk(hash), true, `chunk ${hash} was reported present, then deleted`);
    assert.equal(result.deleted.chunks + result.keptRecent.chunks, hashes.length);
  });
});
