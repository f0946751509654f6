/**
 * The checks a chunk passes on its way into the store and out of it, as pure functions shared by the
 * chunk store's event loop (small batches) and its codec workers (chunk-codec-worker.ts), so both
 * refuse the same chunks with the same errors:
 *
 * - into the store (`ingestChunk`): an uploaded payload is inflated when it came as a zstd frame, must
 *   hash to its name and must not be all zeros, then is encoded as the stored object;
 * - out of it (`decodeStoredChunk`): a stored object is decoded (decrypted, inflated) and must hash to
 *   its name.
 */
import { FerryError } from '../errors.js';
import { ChunkCodec, compressChunkInto, decodeChunkObject, encodeChunkObject, inflateZstdFrame, MAX_CHUNK_PAYLOAD, type ObjectCodec, plainObjectHeader } from './chunk-object.js';
import { hashChunk, isAllZero } from './chunking.js';

/** One uploaded chunk as `ingestChunk` takes it. */
export interface IngestInput {
  /** The name it was sent under (SHA-256 hex, already checked to be one). */
  hashHex: string;
  /** The chunk's bytes, or a zstd frame of them when `compressed`. */
  payload: Uint8Array;
  compressed: boolean;
  /** The backend key of its stored object (the encryption binds to it). */
  objectKey: string;
  /** The base chunk it was rebuilt from, when it came as a delta (named in a hash mismatch). */
  rebuiltFrom?: string | null;
}

/**
 * The stored object for an uploaded chunk under `codec`. Throws invalid-request for a zstd frame that
 * does not inflate (within 64 MiB) or an all-zero chunk, chunk-hash-mismatch (saying so when it was
 * rebuilt from a delta) when the bytes do not hash to the name: the batch is refused, nothing stored.
 * `scratch`, when given, receives the inflated bytes (the object returned never refers to it), so a
 * worker checking many chunks makes no garbage of them.
 */
export function ingestChunk(input: IngestInput, codec: ObjectCodec, scratch?: Buffer): Buffer {
  const data = checkUpload(input, scratch);
  return encodeChunkObject(data, input.objectKey, codec, input.compressed ? input.payload : undefined);
}

/**
 * What an upload is stored as: `ChunkCodec.None` or `ChunkCodec.Zstd` when its object is that codec's
 * plain header followed by the payload exactly as uploaded (`plainObjectHeader`: no copy needed), else
 * the object's bytes as parts to join: at most MAX_OBJECT_OVERHEAD more than the larger of the payload
 * and the chunk (a store that does not compress keeps an uploaded frame's chunk inflated).
 * The parts may view a scratch buffer of this thread's: valid until the next call, so copy them before
 * that. Same checks and errors as `ingestChunk`, same objects once joined.
 */
export function ingestChunkParts(input: IngestInput, codec: ObjectCodec, scratch?: Buffer): typeof ChunkCodec.None | typeof ChunkCodec.Zstd | Uint8Array[] {
  const data = checkUpload(input, scratch);
  if (codec.dataKey === null && codec.compressionLevel !== null) {
    // The rules of encodeChunkObject: a checked frame smaller than the chunk is kept as it is; a chunk
    // that does not compress is stored raw.
    if (input.compressed && input.payload.length < data.length) return ChunkCodec.Zstd;
    if (!input.compressed) {
      // Compressed into a reused scratch buffer: most raw uploads are incompressible (the agent found
      // them so), and a fresh buffer per attempt would be garbage by the megabyte.
      if (compressScratch.length < data.length) compressScratch = Buffer.allocUnsafe(data.length);
      const length = compressChunkInto(data, codec.compressionLevel, compressScratch.subarray(0, data.length - 1));
      return length > 0 ? [zstdHeader, compressScratch.subarray(0, length)] : ChunkCodec.None;
    }
  }
  if (codec.dataKey === null && codec.compressionLevel === null && !input.compressed) return ChunkCodec.None;
  return [encodeChunkObject(data, input.objectKey, codec, input.compressed ? input.payload : undefined)];
}

let compressScratch = Buffer.alloc(0);
const zstdHeader = plainObjectHeader(ChunkCodec.Zstd);

/** The upload's bytes (inflated into `scratch` when given) after the checks `ingestChunk` documents. */
function checkUpload(input: IngestInput, scratch?: Buffer): Uint8Array {
  const { hashHex, payload, compressed, rebuiltFrom } = input;
  let data: Uint8Array = payload;
  if (compressed) {
    try {
      data = inflateZstdFrame(payload, `uploaded chunk ${hashHex}`, MAX_CHUNK_PAYLOAD, scratch);
    } catch (error) {
      throw new FerryError('invalid-request', `${(error as Error).message}; batch rejected, nothing stored`, { cause: error });
    }
  }
  const actual = hashChunk(data).toString('hex');
  if (actual !== hashHex) {
    const rebuilt = rebuiltFrom ? ` once rebuilt from its changes to chunk ${rebuiltFrom}` : '';
    throw new FerryError('chunk-hash-mismatch', `chunk sent as ${hashHex} hashes to ${actual}${rebuilt}; rejected, nothing stored`, {
      details: { expected: hashHex, actual, ...(rebuiltFrom ? { base: rebuiltFrom } : {}) },
    });
  }
  if (isAllZero(data)) throw new FerryError('invalid-request', `chunk ${hashHex} is all zeros; zero chunks are never stored, index them as zero`);
  return data;
}

/**
 * The bytes of the stored chunk object `object` (under `objectKey`), checked against the chunk's name
 * `hashHex` and, when given, its length. Throws corrupt-data (`decodeChunkObject`'s, or "does not
 * match its hash" or "is N bytes, not the M bytes expected", with `details.hash`). With `into` (at least `expectedLength` bytes), the bytes are
 * placed there, inflated straight into it when compressed, and the result is a view of it.
 */
export function decodeStoredChunk(object: Buffer, objectKey: string, hashHex: string, codec: ObjectCodec, expectedLength?: number, into?: Buffer): Buffer {
  const maxLength = expectedLength === undefined ? MAX_CHUNK_PAYLOAD : Math.min(MAX_CHUNK_PAYLOAD, expectedLength);
  const target = into && expectedLength !== undefined ? into.subarray(0, expectedLength) : undefined;
  const data = decodeChunkObject(object, objectKey, codec, maxLength, target);
  if (expectedLength !== undefined && data.length !== expectedLength) {
    throw new FerryError('corrupt-data', `stored chunk ${hashHex} is ${data.length} bytes, not the ${expectedLength} bytes expected`, { details: { hash: hashHex } });
  }
  if (hashChunk(data).toString('hex') !== hashHex) {
    throw new FerryError('corrupt-data', `stored chunk ${hashHex} does not match its hash`, { details: { hash: hashHex } });
  }
  if (!target) return data;
  if (data.buffer !== target.buffer || data.byteOffset !== target.byteOffset) data.copy(target);
  return target;
}
