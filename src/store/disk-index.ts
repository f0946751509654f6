/**
 * A disk index: the ordered list of chunk hashes that makes up one disk at one recovery point.
 *
 * Binary layout (little-endian):
 *   "FRYIDX1\n" (8) | disk size u64 | chunk size u32 | chunk count u32 | count x 32-byte hash | SHA-256 of all before (32)
 * An all-zero hash marks an all-zero chunk. The trailing checksum makes truncation or bit rot detectable.
 */
import { createHash } from 'node:crypto';
import { FerryError } from '../errors.js';
import { HASH_LENGTH, ZERO_HASH } from './chunking.js';

const MAGIC = Buffer.from('FRYIDX1\n', 'latin1');
const HEADER_LENGTH = MAGIC.length + 8 + 4 + 4;
const MAX_CHUNK_SIZE = 64 * 1024 * 1024;

/** One disk at one point: its size, chunk size and the hash of every chunk (ZERO_HASH for zeros). */
export class DiskIndex {
  constructor(
    readonly diskSize: number,
    readonly chunkSize: number,
    /** count x 32 bytes; entry i covers bytes [i*chunkSize, min((i+1)*chunkSize, diskSize)). */
    readonly hashes: Buffer,
  ) {
    if (hashes.length !== DiskIndex.chunkCountFor(diskSize, chunkSize) * HASH_LENGTH) {
      throw new Error(`index of ${diskSize} bytes in ${chunkSize}-byte chunks needs ${DiskIndex.chunkCountFor(diskSize, chunkSize)} hashes`);
    }
  }

  /** Number of chunks covering `diskSize` bytes. */
  static chunkCountFor(diskSize: number, chunkSize: number): number {
    return Math.ceil(diskSize / chunkSize);
  }

  /** An index with every chunk zero, to be filled with `setHash`. */
  static empty(diskSize: number, chunkSize: number): DiskIndex {
    return new DiskIndex(diskSize, chunkSize, Buffer.alloc(DiskIndex.chunkCountFor(diskSize, chunkSize) * HASH_LENGTH));
  }

  get chunkCount(): number {
    return this.hashes.length / HASH_LENGTH;
  }

  /** The hash of chunk `position` (a view, not a copy). */
  hashAt(position: number): Buffer {
    return this.hashes.subarray(position * HASH_LENGTH, (position + 1) * HASH_LENGTH);
  }

  setHash(position: number, hash: Uint8Array): void {
    this.hashes.set(hash, position * HASH_LENGTH);
  }

  isZeroAt(position: number): boolean {
    return this.hashAt(position).equals(ZERO_HASH);
  }

  /** Byte length of chunk `position` (the last one may be short). */
  lengthAt(position: number): number {
    return Math.min(this.chunkSize, this.diskSize - position * this.chunkSize);
  }

  /** The distinct non-zero chunk hashes, as hex. */
  distinctHashes(): Set<string> {
    const seen = new Set<string>();
    for (let position = 0; position < this.chunkCount; position++) {
      if (!this.isZeroAt(position)) seen.add(this.hashAt(position).toString('hex'));
    }
    return seen;
  }

  /** Serialises to the binary layout above. */
  encode(): Buffer {
    const header = Buffer.alloc(HEADER_LENGTH);
    MAGIC.copy(header, 0);
    header.writeBigUInt64LE(BigInt(this.diskSize), 8);
    header.writeUInt32LE(this.chunkSize, 16);
    header.writeUInt32LE(this.chunkCount, 20);
    const checksum = createHash('sha256').update(header).update(this.hashes).digest();
    return Buffer.concat([header, this.hashes, checksum]);
  }

  /** Parses and checks the binary layout; throws invalid-request (from a client) or corrupt-data (from a store). */
  static decode(data: Buffer, source: 'upload' | 'store' = 'store'): DiskIndex {
    const fail = (problem: string) =>
      new FerryError(source === 'upload' ? 'invalid-request' : 'corrupt-data', `disk index ${problem}`);
    if (data.length < HEADER_LENGTH + HASH_LENGTH || !data.subarray(0, MAGIC.length).equals(MAGIC)) {
      throw fail('has no valid header');
    }
    const diskSize = Number(data.readBigUInt64LE(8));
    const chunkSize = data.readUInt32LE(16);
    const chunkCount = data.readUInt32LE(20);
    if (chunkSize === 0 || chunkSize > MAX_CHUNK_SIZE || !Number.isSafeInteger(diskSize)) {
      throw fail(`has an impossible chunk size ${chunkSize} or disk size ${diskSize}`);
    }
    if (chunkCount !== DiskIndex.chunkCountFor(diskSize, chunkSize)) {
      throw fail(`says ${chunkCount} chunks, but ${diskSize} bytes need ${DiskIndex.chunkCountFor(diskSize, chunkSize)}`);
    }
    const expectedLength = HEADER_LENGTH + chunkCount * HASH_LENGTH + HASH_LENGTH;
    if (data.length !== expectedLength) throw fail(`is ${data.length} bytes, expected ${expectedLength} (truncated?)`);
    const body = data.subarray(0, expectedLength - HASH_LENGTH);
    const checksum = data.subarray(expectedLength - HASH_LENGTH);
    if (!createHash('sha256').update(body).digest().equals(checksum)) throw fail('checksum does not match its contents');
    return new DiskIndex(diskSize, chunkSize, Buffer.from(data.subarray(HEADER_LENGTH, expectedLength - HASH_LENGTH)));
  }
}
