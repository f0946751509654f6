/**
 * Block fingerprints: one CRC-32 per 4 KiB block of every chunk of a disk as it was at the agent's last
 * committed point (1/1024 of the disk's size: 2 MiB for a 2 GiB disk). When a chunk changed, comparing
 * its blocks' CRCs with these says which blocks changed, so the agent can send those blocks as a delta
 * over the last point's chunk instead of the whole chunk, without keeping the old chunk's bytes.
 *
 * CRC-32 is not collision-proof, and need not be: a changed block it misses makes the server's rebuilt
 * chunk fail its SHA-256 check, and the agent then sends the chunk whole. Fingerprints are kept in the
 * agent's state with the index they describe (agent-state.ts); losing them costs bytes, not data.
 *
 * File layout (little-endian):
 *   "FRYBLK1\n" (8) | disk size u64 | chunk size u32 | block size u32 | SHA-256 of the index's encoding (32)
 *   | chunk count x (chunk size / block size) x CRC-32 u32 | SHA-256 of all before (32)
 * A chunk's unused slots (past the end of a short last chunk) and all-zero chunks' slots hold 0.
 */
import { createHash } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { DiskIndex } from '../store/disk-index.js';
import { blockCountOf } from '../store/chunk-delta.js';
import { HASH_LENGTH } from '../store/chunking.js';

/** The block size fingerprints and deltas use: a file system's usual block, and a page. */
export const FINGERPRINT_BLOCK_SIZE = 4096;

const MAGIC = Buffer.from('FRYBLK1\n', 'latin1');
const HEADER_LENGTH = MAGIC.length + 8 + 4 + 4 + HASH_LENGTH;

/** The CRC-32 of every block of every chunk of one disk, as at one index. */
export class BlockFingerprints {
  /** Blocks per chunk: every chunk gets this many slots. */
  readonly blocksPerChunk: number;

  private constructor(
    readonly diskSize: number,
    readonly chunkSize: number,
    readonly blockSize: number,
    /** chunk count x blocksPerChunk CRCs; slot [position * blocksPerChunk + block]. */
    readonly crcs: Uint32Array,
  ) {
    this.blocksPerChunk = chunkSize / blockSize;
  }

  /**
   * All-zero fingerprints for a disk of `diskSize` bytes in `chunkSize` chunks, to be filled with
   * `compute` and `copyFrom`; null when `chunkSize` is not a multiple of at least two blocks (then
   * there is nothing to gain from deltas, and none are sent).
   */
  static empty(diskSize: number, chunkSize: number, blockSize = FINGERPRINT_BLOCK_SIZE): BlockFingerprints | null {
    if (chunkSize % blockSize !== 0 || chunkSize / blockSize < 2) return null;
    const chunkCount = DiskIndex.chunkCountFor(diskSize, chunkSize);
    return new BlockFingerprints(diskSize, chunkSize, blockSize, new Uint32Array(chunkCount * (chunkSize / blockSize)));
  }

  /** True when these fingerprints are of a disk cut like `index` (same disk size and chunk size). */
  fits(index: Pick<DiskIndex, 'diskSize' | 'chunkSize'>): boolean {
    return index.diskSize === this.diskSize && index.chunkSize === this.chunkSize;
  }

  /** Sets chunk `position`'s fingerprints from its bytes `data` (its whole length). */
  compute(position: number, data: Uint8Array): void {
    const base = position * this.blocksPerChunk;
    const blocks = blockCountOf(data.length, this.blockSize);
    for (let block = 0; block < blocks; block++) {
      this.crcs[base + block] = crc32(data.subarray(block * this.blockSize, (block + 1) * this.blockSize));
    }
    this.crcs.fill(0, base + blocks, base + this.blocksPerChunk);
  }

  /** Sets chunk `position`'s fingerprints to zeros (an all-zero chunk: never a delta's base). */
  clear(position: number): void {
    this.crcs.fill(0, position * this.blocksPerChunk, (position + 1) * this.blocksPerChunk);
  }

  /** Copies chunk `position`'s fingerprints from `other` (fingerprints of the same layout). */
  copyFrom(other: BlockFingerprints, position: number): void {
    const start = position * this.blocksPerChunk;
    this.crcs.set(other.crcs.subarray(start, start + this.blocksPerChunk), start);
  }

  /**
   * The blocks of chunk `position` (of `chunkLength` bytes) whose fingerprint here differs from the one
   * in `previous` (same layout), ascending.
   */
  changedBlocks(previous: BlockFingerprints, position: number, chunkLength: number): number[] {
    const base = position * this.blocksPerChunk;
    const changed: number[] = [];
    const blocks = blockCountOf(chunkLength, this.blockSize);
    for (let block = 0; block < blocks; block++) if (this.crcs[base + block] !== previous.crcs[base + block]) changed.push(block);
    return changed;
  }

  /** The file layout above, bound to the index whose encoding hashes to `indexHash`. */
  encode(indexHash: Uint8Array): Buffer {
    const header = Buffer.alloc(HEADER_LENGTH);
    MAGIC.copy(header, 0);
    header.writeBigUInt64LE(BigInt(this.diskSize), 8);
    header.writeUInt32LE(this.chunkSize, 16);
    header.writeUInt32LE(this.blockSize, 20);
    header.set(indexHash, 24);
    const body = Buffer.alloc(this.crcs.length * 4);
    for (let slot = 0; slot < this.crcs.length; slot++) body.writeUInt32LE(this.crcs[slot]!, slot * 4);
    const checksum = createHash('sha256').update(header).update(body).digest();
    return Buffer.concat([header, body, checksum]);
  }

  /**
   * Reads fingerprints saved by `encode` for `index` (whose encoding hashes to `indexHash`); null when
   * they are damaged, of another layout, or were saved for another index (then they are useless, not
   * an error: the cycle sends whole chunks).
   */
  static decode(data: Buffer, index: Pick<DiskIndex, 'diskSize' | 'chunkSize'>, indexHash: Uint8Array): BlockFingerprints | null {
    if (data.length < HEADER_LENGTH + HASH_LENGTH || !data.subarray(0, MAGIC.length).equals(MAGIC)) return null;
    const diskSize = Number(data.readBigUInt64LE(8));
    const chunkSize = data.readUInt32LE(16);
    const blockSize = data.readUInt32LE(20);
    if (diskSize !== index.diskSize || chunkSize !== index.chunkSize || !data.subarray(24, 24 + HASH_LENGTH).equals(indexHash)) return null;
    const empty = BlockFingerprints.empty(diskSize, chunkSize, blockSize);
    if (!empty || data.length !== HEADER_LENGTH + empty.crcs.length * 4 + HASH_LENGTH) return null;
    const checksumAt = data.length - HASH_LENGTH;
    if (!createHash('sha256').update(data.subarray(0, checksumAt)).digest().equals(data.subarray(checksumAt))) return null;
    for (let slot = 0; slot < empty.crcs.length; slot++) empty.crcs[slot] = data.readUInt32LE(HEADER_LENGTH + slot * 4);
    return empty;
  }
}
