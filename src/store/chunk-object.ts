/**
 * The bytes a stored object (a chunk, or a disk index) is kept as: a 4-byte header then the payload.
 *
 *   offset 0  "FC" (0x46 0x43)
 *   offset 2  format version, 1
 *   offset 3  codec, two flag bits:  bit 0 (1) = payload is zstd-compressed
 *                                    bit 1 (2) = payload is AES-256-GCM encrypted
 *             so 0 = as is, 1 = zstd, 2 = aes-256-gcm, 3 = aes-256-gcm over zstd. Other bits: unknown.
 *   offset 4  payload: the bytes (codec 0), a zstd frame (1), or, when encrypted,
 *             nonce (12) | ciphertext | GCM tag (16), the ciphertext being the bytes or a zstd frame.
 *
 * Every codec ever written stays readable; objects of codec 0 from before compression existed are read as
 * they always were. Compression is skipped when it does not make the object smaller (random data,
 * already-compressed files), so incompressible chunks cost nothing to read back. Encryption uses a fresh
 * random nonce per object, and authenticates the header together with the object's key as additional
 * data, so an object moved to another key or given another codec byte fails authentication.
 *
 * zstd level: measured on this project's 2-core reference machine (AMD EPYC), 64 KiB chunks, one core.
 * On text and on binaries alone (first measurement):
 *   level   text (source, docs)                 binaries (/usr/bin, .so)
 *   1       ratio 3.87, 290-320 MiB/s           ratio 2.10, 290-310 MiB/s
 *   3       ratio 4.11, 225-240 MiB/s           ratio 2.21, 170-205 MiB/s
 *   6       ratio 4.47, 70-77 MiB/s             ratio 2.35, 53-65 MiB/s
 * On the benchmark's mixed ext4 image (text, binaries, duplicates; bench/disk-image.ts), 161 MiB of
 * non-zero chunks, under load from other work:
 *   level 3  ratio 1.67, 123 MiB/s     level 1  ratio 1.62, 245 MiB/s     level -1  ratio 1.45, 254 MiB/s
 *   level -3 ratio 1.37, 376 MiB/s     level -5 ratio 1.32, 485 MiB/s
 *   decompression 1100-1500 MiB/s at every level; SHA-256 ~1000 MiB/s.
 * Level 1 compresses twice as fast as level 3 for a store 3% larger, and compression is the most
 * expensive step of replication (more than hashing), so new stores and agents use level 1. Random data
 * is detected as incompressible at 2700+ MiB/s and stored raw. Stores created with another level keep it.
 *
 * Agents compress the chunks they send (agent/compression-pool.ts); the server checks such a zstd frame
 * by inflating it and hashing the result, then stores the frame as it came (`encodeChunkObject`'s
 * `zstdFrame`), so a chunk is compressed once, where the CPU is, and crosses the network compressed.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import zstd from 'zstd-napi/binding.js';
import { FerryError } from '../errors.js';

const MAGIC_0 = 0x46; // 'F'
const MAGIC_1 = 0x43; // 'C'
const FORMAT_VERSION = 1;
const HEADER_LENGTH = 4;
const NONCE_LENGTH = 12;
const TAG_LENGTH = 16;
/**
 * Most bytes a stored object adds to what it stores (the chunk, or a zstd frame of it no larger than
 * the chunk): header, nonce and tag. Callers that write objects into buffers of their own size them with it.
 */
export const MAX_OBJECT_OVERHEAD = HEADER_LENGTH + NONCE_LENGTH + TAG_LENGTH;

/** Codecs a stored object may use (the fourth header byte): flag bits, combined. */
export const ChunkCodec = { None: 0, Zstd: 1, Aes256Gcm: 2, Aes256GcmZstd: 3 } as const;
const COMPRESSED = 1;
const ENCRYPTED = 2;

export { DEFAULT_ZSTD_LEVEL } from './compression-level.js';

/** Largest payload `decodeChunkObject` inflates to unless told otherwise: the largest chunk size. */
export const MAX_CHUNK_PAYLOAD = 64 * 1024 * 1024;

/**
 * How a store encodes new objects and decodes stored ones. Decoding reads every codec whatever
 * `compressionLevel` says; encrypted objects need `dataKey`.
 */
export interface ObjectCodec {
  /** zstd level for new objects, or null to store them uncompressed. */
  compressionLevel: number | null;
  /** 32-byte AES-256-GCM key: new objects are encrypted with it and encrypted objects need it. Null for a plain store. */
  dataKey: Buffer | null;
}

/** Neither compressed nor encrypted: the format of stores from before compression existed. */
export const PLAIN_CODEC: ObjectCodec = Object.freeze({ compressionLevel: null, dataKey: null });

// One compression and one decompression context, reused: the calls are synchronous, so never shared at once.
let compressionContext: zstd.CCtx | null = null;
let decompressionContext: zstd.DCtx | null = null;

/**
 * Wraps bytes into a stored object under `codec`. `objectKey` is the backend key the object will be
 * stored under; an encrypted object is bound to it (decoding under another key fails). Compression is
 * used only when it makes the payload smaller, and only after the compressed frame has been decompressed
 * again and found equal to `data`, so a compressor fault can never put wrong bytes in the store.
 * `zstdFrame`, when given, must be a zstd frame that inflates exactly to `data` (the caller checked it,
 * as the server does for uploads); it is stored instead of compressing `data` again when it is smaller.
 */
export function encodeChunkObject(data: Uint8Array, objectKey = '', codec: ObjectCodec = PLAIN_CODEC, zstdFrame?: Uint8Array): Buffer {
  let flags = 0;
  let payload: Uint8Array = data;
  if (codec.compressionLevel !== null && data.length > 0) {
    // A frame the caller has already proven to inflate to `data` (see `inflateZstdFrame`) is used as is.
    const compressed = zstdFrame && zstdFrame.length < data.length ? zstdFrame : compress(data, codec.compressionLevel);
    if (compressed) {
      payload = compressed;
      flags |= COMPRESSED;
    }
  }
  if (codec.dataKey === null) return Buffer.concat([header(flags), payload]);

  if (objectKey === '') throw new FerryError('internal', 'an encrypted object needs the key it is stored under');
  flags |= ENCRYPTED;
  const head = header(flags);
  const nonce = randomBytes(NONCE_LENGTH);
  const cipher = createCipheriv('aes-256-gcm', codec.dataKey, nonce, { authTagLength: TAG_LENGTH });
  cipher.setAAD(associatedData(head, objectKey));
  const ciphertext = Buffer.concat([cipher.update(payload), cipher.final()]);
  return Buffer.concat([head, nonce, ciphertext, cipher.getAuthTag()]);
}

/**
 * Unwraps a stored object to its bytes. `objectKey` names the object in errors and must be the key it
 * was stored under (encrypted objects are bound to it). Throws corrupt-data for a bad header, an unknown
 * codec, an encrypted object without `codec.dataKey`, a failed authentication (damaged or tampered
 * ciphertext, or another key), an unencrypted object when `codec.dataKey` is set (an encrypted store
 * holds nothing else), or a compressed payload that is malformed or would inflate beyond
 * `maxLength` bytes. Does not check the bytes against their name: callers hash them. A compressed
 * payload is inflated into `inflateInto` when given and large enough (the result is then a view of it).
 */
export function decodeChunkObject(object: Buffer, objectKey: string, codec: ObjectCodec = PLAIN_CODEC, maxLength = MAX_CHUNK_PAYLOAD, inflateInto?: Buffer): Buffer {
  if (object.length < HEADER_LENGTH || object[0] !== MAGIC_0 || object[1] !== MAGIC_1) {
    throw new FerryError('corrupt-data', `stored object ${objectKey} has no valid header`);
  }
  if (object[2] !== FORMAT_VERSION) {
    throw new FerryError('corrupt-data', `stored object ${objectKey} has unknown format version ${object[2]}`);
  }
  const flags = object[3]!;
  if ((flags & ~(COMPRESSED | ENCRYPTED)) !== 0) {
    throw new FerryError('corrupt-data', `stored object ${objectKey} uses unknown codec ${flags}`);
  }
  if (codec.dataKey !== null && !(flags & ENCRYPTED)) {
    // An encrypted store never writes anything else, so a plain object there was put by someone else.
    throw new FerryError('corrupt-data', `stored object ${objectKey} is not encrypted, in an encrypted store`);
  }
  let payload = object.subarray(HEADER_LENGTH);
  if (flags & ENCRYPTED) payload = decrypt(object, payload, objectKey, codec.dataKey);
  if (flags & COMPRESSED) payload = decompress(payload, `stored object ${objectKey}`, maxLength, inflateInto);
  else if (payload.length > maxLength) {
    throw new FerryError('corrupt-data', `stored object ${objectKey} holds ${payload.length} bytes, more than the ${maxLength} allowed`);
  }
  return payload;
}

/** The codec byte of a stored object (for tests and store statistics); null when the header is not valid. */
export function codecOf(object: Uint8Array): number | null {
  return object.length >= HEADER_LENGTH && object[0] === MAGIC_0 && object[1] === MAGIC_1 && object[2] === FORMAT_VERSION ? object[3]! : null;
}

function header(flags: number): Buffer {
  return Buffer.from([MAGIC_0, MAGIC_1, FORMAT_VERSION, flags]);
}

/**
 * The 4-byte header of an unencrypted stored object of `codec` (ChunkCodec.None or ChunkCodec.Zstd):
 * followed by the bytes, or by a zstd frame of them, it is the whole object. Lets a caller that holds
 * the payload already (an upload) store the object as two parts, without copying the payload.
 */
export function plainObjectHeader(codec: typeof ChunkCodec.None | typeof ChunkCodec.Zstd): Buffer {
  return header(codec);
}

function associatedData(head: Uint8Array, objectKey: string): Buffer {
  return Buffer.concat([head, Buffer.from(objectKey, 'utf8')]);
}

/** A zstd frame of `data` if it is smaller than `data` and decompresses back to it exactly; null otherwise. */
function compress(data: Uint8Array, level: number): Buffer | null {
  compressionContext ??= new zstd.CCtx();
  const frame = Buffer.allocUnsafe(zstd.compressBound(data.length));
  const length = compressionContext.compress(frame, data, level);
  if (length >= data.length) return null; // incompressible: storing it raw is smaller and faster to read
  const compressed = frame.subarray(0, length);
  decompressionContext ??= new zstd.DCtx();
  const check = Buffer.allocUnsafe(data.length);
  let roundTrip: number;
  try {
    roundTrip = decompressionContext.decompress(check, compressed);
  } catch {
    return null;
  }
  // A mismatch would be a compressor bug; the raw bytes are always right, so store those instead.
  if (roundTrip !== data.length || !check.equals(data)) return null;
  return Buffer.from(compressed); // a copy, so the compressBound-sized buffer is not kept alive
}

/**
 * Inflates a zstd frame of at most `maxLength` bytes (its declared content size is checked before any
 * allocation). Throws corrupt-data naming `what` for a malformed frame, one without a content size or
 * one larger than `maxLength`. With `scratch` large enough, the bytes are inflated into it and the
 * result is a view of it (valid until the caller reuses it); otherwise into a new buffer.
 */
export function inflateZstdFrame(frame: Uint8Array, what: string, maxLength = MAX_CHUNK_PAYLOAD, scratch?: Buffer): Buffer {
  return decompress(frame, what, maxLength, scratch);
}

/**
 * A zstd frame of `data` at `level`, or null when compression would not make it smaller (store it raw).
 * Checked by a round trip like stored objects, so a returned frame always inflates back to `data`.
 */
export function compressChunk(data: Uint8Array, level: number): Buffer | null {
  return data.length > 0 ? compress(data, level) : null;
}

/**
 * The size a zstd frame says it inflates to, checked without inflating it: throws corrupt-data naming
 * `what` for a malformed frame header, one without a content size or one larger than `maxLength`.
 * (Inflating later also checks that the frame holds exactly that many bytes.)
 */
export function zstdFrameContentSize(frame: Uint8Array, what: string, maxLength = MAX_CHUNK_PAYLOAD): number {
  let contentSize: number | null;
  try {
    contentSize = zstd.getFrameContentSize(frame);
  } catch (error) {
    throw new FerryError('corrupt-data', `${what} has a malformed zstd frame: ${(error as Error).message}`);
  }
  if (contentSize === null || contentSize > maxLength) {
    throw new FerryError('corrupt-data', `${what} has a zstd frame of ${contentSize === null ? 'unknown' : contentSize} bytes (at most ${maxLength} allowed)`);
  }
  return contentSize;
}

/**
 * Like `compressChunk`, but writes the frame into `output` (from its start) instead of allocating one:
 * returns the frame's length, or -1 when compression would not make `data` smaller than `output` allows
 * (give it `data.length - 1` bytes or more to get every frame smaller than `data`). Checked by a round
 * trip into a reused scratch buffer, so a returned frame always inflates back to `data`. For callers that
 * compress many chunks (the agent's workers) and would otherwise make garbage of three buffers a chunk.
 */
export function compressChunkInto(data: Uint8Array, level: number, output: Uint8Array): number {
  if (data.length === 0 || output.length === 0) return -1;
  compressionContext ??= new zstd.CCtx();
  let length: number;
  try {
    length = compressionContext.compress(output, data, level);
  } catch {
    return -1; // the frame does not fit: not smaller than allowed
  }
  if (length >= data.length) return -1;
  decompressionContext ??= new zstd.DCtx();
  if (roundTripScratch.length < data.length) roundTripScratch = Buffer.allocUnsafe(Math.max(data.length, 64 * 1024));
  const check = roundTripScratch.subarray(0, data.length);
  try {
    if (decompressionContext.decompress(check, output.subarray(0, length)) !== data.length) return -1;
  } catch {
    return -1;
  }
  return Buffer.compare(check, data) === 0 ? length : -1;
}

let roundTripScratch = Buffer.alloc(0);

/** Inflates `frame`; `what` names it in errors ("stored object chunks/ab/...", "uploaded chunk ..."). */
function decompress(frame: Uint8Array, what: string, maxLength: number, scratch?: Buffer): Buffer {
  // Every frame this code writes records its size; checking it first keeps a damaged or hostile frame
  // from making us allocate more than the largest object there can be.
  const contentSize = zstdFrameContentSize(frame, what, maxLength);
  decompressionContext ??= new zstd.DCtx();
  const output = scratch && scratch.length >= contentSize ? scratch.subarray(0, contentSize) : Buffer.allocUnsafe(contentSize);
  let written: number;
  try {
    written = decompressionContext.decompress(output, frame);
  } catch (error) {
    throw new FerryError('corrupt-data', `${what} does not decompress: ${(error as Error).message}`);
  }
  if (written !== contentSize) {
    throw new FerryError('corrupt-data', `${what} decompressed to ${written} bytes, its frame says ${contentSize}`);
  }
  return output;
}

function decrypt(object: Buffer, payload: Buffer, objectKey: string, dataKey: Buffer | null): Buffer {
  if (dataKey === null) {
    throw new FerryError('corrupt-data', `stored object ${objectKey} is encrypted, but the store was opened as unencrypted`);
  }
  if (payload.length < NONCE_LENGTH + TAG_LENGTH) {
    throw new FerryError('corrupt-data', `stored object ${objectKey} is too short to be encrypted data (${payload.length} bytes)`);
  }
  const nonce = payload.subarray(0, NONCE_LENGTH);
  const tag = payload.subarray(payload.length - TAG_LENGTH);
  const decipher = createDecipheriv('aes-256-gcm', dataKey, nonce, { authTagLength: TAG_LENGTH });
  decipher.setAAD(associatedData(object.subarray(0, HEADER_LENGTH), objectKey));
  decipher.setAuthTag(tag);
  const plain = decipher.update(payload.subarray(NONCE_LENGTH, payload.length - TAG_LENGTH));
  try {
    decipher.final();
  } catch {
    // The store's key was checked when it was opened, so a failure here is the object, not the key.
    throw new FerryError('corrupt-data', `stored object ${objectKey} failed authentication: it was damaged, altered, or moved from another key`);
  }
  return plain;
}
