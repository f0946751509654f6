/**
 * A chunk described as the blocks that changed from another chunk, its base: how an agent sends a chunk
 * of which only a few 4 KiB blocks were written since the last point (the wire layout is in
 * protocol/chunk-batch.ts). The store rebuilds the chunk from its stored base (`applyDelta`) and from
 * then on treats it like any uploaded chunk: it must hash to its name, so a wrong delta (a stale base,
 * a block the agent missed) is refused, never stored.
 */
import { FerryError } from '../errors.js';

/** Smallest and largest block size a delta may use (both powers of two). */
export const MIN_DELTA_BLOCK_SIZE = 512;
export const MAX_DELTA_BLOCK_SIZE = 64 * 1024;

/** A chunk of `chunkLength` bytes: the chunk named `baseHashHex` with the blocks `changedBlocks` replaced. */
export interface ChunkDelta {
  /** SHA-256 hex of the base chunk, which must be `chunkLength` bytes long. */
  baseHashHex: string;
  /** A power of two from MIN_DELTA_BLOCK_SIZE to MAX_DELTA_BLOCK_SIZE; block i covers [i*blockSize, (i+1)*blockSize) of the chunk. */
  blockSize: number;
  chunkLength: number;
  /** Indexes of the replaced blocks, ascending, at least one, each below `blockCountOf(chunkLength, blockSize)`. */
  changedBlocks: number[];
  /** The replaced blocks' new bytes back to back; the chunk's last block is short when the chunk is. */
  blocks: Buffer;
}

/** How many blocks of `blockSize` cover a chunk of `chunkLength` bytes (the last may be short). */
export function blockCountOf(chunkLength: number, blockSize: number): number {
  return Math.ceil(chunkLength / blockSize);
}

/** Byte length of block `block` of a chunk of `chunkLength` bytes. */
export function blockLengthOf(block: number, chunkLength: number, blockSize: number): number {
  return Math.min(blockSize, chunkLength - block * blockSize);
}

/**
 * The chunk a delta describes: `base` with the changed blocks written over it, in a new buffer, or in
 * `into` (`chunkLength` bytes; it may be `base` itself, which is then rebuilt in place). Does not check
 * the result's hash (the store does). Throws delta-base-missing, naming `hashHex` (the chunk being
 * rebuilt), when `base` is not `chunkLength` bytes: it cannot be the base the agent meant.
 */
export function applyDelta(hashHex: string, base: Uint8Array, delta: ChunkDelta, into?: Buffer): Buffer {
  if (base.length !== delta.chunkLength) {
    throw new FerryError(
      'delta-base-missing',
      `chunk ${hashHex} was sent as changes to chunk ${delta.baseHashHex} of ${delta.chunkLength} bytes, but that chunk is ${base.length} bytes; batch rejected, nothing stored (send the chunk whole)`,
      { details: { hash: hashHex, base: delta.baseHashHex } },
    );
  }
  let chunk: Buffer;
  if (into === undefined) chunk = Buffer.from(base); // a copy: the base may be a view into a pack read shared with other chunks
  else {
    if (into.length !== delta.chunkLength) throw new Error(`a chunk of ${delta.chunkLength} bytes cannot be rebuilt into ${into.length} bytes`);
    chunk = into;
    if (into.buffer !== base.buffer || into.byteOffset !== base.byteOffset) chunk.set(base);
  }
  let from = 0;
  for (const block of delta.changedBlocks) {
    const length = blockLengthOf(block, delta.chunkLength, delta.blockSize);
    delta.blocks.copy(chunk, block * delta.blockSize, from, from + length);
    from += length;
  }
  return chunk;
}
