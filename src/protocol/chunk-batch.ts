/**
 * Binary framing for uploading many chunks in one request (POST /api/v1/chunks, application/octet-stream):
 *
 *   "FRYCHB2\n"  (8 bytes: the format and its version)
 *   frames, back to back: [32-byte SHA-256 name][u8 encoding][u32 little-endian length][length bytes]
 *
 * Encoding 0: the chunk's bytes as they are. Encoding 1: one zstd frame of the chunk's bytes (the agent
 * compresses what it sends; the server inflates the frame to check the name and stores the frame as is).
 * Batching keeps a cycle of thousands of chunks to a few requests over one keep-alive connection.
 */
import { FerryError } from '../errors.js';
import { HASH_LENGTH } from '../store/chunking.js';
import { inflateZstdFrame, MAX_CHUNK_PAYLOAD } from '../store/chunk-object.js';

/** Largest request body a batch may be. */
export const MAX_BATCH_BYTES = 32 * 1024 * 1024;
/** The first bytes of every batch body. */
export const BATCH_MAGIC = Buffer.from('FRYCHB2\n', 'latin1');
const FRAME_HEADER = HASH_LENGTH + 1 + 4;

/** How a frame's bytes encode its chunk. */
export const FrameEncoding = { Raw: 0, Zstd: 1 } as const;

/** Bytes a frame adds to a batch besides its payload. */
export const FRAME_OVERHEAD = FRAME_HEADER;

/** One decoded frame: the chunk's claimed name, its bytes, and the zstd frame it arrived as, if any. */
export interface ChunkFrame {
  hashHex: string;
  /** The chunk's bytes (inflated when it arrived compressed). */
  data: Buffer;
  /** The zstd frame as uploaded, for the store to keep as it is; absent for a raw frame. */
  zstdFrame?: Buffer;
}

/** One chunk to send: its name, and its bytes either raw or as a zstd frame. */
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
 * Splits a request body into frames, inflating compressed ones (each to at most the largest chunk
 * size). Throws invalid-request for a body that is not this format or is truncated (naming the offset),
 * an unknown encoding, or a zstd frame that does not inflate (naming the chunk).
 */
export function decodeChunkBatch(body: Buffer): ChunkFrame[] {
  if (body.length < BATCH_MAGIC.length || !body.subarray(0, BATCH_MAGIC.length).equals(BATCH_MAGIC)) {
    throw new FerryError('invalid-request', 'chunk batch does not start with "FRYCHB2": not a chunk batch of this version (are the agent and the server the same version of Ferry?)');
  }
  const frames: ChunkFrame[] = [];
  let offset = BATCH_MAGIC.length;
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
      frames.push({ hashHex, data: payload });
    } else if (encoding === FrameEncoding.Zstd) {
      let data: Buffer;
      try {
        data = inflateZstdFrame(payload, `uploaded chunk ${hashHex}`, MAX_CHUNK_PAYLOAD);
      } catch (error) {
        throw new FerryError('invalid-request', `${(error as Error).message}; batch rejected, nothing stored`, { cause: error });
      }
      frames.push({ hashHex, data, zstdFrame: payload });
    } else {
      throw new FerryError('invalid-request', `chunk batch frame for ${hashHex} at byte ${offset} has unknown encoding ${encoding}`);
    }
    offset = start + length;
  }
  return frames;
}
