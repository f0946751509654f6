import { randomBytes } from 'node:crypto';
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeChunkBatch, encodeChunkBatch } from '../../src/protocol/chunk-batch.js';
import { hashChunk } from '../../src/store/chunking.js';
import { ferryError } from './helpers.js';

function frame(length: number): { hash: Buffer; data: Buffer } {
  const data = randomBytes(length);
  return { hash: hashChunk(data), data };
}

describe('chunk batch framing', () => {
  test('encode/decode round trip keeps every frame, in order, including an empty one', () => {
    const frames = [frame(65536), frame(1), frame(0), frame(1000)];
    const body = encodeChunkBatch(frames);
    assert.equal(body.length, frames.reduce((total, each) => total + 36 + each.data.length, 0));
    const decoded = decodeChunkBatch(body);
    assert.deepEqual(
      decoded.map((each) => ({ hashHex: each.hashHex, data: Buffer.from(each.data) })),
      frames.map((each) => ({ hashHex: each.hash.toString('hex'), data: each.data })),
    );
  });

  test('the frame length is little-endian after the 32-byte name', () => {
    const body = encodeChunkBatch([frame(0x0102)]);
    assert.equal(body.readUInt32LE(32), 0x0102);
    assert.deepEqual([...body.subarray(32, 36)], [0x02, 0x01, 0, 0]);
  });

  test('an empty body is an empty batch', () => {
    assert.deepEqual(decodeChunkBatch(Buffer.alloc(0)), []);
    assert.deepEqual(encodeChunkBatch([]), Buffer.alloc(0));
  });

  test('a body cut inside a frame header is refused with invalid-request naming the offset', () => {
    const first = frame(100);
    const body = encodeChunkBatch([first, frame(50)]);
    const cutAt = 36 + 100 + 20; // 20 bytes into the second header
    assert.throws(() => decodeChunkBatch(body.subarray(0, cutAt)), ferryError('invalid-request', ['header', 'byte 136']));
    assert.throws(() => decodeChunkBatch(body.subarray(0, 35)), ferryError('invalid-request', ['byte 0']));
  });

  test('a body cut inside a frame body is refused with invalid-request naming the frame', () => {
    const second = frame(50);
    const body = encodeChunkBatch([frame(100), second]);
    assert.throws(() => decodeChunkBatch(body.subarray(0, body.length - 1)), ferryError('invalid-request', [second.hash.toString('hex'), 'says 50 bytes']));
    assert.throws(() => decodeChunkBatch(body.subarray(0, 36)), ferryError('invalid-request', ['says 100 bytes']));
  });

  test('a frame length larger than the whole body is refused, not read past the end', () => {
    const body = encodeChunkBatch([frame(10)]);
    body.writeUInt32LE(0xffffffff, 32);
    assert.throws(() => decodeChunkBatch(body), ferryError('invalid-request'));
  });
});
