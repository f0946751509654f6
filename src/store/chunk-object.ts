/**
 * The bytes a chunk is stored as: a 4-byte header ("FC", format version, codec) then the payload.
 * Codec 0 stores the chunk as it is; later codecs (compression, encryption) add numbers here, so data
 * written today stays readable.
 */
import { FerryError } from '../errors.js';

const MAGIC_0 = 0x46; // 'F'
const MAGIC_1 = 0x43; // 'C'
const FORMAT_VERSION = 1;

/** Codecs a stored chunk may use (the fourth header byte). */
export const ChunkCodec = { None: 0 } as const;

/** Wraps chunk bytes into a stored object. */
export function encodeChunkObject(data: Uint8Array): Buffer {
  const header = Buffer.from([MAGIC_0, MAGIC_1, FORMAT_VERSION, ChunkCodec.None]);
  return Buffer.concat([header, data]);
}

/** Unwraps a stored object to the chunk bytes; throws corrupt-data for anything else. */
export function decodeChunkObject(object: Buffer, key: string): Buffer {
  if (object.length < 4 || object[0] !== MAGIC_0 || object[1] !== MAGIC_1) {
    throw new FerryError('corrupt-data', `stored chunk ${key} has no valid header`);
  }
  if (object[2] !== FORMAT_VERSION) {
    throw new FerryError('corrupt-data', `stored chunk ${key} has unknown format version ${object[2]}`);
  }
  if (object[3] !== ChunkCodec.None) {
    throw new FerryError('corrupt-data', `stored chunk ${key} uses unknown codec ${object[3]}`);
  }
  return object.subarray(4);
}
