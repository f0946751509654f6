/**
 * The store resolving chunks uploaded as deltas (src/store/chunk-delta.ts, ChunkStore.putChunks,
 * StoreGuard.putChunkBatch), over a real FilesystemBackend: a delta over a stored base is rebuilt,
 * checked and stored as a whole chunk (compressed by the server, encrypted if the store is); a delta
 * whose base the store cannot provide is refused with delta-base-missing, and one that rebuilds to
 * other bytes with chunk-hash-mismatch; either way the batch stores nothing.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { decodeChunkBatch, encodeChunkBatch, encodeDeltaPayload, FrameEncoding } from '../../src/protocol/chunk-batch.js';
import { ChunkCodec, codecOf, compressChunk } from '../../src/store/chunk-object.js';
import type { ChunkDelta } from '../../src/store/chunk-delta.js';
import { ChunkStore, type ChunkUpload, type DeltaChunkToStore } from '../../src/store/chunk-store.js';
import { hashChunk } from '../../src/store/chunking.js';
import { FilesystemBackend } from '../../src/store/fs-backend.js';
import { StoreGuard } from '../../src/store/store-guard.js';
import { ferryError, flipChunkByte, objectKeys, storedChunkObject, tempDirFor } from './helpers.js';

const BLOCK = 4096;

async function openStore(t: TestContext, encrypted = false): Promise<ChunkStore> {
  const directory = await tempDirFor(t);
  let options: Parameters<typeof ChunkStore.open>[1] = {};
  if (encrypted) {
    const keyFile = path.join(directory, 'store.key');
    await fs.writeFile(keyFile, randomBytes(32));
    options = { keyFile };
  }
  return ChunkStore.open(new FilesystemBackend(path.join(directory, 'store')), options);
}

/** A chunk stored as a base: compressible text, so the stored objects are zstd. */
async function storeBase(store: ChunkStore, marker: string, length = 65536): Promise<{ data: Buffer; hashHex: string }> {
  const data = Buffer.alloc(length, `${marker} base text `);
  const hashHex = hashChunk(data).toString('hex');
  await store.putChunk(hashHex, data);
  return { data, hashHex };
}

/** `base` with `blocks` rewritten, and the delta upload that says so. */
function changed(base: { data: Buffer; hashHex: string }, blocks: number[]): { data: Buffer; upload: DeltaChunkToStore } {
  const data = Buffer.from(base.data);
  for (const block of blocks) Buffer.alloc(Math.min(BLOCK, data.length - block * BLOCK), `new ${block} `).copy(data, block * BLOCK);
  const changedBlocks = [...blocks].sort((a, b) => a - b);
  const parts = changedBlocks.map((block) => data.subarray(block * BLOCK, Math.min((block + 1) * BLOCK, data.length)));
  const delta: ChunkDelta = { baseHashHex: base.hashHex, blockSize: BLOCK, chunkLength: data.length, changedBlocks, blocks: Buffer.concat(parts) };
  return { data, upload: { hashHex: hashChunk(data).toString('hex'), delta } };
}

describe('chunks uploaded as deltas', () => {
  for (const encrypted of [false, true]) {
    test(`a delta over a stored base is rebuilt, stored whole and read back (${encrypted ? 'encrypted' : 'plain'} store)`, async (t) => {
      const store = await openStore(t, encrypted);
      const base = await storeBase(store, 'one');
      const next = changed(base, [0, 7, 15]);
      assert.deepEqual(await store.putChunks([next.upload]), { received: 1, stored: 1 });
      assert.deepEqual(await store.getChunk(next.upload.hashHex), next.data);
      assert.deepEqual(await store.getChunk(base.hashHex), base.data, 'the base is untouched');
      // The server compressed the rebuilt chunk under the store's codec (there was no zstd frame to keep).
      const codec = codecOf(await storedChunkObject(store, next.upload.hashHex));
      assert.equal(codec, encrypted ? ChunkCodec.Aes256GcmZstd : ChunkCodec.Zstd);
      assert.deepEqual(await store.putChunks([next.upload]), { received: 1, stored: 0 }, 'sent again: already present, nothing rebuilt into a new pack');
    });
  }

  test('through StoreGuard and the wire format: deltas, delta-zstd, whole chunks and a short last chunk in one batch', async (t) => {
    const store = await openStore(t);
    const guard = new StoreGuard(store);
    const first = await storeBase(store, 'first');
    const short = await storeBase(store, 'short', 10_000);
    const a = changed(first, [2]);
    const b = changed(first, [3, 4]); // two chunks over the same base
    const c = changed(short, [2]); // the short last block
    const whole = randomBytes(65536);
    const bPayload = encodeDeltaPayload(Buffer.from(first.hashHex, 'hex'), BLOCK, b.data, [3, 4]);
    const body = Buffer.concat(
      encodeChunkBatch([
        { hash: Buffer.from(a.upload.hashHex, 'hex'), payload: encodeDeltaPayload(Buffer.from(first.hashHex, 'hex'), BLOCK, a.data, [2]), encoding: FrameEncoding.Delta },
        { hash: hashChunk(whole), payload: whole, encoding: FrameEncoding.Raw },
        { hash: Buffer.from(b.upload.hashHex, 'hex'), payload: compressChunk(bPayload, 1)!, encoding: FrameEncoding.DeltaZstd },
        { hash: Buffer.from(c.upload.hashHex, 'hex'), payload: encodeDeltaPayload(Buffer.from(short.hashHex, 'hex'), BLOCK, c.data, [2]), encoding: FrameEncoding.Delta },
      ]),
    );
    assert.deepEqual(await guard.putChunkBatch(decodeChunkBatch(body)), { received: 4, stored: 4 });
    assert.deepEqual(await store.getChunks([a.upload.hashHex, hashChunk(whole).toString('hex'), b.upload.hashHex, c.upload.hashHex]), [a.data, whole, b.data, c.data]);
  });

  // Rebuilt chunks live in the shared buffer their bases were read into (in place), which is reused by
  // the next batch: an incompressible rebuilt chunk is written as it is, referring to that memory, so
  // the buffer must not be reused before the pack is written.
  test('large batches of deltas over incompressible bases, one stored while another waits to write, store exactly the rebuilt chunks', async (t) => {
    const store = await openStore(t);
    const batchOf = async (count: number) => {
      const uploads: { data: Buffer; upload: DeltaChunkToStore }[] = [];
      for (let position = 0; position < count; position++) {
        const data = randomBytes(65536);
        const base = { data, hashHex: hashChunk(data).toString('hex') };
        await store.putChunk(base.hashHex, data);
        // A random new block, so the rebuilt chunk does not compress and is stored as it was rebuilt.
        const block = position % 16;
        const rebuilt = Buffer.from(data);
        randomBytes(BLOCK).copy(rebuilt, block * BLOCK);
        const delta: ChunkDelta = { baseHashHex: base.hashHex, blockSize: BLOCK, chunkLength: rebuilt.length, changedBlocks: [block], blocks: rebuilt.subarray(block * BLOCK, (block + 1) * BLOCK) };
        uploads.push({ data: rebuilt, upload: { hashHex: hashChunk(rebuilt).toString('hex'), delta } });
      }
      return uploads;
    };
    const first = await batchOf(96); // 6 MiB of chunks: checked in the codec pool
    const second = await batchOf(96);
    // The second batch runs whole while the first is between encoding and writing its pack (its gate).
    let secondResult: unknown = null;
    const firstResult = await store.putChunks(
      first.map((each) => each.upload),
      async (hashes) => {
        secondResult = await store.putChunks(second.map((each) => each.upload));
        return store.touchChunks(hashes);
      },
    );
    assert.deepEqual([firstResult, secondResult], [{ received: 96, stored: 96 }, { received: 96, stored: 96 }]);
    const all = [...first, ...second];
    assert.deepEqual(await store.getChunks(all.map((each) => each.upload.hashHex)), all.map((each) => each.data));
  });

  test('a delta whose base is not in the store: delta-base-missing naming both, and the whole batch stores nothing', async (t) => {
    const store = await openStore(t);
    const stored = await storeBase(store, 'stored');
    const before = await objectKeys(store);
    const absent = { data: Buffer.alloc(65536, 'never stored '), hashHex: hashChunk(Buffer.alloc(65536, 'never stored ')).toString('hex') };
    const good = changed(stored, [1]);
    const orphan = changed(absent, [1]);
    const whole = randomBytes(1000);
    const batch: ChunkUpload[] = [good.upload, { hashHex: hashChunk(whole).toString('hex'), data: whole }, orphan.upload];
    await assert.rejects(store.putChunks(batch), (error) => {
      ferryError('delta-base-missing', [orphan.upload.hashHex, absent.hashHex, 'nothing stored'])(error);
      assert.deepEqual((error as { details?: unknown }).details, { hash: orphan.upload.hashHex, base: absent.hashHex });
      assert.equal((error as { retryable: boolean }).retryable, false);
      return true;
    });
    assert.deepEqual(await objectKeys(store), before, 'nothing was written');
    assert.deepEqual(await store.missingChunks([good.upload.hashHex, orphan.upload.hashHex]), [good.upload.hashHex, orphan.upload.hashHex]);
  });

  test('a base that does not read back sound, or is not the delta\'s length, is refused the same way', async (t) => {
    const store = await openStore(t);
    const damaged = await storeBase(store, 'damaged');
    const next = changed(damaged, [4]);
    await flipChunkByte(store, damaged.hashHex);
    await assert.rejects(store.putChunks([next.upload]), ferryError('delta-base-missing', [next.upload.hashHex, damaged.hashHex]));

    const short = await storeBase(store, 'short', 8192);
    const wrongLength = changed({ data: Buffer.alloc(65536, 'other'), hashHex: short.hashHex }, [0]);
    await assert.rejects(store.putChunks([wrongLength.upload]), ferryError('delta-base-missing', [wrongLength.upload.hashHex, short.hashHex, '8192 bytes']));
    assert.deepEqual(await store.missingChunks([next.upload.hashHex, wrongLength.upload.hashHex]), [next.upload.hashHex, wrongLength.upload.hashHex]);
  });

  test('a delta that rebuilds to bytes that do not hash to its name (a block the agent missed): chunk-hash-mismatch, nothing stored', async (t) => {
    const store = await openStore(t);
    const base = await storeBase(store, 'base');
    const before = await objectKeys(store);
    // The agent's fingerprints missed block 9: the delta carries block 2 only, the chunk changed in both.
    const truth = changed(base, [2, 9]);
    const partial = changed(base, [2]);
    const lying: DeltaChunkToStore = { hashHex: truth.upload.hashHex, delta: partial.upload.delta };
    const whole = randomBytes(2000);
    await assert.rejects(
      store.putChunks([{ hashHex: hashChunk(whole).toString('hex'), data: whole }, lying]),
      ferryError('chunk-hash-mismatch', [truth.upload.hashHex, `rebuilt from its changes to chunk ${base.hashHex}`, 'nothing stored']),
    );
    assert.deepEqual(await objectKeys(store), before);
    assert.deepEqual(await store.putChunks([truth.upload]), { received: 1, stored: 1 }, 'the right delta is accepted');
  });
});
