/**
 * The agent's compression pool (src/agent/compression-pool.ts) with real worker threads: frames that
 * inflate to the input, null for incompressible chunks, order kept across concurrent calls, chunks in
 * shared memory compressed in place, windows named and fingerprinted like on the event loop, and a
 * closed pool refusing work instead of hanging.
 */
import { randomBytes } from 'node:crypto';
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { CompressionPool } from '../../src/agent/compression-pool.js';
import { BlockFingerprints } from '../../src/agent/block-fingerprints.js';
import { inflateZstdFrame } from '../../src/store/chunk-object.js';
import { hashChunk, ZERO_HASH } from '../../src/store/chunking.js';
import { sharedBuffer } from '../../src/util/worker-pool.js';
import { ferryError } from './helpers.js';

describe('CompressionPool', () => {
  test('compresses in worker threads: frames inflate to the input; incompressible chunks come back null', async (t) => {
    const pool = new CompressionPool(1, 2);
    t.after(() => pool.close());
    const text = Buffer.from('recovery point '.repeat(4000));
    const random = randomBytes(65536);
    const [textFrame, randomFrame, empty] = await pool.compress([text, random, Buffer.alloc(0)]);
    assert.ok(textFrame && textFrame.length < text.length / 10, 'repetitive text compresses well');
    assert.deepEqual(inflateZstdFrame(textFrame, 'test frame'), text);
    assert.equal(randomFrame, null, 'random bytes are sent raw');
    assert.equal(empty, null);
  });

  test('concurrent calls each get their own chunks back, in order', async (t) => {
    const pool = new CompressionPool(1, 2);
    t.after(() => pool.close());
    const calls = Array.from({ length: 8 }, (_, call) => Array.from({ length: 5 }, (_, n) => Buffer.from(`call ${call} chunk ${n} `.repeat(500))));
    const results = await Promise.all(calls.map((chunks) => pool.compress(chunks)));
    results.forEach((frames, call) => frames.forEach((frame, n) => assert.deepEqual(inflateZstdFrame(frame!, 'test frame'), calls[call]![n])));
  });

  test('a closed pool refuses work with a retryable error instead of hanging', async () => {
    const pool = new CompressionPool(1, 1);
    await pool.close();
    await assert.rejects(pool.compress([Buffer.from('x'.repeat(1000))]), (error: unknown) => {
      ferryError('internal', ['compression'])(error);
      return (error as { retryable: boolean }).retryable === true;
    });
  });

  test('chunks in shared memory are compressed in place, mixed with copied ones', async (t) => {
    const pool = new CompressionPool(1, 2);
    t.after(() => pool.close());
    const window = sharedBuffer(3 * 65536);
    window.write('shared text '.repeat(5000), 0);
    window.write('more shared text '.repeat(3000), 65536);
    const copied = Buffer.from('a copied delta payload '.repeat(200));
    const frames = await pool.compress([window.subarray(0, 65536), copied, window.subarray(65536, 131072)]);
    assert.deepEqual(inflateZstdFrame(frames[0]!, 'f0'), window.subarray(0, 65536));
    assert.deepEqual(inflateZstdFrame(frames[1]!, 'f1'), copied);
    assert.deepEqual(inflateZstdFrame(frames[2]!, 'f2'), window.subarray(65536, 131072));
  });

  test('hashWindow names chunks (ZERO_HASH for zero ones) and fingerprints those that changed', async (t) => {
    const pool = new CompressionPool(1, 2);
    t.after(() => pool.close());
    const chunkSize = 65536;
    const lengths = [chunkSize, chunkSize, chunkSize, 5000]; // random, zero, random, short random
    const window = sharedBuffer(3 * chunkSize + 5000);
    randomBytes(chunkSize).copy(window, 0);
    randomBytes(chunkSize + 5000).copy(window, 2 * chunkSize);
    const chunkAt = (n: number) => window.subarray(n * chunkSize, n * chunkSize + lengths[n]!);
    const expected = BlockFingerprints.empty(window.length, chunkSize)!;
    lengths.forEach((_, n) => expected.compute(n, chunkAt(n)));
    const previous = Buffer.alloc(4 * 32);
    hashChunk(chunkAt(2)).copy(previous, 2 * 32); // chunk 2 is unchanged since the last point

    for (const view of [window, Buffer.from(window)]) {
      const named = await pool.hashWindow(view, lengths, { blockSize: 4096, blocksPerChunk: 16, previousHashes: previous });
      assert.deepEqual(named.hashes.map((hash) => hash.toString('hex')), lengths.map((_, n) => (n === 1 ? ZERO_HASH : hashChunk(chunkAt(n))).toString('hex')));
      assert.equal(named.hashes[1], ZERO_HASH, 'a zero chunk is named by ZERO_HASH itself');
      assert.equal(named.fingerprints[1], null, 'zero chunks get no fingerprints');
      assert.equal(named.fingerprints[2], null, 'unchanged chunks copy theirs from the last point');
      for (const n of [0, 3]) assert.deepEqual([...named.fingerprints[n]!], [...expected.crcs.subarray(n * 16, (n + 1) * 16)]);
    }
    const bare = await pool.hashWindow(window, lengths, { blockSize: null, blocksPerChunk: 0, previousHashes: null });
    assert.deepEqual(bare.fingerprints, [null, null, null, null]);
  });

  test('window buffers are shared memory, kept for reuse between cycles', async (t) => {
    const pool = new CompressionPool(1, 1);
    t.after(() => pool.close());
    const first = pool.takeWindow(65536);
    const second = pool.takeWindow(65536);
    assert.ok(first.buffer instanceof SharedArrayBuffer);
    assert.notEqual(first, second);
    pool.giveWindow(first);
    assert.equal(pool.takeWindow(65536), first, 'a buffer given back is handed out again');
    assert.equal(pool.takeWindow(4096).length, 4096, 'sizes are kept apart');
  });
});
