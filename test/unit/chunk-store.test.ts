import { createHash, randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { ChunkStore, chunkKey, indexKey } from '../../src/store/chunk-store.js';
import { encodeChunkObject } from '../../src/store/chunk-object.js';
import { hashChunk } from '../../src/store/chunking.js';
import { DiskIndex } from '../../src/store/disk-index.js';
import { FilesystemBackend } from '../../src/store/fs-backend.js';
import { collect, ferryError, tempDirFor } from './helpers.js';

/** A chunk store over a fresh directory, with the directory so tests can damage files on disk. */
async function freshStore(t: TestContext): Promise<{ store: ChunkStore; root: string }> {
  const root = path.join(await tempDirFor(t), 'store');
  return { store: new ChunkStore(new FilesystemBackend(root)), root };
}

function chunk(length = 4096): { data: Buffer; hash: string } {
  const data = randomBytes(length);
  return { data, hash: hashChunk(data).toString('hex') };
}

describe('ChunkStore chunks', () => {
  test('putChunk stores under chunks/<2 hex>/<hex> and getChunk returns the bytes', async (t) => {
    const { store } = await freshStore(t);
    const { data, hash } = chunk();
    assert.equal(await store.putChunk(hash, data), 'stored');
    assert.equal(chunkKey(hash), `chunks/${hash.slice(0, 2)}/${hash}`);
    assert.equal(await store.backend.has(chunkKey(hash)), true);
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
    assert.deepEqual(await collect(store.backend.list('chunks/')), [chunkKey(hash)]);
  });

  test('getChunk detects a stored object whose bytes were flipped on disk', async (t) => {
    const { store, root } = await freshStore(t);
    const { data, hash } = chunk();
    await store.putChunk(hash, data);
    const file = path.join(root, ...chunkKey(hash).split('/'));
    const stored = await fs.readFile(file);
    stored[stored.length - 100]! ^= 0x04;
    await fs.writeFile(file, stored);
    await assert.rejects(store.getChunk(hash), ferryError('corrupt-data', [hash]));
  });

  test('getChunk detects a damaged object header', async (t) => {
    const { store, root } = await freshStore(t);
    const { data, hash } = chunk();
    await store.putChunk(hash, data);
    const file = path.join(root, ...chunkKey(hash).split('/'));
    await fs.writeFile(file, data); // the bare bytes, without the "FC" header
    await assert.rejects(store.getChunk(hash), ferryError('corrupt-data', ['header']));
    const unknownCodec = encodeChunkObject(data);
    unknownCodec[3] = 9;
    await fs.writeFile(file, unknownCodec);
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
