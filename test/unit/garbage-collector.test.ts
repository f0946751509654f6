/**
 * Garbage collection over a real FilesystemBackend: what it deletes, what it keeps (referenced, recent,
 * touched by a request), and that it deletes nothing when it cannot read a referenced index; then the
 * packs: a pack of only dead chunks is deleted, one whose dead share reaches REPACK_DEAD_FRACTION is
 * rewritten with its live chunks (byte-identical), one with a smaller dead share is left and counted as
 * unreclaimed, and duplicate copies of a chunk (in two packs, or loose and packed) are removed while the
 * chunk stays readable.
 * Object ages are set on the files directly (utimes on the pack file, then a catalog reload, since the
 * store keeps touch times in memory), as waiting an hour is not an option.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { encodeChunkObject, PLAIN_CODEC } from '../../src/store/chunk-object.js';
import { ChunkStore, chunkKey, type ChunkToStore } from '../../src/store/chunk-store.js';
import { hashChunk } from '../../src/store/chunking.js';
import { DiskIndex } from '../../src/store/disk-index.js';
import { FilesystemBackend } from '../../src/store/fs-backend.js';
import { collectGarbage, REPACK_DEAD_FRACTION } from '../../src/store/garbage-collector.js';
import { buildPack, newPackKey } from '../../src/store/pack.js';
import { StoreGuard } from '../../src/store/store-guard.js';
import { ageChunk, ferryError, locateStored, objectFile, objectKeys, publishIndex, setModified, storedChunkObject, storeRandomChunk, tempDirFor } from './helpers.js';

const CHUNK = 4096;
const HOUR = 3600_000;

async function freshStore(t: TestContext) {
  const root = path.join(await tempDirFor(t), 'store');
  const store = new ChunkStore(new FilesystemBackend(root));
  const guard = new StoreGuard(store);
  /** Stores a random chunk (in a pack of its own) and returns its hash. */
  const chunk = () => storeRandomChunk(store, CHUNK);
  /** Stores `count` random chunks with one putChunks call (one pack); returns them and the pack's key. */
  const batch = async (count: number) => {
    const chunks: ChunkToStore[] = Array.from({ length: count }, () => {
      const data = randomBytes(CHUNK);
      return { hashHex: hashChunk(data).toString('hex'), data };
    });
    await store.putChunks(chunks);
    const { key } = await locateStored(store, chunks[0]!.hashHex);
    return { chunks, hashes: chunks.map((each) => each.hashHex), pack: key };
  };
  /** Publishes an index of the given chunks (null = zero chunk) and returns its name. */
  const index = (hashes: (string | null)[]) => publishIndex(store, hashes, CHUNK);
  /** Every object in the store. */
  const objects = () => objectKeys(store);
  /** Ages every object in the store to `ms`. */
  const ageAll = async (ms: number) => setModified(store, await objects(), ms);
  /** Size of the object at `key`. */
  const size = async (key: string) => (await store.backend.stat(key))!.size;
  return { root, store, guard, chunk, batch, index, objects, ageAll, size };
}

describe('collectGarbage', () => {
  test('deletes unreferenced objects older than the cutoff and keeps referenced and recent ones', async (t) => {
    const { store, guard, chunk, index, ageAll, size } = await freshStore(t);
    const now = Date.now();
    const [kept1, kept2, shared, garbage1, garbage2, recent] = [await chunk(), await chunk(), await chunk(), await chunk(), await chunk(), await chunk()];
    const referenced = await index([kept1, null, shared]);
    const referencedToo = await index([shared, kept2]);
    const orphanIndex = await index([garbage1, shared]); // an index no point names (an aborted cycle)
    await ageAll(now - 2 * HOUR);
    await ageChunk(store, recent, now - 60_000); // unreferenced but after the cutoff

    // Each chunk has a pack of its own: the garbage chunks' packs go whole.
    const garbagePacks = [(await locateStored(store, garbage1)).key, (await locateStored(store, garbage2)).key];
    const garbageBytes = (await size(garbagePacks[0]!)) + (await size(garbagePacks[1]!)) + (await size(store.indexObjectKey(orphanIndex)));
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
      packs: { deleted: 2, repacked: 0 },
      unreclaimed: { chunks: 0, bytes: 0 },
      interrupted: false,
    });
    for (const key of garbagePacks) assert.equal(await store.backend.has(key), false, `${key} is deleted from the backend`);
    // Every kept point still reads back.
    for (const name of [referenced, referencedToo]) {
      const kept = await store.getIndex(name);
      for (const hash of kept.distinctHashes()) await store.getChunk(hash);
    }
  });

  test('an object modified exactly at the cutoff is kept', async (t) => {
    const { store, guard, chunk } = await freshStore(t);
    const hash = await chunk();
    const cutoff = Math.floor(Date.now() / 1000) * 1000 - HOUR; // whole seconds: every file system can hold it
    await ageChunk(store, hash, cutoff);
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
    const { store, guard, chunk, index, objects, ageAll } = await freshStore(t);
    await chunk(); // garbage the sweep would take
    const damaged = await index([await chunk()]);
    const file = objectFile(store, store.indexObjectKey(damaged));
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

  test('a batch stored through the guard is one new pack; its chunks already present are refreshed, not written again', async (t) => {
    const { store, guard, batch, ageAll } = await freshStore(t);
    const present = await batch(2);
    await ageAll(Date.now() - 2 * HOUR);
    const fresh = Array.from({ length: 3 }, () => {
      const data = randomBytes(CHUNK);
      return { hashHex: hashChunk(data).toString('hex'), data };
    });
    const packsBefore = await objectKeys(store, 'packs/');
    assert.deepEqual(await guard.putChunkBatch([...present.chunks, ...fresh]), { received: 5, stored: 3 });
    const newPacks = (await objectKeys(store, 'packs/')).filter((key) => !packsBefore.includes(key));
    assert.equal(newPacks.length, 1, 'the new chunks are written as one pack');
    assert.deepEqual([...(await store.catalog()).container(newPacks[0]!)!.names].sort(), fresh.map((each) => each.hashHex).sort());
    const result = await collectGarbage(store, guard, { referencedIndexes: [], cutoffMs: Date.now() - 30_000 });
    assert.deepEqual(result.deleted, { indexes: 0, chunks: 0, bytes: 0 }, 'the chunks found present were touched: nothing is old');
    assert.deepEqual(await store.missingChunks([...present.hashes, ...fresh.map((each) => each.hashHex)]), []);
  });

  // The race the guard's lock closes: an answer "present" given while the sweep runs must still hold
  // after the sweep. Many old unreferenced chunks, a sweep deleting (or repacking) their containers, and
  // requests touching them. Run over packs of three chunks, and over loose chunk files (the old layout).
  for (const layout of ['packs of three chunks', 'loose chunk files'] as const) {
    test(`every chunk reported present while a sweep runs is still there after it (${layout})`, async (t) => {
      const { store, guard } = await freshStore(t);
      // Written straight to files (no fsync per object, which would take the test most of a minute).
      const writeOld = async (key: string, bytes: Buffer) => {
        const file = objectFile(store, key);
        await fs.mkdir(path.dirname(file), { recursive: true });
        await fs.writeFile(file, bytes);
        const old = new Date(Date.now() - 2 * HOUR);
        await fs.utimes(file, old, old);
      };
      const hashes: string[] = [];
      let pending: { name: string; object: Buffer }[] = [];
      for (let n = 0; n < 1500; n++) {
        const data = randomBytes(256);
        const hash = hashChunk(data).toString('hex');
        hashes.push(hash);
        const object = encodeChunkObject(data, chunkKey(hash), PLAIN_CODEC);
        if (layout === 'loose chunk files') {
          await writeOld(chunkKey(hash), object);
          continue;
        }
        pending.push({ name: hash, object });
        if (pending.length === 3) {
          const key = newPackKey();
          await writeOld(key, buildPack(key, pending, PLAIN_CODEC).bytes);
          pending = [];
        }
      }
      await store.reloadCatalog();
      assert.equal((await store.catalog()).size, hashes.length);

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
      assert.equal(result.deleted.chunks + result.keptRecent.chunks + result.unreclaimed.chunks, hashes.length);
      // What was kept is readable, from this store and from one reading the store afresh.
      const reopened = new ChunkStore(new FilesystemBackend(store.backend.location));
      for (const hash of reportedPresent) assert.equal((await reopened.getChunk(hash)).length, 256);
    });
  }
});

describe('collectGarbage: packs', () => {
  const old = () => Date.now() - 2 * HOUR;
  const cutoff = () => Date.now() - HOUR;

  test('a pack whose every entry is dead is deleted whole', async (t) => {
    const { store, guard, batch, index, ageAll, size } = await freshStore(t);
    const dead = await batch(4);
    const live = await batch(2);
    const referenced = await index(live.hashes);
    await ageAll(old());
    const deadBytes = await size(dead.pack);
    const result = await collectGarbage(store, guard, { referencedIndexes: [referenced], cutoffMs: cutoff() });
    assert.deepEqual(result.packs, { deleted: 1, repacked: 0 });
    assert.deepEqual(result.deleted, { indexes: 0, chunks: 4, bytes: deadBytes });
    assert.deepEqual(result.scanned, { indexes: 1, chunks: 6 });
    assert.deepEqual(await objectKeys(store, 'packs/'), [live.pack]);
    assert.deepEqual(await store.missingChunks([...dead.hashes, ...live.hashes]), dead.hashes);
  });

  test(`a pack whose dead entries hold ${REPACK_DEAD_FRACTION * 100}% or more of it is rewritten with its live chunks, byte-identical`, async (t) => {
    const { store, guard, batch, index, ageAll, size } = await freshStore(t);
    const { chunks, hashes, pack } = await batch(10);
    const referenced = await index(hashes.slice(0, 6));
    await ageAll(old());
    assert.deepEqual(await store.touchChunks([hashes[6]!]), [true]); // unreferenced but recent: live too
    const live = hashes.slice(0, 7);
    const dead = hashes.slice(7);
    const objectsBefore = await Promise.all(live.map((hash) => storedChunkObject(store, hash)));
    const oldSize = await size(pack);
    let deadBytes = 0;
    for (const hash of dead) deadBytes += (await locateStored(store, hash)).length;
    assert.ok(deadBytes / oldSize >= REPACK_DEAD_FRACTION, 'precondition: the dead share reaches the threshold');

    const result = await collectGarbage(store, guard, { referencedIndexes: [referenced], cutoffMs: cutoff() });
    assert.deepEqual(result.packs, { deleted: 0, repacked: 1 });
    assert.equal(result.deleted.chunks, 3);
    assert.equal(result.keptRecent.chunks, 1);
    assert.deepEqual(result.unreclaimed, { chunks: 0, bytes: 0 });
    assert.equal(await store.backend.has(pack), false, 'the old pack is deleted');
    const packs = await objectKeys(store, 'packs/');
    assert.equal(packs.length, 1);
    const newPack = packs[0]!;
    assert.notEqual(newPack, pack);
    assert.equal(result.deleted.bytes, oldSize - (await size(newPack)));
    assert.deepEqual([...(await store.catalog()).container(newPack)!.names].sort(), [...live].sort());
    for (const [position, hash] of live.entries()) {
      assert.equal((await locateStored(store, hash)).key, newPack);
      assert.deepEqual(await storedChunkObject(store, hash), objectsBefore[position], 'moved without being re-encoded');
      assert.deepEqual(await store.getChunk(hash), chunks[position]!.data);
    }
    assert.deepEqual(await store.missingChunks(hashes), dead);

    // The new pack's directory says the same to a store reading it afresh.
    const reopened = new ChunkStore(new FilesystemBackend(store.backend.location));
    assert.deepEqual(await reopened.missingChunks(hashes), dead);
    for (const [position, hash] of live.entries()) assert.deepEqual(await reopened.getChunk(hash), chunks[position]!.data);

    // A moved chunk keeps its own touch time: the recent one is still recent, nothing more is deleted.
    const again = await collectGarbage(store, guard, { referencedIndexes: [referenced], cutoffMs: cutoff() });
    assert.deepEqual(again.deleted, { indexes: 0, chunks: 0, bytes: 0 });
    assert.equal(again.keptRecent.chunks, 1);
  });

  test('a pack with a small dead share is left as it is, its dead chunk counted as unreclaimed until more of it dies', async (t) => {
    const { store, guard, batch, index, ageAll } = await freshStore(t);
    const { hashes, pack } = await batch(10);
    const mostly = await index(hashes.slice(0, 9));
    await ageAll(old());
    const before = await fs.readFile(objectFile(store, pack));
    const deadLength = (await locateStored(store, hashes[9]!)).length;
    assert.ok(deadLength / before.length < REPACK_DEAD_FRACTION, 'precondition: the dead share is below the threshold');

    const result = await collectGarbage(store, guard, { referencedIndexes: [mostly], cutoffMs: cutoff() });
    assert.deepEqual(result.packs, { deleted: 0, repacked: 0 });
    assert.deepEqual(result.deleted, { indexes: 0, chunks: 0, bytes: 0 });
    assert.deepEqual(result.unreclaimed, { chunks: 1, bytes: deadLength });
    assert.deepEqual(await fs.readFile(objectFile(store, pack)), before, 'the pack is not rewritten');

    // Later the points naming most of the pack expire: now it is worth rewriting.
    const fewer = await index(hashes.slice(0, 7));
    const later = await collectGarbage(store, guard, { referencedIndexes: [fewer], cutoffMs: cutoff() });
    assert.deepEqual(later.packs, { deleted: 0, repacked: 1 });
    assert.equal(later.deleted.chunks, 3);
    assert.equal(later.deleted.indexes, 1, 'the expired index goes too');
    assert.deepEqual(later.unreclaimed, { chunks: 0, bytes: 0 });
    assert.deepEqual(await store.missingChunks(hashes), hashes.slice(7));
  });

  test('chunks touched after aging, through the store or the guard, are kept; their untouched pack-mates go', async (t) => {
    const { store, guard, batch, ageAll } = await freshStore(t);
    const { chunks, hashes } = await batch(4);
    await ageAll(old());
    assert.deepEqual(await store.touchChunks([hashes[0]!]), [true]);
    const unknown = 'f'.repeat(64);
    assert.deepEqual(await guard.missingChunks([hashes[1]!, unknown]), [unknown], 'the agent is told this one is present');
    const result = await collectGarbage(store, guard, { referencedIndexes: [], cutoffMs: Date.now() - 30_000 });
    assert.equal(result.keptRecent.chunks, 2);
    assert.equal(result.deleted.chunks, 2);
    assert.deepEqual(result.packs, { deleted: 0, repacked: 1 });
    assert.deepEqual(await store.missingChunks(hashes), hashes.slice(2));
    const reopened = new ChunkStore(new FilesystemBackend(store.backend.location));
    for (const position of [0, 1]) assert.deepEqual(await reopened.getChunk(hashes[position]!), chunks[position]!.data);
  });

  test('a second copy of a chunk in another pack is removed, however recent, and the chunk stays readable', async (t) => {
    const { store, guard, batch, index, size } = await freshStore(t);
    const { chunks, hashes, pack } = await batch(2);
    const x = chunks[0]!;
    // A gate answering "not present" makes the store write the chunk again: a duplicate copy.
    assert.deepEqual(await store.putChunks([x], async (asked) => asked.map(() => false)), { received: 1, stored: 1 });
    const duplicatePack = (await objectKeys(store, 'packs/')).find((key) => key !== pack)!;
    assert.ok(duplicatePack);
    assert.equal((await locateStored(store, x.hashHex)).key, pack, 'the catalog keeps reading the first copy');
    const referenced = await index(hashes);
    const duplicateBytes = await size(duplicatePack);

    const result = await collectGarbage(store, guard, { referencedIndexes: [referenced], cutoffMs: cutoff() });
    assert.deepEqual(result.packs, { deleted: 1, repacked: 0 });
    assert.deepEqual(result.deleted, { indexes: 0, chunks: 0, bytes: duplicateBytes }, 'a duplicate copy is not a chunk deleted');
    assert.deepEqual(await objectKeys(store, 'packs/'), [pack]);
    assert.deepEqual(await store.getChunk(x.hashHex), x.data);
    assert.deepEqual(await new ChunkStore(new FilesystemBackend(store.backend.location)).getChunk(x.hashHex), x.data);
  });

  test('the same chunk written by two stores over one directory: one copy goes, every chunk reads back', async (t) => {
    const { root } = await freshStore(t);
    const first = new ChunkStore(new FilesystemBackend(root));
    const second = new ChunkStore(new FilesystemBackend(root));
    await first.catalog(); // both have read the store while it was empty
    await second.catalog();
    const data = [randomBytes(CHUNK), randomBytes(CHUNK)];
    const [x, y] = data.map((bytes) => ({ hashHex: hashChunk(bytes).toString('hex'), data: bytes }));
    await first.putChunks([x!]);
    await second.putChunks([x!, y!]);

    const store = new ChunkStore(new FilesystemBackend(root));
    const guard = new StoreGuard(store);
    const catalog = await store.catalog();
    assert.equal(catalog.containers().length, 2);
    assert.equal(catalog.size, 2);
    const referenced = await publishIndex(store, [x!.hashHex, y!.hashHex], CHUNK);
    const result = await collectGarbage(store, guard, { referencedIndexes: [referenced], cutoffMs: cutoff() });
    // Whichever copy of x the catalog reads, the other goes: its pack deleted, or rewritten with y alone.
    assert.equal(result.packs.deleted + result.packs.repacked, 1, JSON.stringify(result.packs));
    assert.equal(result.deleted.chunks, 0);
    const entries = (await store.catalog()).containers().flatMap((container) => [...container.names]);
    assert.deepEqual(entries.sort(), [x!.hashHex, y!.hashHex].sort(), 'one copy of each chunk is left');
    const reopened = new ChunkStore(new FilesystemBackend(root));
    for (const chunk of [x!, y!]) assert.deepEqual(await reopened.getChunk(chunk.hashHex), chunk.data);
  });

  test('loose chunk files of the layout before packs are swept like one-chunk packs; one with a packed copy goes', async (t) => {
    const { store, guard, batch, index } = await freshStore(t);
    const loose = (data: Buffer) => {
      const hash = hashChunk(data).toString('hex');
      return { hash, data, write: () => store.backend.put(chunkKey(hash), encodeChunkObject(data, chunkKey(hash), PLAIN_CODEC)) };
    };
    const [garbage, referencedLoose, recent] = [loose(randomBytes(CHUNK)), loose(randomBytes(CHUNK)), loose(randomBytes(CHUNK))];
    for (const each of [garbage, referencedLoose, recent]) await each.write();
    const packed = await batch(1);
    // The same chunk also as a loose file: the store reads the packed copy.
    const twin = loose(Buffer.from(packed.chunks[0]!.data));
    await twin.write();
    await store.reloadCatalog();
    assert.equal((await locateStored(store, twin.hash)).key, packed.pack);

    const referenced = await index([referencedLoose.hash, packed.hashes[0]!]);
    await setModified(store, [chunkKey(garbage.hash), chunkKey(referencedLoose.hash), chunkKey(twin.hash)], old());
    const result = await collectGarbage(store, guard, { referencedIndexes: [referenced], cutoffMs: cutoff() });
    assert.equal(result.deleted.chunks, 1);
    assert.equal(result.keptRecent.chunks, 1);
    assert.deepEqual(result.packs, { deleted: 0, repacked: 0 }, 'loose files are not packs');
    assert.deepEqual(await objectKeys(store, 'chunks/'), [chunkKey(referencedLoose.hash), chunkKey(recent.hash)].sort());
    assert.deepEqual(await store.missingChunks([garbage.hash, referencedLoose.hash, recent.hash, twin.hash]), [garbage.hash]);
    assert.deepEqual(await store.getChunk(twin.hash), twin.data);
    assert.deepEqual(await store.getChunk(referencedLoose.hash), referencedLoose.data);
  });

  // Regressions: bugs found in review of the pack store.

  test(
    'a chunk counts as written when its newest copy was, whatever order the packs are catalogued in',
    async (t) => {
      for (const oldFirst of [true, false]) {
        const root = path.join(await tempDirFor(t), 'store');
        const first = new ChunkStore(new FilesystemBackend(root));
        const second = new ChunkStore(new FilesystemBackend(root));
        await first.catalog();
        await second.catalog();
        const data = randomBytes(CHUNK);
        const hash = hashChunk(data).toString('hex');
        await first.putChunk(hash, data);
        await second.putChunk(hash, data); // a second copy, written now
        const oldCopy = (await first.locateChunk(hash))!.key;
        const newCopy = (await second.locateChunk(hash))!.key;
        const when = new Date(old());
        await fs.utimes(path.join(root, ...oldCopy.split('/')), when, when);
        // A backend that answers the stat of one pack late, so the other is catalogued first.
        const backend = new FilesystemBackend(root);
        const stat = backend.stat.bind(backend);
        const late = oldFirst ? newCopy : oldCopy;
        backend.stat = async (key) => {
          if (key === late) await new Promise((resolve) => setTimeout(resolve, 50));
          return stat(key);
        };
        const store = new ChunkStore(backend);
        const result = await collectGarbage(store, new StoreGuard(store), { referencedIndexes: [], cutoffMs: cutoff() });
        assert.equal(await store.hasChunk(hash), true, `written within the hour, must be kept (old copy catalogued ${oldFirst ? 'first' : 'second'})`);
        assert.equal(result.keptRecent.chunks, 1);
      }
    },
  );

  test(
    'a duplicate copy is not removed when the pack of the copy being read has vanished: a referenced chunk is not lost',
    async (t) => {
      const { store, guard, index } = await freshStore(t);
      const data = randomBytes(CHUNK);
      const hash = hashChunk(data).toString('hex');
      await store.putChunk(hash, data);
      const referenced = await index([hash]);
      await store.putChunks([{ hashHex: hash, data }], async (asked) => asked.map(() => false)); // a second copy
      await store.backend.delete((await locateStored(store, hash)).key); // the copy being read is lost (disk fault, rm)
      await collectGarbage(store, guard, { referencedIndexes: [referenced], cutoffMs: cutoff() });
      assert.deepEqual(await store.getChunk(hash), data, 'the collection adopted the surviving copy: it reads at once');
      await store.reloadCatalog();
      assert.deepEqual(await store.getChunk(hash), data, 'the surviving copy of a referenced chunk must survive the collection');
    },
  );
});
