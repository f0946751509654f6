/**
 * The store's chunk codec pool (src/store/chunk-codec-pool.ts) with real worker threads: stored objects
 * decoded into shared memory, plain and encrypted; a damaged object or a chunk that does not match its
 * name refused with corrupt-data; uploads checked and encoded like on the event loop (bad frames,
 * mismatched names and zero chunks refused with the same codes); a closed pool refusing work; an idle
 * pool never keeping a process alive; and the
 * chunk store using the pool for large batches and for `readChunksInto`.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import path from 'node:path';
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { ChunkCodecPool, sliceBatch } from '../../src/store/chunk-codec-pool.js';
import { decodeChunkObject, encodeChunkObject, compressChunk, PLAIN_CODEC, type ObjectCodec } from '../../src/store/chunk-object.js';
import { ChunkStore, chunkKey } from '../../src/store/chunk-store.js';
import { hashChunk } from '../../src/store/chunking.js';
import { FilesystemBackend } from '../../src/store/fs-backend.js';
import { sharedBuffer } from '../../src/util/worker-pool.js';
import { ferryError, flipChunkByte, tempDirFor } from './helpers.js';

const COMPRESSED: ObjectCodec = { compressionLevel: 1, dataKey: null };
const ENCRYPTED: ObjectCodec = { compressionLevel: 1, dataKey: randomBytes(32) };

function textChunk(seed: string, length = 65536): Buffer {
  return Buffer.from(`${seed} `.repeat(Math.ceil(length / (seed.length + 1)))).subarray(0, length);
}

/** Objects of `chunks` encoded under `codec`, back to back, and how `decode` should find them. */
function storedObjects(chunks: Buffer[], codec: ObjectCodec) {
  const encoded = chunks.map((chunk) => {
    const hashHex = hashChunk(chunk).toString('hex');
    return { hashHex, objectKey: chunkKey(hashHex), object: encodeChunkObject(chunk, chunkKey(hashHex), codec) };
  });
  let at = 0;
  let outputAt = 0;
  const entries = encoded.map(({ hashHex, objectKey, object }, position) => {
    const entry = { at, objectLength: object.length, objectKey, hashHex, chunkLength: chunks[position]!.length, outputAt };
    at += object.length;
    outputAt += chunks[position]!.length;
    return entry;
  });
  return { objects: Buffer.concat(encoded.map((each) => each.object)), entries, outputLength: outputAt };
}

describe('ChunkCodecPool', () => {
  for (const [name, codec] of [['plain', PLAIN_CODEC], ['compressed', COMPRESSED], ['encrypted', ENCRYPTED]] as const) {
    test(`decodes ${name} stored objects into shared memory, in place`, async (t) => {
      const pool = new ChunkCodecPool(2);
      t.after(() => pool.close());
      const chunks = [textChunk('alpha'), randomBytes(65536), textChunk('omega', 1000)];
      const { objects, entries, outputLength } = storedObjects(chunks, codec);
      const output = sharedBuffer(outputLength);
      await pool.decode(objects, entries, output, codec);
      assert.ok(output.equals(Buffer.concat(chunks)));
    });
  }

  test('a damaged object, or one that is not its chunk, is refused with corrupt-data naming it', async (t) => {
    const pool = new ChunkCodecPool(1);
    t.after(() => pool.close());
    const chunks = [textChunk('one'), textChunk('two')];
    const damaged = storedObjects(chunks, ENCRYPTED);
    damaged.objects[damaged.entries[1]!.at + 20]! ^= 1;
    await assert.rejects(pool.decode(damaged.objects, damaged.entries, sharedBuffer(damaged.outputLength), ENCRYPTED), ferryError('corrupt-data', [damaged.entries[1]!.objectKey]));
    const swapped = storedObjects(chunks, PLAIN_CODEC);
    swapped.entries[0]!.hashHex = swapped.entries[1]!.hashHex;
    await assert.rejects(pool.decode(swapped.objects, swapped.entries, sharedBuffer(swapped.outputLength), PLAIN_CODEC), ferryError('corrupt-data', [swapped.entries[1]!.hashHex, 'does not match']));
    await assert.rejects(pool.decode(swapped.objects, swapped.entries, Buffer.alloc(swapped.outputLength), PLAIN_CODEC), ferryError('internal'), 'output must be shared');
  });

  test('ingest checks uploads and encodes them as the event loop would, refusing bad ones with their codes', async (t) => {
    const pool = new ChunkCodecPool(2);
    t.after(() => pool.close());
    const text = textChunk('ferry');
    const frame = compressChunk(text, 1)!;
    const random = randomBytes(4096);
    const upload = (data: Buffer, payload: Buffer, compressed: boolean) => ({ hashHex: hashChunk(data).toString('hex'), payload, compressed, objectKey: chunkKey(hashChunk(data).toString('hex')) });
    const { objects, release } = await pool.ingest([upload(text, frame, true), upload(random, random, false)], ENCRYPTED);
    assert.deepEqual(decodeChunkObject(Buffer.concat(objects[0]!), chunkKey(hashChunk(text).toString('hex')), ENCRYPTED), text);
    assert.deepEqual(decodeChunkObject(Buffer.concat(objects[1]!), chunkKey(hashChunk(random).toString('hex')), ENCRYPTED), random);
    release();

    // A plain store keeps an uploaded frame (and an incompressible chunk) as uploaded: header + payload, no copy.
    const { objects: plain } = await pool.ingest([upload(text, frame, true), upload(random, random, false)], COMPRESSED);
    assert.equal(plain[0]![1], frame);
    assert.equal(plain[1]![1], random);
    assert.deepEqual(decodeChunkObject(Buffer.concat(plain[0]!), 'k', COMPRESSED), text);
    assert.deepEqual(decodeChunkObject(Buffer.concat(plain[1]!), 'k', COMPRESSED), random);

    const broken = Buffer.from(frame);
    broken[broken.length - 5]! ^= 0xff; // the header still says 64 KiB: only inflating tells
    await assert.rejects(pool.ingest([upload(text, broken, true)], PLAIN_CODEC), ferryError('invalid-request', [hashChunk(text).toString('hex'), 'nothing stored']));
    await assert.rejects(pool.ingest([{ ...upload(text, random, false), rebuiltFrom: 'ab'.repeat(32) }], PLAIN_CODEC), ferryError('chunk-hash-mismatch', ['once rebuilt']));
    const zeros = Buffer.alloc(4096);
    await assert.rejects(pool.ingest([upload(zeros, zeros, false)], PLAIN_CODEC), ferryError('invalid-request', ['all zeros']));
  });

  test('a large batch is cut into one slice per worker, and the objects come back in input order', async (t) => {
    const pool = new ChunkCodecPool(2);
    t.after(() => pool.close());
    // 64 chunks of 64 KiB (4 MiB): two slices of 32. Mixed kinds, so an out-of-order join would show.
    const chunks = Array.from({ length: 64 }, (_, position) => (position % 3 === 0 ? randomBytes(65536) : textChunk(`chunk-${position}`)));
    const uploads = chunks.map((chunk) => {
      const hashHex = hashChunk(chunk).toString('hex');
      return { hashHex, payload: chunk, compressed: false, objectKey: chunkKey(hashHex) };
    });
    const { objects } = await pool.ingest(uploads, ENCRYPTED);
    assert.equal(objects.length, chunks.length);
    objects.forEach((parts, position) => assert.deepEqual(decodeChunkObject(Buffer.concat(parts), uploads[position]!.objectKey, ENCRYPTED), chunks[position]));
    // A bad chunk in the second slice still refuses the batch.
    const bad = [...uploads];
    bad[50] = { ...bad[50]!, payload: randomBytes(65536) };
    await assert.rejects(pool.ingest(bad, PLAIN_CODEC), ferryError('chunk-hash-mismatch', [uploads[50]!.hashHex]));
  });

  test('payloads lying in one shared buffer (an upload read into it) are checked where they lie, at any offset; others are staged', async (t) => {
    const pool = new ChunkCodecPool(2);
    t.after(() => pool.close());
    const chunks = Array.from({ length: 48 }, (_, position) => (position % 2 === 0 ? randomBytes(65536) : textChunk(`in-place-${position}`)));
    // The payloads back to back in one shared buffer, after a 7-byte header, as a batch body lies.
    const frames = chunks.map((chunk, position) => (position % 2 === 0 ? chunk : compressChunk(chunk, 1)!));
    const body = sharedBuffer(7 + frames.reduce((sum, frame) => sum + frame.length, 0));
    let offset = 7;
    const uploads = frames.map((frame, position) => {
      frame.copy(body, offset);
      const payload = body.subarray(offset, offset + frame.length);
      offset += frame.length;
      const hashHex = hashChunk(chunks[position]!).toString('hex');
      return { hashHex, payload, compressed: position % 2 === 1, objectKey: chunkKey(hashHex) };
    });
    const staged: number[] = [];
    const cache = (pool as unknown as { sharedBuffers: { take(length: number): Buffer } }).sharedBuffers;
    const take = cache.take.bind(cache);
    cache.take = (length) => {
      staged.push(length);
      return take(length);
    };

    const { objects, release } = await pool.ingest(uploads, ENCRYPTED);
    objects.forEach((parts, position) => assert.deepEqual(decodeChunkObject(Buffer.concat(parts), uploads[position]!.objectKey, ENCRYPTED), chunks[position]));
    release();
    assert.equal(staged.length, 1, 'only the objects\' buffer was taken: the payloads were not copied');

    // One payload elsewhere: all are staged, with the same result.
    staged.length = 0;
    const mixed = [...uploads];
    mixed[5] = { ...mixed[5]!, payload: Buffer.from(mixed[5]!.payload) };
    const again = await pool.ingest(mixed, ENCRYPTED);
    again.objects.forEach((parts, position) => assert.deepEqual(decodeChunkObject(Buffer.concat(parts), uploads[position]!.objectKey, ENCRYPTED), chunks[position]));
    again.release();
    assert.equal(staged.length, 2);
    // A bad chunk in place still refuses the batch.
    body[uploads[10]!.payload.byteOffset + 100]! ^= 0xff;
    await assert.rejects(pool.ingest(uploads, PLAIN_CODEC), ferryError('chunk-hash-mismatch', [uploads[10]!.hashHex]));
  });

  test('objects come back in shared memory the pool reuses once released, none made per batch; the largest objects there are fit', async (t) => {
    const pool = new ChunkCodecPool(2);
    t.after(() => pool.close());
    // Incompressible chunks under encryption: every object is its chunk plus header, nonce and tag.
    const chunks = Array.from({ length: 64 }, () => randomBytes(65536));
    const uploads = chunks.map((chunk) => {
      const hashHex = hashChunk(chunk).toString('hex');
      return { hashHex, payload: chunk, compressed: false, objectKey: chunkKey(hashHex) };
    });
    const memories = new Set<ArrayBufferLike>();
    for (let round = 0; round < 5; round++) {
      const { objects, release } = await pool.ingest(uploads, ENCRYPTED);
      objects.forEach((parts, position) => {
        assert.equal(parts.length, 1);
        assert.ok(parts[0]!.buffer instanceof SharedArrayBuffer, 'an object lies in shared memory');
        memories.add(parts[0]!.buffer);
        assert.deepEqual(decodeChunkObject(Buffer.from(parts[0]!), uploads[position]!.objectKey, ENCRYPTED), chunks[position]);
      });
      release();
      release(); // a second release gives nothing back twice
    }
    // Five batches, two buffers taking turns (payloads out, objects back): reused, not made anew.
    assert.ok(memories.size <= 2, `objects came back in ${memories.size} buffers over 5 batches`);
  });

  test('compressed uploads to a store that does not compress: each object is the inflated chunk, far larger than its upload, and fits', async (t) => {
    const pool = new ChunkCodecPool(2);
    t.after(() => pool.close());
    // Text compresses about tenfold: objects ten times their payloads, in a batch large enough for two slices.
    const chunks = Array.from({ length: 48 }, (_, position) => textChunk(`uncompressed-store-${position}`));
    const uploads = chunks.map((chunk) => {
      const hashHex = hashChunk(chunk).toString('hex');
      return { hashHex, payload: compressChunk(chunk, 1)!, compressed: true, objectKey: chunkKey(hashHex) };
    });
    assert.ok(uploads.every((upload) => upload.payload.length * 4 < 65536), 'the uploads are much smaller than their chunks');
    for (const codec of [PLAIN_CODEC, { compressionLevel: null, dataKey: randomBytes(32) }]) {
      const { objects, release } = await pool.ingest(uploads, codec);
      objects.forEach((parts, position) => assert.deepEqual(decodeChunkObject(Buffer.concat(parts), uploads[position]!.objectKey, codec), chunks[position]));
      release();
    }
  });

  test('sliceBatch: consecutive runs of about equal bytes, at most one per worker, none for less than 1 MiB', () => {
    const chunk = 65536;
    assert.deepEqual(sliceBatch(Array(128).fill(chunk), 2), [{ first: 0, end: 64 }, { first: 64, end: 128 }]);
    assert.deepEqual(sliceBatch(Array(128).fill(chunk), 4), [{ first: 0, end: 32 }, { first: 32, end: 64 }, { first: 64, end: 96 }, { first: 96, end: 128 }]);
    assert.deepEqual(sliceBatch(Array(8).fill(chunk), 2), [{ first: 0, end: 8 }]); // 512 KiB: not worth a second worker
    assert.deepEqual(sliceBatch([4 << 20, 1, 1, 1], 2), [{ first: 0, end: 1 }, { first: 1, end: 4 }]); // by bytes, not count
    assert.deepEqual(sliceBatch([], 2), [{ first: 0, end: 0 }]);
    // Every chunk in exactly one slice, in order, whatever the sizes.
    const lengths = Array.from({ length: 300 }, (_, position) => ((position * 7919) % 65536) + 1);
    for (const workers of [1, 2, 3, 4]) {
      const slices = sliceBatch(lengths, workers);
      assert.ok(slices.length <= workers);
      assert.equal(slices[0]!.first, 0);
      assert.equal(slices.at(-1)!.end, lengths.length);
      slices.forEach((slice, position) => {
        assert.ok(slice.end > slice.first);
        if (position > 0) assert.equal(slice.first, slices[position - 1]!.end);
      });
    }
  });

  test('a closed pool refuses work with a retryable error instead of hanging', async () => {
    const pool = new ChunkCodecPool(1);
    await pool.close();
    const { objects, entries, outputLength } = storedObjects([textChunk('x')], PLAIN_CODEC);
    await assert.rejects(pool.decode(objects, entries, sharedBuffer(outputLength), PLAIN_CODEC), (error: unknown) => {
      ferryError('internal', ['chunk codec'])(error);
      return (error as { retryable: boolean }).retryable === true;
    });
  });
});

describe('an idle pool', () => {
  test('never keeps a process alive: a process that used one and never closed it exits', async (t) => {
    const directory = await tempDirFor(t);
    const script = path.join(directory, 'idle-pool.mts');
    const poolModule = pathToFileURL(path.resolve('src/store/chunk-codec-pool.ts')).href;
    await writeFile(script, `import { ChunkCodecPool } from ${JSON.stringify(poolModule)};\nconst pool = new ChunkCodecPool(2);\nawait pool.ingest([], { compressionLevel: null, dataKey: null });\n`);
    const started = Date.now();
    await promisify(execFile)(process.execPath, ['--import', 'tsx', script], { timeout: 30_000 });
    assert.ok(Date.now() - started < 30_000);
  });
});

describe('ChunkStore with its codec pool', () => {
  test('a large batch is checked in the pool: stored, read back with readChunksInto, a bad chunk refuses the batch', async (t) => {
    const directory = await tempDirFor(t);
    const store = await ChunkStore.open(new FilesystemBackend(path.join(directory, 'store')));
    store.codecPool = new ChunkCodecPool(2);
    t.after(() => store.codecPool!.close());
    const chunks = Array.from({ length: 12 }, (_, n) => (n % 3 === 0 ? randomBytes(65536) : textChunk(`chunk ${n}`)));
    const uploads = chunks.map((data) => {
      const frame = compressChunk(data, 1);
      return { hashHex: hashChunk(data).toString('hex'), data, ...(frame ? { zstdFrame: frame } : {}) };
    });
    const bad = randomBytes(65536);
    await assert.rejects(store.putChunks([...uploads, { hashHex: hashChunk(randomBytes(8)).toString('hex'), data: bad }]), ferryError('chunk-hash-mismatch'));
    assert.equal((await store.missingChunks(uploads.map((upload) => upload.hashHex))).length, chunks.length, 'nothing of a refused batch is stored');
    assert.deepEqual(await store.putChunks(uploads), { received: 12, stored: 12 });

    const output = sharedBuffer(chunks.length * 65536);
    const order = [5, 0, 11, 3];
    await store.readChunksInto(order.map((n) => uploads[n]!.hashHex), output, order.map((_, slot) => slot * 65536), order.map(() => 65536));
    order.forEach((n, slot) => assert.ok(output.subarray(slot * 65536, (slot + 1) * 65536).equals(chunks[n]!)));

    await flipChunkByte(store, uploads[3]!.hashHex);
    await assert.rejects(store.readChunksInto([uploads[0]!.hashHex, uploads[3]!.hashHex], output, [0, 65536], [65536, 65536]), ferryError('corrupt-data'));
    await assert.rejects(store.readChunksInto([uploads[0]!.hashHex], output, [0], [1000]), ferryError('corrupt-data'), 'a chunk of another length than the index says');
  });
});
