/**
 * The agent's compression pool: a few worker threads (compression-worker.ts) that do the CPU work of a
 * replication cycle — naming each window's chunks (SHA-256, the all-zero check, the 4 KiB block
 * fingerprints) and zstd-compressing the chunks sent — so the event loop only reads the disk and talks
 * to the server, and several windows are hashed and compressed at once on every core.
 *
 * Chunks that lie in shared memory (the replicator's window buffers are SharedArrayBuffers) are read by
 * the workers in place, never copied; other buffers are copied to the worker. A chunk that does not get
 * smaller is sent raw. A pool whose worker fails (it cannot start, or a worker dies) fails the calls
 * waiting on it, and every later call, with a retryable internal error; the replication cycle then fails
 * and is retried like any other.
 */
import os from 'node:os';
import { alignedSharedBuffer } from '../disks/direct-io.js';
import { FerryError } from '../errors.js';
import { HASH_LENGTH, ZERO_HASH } from '../store/chunking.js';
import { isShared, joinForTransfer, SharedBufferCache, siblingWorkerPath, WorkerPool } from '../util/worker-pool.js';
import type { CompressionWorkerRequest, CompressionWorkerResult, CompressRequest } from './compression-worker.js';

/** Window buffers kept per size: the windows in flight of two disks read at once. */
const WINDOWS_KEPT = 8;

/** One chunk's bytes after the pool: a zstd frame, or null when it is sent raw. */
export type CompressedChunk = Buffer | null;

/** What `CompressionPool.hashWindow` says about a window's chunks. */
export interface WindowHashes {
  /** Chunk i's name (`ZERO_HASH` itself for an all-zero chunk). */
  hashes: Buffer[];
  /**
   * Chunk i's block fingerprints (`blocksPerChunk` CRC-32s, unused slots 0) when they were computed, null
   * when they were not (an all-zero chunk, a chunk equal to its previous hash, or no fingerprints asked).
   */
  fingerprints: (Uint32Array | null)[];
}

/** Worker threads for hashing and `level`-compressing chunks; `close()` when done. */
export class CompressionPool {
  private readonly pool: WorkerPool<CompressionWorkerRequest, CompressionWorkerResult>;
  /** Window buffers kept for reuse, by size. */
  private readonly windows = new Map<number, SharedBufferCache>();

  /**
   * Starts `size` workers (default: one per core, at least two, at most four: the event loop mostly
   * waits on the disk and the network) that compress at zstd `level`.
   */
  constructor(
    readonly level: number,
    size = Math.min(4, Math.max(2, os.availableParallelism())),
  ) {
    this.pool = new WorkerPool(siblingWorkerPath(import.meta.url, 'compression-worker'), size, 'chunk compression');
  }

  /**
   * Compresses each chunk; resolves in input order with its zstd frame, or null for a chunk that is not
   * smaller compressed. Chunks in one shared buffer are read in place, so the caller must not change
   * them until this resolves; other chunks are copied at once, so their buffers may be reused.
   */
  async compress(chunks: readonly Uint8Array[]): Promise<CompressedChunk[]> {
    if (chunks.length === 0) return [];
    // The first shared buffer met is passed by reference; chunks elsewhere are copied along.
    const sharedBuffer = chunks.find(isShared)?.buffer ?? null;
    const shared = sharedBuffer ? new Uint8Array(sharedBuffer) : null;
    const copies: Uint8Array[] = [];
    let copiedBytes = 0;
    const request: CompressRequest = { kind: 'compress', level: this.level, shared, copied: null, sources: [], offsets: [], lengths: [] };
    for (const chunk of chunks) {
      request.lengths.push(chunk.length);
      if (sharedBuffer !== null && chunk.buffer === sharedBuffer) {
        request.sources.push(0);
        request.offsets.push(chunk.byteOffset);
      } else {
        request.sources.push(1);
        request.offsets.push(copiedBytes);
        copies.push(chunk);
        copiedBytes += chunk.length;
      }
    }
    const transfer: ArrayBuffer[] = [];
    if (copies.length > 0) {
      request.copied = joinForTransfer(copies);
      transfer.push(request.copied.buffer as ArrayBuffer);
    }
    const result = await this.pool.run(request, transfer);
    if (result.kind !== 'compress') throw new FerryError('internal', 'compression worker answered a compression with something else');
    const frames = Buffer.from(result.frames.buffer, result.frames.byteOffset, result.frames.byteLength);
    let offset = 0;
    return result.lengths.map((length) => {
      if (length < 0) return null;
      const frame = frames.subarray(offset, offset + length);
      offset += length;
      return frame;
    });
  }

  /**
   * Names the chunks of `window` (chunk i is `lengths[i]` bytes, back to back from its start) and, when
   * `blockSize` is given, computes the block fingerprints of each non-zero chunk except those whose
   * name equals their slot in `previousHashes` (32 bytes per chunk: the last point's names of these
   * positions), whose fingerprints the caller copies from the last point. A window in shared memory is
   * read in place (the caller must not change it until this resolves); another is copied.
   */
  async hashWindow(window: Uint8Array, lengths: readonly number[], options: { blockSize: number | null; blocksPerChunk: number; previousHashes: Uint8Array | null }): Promise<WindowHashes> {
    if (lengths.length === 0) return { hashes: [], fingerprints: [] };
    const inPlace = isShared(window);
    const sent = inPlace ? window : new Uint8Array(window);
    const result = await this.pool.run(
      { kind: 'hash', window: sent, lengths: [...lengths], previousHashes: options.previousHashes, blockSize: options.blockSize, blocksPerChunk: options.blocksPerChunk },
      inPlace ? [] : [sent.buffer as ArrayBuffer],
    );
    if (result.kind !== 'hash') throw new FerryError('internal', 'compression worker answered a hashing with something else');
    const names = Buffer.from(result.hashes.buffer, result.hashes.byteOffset, result.hashes.byteLength);
    return {
      // An all-zero chunk is named by ZERO_HASH itself, which callers may compare by identity.
      hashes: lengths.map((_, position) => {
        const name = names.subarray(position * HASH_LENGTH, (position + 1) * HASH_LENGTH);
        return name.equals(ZERO_HASH) ? ZERO_HASH : name;
      }),
      fingerprints: lengths.map((_, position) =>
        result.crcs && result.computed[position] ? result.crcs.subarray(position * options.blocksPerChunk, (position + 1) * options.blocksPerChunk) : null,
      ),
    };
  }

  /**
   * A shared window buffer of `bytes` bytes for the caller to read a disk into and hand to `hashWindow`
   * and `compress` in place; `giveWindow` it back when its chunks are sent. Page-aligned, so a raw disk
   * can be read into it with O_DIRECT (direct-io.ts). Kept between cycles (a few of each size): a shared
   * buffer a worker has seen is freed only when that worker collects its garbage, so fresh ones per
   * cycle would pile up.
   */
  takeWindow(bytes: number): Buffer {
    let cache = this.windows.get(bytes);
    if (!cache) this.windows.set(bytes, (cache = new SharedBufferCache(bytes, WINDOWS_KEPT, alignedSharedBuffer)));
    return cache.take(bytes);
  }

  /** Returns a buffer from `takeWindow`. */
  giveWindow(buffer: Buffer): void {
    this.windows.get(buffer.length)?.give(buffer);
  }

  /** Stops the workers; calls still waiting fail. */
  close(): Promise<void> {
    this.windows.clear();
    return this.pool.close();
  }
}
