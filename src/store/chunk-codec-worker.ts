/**
 * Worker thread of the store's chunk codec pool (chunk-codec-pool.ts): the CPU-heavy half of reading
 * and writing chunks, off the server's event loop.
 *
 * - `decode` (restoring a disk): stored chunk objects back to back -> each decrypted (encrypted store),
 *   inflated and checked against its name, written at its place in a shared output buffer.
 * - `ingest` (storing an upload): chunk payloads back to back -> each inflated when it came as a zstd
 *   frame, checked (SHA-256 equals its name, not all zeros) and encoded as a stored object under the
 *   store's codec (the uploaded frame kept as is when smaller, compressed otherwise, encrypted), written
 *   into the caller's shared output; an object that is a plain header and the payload as uploaded is
 *   not written, only said so.
 *
 * The errors are those of the main-thread code it replaces (corrupt-data, chunk-hash-mismatch,
 * invalid-request, with the same messages and details); the pool rethrows them as FerryErrors.
 */
import { parentPort } from 'node:worker_threads';
import { decodeStoredChunk, ingestChunkParts } from './chunk-checks.js';
import type { ObjectCodec } from './chunk-object.js';
import { FerryError } from '../errors.js';
import { toWorkerFailure, type WorkerReply } from '../util/worker-pool.js';

/** Decode stored objects (`objects`, back to back) into `output` at `outputAt`. */
export interface DecodeRequest {
  kind: 'decode';
  objects: Uint8Array;
  /** Per chunk: where its object lies in `objects`, its object key (errors, authentication), its name, its length and where it goes in `output`. */
  at: number[];
  objectLengths: number[];
  objectKeys: string[];
  hashHexes: string[];
  chunkLengths: number[];
  outputAt: number[];
  /** Usually a view of a SharedArrayBuffer the caller reads afterwards; written in place. */
  output: Uint8Array;
  dataKey: Uint8Array | null;
}

/** Check and encode uploaded chunks (`payloads`, back to back). */
export interface IngestRequest {
  kind: 'ingest';
  payloads: Uint8Array;
  at: number[];
  payloadLengths: number[];
  hashHexes: string[];
  objectKeys: string[];
  /** True where the payload is a zstd frame of the chunk (checked by inflating it), false where it is the chunk. */
  compressed: boolean[];
  /** The base chunk a payload was rebuilt from (named in a hash mismatch), or null. */
  rebuiltFrom: (string | null)[];
  compressionLevel: number | null;
  dataKey: Uint8Array | null;
  /**
   * Where the objects go, back to back from its start: a view of a SharedArrayBuffer the caller owns
   * (no buffer is made per batch and moved back, to die in the caller's heap), with room for every
   * object: per chunk, the larger of its payload and the chunk, plus MAX_OBJECT_OVERHEAD.
   */
  output: Uint8Array;
}

/** A request without the id the pool adds. */
export type ChunkCodecRequest = DecodeRequest | IngestRequest;

/**
 * `decode`: nothing (the chunks are in the output). `ingest`: per chunk, in `asUploaded`, the plain codec
 * (0 none, 1 zstd) whose header followed by the payload as uploaded is its object, or -1 when its
 * object is in the request's `output` (back to back, `objectLengths` each; 0 for the others).
 */
export type ChunkCodecResult = { kind: 'decode' } | { kind: 'ingest'; objectLengths: number[]; asUploaded: number[] };

function codecOf(request: { compressionLevel?: number | null; dataKey: Uint8Array | null }): ObjectCodec {
  return { compressionLevel: request.compressionLevel ?? null, dataKey: request.dataKey ? Buffer.from(request.dataKey) : null };
}

function decode(request: DecodeRequest): ChunkCodecResult {
  const codec = codecOf(request);
  const objects = Buffer.from(request.objects.buffer, request.objects.byteOffset, request.objects.byteLength);
  const output = Buffer.from(request.output.buffer, request.output.byteOffset, request.output.byteLength);
  request.hashHexes.forEach((hashHex, position) => {
    const at = request.at[position]!;
    const object = objects.subarray(at, at + request.objectLengths[position]!);
    // Inflated straight into its place in the shared output: no copy, no garbage.
    decodeStoredChunk(object, request.objectKeys[position]!, hashHex, codec, request.chunkLengths[position]!, output.subarray(request.outputAt[position]!));
  });
  return { kind: 'decode' };
}

/** Uploaded frames are inflated into this (64 KiB chunks fit; larger ones get their own buffer). */
const inflateScratch = Buffer.allocUnsafe(64 * 1024);

function ingest(request: IngestRequest): ChunkCodecResult {
  const codec = codecOf(request);
  const payloads = Buffer.from(request.payloads.buffer, request.payloads.byteOffset, request.payloads.byteLength);
  const output = request.output;
  const objectLengths: number[] = [];
  const asUploaded: number[] = [];
  let written = 0;
  request.hashHexes.forEach((hashHex, position) => {
    const at = request.at[position]!;
    const payload = payloads.subarray(at, at + request.payloadLengths[position]!);
    const input = { hashHex, payload, compressed: request.compressed[position]!, objectKey: request.objectKeys[position]!, rebuiltFrom: request.rebuiltFrom[position] };
    const stored = ingestChunkParts(input, codec, inflateScratch);
    if (typeof stored === 'number') {
      asUploaded.push(stored);
      objectLengths.push(0);
      return;
    }
    // Copied at once: the parts may view this thread's scratch buffers, which the next chunk reuses.
    const length = stored.reduce((total, part) => total + part.length, 0);
    if (written + length > output.length) throw new FerryError('internal', `chunk ${hashHex}'s stored object (${length} bytes) does not fit the ingest output`);
    for (const part of stored) {
      output.set(part, written);
      written += part.length;
    }
    asUploaded.push(-1);
    objectLengths.push(length);
  });
  return { kind: 'ingest', objectLengths, asUploaded };
}

parentPort?.on('message', (request: ChunkCodecRequest & { id: number }) => {
  try {
    const result = request.kind === 'decode' ? decode(request) : ingest(request);
    parentPort!.postMessage({ id: request.id, result } satisfies WorkerReply<ChunkCodecResult>);
  } catch (error) {
    parentPort!.postMessage({ id: request.id, error: toWorkerFailure(error) } satisfies WorkerReply<ChunkCodecResult>);
  }
});
