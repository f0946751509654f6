/**
 * How disks are cut: fixed-size chunks at fixed offsets, each named by the SHA-256 of its bytes.
 * All-zero chunks are never stored or sent; an index records them as the all-zero hash.
 */
import { createHash } from 'node:crypto';

/** Default chunk size: 64 KiB. Recorded in every index, so a later default does not break old points. */
export const DEFAULT_CHUNK_SIZE = 64 * 1024;

/** Length in bytes of a chunk hash (SHA-256). */
export const HASH_LENGTH = 32;

/** The hash an index stores for an all-zero chunk (nothing is stored for it). */
export const ZERO_HASH = Buffer.alloc(HASH_LENGTH);

const zeroBlocks = new Map<number, Buffer>();

/** True when every byte of `data` is zero. */
export function isAllZero(data: Uint8Array): boolean {
  let zeros = zeroBlocks.get(data.length);
  if (!zeros) {
    zeros = Buffer.alloc(data.length);
    if (zeroBlocks.size < 8) zeroBlocks.set(data.length, zeros);
  }
  return Buffer.compare(data, zeros) === 0;
}

/** SHA-256 of `data`. */
export function hashChunk(data: Uint8Array): Buffer {
  return createHash('sha256').update(data).digest();
}

/** A chunk hash as the lowercase hex string used in keys and JSON. */
export function hashHex(hash: Uint8Array): string {
  return Buffer.from(hash.buffer, hash.byteOffset, hash.byteLength).toString('hex');
}

/** True for a 64-character lowercase hex string. */
export function isHashHex(text: string): boolean {
  return /^[0-9a-f]{64}$/.test(text);
}
