/**
 * The chunk batch format (src/protocol/chunk-batch.ts): round trips of raw and zstd frames, the exact
 * byte layout, and every malformed body refused with invalid-request, never read past its end.
 */
import { randomBytes } from 'node:crypto';
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { BATCH_MAGIC, decodeChunkBatch, encodeChunkBatch, FrameEncoding, type OutgoingFrame } from '../../src/protocol/chunk-batch.js';
import { compressChunk } from '../../src/store/chunk-object.js';
import { hashChunk } from '../../src/store/chunking.js';
import { ferryError } from './helpers.js';

function raw(length: number): OutgoingFrame & { data: Buffer } {
  const data = randomBytes(length);
  return { hash: hashChunk(data), payload: data, encoding: FrameEncoding.Raw, data };
}

function compressed(text: string): OutgoingFrame & { data: Buffer } {
  const data = Buffer.from(text.repeat(2000));
  const frame = compressChunk(data, 1);
  assert.ok(frame && frame.length < data.length);
  return { hash: hashChunk(data), payload: frame, encoding: FrameEncoding.Zstd, data };
}

const body = (frames: OutgoingFrame[]) => Buffer.concat(encodeChunkBatch(frames));

describe('chunk batch framing', () => {
  test('round trip keeps every frame in order; zstd frames arrive inflated, with the frame kept', () => {
    const frames = [raw(65536), compressed('ferry '), raw(1), raw(0), compressed('dr plan ')];
    const decoded = decodeChunkBatch(body(frames));
    assert.deepEqual(
      decoded.map((each) => [each.hashHex, Buffer.from(each.data)]),
      frames.map((each) => [Buffer.from(each.hash).toString('hex'), each.data]),
    );
    assert.deepEqual(decoded[1]!.zstdFrame, frames[1]!.payload);
    assert.equal(decoded[0]!.zstdFrame, undefined);
  });

  test('layout: magic, then 32-byte name, encoding byte, little-endian length, payload', () => {
    const frame = raw(0x0102);
    const bytes = body([frame]);
    assert.deepEqual(bytes.subarray(0, 8), BATCH_MAGIC);
    assert.deepEqual(bytes.subarray(8, 40), Buffer.from(frame.hash));
    assert.equal(bytes[40], FrameEncoding.Raw);
    assert.deepEqual([...bytes.subarray(41, 45)], [0x02, 0x01, 0, 0]);
    assert.equal(bytes.length, 8 + 37 + 0x0102);
  });

  test('encoding does not copy payloads: the parts are the caller\'s buffers', () => {
    const frame = raw(1000);
    const parts = encodeChunkBatch([frame]);
    assert.equal(parts[2]!.buffer, frame.payload.buffer);
  });

  test('a batch of no frames is the magic alone, and decodes to nothing', () => {
    assert.deepEqual(body([]), BATCH_MAGIC);
    assert.deepEqual(decodeChunkBatch(BATCH_MAGIC), []);
  });

  test('a body without the magic (another version, or not a batch) is refused', () => {
    assert.throws(() => decodeChunkBatch(Buffer.alloc(0)), ferryError('invalid-request', ['not a chunk batch']));
    assert.throws(() => decodeChunkBatch(randomBytes(100)), ferryError('invalid-request', ['not a chunk batch']));
  });

  test('a body cut inside a frame header or body is refused naming where', () => {
    const second = raw(50);
    const bytes = body([raw(100), second]);
    const secondHeaderAt = 8 + 37 + 100;
    assert.throws(() => decodeChunkBatch(bytes.subarray(0, secondHeaderAt + 20)), ferryError('invalid-request', ['header', `byte ${secondHeaderAt}`]));
    assert.throws(() => decodeChunkBatch(bytes.subarray(0, bytes.length - 1)), ferryError('invalid-request', [Buffer.from(second.hash).toString('hex'), 'says 50 bytes']));
  });

  test('a frame length larger than the whole body is refused, not read past the end', () => {
    const bytes = body([raw(10)]);
    bytes.writeUInt32LE(0xffffffff, 8 + 33);
    assert.throws(() => decodeChunkBatch(bytes), ferryError('invalid-request'));
  });

  test('an unknown encoding, a malformed zstd frame and a frame inflating past the chunk limit are refused', () => {
    const unknown = body([raw(10)]);
    unknown[40] = 7;
    assert.throws(() => decodeChunkBatch(unknown), ferryError('invalid-request', ['unknown encoding 7']));
    const frame = compressed('x');
    const garbage = { ...frame, payload: Buffer.from('definitely not zstd') };
    assert.throws(() => decodeChunkBatch(body([garbage])), ferryError('invalid-request', [Buffer.from(frame.hash).toString('hex')]));
    const bomb = compressChunk(Buffer.alloc(80 * 1024 * 1024, 1), 1)!; // declares 80 MiB: over the 64 MiB limit
    assert.throws(() => decodeChunkBatch(body([{ hash: frame.hash, payload: bomb, encoding: FrameEncoding.Zstd }])), ferryError('invalid-request', ['at most']));
  });
});
