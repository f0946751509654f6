/**
 * The chunk batch format (src/protocol/chunk-batch.ts): round trips of raw, zstd and delta frames, the
 * exact byte layout, and every malformed body (hostile delta frames included) refused with
 * invalid-request, never read past its end.
 */
import { randomBytes } from 'node:crypto';
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  BATCH_MAGIC,
  decodeChunkBatch,
  encodeChunkBatch,
  encodeDeltaPayload,
  FrameEncoding,
  MAX_BATCH_CHUNK_BYTES,
  type OutgoingFrame,
} from '../../src/protocol/chunk-batch.js';
import { applyDelta } from '../../src/store/chunk-delta.js';
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
      decoded.map((each) => [each.hashHex, Buffer.from(each.data!)]),
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

  test('a zstd frame is inflated only when its data is read (the store checks frames in its workers)', () => {
    const frame = compressed('lazy ');
    const broken = Buffer.from(frame.payload);
    broken[broken.length - 5]! ^= 0xff; // its header still declares the size: only inflating tells
    const [decoded] = decodeChunkBatch(body([{ ...frame, payload: broken }]));
    assert.deepEqual(decoded!.zstdFrame, broken);
    assert.throws(() => decoded!.data, ferryError('invalid-request', [Buffer.from(frame.hash).toString('hex'), 'nothing stored']));
    const [sound] = decodeChunkBatch(body([frame]));
    assert.equal(sound!.data, sound!.data, 'inflated once, then kept');
  });
});

/** A delta frame for a chunk made from `base` with `changed` 4 KiB blocks rewritten at random. */
function delta(base: Buffer, changed: number[], blockSize = 4096): OutgoingFrame & { data: Buffer; baseHash: Buffer } {
  const data = Buffer.from(base);
  for (const block of changed) randomBytes(Math.min(blockSize, data.length - block * blockSize)).copy(data, block * blockSize);
  const baseHash = hashChunk(base);
  return { hash: hashChunk(data), payload: encodeDeltaPayload(baseHash, blockSize, data, changed), encoding: FrameEncoding.Delta, data, baseHash };
}

/** A delta payload written field by field, to build hostile ones. */
function deltaPayload(fields: { blockSize?: number; chunkLength?: number; bitmap: number[]; blockBytes: number }): Buffer {
  const header = Buffer.alloc(40);
  randomBytes(32).copy(header);
  header.writeUInt32LE(fields.blockSize ?? 4096, 32);
  header.writeUInt32LE(fields.chunkLength ?? 65536, 36);
  return Buffer.concat([header, Buffer.from(fields.bitmap), Buffer.alloc(fields.blockBytes, 9)]);
}

const someHash = hashChunk(Buffer.from('some chunk'));
const deltaFrame = (payload: Buffer, encoding: OutgoingFrame['encoding'] = FrameEncoding.Delta): OutgoingFrame => ({ hash: someHash, payload, encoding });

describe('delta frames', () => {
  test('a delta frame round trips to its description, and applying it to the base gives the chunk', () => {
    const base = randomBytes(65536);
    const frame = delta(base, [0, 5, 15]);
    assert.equal(frame.payload.length, 40 + 2 + 3 * 4096, 'header, a 2-byte bitmap for 16 blocks, three blocks');
    const [decoded] = decodeChunkBatch(body([frame]));
    assert.ok(decoded?.delta, 'described as a delta, not resolved');
    assert.equal(decoded.data, undefined);
    assert.equal(decoded.hashHex, Buffer.from(frame.hash).toString('hex'));
    assert.deepEqual(
      { base: decoded.delta.baseHashHex, blockSize: decoded.delta.blockSize, length: decoded.delta.chunkLength, changed: decoded.delta.changedBlocks },
      { base: frame.baseHash.toString('hex'), blockSize: 4096, length: 65536, changed: [0, 5, 15] },
    );
    assert.deepEqual(applyDelta(decoded.hashHex, base, decoded.delta), frame.data);
  });

  test('layout: base name, block size, chunk length, bitmap least significant bit first, then the blocks', () => {
    const base = randomBytes(65536);
    const frame = delta(base, [1, 8]);
    const payload = Buffer.from(frame.payload);
    assert.deepEqual(payload.subarray(0, 32), frame.baseHash);
    assert.equal(payload.readUInt32LE(32), 4096);
    assert.equal(payload.readUInt32LE(36), 65536);
    assert.deepEqual([...payload.subarray(40, 42)], [0b10, 0b1]);
    assert.deepEqual(payload.subarray(42, 42 + 4096), frame.data.subarray(4096, 8192));
    assert.deepEqual(payload.subarray(42 + 4096), frame.data.subarray(8 * 4096, 9 * 4096));
  });

  test('a short chunk (a disk\'s last) carries its short last block; other block sizes work', () => {
    const base = randomBytes(10_000); // blocks of 4096, 4096, 1808
    const frame = delta(base, [2]);
    assert.equal(frame.payload.length, 40 + 1 + 1808);
    const [decoded] = decodeChunkBatch(body([frame]));
    assert.deepEqual(applyDelta(decoded!.hashHex, base, decoded!.delta!), frame.data);
    const small = delta(randomBytes(65536), [3, 100], 512);
    const [decodedSmall] = decodeChunkBatch(body([small]));
    assert.deepEqual(decodedSmall!.delta!.changedBlocks, [3, 100]);
  });

  test('a delta-zstd frame inflates to its delta payload; frames of every encoding mix in one batch', () => {
    const base = Buffer.alloc(65536, 'abc');
    const text = Buffer.from(base);
    Buffer.alloc(4096, 'xyz').copy(text, 4096 * 3);
    const plain = encodeDeltaPayload(hashChunk(base), 4096, text, [3]);
    const squeezed = compressChunk(plain, 1)!;
    assert.ok(squeezed.length < plain.length);
    const frames: OutgoingFrame[] = [raw(100), { hash: hashChunk(text), payload: squeezed, encoding: FrameEncoding.DeltaZstd }, compressed('mix ')];
    const decoded = decodeChunkBatch(body(frames));
    assert.deepEqual(decoded.map((each) => (each.delta ? 'delta' : each.zstdFrame ? 'zstd' : 'raw')), ['raw', 'delta', 'zstd']);
    assert.deepEqual(applyDelta(decoded[1]!.hashHex, base, decoded[1]!.delta!), text);
  });

  test('hostile delta payloads are refused with invalid-request naming the chunk, never read past their end', () => {
    const name = someHash.toString('hex');
    const refused = (payload: Buffer, why: string) =>
      assert.throws(() => decodeChunkBatch(body([deltaFrame(payload)])), ferryError('invalid-request', [name, why]), why);
    refused(Buffer.alloc(39), 'shorter than its 40-byte header');
    refused(deltaPayload({ blockSize: 3000, bitmap: [1, 0], blockBytes: 3000 }), 'block size 3000');
    refused(deltaPayload({ blockSize: 256, bitmap: [1], blockBytes: 256 }), 'block size 256');
    refused(deltaPayload({ blockSize: 128 * 1024, bitmap: [1], blockBytes: 65536 }), 'block size 131072');
    refused(deltaPayload({ blockSize: 0, bitmap: [1], blockBytes: 1 }), 'block size 0');
    refused(deltaPayload({ chunkLength: 0, bitmap: [], blockBytes: 0 }), 'chunk length 0');
    refused(deltaPayload({ chunkLength: 64 * 1024 * 1024 + 1, bitmap: [1], blockBytes: 4096 }), 'chunk length 67108865');
    refused(deltaPayload({ bitmap: [1], blockBytes: 0 }), 'too short for a bitmap of 16 blocks');
    refused(deltaPayload({ bitmap: [0, 0], blockBytes: 0 }), 'marks no block changed');
    refused(deltaPayload({ chunkLength: 10_000, bitmap: [0b1000], blockBytes: 4096 }), 'marks block 3 changed, but the chunk has 3 blocks');
    refused(deltaPayload({ bitmap: [1, 0], blockBytes: 4095 }), 'carries 4095 bytes of blocks, its bitmap names 4096');
    refused(deltaPayload({ bitmap: [1, 0], blockBytes: 8192 }), 'carries 8192 bytes of blocks, its bitmap names 4096');
    refused(deltaPayload({ chunkLength: 10_000, bitmap: [0b100], blockBytes: 4096 }), 'its bitmap names 1808');
  });

  test('a delta-zstd frame that is not zstd, or inflates past the largest delta, is refused', () => {
    const name = someHash.toString('hex');
    assert.throws(() => decodeChunkBatch(body([deltaFrame(Buffer.from('not zstd at all'), FrameEncoding.DeltaZstd)])), ferryError('invalid-request', [name]));
    const bomb = compressChunk(Buffer.alloc(80 * 1024 * 1024, 1), 1)!;
    assert.throws(() => decodeChunkBatch(body([deltaFrame(bomb, FrameEncoding.DeltaZstd)])), ferryError('invalid-request', [name, 'at most']));
    // A well-formed zstd frame around a bad delta payload is refused like the bare payload.
    const inner = compressChunk(deltaPayload({ bitmap: [1, 0], blockBytes: 4095 }), 1)!;
    assert.throws(() => decodeChunkBatch(body([deltaFrame(inner, FrameEncoding.DeltaZstd)])), ferryError('invalid-request', [name, 'carries 4095 bytes']));
  });

  test('a batch whose deltas would rebuild to more than the batch limit is refused before anything is rebuilt', () => {
    // Each frame is ~5 KiB on the wire but claims a 64 MiB chunk: three claim 192 MiB.
    const big = deltaPayload({ chunkLength: 64 * 1024 * 1024, bitmap: [1, ...new Array<number>(2047).fill(0)], blockBytes: 4096 });
    assert.equal(decodeChunkBatch(body([deltaFrame(big), deltaFrame(big)])).length, 2, 'two fit in the limit');
    assert.throws(() => decodeChunkBatch(body([deltaFrame(big), deltaFrame(big), deltaFrame(big)])), ferryError('invalid-request', [`${MAX_BATCH_CHUNK_BYTES}`]));
  });
});
