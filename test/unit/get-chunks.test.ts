/**
 * `ChunkStore.getChunks`: several chunks in one call, with chunks stored back to back in a pack read in
 * one range read, results in input order, and every chunk still checked against its name.
 */
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { ChunkStore } from '../../src/store/chunk-store.js';
import { hashChunk } from '../../src/store/chunking.js';
import { FilesystemBackend } from '../../src/store/fs-backend.js';
import { ferryError, flipChunkByte, tempDirFor } from './helpers.js';

async function storeWithReadCounter(root: string) {
  const backend = new FilesystemBackend(root);
  const ranges: { key: string; length: number }[] = [];
  const getRange = backend.getRange.bind(backend);
  backend.getRange = (key, offset, length) => {
    ranges.push({ key, length });
    return getRange(key, offset, length);
  };
  return { store: new ChunkStore(backend), ranges };
}

describe('ChunkStore.getChunks', () => {
  test('chunks stored together come back in one range read per pack, in the order asked', async (t) => {
    const { store, ranges } = await storeWithReadCounter(path.join(await tempDirFor(t), 'store'));
    const first = Array.from({ length: 40 }, () => randomBytes(4096));
    const second = Array.from({ length: 10 }, () => randomBytes(4096));
    const chunk = (data: Buffer) => ({ hashHex: hashChunk(data).toString('hex'), data });
    await store.putChunks(first.map(chunk)); // one pack
    await store.putChunks(second.map(chunk)); // another pack
    const asked = [...second.slice(5), ...first, ...second.slice(0, 5)];
    ranges.length = 0;
    const got = await store.getChunks(asked.map((data) => hashChunk(data).toString('hex')));
    assert.deepEqual(got, asked, 'every chunk, in input order');
    assert.equal(ranges.length, 2, `one read per pack: ${JSON.stringify(ranges)}`);
  });

  test('a damaged chunk inside a coalesced read is corrupt-data; a missing one is not-found', async (t) => {
    const { store } = await storeWithReadCounter(path.join(await tempDirFor(t), 'store'));
    const chunks = Array.from({ length: 8 }, () => randomBytes(4096));
    await store.putChunks(chunks.map((data) => ({ hashHex: hashChunk(data).toString('hex'), data })));
    const hashes = chunks.map((data) => hashChunk(data).toString('hex'));
    await flipChunkByte(store, hashes[3]!);
    await assert.rejects(store.getChunks(hashes), ferryError('corrupt-data', [hashes[3]!]));
    assert.deepEqual(await store.getChunks([hashes[0]!, hashes[7]!]), [chunks[0], chunks[7]], 'the sound chunks still read');
    await assert.rejects(store.getChunks([hashes[0]!, hashChunk(randomBytes(10)).toString('hex')]), ferryError('not-found'));
  });

  test('the same chunk asked twice, and an empty request', async (t) => {
    const { store } = await storeWithReadCounter(path.join(await tempDirFor(t), 'store'));
    const data = randomBytes(4096);
    const hash = hashChunk(data).toString('hex');
    await store.putChunk(hash, data);
    assert.deepEqual(await store.getChunks([hash, hash]), [data, data]);
    assert.deepEqual(await store.getChunks([]), []);
  });
});
