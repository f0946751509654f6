/**
 * Binary framing for uploading many chunks in one request (POST /api/v1/chunks, application/octet-stream):
 * repeated frames of [32-byte SHA-256 name][u32 little-endian length][length bytes]. Batching keeps a
 * cycle of thousands of small chunks to a few requests over one keep-alive connection.
 */
import { FerryError } from '../errors.js';
import { HASH_LENGTH } from '../store/chunking.js';

/** Largest request body a batch may be. */
export const MAX_BATCH_BYTES = 32 * 1024 * 1024;
const FRAME_HEADER = HASH_LENGTH + 4;

/** One framed chunk. */
export interface ChunkFrame {
  hashHex: string;
  data: Buffer;
}

/** Concatenates frames into one request body. */
export function encodeChunkBatch(frames: readonly { hash: Uint8Array; data: Uint8Array }[]): Buffer {
  const parts: Uint8Array[] = [];
  for (const frame of frames) {
    const header = Buffer.alloc(FRAME_HEADER);
    header.set(frame.hash, 0);
    header.writeUInt32LE(frame.data.length, HASH_LENGTH);
    parts.push(header, frame.data);
  }
  return Buffer.concat(parts);
}

/** Splits a request body into frames; throws invalid-request naming the offset of a truncated frame. */
export function decodeChunkBatch(body: Buffer): ChunkFrame[] {
  const frames: ChunkFrame[] = [];
  let offset = 0;
  while (offset < body.length) {
    if (offset + FRAME_HEADER > body.length) {
      throw new FerryError('invalid-request', `chunk batch is truncated in the frame header at byte ${offset}`);
    }
    const hashHex = body.subarray(offset, offset + HASH_LENGTH).toString('hex');
    const length = body.readUInt32LE(offset + HASH_LENGTH);
    const start = offset + FRAME_HEADER;
    if (start + length > body.length) {
      throw new FerryError('invalid-request', `chunk batch frame for ${hashHex} at byte ${offset} says ${length} bytes but the body ends first`);
    }
    frames.push({ hashHex, data: body.subarray(start, start + length) });
    offset = start + length;
  }
  return frames;
}
