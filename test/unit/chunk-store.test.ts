/**
 * The chunk store over a real FilesystemBackend: chunks (checked on the way in and out, stored in pack
 * files, one pack per putChunks call), the catalog rebuilt from pack directories when a store is
 * reopened, damaged and vanished packs (their chunks count as missing, so they are sent again), loose
 * chunk files of the layout before packs, and disk indexes.
 */
import { createHash, randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import type { StoreBackend } from '../../src/store/backend.js';
import { BATCHES_IN_FLIGHT } from '../../src/store/chunk-codec-pool.js';
import { ChunkStore, chunkKey, indexKey, type ChunkToStore } from '../../src/store/chunk-store.js';
import { encodeChunkObject, PLAIN_CODEC } from '../../src/store/chunk-object.js';
import { hashChunk } from '../../src/store/chunking.js';
import { DiskIndex } from '../../src/store/disk-index.js';
import { FilesystemBackend } from '../../src/store/fs-backend.js';
import { isPackKey } from '../../src/store/pack.js';
import type { StoreSettings } from '../../src/store/store-config.js';
import { collect, ferryError, flipChunkByte, locateStored, objectFile, objectKeys, patchStoredChunk, storedChunkObject, tempDirFor } from './helpers.js';

/** A chunk store over a fresh directory, with the directory so tests can damage files on disk. */
async function freshStore(t: TestContext, settings?: StoreSettings): Promise<{ store: ChunkStore; root: string }> {
  const root = path.join(await tempDirFor(t), 'store');
  return { store: new ChunkStore(new FilesystemBackend(root), settings), root };
}

function chunk(length = 4096): { data: Buffer; hash: string } {
  const data = randomBytes(length);
  return { data, hash: hashChunk(data).toString('hex') };
}

/** `count` random chunks as putChunks takes them. */
function chunks(count: number, length = 4096): ChunkToStore[] {
  return Array.from({ length: count }, () => {
    const { data, hash } = chunk(length);
    return { hashHex: hash, data };
  });
}

/** Records the key of every `put` the store makes on its backend. */
function recordPuts(backend: StoreBackend): string[] {
  const puts: string[] = [];
  const put = backend.put.bind(backend);
  backend.put = async (key, data) => {
    puts.push(key);
    return put(key, data);
  };
  return puts;
}

describe('ChunkStore chunks', () => {
  test('putChunk stores the chunk in a pack of its own under packs/ and getChunk returns the bytes', async (t) => {
    const { store } = await freshStore(t);
    const { data, hash } = chunk();
    assert.equal(await store.putChunk(hash, data), 'stored');
    const objects = await objectKeys(store);
    assert.equal(objects.length, 1, `one object, got ${objects.join(', ')}`);
    const [pack] = objects;
    assert.ok(isPackKey(pack!), `${pack} is a pack key (packs/<xx>/<32 hex>)`);
    assert.match(pack!, /^packs\/([0-9a-f]{2})\/\1[0-9a-f]{30}$/);
    // The pack holds the chunk object exactly as a loose file of the old layout would (header, bytes).
    assert.deepEqual(await store.locateChunk(hash), { key: pack, offset: 8, length: data.length + 4 });
    assert.deepEqual(await storedChunkObject(store, hash), encodeChunkObject(data, chunkKey(hash), PLAIN_CODEC));
    assert.equal(store.chunkObjectName(hash), hash, 'a plain store names objects by their hash');
    assert.equal(chunkKey(hash), `chunks/${hash.slice(0, 2)}/${hash}`, 'the loose key of the old layout');
    assert.equal(await store.hasChunk(hash), true);
    assert.deepEqual(await store.getChunk(hash), data);
  });

  test('putChunk of bytes that do not hash to the name throws chunk-hash-mismatch and stores nothing', async (t) => {
    const { store } = await freshStore(t);
    const claimed = chunk();
    const sent = chunk();
    await assert.rejects(store.putChunk(claimed.hash, sent.data), (error: unknown) => {
      ferryError('chunk-hash-mismatch', [claimed.hash, sent.hash])(error);
      assert.deepEqual((error as { details?: unknown }).details, { expected: claimed.hash, actual: sent.hash });
      return true;
    });
    assert.equal(await store.backend.has(chunkKey(claimed.hash)), false);
    assert.equal(await store.backend.has(chunkKey(sent.hash)), false);
    assert.deepEqual(await collect(store.backend.list('')), []);
  });

  test('putChunk refuses a name that is not a SHA-256 hex string', async (t) => {
    const { store } = await freshStore(t);
    const { data, hash } = chunk();
    await assert.rejects(store.putChunk(hash.toUpperCase(), data), ferryError('invalid-request'));
    await assert.rejects(store.putChunk(hash.slice(1), data), ferryError('invalid-request'));
    await assert.rejects(store.putChunk('../../etc/passwd', data), ferryError('invalid-request'));
    assert.deepEqual(await collect(store.backend.list('')), []);
  });

  test('putChunk refuses an all-zero chunk even under its correct name', async (t) => {
    const { store } = await freshStore(t);
    const zeros = Buffer.alloc(65536);
    const hash = hashChunk(zeros).toString('hex');
    await assert.rejects(store.putChunk(hash, zeros), ferryError('invalid-request', ['zero']));
    assert.equal(await store.backend.has(chunkKey(hash)), false);
  });

  test('a second putChunk of the same chunk returns already-present and leaves it intact', async (t) => {
    const { store } = await freshStore(t);
    const { data, hash } = chunk();
    assert.equal(await store.putChunk(hash, data), 'stored');
    assert.equal(await store.putChunk(hash, data), 'already-present');
    assert.deepEqual(await store.getChunk(hash), data);
    assert.equal((await objectKeys(store, 'packs/')).length, 1, 'the second put writes no pack');
    assert.deepEqual(await objectKeys(store, 'chunks/'), []);
  });

  test('getChunk detects a stored object whose bytes were flipped on disk', async (t) => {
    const { store } = await freshStore(t);
    const { data, hash } = chunk();
    await store.putChunk(hash, data);
    await flipChunkByte(store, hash, -100, 0x04);
    await assert.rejects(store.getChunk(hash), ferryError('corrupt-data', [hash]));
  });

  test('getChunk detects a damaged object header', async (t) => {
    const { store } = await freshStore(t);
    const { data, hash } = chunk();
    await store.putChunk(hash, data);
    await patchStoredChunk(store, hash, (object) => object.write('XY', 0, 'latin1')); // no "FC" magic
    await assert.rejects(store.getChunk(hash), ferryError('corrupt-data', ['header']));
    const unknownCodec = encodeChunkObject(data);
    unknownCodec[3] = 9;
    await patchStoredChunk(store, hash, (object) => unknownCodec.copy(object));
    await assert.rejects(store.getChunk(hash), ferryError('corrupt-data', ['codec 9']));
  });

  test('getChunk of a chunk never stored throws not-found', async (t) => {
    const { store } = await freshStore(t);
    await assert.rejects(store.getChunk(chunk().hash), ferryError('not-found'));
  });

  test('missingChunks returns the absent hashes once each, in input order', async (t) => {
    const { store } = await freshStore(t);
    const [a, b, c, d] = [chunk(), chunk(), chunk(), chunk()];
    await store.putChunk(a!.hash, a!.data);
    await store.putChunk(c!.hash, c!.data);
    assert.deepEqual(await store.missingChunks([d!.hash, a!.hash, b!.hash, d!.hash, c!.hash, b!.hash]), [d!.hash, b!.hash]);
    assert.deepEqual(await store.missingChunks([a!.hash, c!.hash]), []);
    assert.deepEqual(await store.missingChunks([]), []);
  });

  test('missingChunks keeps order over more hashes than its concurrency limit', async (t) => {
    const { store } = await freshStore(t);
    const chunks = Array.from({ length: 100 }, () => chunk(64));
    for (const [position, stored] of chunks.entries()) if (position % 3 === 0) await store.putChunk(stored.hash, stored.data);
    const expected = chunks.filter((_, position) => position % 3 !== 0).map((missing) => missing.hash);
    assert.deepEqual(await store.missingChunks(chunks.map((each) => each.hash)), expected);
  });
});

describe('ChunkStore packs and the catalog', () => {
  const HOUR = 3600_000;
  const hashesOf = (list: readonly ChunkToStore[]) => list.map((each) => each.hashHex);

  test('putChunks writes a batch as one pack: one backend put, the chunks back to back, each read back', async (t) => {
    const { store } = await freshStore(t);
    const batch = chunks(20);
    const puts = recordPuts(store.backend);
    assert.deepEqual(await store.putChunks([...batch, batch[3]!]), { received: 21, stored: 20 }, 'a chunk twice in a batch is stored once');
    assert.equal(puts.length, 1, `one put for the whole batch, got ${puts.join(', ')}`);
    assert.ok(isPackKey(puts[0]!));
    assert.deepEqual(await objectKeys(store), puts, 'the pack is the only object');
    const located = await Promise.all(batch.map((each) => locateStored(store, each.hashHex)));
    for (const where of located) assert.equal(where.key, puts[0]);
    located.sort((a, b) => a.offset - b.offset);
    assert.equal(located[0]!.offset, 8, 'entries start after the "FRYPACK1" magic');
    for (let n = 1; n < located.length; n++) assert.equal(located[n]!.offset, located[n - 1]!.offset + located[n - 1]!.length, 'entries lie back to back');
    assert.deepEqual([...(await store.catalog()).container(puts[0]!)!.names].sort(), hashesOf(batch).sort());
    for (const each of batch) assert.deepEqual(await store.getChunk(each.hashHex), each.data);
  });

  test('chunks the store already holds are not written again; a batch of only those writes nothing', async (t) => {
    const { store } = await freshStore(t);
    const [a, b, c] = chunks(3);
    await store.putChunks([a!, b!]);
    const puts = recordPuts(store.backend);
    assert.deepEqual(await store.putChunks([a!, b!, c!, a!]), { received: 4, stored: 1 });
    assert.equal(puts.length, 1);
    assert.deepEqual([...((await store.catalog()).container(puts[0]!)?.names ?? [])], [c!.hashHex], 'the new pack holds only the new chunk');
    assert.equal(await store.putChunk(a!.hashHex, a!.data), 'already-present');
    assert.deepEqual(await store.putChunks([c!, b!]), { received: 2, stored: 0 });
    assert.equal(puts.length, 1, 'nothing new: no write at all');
    assert.equal((await objectKeys(store, 'packs/')).length, 2);
  });

  test('putChunks with one bad chunk in the batch stores none of it', async (t) => {
    const { store } = await freshStore(t);
    const batch = chunks(5);
    const wrong = { hashHex: batch[2]!.hashHex, data: randomBytes(4096) };
    await assert.rejects(store.putChunks([batch[0]!, batch[1]!, wrong, batch[3]!]), ferryError('chunk-hash-mismatch', [wrong.hashHex]));
    await assert.rejects(store.putChunks([batch[0]!, { hashHex: hashChunk(Buffer.alloc(4096)).toString('hex'), data: Buffer.alloc(4096) }]), ferryError('invalid-request', ['zero']));
    assert.deepEqual(await objectKeys(store), []);
    assert.deepEqual(await store.missingChunks(hashesOf(batch)), hashesOf(batch));
  });

  const layouts: [string, (directory: string) => Promise<Parameters<typeof ChunkStore.open>[1]>][] = [
    ['plain', async () => ({ compression: 'none' })],
    ['zstd', async () => ({})],
    [
      'encrypted',
      async (directory) => {
        const keyFile = path.join(directory, 'store.key');
        await fs.writeFile(keyFile, randomBytes(32));
        return { keyFile };
      },
    ],
  ];
  for (const [name, optionsFor] of layouts) {
    test(`a reopened ${name} store reads every chunk back: its catalog is rebuilt from the pack directories`, async (t) => {
      const directory = await tempDirFor(t);
      const root = path.join(directory, 'store');
      const options = await optionsFor(directory);
      const store = await ChunkStore.open(new FilesystemBackend(root), options);
      // Compressible and incompressible chunks, in one batch and in packs of their own.
      const text = (marker: string) => Buffer.from(`${marker} `.repeat(1000));
      const batch = [...chunks(3), ...['one', 'two'].map((marker) => ({ hashHex: hashChunk(text(marker)).toString('hex'), data: text(marker) }))];
      const singles = chunks(3, 1000);
      await store.putChunks(batch);
      for (const each of singles) await store.putChunk(each.hashHex, each.data);
      const all = [...batch, ...singles];
      const before = await Promise.all(all.map((each) => locateStored(store, each.hashHex)));

      const reopened = await ChunkStore.open(new FilesystemBackend(root), options);
      assert.deepEqual(reopened.damagedContainers, []);
      const catalog = await reopened.catalog();
      assert.equal(catalog.size, all.length);
      assert.equal(catalog.containers().length, 4);
      assert.deepEqual(await Promise.all(all.map((each) => reopened.locateChunk(each.hashHex))), before, 'every chunk found where it was written');
      const unknown = chunk().hash;
      assert.deepEqual(await reopened.missingChunks([...hashesOf(all), unknown]), [unknown]);
      for (const each of all) assert.deepEqual(await reopened.getChunk(each.hashHex), each.data);
    });
  }

  test('a pack damaged when the store is opened is listed; its chunks count as missing, others read, and they can be stored again', async (t) => {
    const { store, root } = await freshStore(t);
    const damaged = chunks(3);
    const sound = chunks(2);
    await store.putChunks(damaged);
    await store.putChunks(sound);
    const { key } = await locateStored(store, damaged[0]!.hashHex);
    const file = objectFile(store, key);
    await fs.truncate(file, (await fs.stat(file)).size - 5); // the trailer is cut off

    const reopened = new ChunkStore(new FilesystemBackend(root));
    assert.deepEqual(await reopened.missingChunks([...hashesOf(sound), ...hashesOf(damaged)]), hashesOf(damaged));
    assert.deepEqual(reopened.damagedContainers.map((container) => container.key), [key]);
    assert.match(reopened.damagedContainers[0]!.message, new RegExp(key));
    for (const each of sound) assert.deepEqual(await reopened.getChunk(each.hashHex), each.data);
    for (const each of damaged) await assert.rejects(reopened.getChunk(each.hashHex), ferryError('not-found', [each.hashHex]));
    assert.equal(await reopened.hasChunk(damaged[1]!.hashHex), false);

    // An agent told they are missing sends them again; the damaged pack is left for an operator to look at.
    assert.deepEqual(await reopened.putChunks(damaged), { received: 3, stored: 3 });
    for (const each of damaged) assert.deepEqual(await reopened.getChunk(each.hashHex), each.data);
    assert.equal(await reopened.backend.has(key), true);
  });

  test('a loose chunk file of the layout before packs is read, counted, checked and not stored again', async (t) => {
    const { root } = await freshStore(t);
    const backend = new FilesystemBackend(root);
    const legacy = chunk();
    const legacyObject = encodeChunkObject(legacy.data, chunkKey(legacy.hash), PLAIN_CODEC);
    await backend.put(chunkKey(legacy.hash), legacyObject);
    await backend.put('chunks/ab/not-a-chunk', Buffer.from('left alone'));
    const store = new ChunkStore(backend);

    assert.deepEqual(await store.locateChunk(legacy.hash), { key: chunkKey(legacy.hash), offset: 0, length: legacyObject.length });
    assert.equal((await store.catalog()).size, 1, 'the loose chunk is catalogued; a file not named by a hash is not');
    assert.equal((await store.catalog()).container(chunkKey(legacy.hash))?.kind, 'loose');
    assert.deepEqual(await store.getChunk(legacy.hash), legacy.data);
    assert.equal(await store.hasChunk(legacy.hash), true);
    assert.deepEqual(await store.touchChunks([legacy.hash]), [true]);
    assert.equal(await store.putChunk(legacy.hash, legacy.data), 'already-present');
    assert.deepEqual(await objectKeys(store, 'packs/'), [], 'a chunk held loose is not packed again');

    const packed = chunk();
    await store.putChunk(packed.hash, packed.data);
    assert.equal((await store.catalog()).size, 2);
    await flipChunkByte(store, legacy.hash, -1);
    await assert.rejects(store.getChunk(legacy.hash), ferryError('corrupt-data', [legacy.hash]));
    await backend.delete(chunkKey(legacy.hash));
    assert.deepEqual(await store.missingChunks([legacy.hash, packed.hash]), [legacy.hash]);
  });

  /** A store holding `kept` in a pack of its own and `lost` in a pack deleted behind the store's back. */
  async function storeWithLostPack(t: TestContext) {
    const { store } = await freshStore(t);
    const [kept] = chunks(1);
    const lost = chunks(2);
    await store.putChunks([kept!]);
    await store.putChunks(lost);
    const { key: lostPack } = await locateStored(store, lost[0]!.hashHex);
    await store.backend.delete(lostPack);
    return { store, kept: kept!, lost, lostPack };
  }

  test('a pack deleted behind the store\'s back: missingChunks reports its chunks missing and the catalog forgets them', async (t) => {
    const { store, kept, lost } = await storeWithLostPack(t);
    assert.equal(await store.hasChunk(lost[0]!.hashHex), false);
    assert.deepEqual(await store.missingChunks([kept.hashHex, ...hashesOf(lost)]), hashesOf(lost));
    for (const each of lost) assert.equal(await store.locateChunk(each.hashHex), null);
    assert.equal(await store.hasChunk(kept.hashHex), true);
  });

  test('a pack deleted behind the store\'s back: touchChunks answers its chunks missing, and putChunks stores them again', async (t) => {
    const { store, kept, lost } = await storeWithLostPack(t);
    assert.deepEqual(await store.touchChunks([...hashesOf(lost), kept.hashHex]), [false, false, true]);
    assert.deepEqual(await store.putChunks([...lost, kept]), { received: 3, stored: 2 }, 'the lost chunks are written again, the kept one is not');
    for (const each of [...lost, kept]) assert.deepEqual(await store.getChunk(each.hashHex), each.data);
  });

  test('a pack deleted behind the store\'s back: getChunk throws not-found naming the pack, and its chunks count as missing after', async (t) => {
    const { store, kept, lost, lostPack } = await storeWithLostPack(t);
    await assert.rejects(store.getChunk(lost[1]!.hashHex), ferryError('not-found', [lost[1]!.hashHex, lostPack]));
    assert.equal(await store.locateChunk(lost[0]!.hashHex), null, 'the whole pack is forgotten, not only the chunk read');
    await assert.rejects(store.getChunk(lost[0]!.hashHex), ferryError('not-found', [lost[0]!.hashHex]));
    assert.deepEqual(await store.getChunk(kept.hashHex), kept.data);
  });

  test('getChunk follows a chunk that garbage collection moved to a new pack while it was being read', async (t) => {
    const { store } = await freshStore(t);
    const [x, y] = chunks(2);
    await store.putChunks([x!, y!]);
    const { key: oldPack } = await locateStored(store, x!.hashHex);
    const backend = store.backend;
    const getRange = backend.getRange.bind(backend);
    let moved = false;
    backend.getRange = async (key, offset, length) => {
      if (key === oldPack && !moved) {
        // The collector repacks between the catalog lookup and the read: the old pack is gone.
        moved = true;
        await store.repack((await store.catalog()).container(oldPack)!, [x!.hashHex, y!.hashHex]);
      }
      return getRange(key, offset, length);
    };
    assert.deepEqual(await store.getChunk(x!.hashHex), x!.data);
    assert.equal(moved, true, 'the read did race the repack');
    assert.equal(await backend.has(oldPack), false);
    assert.notEqual((await locateStored(store, x!.hashHex)).key, oldPack);
    assert.deepEqual(await store.getChunk(y!.hashHex), y!.data);
  });

  test('touchChunks refreshes the pack file\'s time, so a touch outlives a reopen', async (t) => {
    const { store, root } = await freshStore(t);
    const [x] = chunks(1);
    await store.putChunks([x!]);
    const { key } = await locateStored(store, x!.hashHex);
    const old = Math.floor(Date.now() / 1000) * 1000 - 2 * HOUR;
    const when = new Date(old);
    await fs.utimes(objectFile(store, key), when, when);
    await store.reloadCatalog();
    assert.equal((await store.catalog()).get(x!.hashHex)?.touchedAt, old, 'after a reload a chunk is as old as its pack file');

    assert.deepEqual(await store.touchChunks([x!.hashHex, chunk().hash]), [true, false]);
    const recent = Date.now() - 60_000;
    assert.ok((await store.catalog()).get(x!.hashHex)!.touchedAt > recent);
    assert.ok((await store.backend.stat(key))!.modifiedAt > recent, 'the pack file itself was touched');
    const reopened = new ChunkStore(new FilesystemBackend(root));
    assert.ok((await reopened.catalog()).get(x!.hashHex)!.touchedAt > recent);
  });
});

describe('ChunkStore indexes', () => {
  /** An index of three chunks: a, zero, b. */
  function indexOf(a: string, b: string): DiskIndex {
    const index = DiskIndex.empty(3 * 4096, 4096);
    index.setHash(0, Buffer.from(a, 'hex'));
    index.setHash(2, Buffer.from(b, 'hex'));
    return index;
  }

  test('putIndex refuses an index naming a chunk that is not stored, and accepts it once it is', async (t) => {
    const { store } = await freshStore(t);
    const a = chunk();
    const b = chunk();
    await store.putChunk(a.hash, a.data);
    const index = indexOf(a.hash, b.hash);
    await assert.rejects(store.putIndex(index), (error: unknown) => {
      ferryError('chunk-missing', [b.hash])(error);
      assert.deepEqual((error as { details?: unknown }).details, { missing: [b.hash] });
      return true;
    });
    assert.deepEqual(await collect(store.backend.list('indexes/')), [], 'a refused index must not be stored');

    await store.putChunk(b.hash, b.data);
    const indexHash = await store.putIndex(index);
    assert.equal(indexHash, createHash('sha256').update(index.encode()).digest('hex'));
    assert.equal(await store.hasIndex(indexHash), true);
    assert.deepEqual(await collect(store.backend.list('indexes/')), [indexKey(indexHash)]);
  });

  test('an index of only zero chunks needs no chunks', async (t) => {
    const { store } = await freshStore(t);
    const indexHash = await store.putIndex(DiskIndex.empty(10 * 4096, 4096));
    assert.equal((await store.getIndex(indexHash)).distinctHashes().size, 0);
  });

  test('getIndex returns the index that was put; putIndex again gives the same name', async (t) => {
    const { store } = await freshStore(t);
    const a = chunk();
    const b = chunk(100);
    await store.putChunk(a.hash, a.data);
    await store.putChunk(b.hash, b.data);
    const index = indexOf(a.hash, b.hash);
    const indexHash = await store.putIndex(index);
    assert.equal(await store.putIndex(index), indexHash);
    const read = await store.getIndex(indexHash);
    assert.equal(read.diskSize, index.diskSize);
    assert.equal(read.chunkSize, index.chunkSize);
    assert.deepEqual(read.hashes, index.hashes);
  });

  test('getIndex detects a stored index that does not match its name', async (t) => {
    const { store, root } = await freshStore(t);
    const indexHash = await store.putIndex(DiskIndex.empty(4096, 4096));
    const file = path.join(root, ...indexKey(indexHash).split('/'));
    const stored = await fs.readFile(file);
    stored[10]! ^= 0x01;
    await fs.writeFile(file, stored);
    await assert.rejects(store.getIndex(indexHash), ferryError('corrupt-data', [indexHash]));
  });

  test('hasIndex is false for unknown or malformed names, getIndex of an unknown one is not-found', async (t) => {
    const { store } = await freshStore(t);
    const unknown = chunk().hash;
    assert.equal(await store.hasIndex(unknown), false);
    assert.equal(await store.hasIndex('../chunks'), false);
    assert.equal(await store.hasIndex(''), false);
    await assert.rejects(store.getIndex(unknown), ferryError('not-found'));
  });
});

describe('ChunkStore batches at once', () => {
  test('at most BATCHES_IN_FLIGHT upload batches are stored at once; the rest wait and are all stored', async (t) => {
    const backend = new FilesystemBackend(path.join(await tempDirFor(t), 'store'));
    let writing = 0;
    let most = 0;
    const put = backend.put.bind(backend);
    backend.put = async (key, parts) => {
      writing++;
      most = Math.max(most, writing);
      await new Promise((resolve) => setTimeout(resolve, 20)); // a slow fsync: batches pile up behind it
      try {
        return await put(key, parts);
      } finally {
        writing--;
      }
    };
    const store = new ChunkStore(backend);
    const batches = Array.from({ length: 8 }, () => Array.from({ length: 4 }, () => {
      const data = randomBytes(4096);
      return { hashHex: hashChunk(data).toString('hex'), data };
    }));
    const results = await Promise.all(batches.map((batch) => store.putChunks(batch)));
    assert.deepEqual(results.map((result) => result.stored), batches.map(() => 4));
    assert.equal(most, BATCHES_IN_FLIGHT, `${batches.length} batches at once, at most ${BATCHES_IN_FLIGHT} writing`);
    for (const batch of batches) for (const chunk of batch) assert.ok((await store.getChunk(chunk.hashHex)).equals(chunk.data));
  });
});
