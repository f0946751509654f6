/**
 * Worker thread of the agent's compression pool (compression-pool.ts): the CPU work of a replication
 * cycle, on other cores than the agent's event loop, which only reads the disk and talks to the server.
 *
 * - `hash`: names a window's chunks (SHA-256, or the zero hash for an all-zero chunk) and computes the
 *   4 KiB block fingerprints (CRC-32) of those that changed, reading the window in place when it lies in
 *   shared memory (the agent's window buffers do).
 * - `compress`: zstd-compresses chunks or delta payloads, read in place from shared memory or from a
 *   copy sent along, and answers with the frames back to back, -1 for a chunk not smaller compressed.
 */
import { parentPort } from 'node:worker_threads';
import { crc32 } from 'node:zlib';
import { compressChunkInto } from '../store/chunk-object.js';
import { hashChunk, HASH_LENGTH, isAllZero } from '../store/chunking.js';
import { toWorkerFailure, type WorkerReply } from '../util/worker-pool.js';

/** Chunks to compress: item i is `lengths[i]` bytes at `offsets[i]` of `shared` (source 0) or of `copied` (source 1). */
export interface CompressRequest {
  kind: 'compress';
  level: number;
  shared: Uint8Array | null;
  copied: Uint8Array | null;
  sources: number[];
  offsets: number[];
  lengths: number[];
}

/**
 * A window of chunks to name: chunk i is `lengths[i]` bytes, back to back from the start of `window`.
 * Fingerprints (one CRC-32 per `blockSize` block, `blocksPerChunk` slots per chunk, unused slots 0) are
 * computed for every non-zero chunk, except one whose hash equals its slot in `previousHashes` (when
 * given: the last point's hashes of these positions, 32 bytes each) — its fingerprints are copied
 * from the last point instead. `blockSize` null: no fingerprints.
 */
export interface HashRequest {
  kind: 'hash';
  window: Uint8Array;
  lengths: number[];
  previousHashes: Uint8Array | null;
  blockSize: number | null;
  blocksPerChunk: number;
}

/** A request without the id the pool adds. */
export type CompressionWorkerRequest = CompressRequest | HashRequest;

/** Frames back to back (-1: not smaller, send raw); or 32-byte names back to back and the CRC slots (null without fingerprints). */
export type CompressionWorkerResult =
  | { kind: 'compress'; frames: Uint8Array; lengths: number[] }
  | { kind: 'hash'; hashes: Uint8Array; crcs: Uint32Array | null; computed: Uint8Array };

/** Reused between requests: the frames are copied out of it, sized to what was written. */
let outputScratch = Buffer.alloc(0);

function compress(request: CompressRequest): CompressionWorkerResult {
  // Frames are written straight into one output buffer: only frames smaller than their chunk are kept,
  // so the chunks' total length bounds it, and the worker makes no garbage per chunk.
  const total = request.lengths.reduce((sum, length) => sum + length, 0);
  if (outputScratch.length < total) outputScratch = Buffer.allocUnsafe(total);
  const output = outputScratch;
  const lengths: number[] = [];
  let written = 0;
  request.lengths.forEach((length, item) => {
    const source = request.sources[item] === 0 ? request.shared! : request.copied!;
    const offset = request.offsets[item]!;
    const frameLength = compressChunkInto(source.subarray(offset, offset + length), request.level, output.subarray(written, written + Math.max(0, length - 1)));
    if (frameLength > 0) written += frameLength;
    lengths.push(frameLength > 0 ? frameLength : -1);
  });
  // A copy of what was written, so the buffer moved back is no larger than the frames.
  return { kind: 'compress', frames: new Uint8Array(output.subarray(0, written)), lengths };
}

function hash(request: HashRequest): CompressionWorkerResult {
  const { window, lengths, previousHashes, blockSize, blocksPerChunk } = request;
  const hashes = new Uint8Array(lengths.length * HASH_LENGTH); // zeros: the zero hash
  const crcs = blockSize ? new Uint32Array(lengths.length * blocksPerChunk) : null;
  const computed = new Uint8Array(lengths.length); // 1 where fingerprints were computed
  let offset = 0;
  lengths.forEach((length, position) => {
    const data = window.subarray(offset, offset + length);
    offset += length;
    if (isAllZero(data)) return;
    const name = hashChunk(data);
    hashes.set(name, position * HASH_LENGTH);
    if (!crcs || !blockSize) return;
    if (previousHashes && Buffer.compare(name, previousHashes.subarray(position * HASH_LENGTH, (position + 1) * HASH_LENGTH)) === 0) return;
    computed[position] = 1;
    const base = position * blocksPerChunk;
    for (let block = 0, at = 0; at < length; block++, at += blockSize) crcs[base + block] = crc32(data.subarray(at, Math.min(at + blockSize, length)));
  });
  return { kind: 'hash', hashes, crcs, computed };
}

parentPort?.on('message', (request: CompressionWorkerRequest & { id: number }) => {
  try {
    const result = request.kind === 'hash' ? hash(request) : compress(request);
    const transfer = result.kind === 'hash' ? [result.hashes.buffer, result.computed.buffer, ...(result.crcs ? [result.crcs.buffer] : [])] : [result.frames.buffer];
    parentPort!.postMessage({ id: request.id, result } satisfies WorkerReply<CompressionWorkerResult>, transfer as ArrayBuffer[]);
  } catch (error) {
    parentPort!.postMessage({ id: request.id, error: toWorkerFailure(error) } satisfies WorkerReply<CompressionWorkerResult>);
  }
});
