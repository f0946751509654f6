/**
 * The agent's compression pool (src/agent/compression-pool.ts) with real worker threads: frames that
 * inflate to the input, null for incompressible chunks, order kept across concurrent calls, and a
 * closed pool refusing work instead of hanging.
 */
import { randomBytes } from 'node:crypto';
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { CompressionPool } from '../../src/agent/compression-pool.js';
import { inflateZstdFrame } from '../../src/store/chunk-object.js';
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
});
