/**
 * Binary framing for uploading many chunks in one request (POST /api/v1/chunks, application/octet-stream):
 *
 *   "FRYCHB2\n"  (8 bytes: the format and its version)
 *   frames, back to back: [32-byte SHA-256 name][u8 encoding][u32 little-endian length][length bytes]
 *
 * Encodings of a frame's payload:
 *   0  raw         the chunk's bytes as they are.
 *   1  zstd        one zstd frame of the chunk's bytes (the agent compresses what it sends; the server
 *                  inflates the frame to check the name, in its codec workers, and stores the frame
 *                  as is).
 *   2  delta       the chunk as the blocks that changed from a base chunk the store holds (a sub-chunk
 *                  delta: a few 4 KiB writes in a 64 KiB chunk cost a few KiB, not the whole chunk):
 *                    base name   32 bytes   SHA-256 of the base chunk (the chunk at the same position
 *                                           in the agent's last point)
 *                    block size  u32 LE     a power of two, 512 to 64 KiB (the agent uses 4096)
 *                    length      u32 LE     the chunk's length (the base's length too), 1 to 64 MiB
 *                    bitmap      ceil(blocks / 8) bytes, blocks = ceil(length / block size): bit i
 *                                (byte i >> 3, bit i & 7, least significant first) set when block i
 *                                changed; at least one set, none past the last block
 *                    blocks      the changed blocks' new bytes back to back, in block order (the
 *                                chunk's last block is short when the chunk is)
 *                  The server rebuilds the chunk from its stored base (store/chunk-delta.ts) and checks
 *                  its SHA-256 like any other; a delta whose base the store lacks is refused with
 *                  delta-base-missing, and the agent then sends the chunk whole.
 *   3  delta-zstd  one zstd frame of an encoding-2 payload (the agent uses it when that is smaller).
 *
 * Decoding is pure and cheap, as it runs on the server's event loop: it splits and bounds-checks,
 * inflates delta-zstd payloads (a few KiB each), reads the size a zstd frame declares without inflating
 * it (the store inflates and checks it in its codec workers), and describes delta frames without
 * reading the store. A batch's chunks may add up to at most MAX_BATCH_CHUNK_BYTES once inflated or rebuilt, so a
 * small body cannot make the server hold gigabytes. Batching keeps a cycle of thousands of chunks to a
 * few requests over one keep-alive connection.
 */
import { FerryError } from '../errors.js';
import { HASH_LENGTH } from '../store/chunking.js';
import { blockCountOf, blockLengthOf, type ChunkDelta, MAX_DELTA_BLOCK_SIZE, MIN_DELTA_BLOCK_SIZE } from '../store/chunk-delta.js';
import { inflateZstdFrame, MAX_CHUNK_PAYLOAD, zstdFrameContentSize } from '../store/chunk-object.js';

/** Largest request body a batch may be. */
export const MAX_BATCH_BYTES = 32 * 1024 * 1024;
/**
 * Most bytes a batch's chunks may add up to once inflated (zstd frames) or rebuilt (deltas). An agent
 * splits its batches to stay under it; the server refuses a batch beyond it with invalid-request.
 */
export const MAX_BATCH_CHUNK_BYTES = 128 * 1024 * 1024;
/** The first bytes of every batch body. */
export const BATCH_MAGIC = Buffer.from('FRYCHB2\n', 'latin1');
const FRAME_HEADER = HASH_LENGTH + 1 + 4;
/** Bytes of a delta payload before its bitmap: base name, block size, chunk length. */
const DELTA_HEADER = HASH_LENGTH + 4 + 4;
/** Largest delta payload there can be (the limit a delta-zstd frame may inflate to). */
const MAX_DELTA_PAYLOAD = DELTA_HEADER + Math.ceil(blockCountOf(MAX_CHUNK_PAYLOAD, MIN_DELTA_BLOCK_SIZE) / 8) + MAX_CHUNK_PAYLOAD;

/** How a frame's bytes encode its chunk (see the module comment). */
export const FrameEncoding = { Raw: 0, Zstd: 1, Delta: 2, DeltaZstd: 3 } as const;

/** Bytes a frame adds to a batch besides its payload. */
export const FRAME_OVERHEAD = FRAME_HEADER;

/**
 * One decoded frame: the chunk's claimed name, and either its bytes (with the zstd frame it arrived as,
 * if any) or, for a delta frame, the delta to rebuild it from (`delta`; no `data`).
 *
 * A zstd frame's `data` is inflated on first use only (then kept): the server's store checks the frame
 * in its codec workers and never asks for `data`, so uploads are not inflated on the event loop; other
 * readers (an agent applying a point) use `data` as if it had been inflated at once. Reading `data` of
 * a frame that does not inflate to the size it declares throws invalid-request.
 */
export type ChunkFrame =
  | {
      hashHex: string;
      /** The chunk's bytes (inflated when it arrived compressed). */
      data: Buffer;
      /** The zstd frame as uploaded, for the store to keep as it is; absent for a raw frame. */
      zstdFrame?: Buffer;
      delta?: undefined;
    }
  | {
      hashHex: string;
      /** The chunk as changes to a base chunk; the store rebuilds and checks it. */
      delta: ChunkDelta;
      data?: undefined;
      zstdFrame?: undefined;
    };

/** One chunk to send: its name, and its payload in `encoding` (see the module comment). */
export interface OutgoingFrame {
  hash: Uint8Array;
  payload: Uint8Array;
  encoding: (typeof FrameEncoding)[keyof typeof FrameEncoding];
}

/**
 * The body of a batch as a list of buffers to write one after another (no copy of the payloads);
 * `Buffer.concat` of it is the body.
 */
export function encodeChunkBatch(frames: readonly OutgoingFrame[]): Buffer[] {
  const parts: Buffer[] = [BATCH_MAGIC];
  for (const frame of frames) {
    const header = Buffer.alloc(FRAME_HEADER);
    header.set(frame.hash, 0);
    header.writeUInt8(frame.encoding, HASH_LENGTH);
    header.writeUInt32LE(frame.payload.length, HASH_LENGTH + 1);
    parts.push(header, Buffer.from(frame.payload.buffer, frame.payload.byteOffset, frame.payload.byteLength));
  }
  return parts;
}

/**
 * The payload of a delta frame (encoding 2) for `chunk`, whose blocks `changedBlocks` (ascending, at
 * least one) differ from the base chunk named `baseHash`: the header, the bitmap and a copy of those
 * blocks. Throws (a caller bug) for a block size out of range or a block index out of the chunk.
 */
export function encodeDeltaPayload(baseHash: Uint8Array, blockSize: number, chunk: Uint8Array, changedBlocks: readonly number[]): Buffer {
  const blockCount = blockCountOf(chunk.length, blockSize);
  if (!validBlockSize(blockSize) || changedBlocks.length === 0) throw new Error(`a delta needs a valid block size and at least one block (${blockSize}, ${changedBlocks.length})`);
  const bitmapLength = Math.ceil(blockCount / 8);
  let blockBytes = 0;
  for (const block of changedBlocks) {
    if (!Number.isInteger(block) || block < 0 || block >= blockCount) throw new Error(`block ${block} is not in a chunk of ${blockCount} blocks`);
    blockBytes += blockLengthOf(block, chunk.length, blockSize);
  }
  const payload = Buffer.alloc(DELTA_HEADER + bitmapLength + blockBytes);
  payload.set(baseHash, 0);
  payload.writeUInt32LE(blockSize, HASH_LENGTH);
  payload.writeUInt32LE(chunk.length, HASH_LENGTH + 4);
  let at = DELTA_HEADER + bitmapLength;
  for (const block of changedBlocks) {
    payload[DELTA_HEADER + (block >> 3)]! |= 1 << (block & 7);
    const start = block * blockSize;
    const length = blockLengthOf(block, chunk.length, blockSize);
    payload.set(chunk.subarray(start, start + length), at);
    at += length;
  }
  return payload;
}

/**
 * Reads a delta payload (encoding 2, or an inflated encoding 3) of the chunk named `hashHex`. Throws
 * invalid-request naming the chunk for a payload too short for its header, a block size that is not a
 * power of two from 512 to 64 KiB, a chunk length of 0 or beyond 64 MiB, a bitmap with no block set
 * or a bit past the last block, or a length that does not match the blocks the bitmap names.
 */
export function decodeDeltaPayload(payload: Buffer, hashHex: string): ChunkDelta {
  const fail = (problem: string) => new FerryError('invalid-request', `chunk batch delta frame for ${hashHex} ${problem}; batch rejected, nothing stored`);
  if (payload.length < DELTA_HEADER) throw fail(`is ${payload.length} bytes, shorter than its ${DELTA_HEADER}-byte header`);
  const baseHashHex = payload.subarray(0, HASH_LENGTH).toString('hex');
  const blockSize = payload.readUInt32LE(HASH_LENGTH);
  const chunkLength = payload.readUInt32LE(HASH_LENGTH + 4);
  if (!validBlockSize(blockSize)) throw fail(`has block size ${blockSize} (a power of two from ${MIN_DELTA_BLOCK_SIZE} to ${MAX_DELTA_BLOCK_SIZE} expected)`);
  if (chunkLength === 0 || chunkLength > MAX_CHUNK_PAYLOAD) throw fail(`has chunk length ${chunkLength} (1 to ${MAX_CHUNK_PAYLOAD} expected)`);
  const blockCount = blockCountOf(chunkLength, blockSize);
  const bitmapLength = Math.ceil(blockCount / 8);
  if (payload.length < DELTA_HEADER + bitmapLength) throw fail(`is ${payload.length} bytes, too short for a bitmap of ${blockCount} blocks`);
  const bitmap = payload.subarray(DELTA_HEADER, DELTA_HEADER + bitmapLength);
  const changedBlocks: number[] = [];
  let expected = 0;
  for (let byte = 0; byte < bitmapLength; byte++) {
    const bits = bitmap[byte]!;
    if (bits === 0) continue;
    for (let bit = 0; bit < 8; bit++) {
      if (!(bits & (1 << bit))) continue;
      const block = byte * 8 + bit;
      if (block >= blockCount) throw fail(`marks block ${block} changed, but the chunk has ${blockCount} blocks`);
      changedBlocks.push(block);
      expected += blockLengthOf(block, chunkLength, blockSize);
    }
  }
  if (changedBlocks.length === 0) throw fail('marks no block changed');
  const blocks = payload.subarray(DELTA_HEADER + bitmapLength);
  if (blocks.length !== expected) throw fail(`carries ${blocks.length} bytes of blocks, its bitmap names ${expected}`);
  return { baseHashHex, blockSize, chunkLength, changedBlocks, blocks };
}

/**
 * Splits a request body into frames, leaving zstd frames compressed until their `data` is read (their
 * declared sizes checked: each at most the largest chunk size) and describing delta frames (not
 * resolved: the store does that). Throws invalid-request for a body that is not this format or is
 * truncated (naming the offset), an unknown encoding, a zstd frame whose header is malformed or declares
 * no or too large a size, a delta-zstd payload that does not inflate or a malformed delta (naming the
 * chunk), or chunks adding up to more than MAX_BATCH_CHUNK_BYTES. A zstd frame that does not inflate to
 * what it declares is refused when its `data` is read, and by the store (invalid-request, nothing of
 * the batch stored).
 */
export function decodeChunkBatch(body: Buffer): ChunkFrame[] {
  if (body.length < BATCH_MAGIC.length || !body.subarray(0, BATCH_MAGIC.length).equals(BATCH_MAGIC)) {
    throw new FerryError('invalid-request', 'chunk batch does not start with "FRYCHB2": not a chunk batch of this version (are the agent and the server the same version of Ferry?)');
  }
  const frames: ChunkFrame[] = [];
  let offset = BATCH_MAGIC.length;
  let chunkBytes = 0; // what the frames add up to once inflated or rebuilt
  const count = (hashHex: string, length: number) => {
    chunkBytes += length;
    if (chunkBytes > MAX_BATCH_CHUNK_BYTES) {
      throw new FerryError('invalid-request', `chunk batch frames up to ${hashHex} add up to ${chunkBytes} bytes of chunks, more than the ${MAX_BATCH_CHUNK_BYTES} a batch may hold; batch rejected, nothing stored`);
    }
  };
  const inflate = (payload: Buffer, hashHex: string, maxLength: number): Buffer => {
    try {
      return inflateZstdFrame(payload, `uploaded chunk ${hashHex}`, maxLength);
    } catch (error) {
      throw new FerryError('invalid-request', `${(error as Error).message}; batch rejected, nothing stored`, { cause: error });
    }
  };
  while (offset < body.length) {
    if (offset + FRAME_HEADER > body.length) {
      throw new FerryError('invalid-request', `chunk batch is truncated in the frame header at byte ${offset}`);
    }
    const hashHex = body.subarray(offset, offset + HASH_LENGTH).toString('hex');
    const encoding = body.readUInt8(offset + HASH_LENGTH);
    const length = body.readUInt32LE(offset + HASH_LENGTH + 1);
    const start = offset + FRAME_HEADER;
    if (start + length > body.length) {
      throw new FerryError('invalid-request', `chunk batch frame for ${hashHex} at byte ${offset} says ${length} bytes but the body ends first`);
    }
    const payload = body.subarray(start, start + length);
    if (encoding === FrameEncoding.Raw) {
      count(hashHex, payload.length);
      frames.push({ hashHex, data: payload });
    } else if (encoding === FrameEncoding.Zstd) {
      // Bounded by what the batch may still hold, so the frames' sum is checked before anything inflates.
      let declared: number;
      try {
        declared = zstdFrameContentSize(payload, `uploaded chunk ${hashHex}`, Math.min(MAX_CHUNK_PAYLOAD, MAX_BATCH_CHUNK_BYTES - chunkBytes));
      } catch (error) {
        throw new FerryError('invalid-request', `${(error as Error).message}; batch rejected, nothing stored`, { cause: error });
      }
      count(hashHex, declared);
      let data: Buffer | undefined;
      frames.push({
        hashHex,
        zstdFrame: payload,
        get data() {
          data ??= inflate(payload, hashHex, declared);
          return data;
        },
      });
    } else if (encoding === FrameEncoding.Delta || encoding === FrameEncoding.DeltaZstd) {
      const inflateLimit = Math.min(MAX_DELTA_PAYLOAD, MAX_DELTA_PAYLOAD - MAX_CHUNK_PAYLOAD + MAX_BATCH_CHUNK_BYTES - chunkBytes);
      const delta = decodeDeltaPayload(encoding === FrameEncoding.Delta ? payload : inflate(payload, hashHex, inflateLimit), hashHex);
      count(hashHex, delta.chunkLength);
      frames.push({ hashHex, delta });
    } else {
      throw new FerryError('invalid-request', `chunk batch frame for ${hashHex} at byte ${offset} has unknown encoding ${encoding}`);
    }
    offset = start + length;
  }
  return frames;
}

function validBlockSize(blockSize: number): boolean {
  return blockSize >= MIN_DELTA_BLOCK_SIZE && blockSize <= MAX_DELTA_BLOCK_SIZE && (blockSize & (blockSize - 1)) === 0;
}
