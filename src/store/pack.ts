/**
 * Pack files: many stored chunk objects in one backend object, so that storing a batch of chunks costs
 * one write and one fsync instead of one per chunk, and an object store later gets a few large objects
 * instead of millions of tiny ones (restic and borg keep their data the same way).
 *
 * Layout of the object at packs/<first two hex>/<32 hex>:
 *
 *   offset 0       "FRYPACK1"
 *   offset 8       entries: each chunk's stored object (chunk-object.ts: header, then the plain,
 *                  compressed and/or encrypted payload), back to back
 *   offset D       directory: itself a stored object (so encrypted in an encrypted store, bound to the
 *                  pack's key) whose payload is
 *                    u32le count, then per entry: object name (32 bytes) | u32le offset | u32le length
 *   last 16 bytes  trailer: u32le directory length | u32le 0 (reserved) | "FRYPEND1"
 *
 * An entry is byte for byte what a loose chunk object at chunks/<xx>/<name> holds, authenticated under
 * that loose key, so a chunk moves between packs (repacking) or from a loose file into a pack without
 * being decoded. The directory lets the catalog be rebuilt from the trailer and directory alone: two
 * small range reads per pack, never the pack's data.
 */
import { randomBytes } from 'node:crypto';
import { FerryError } from '../errors.js';
import type { StoreBackend } from './backend.js';
import { decodeChunkObject, encodeChunkObject, type ObjectCodec } from './chunk-object.js';

const PACK_MAGIC = Buffer.from('FRYPACK1', 'latin1');
const TRAILER_MAGIC = Buffer.from('FRYPEND1', 'latin1');
const TRAILER_LENGTH = 16;
const DIRECTORY_ENTRY_LENGTH = 40;
/** Object names are 32 bytes: a chunk's SHA-256, or its keyed name in an encrypted store. */
const NAME_LENGTH = 32;

/** Offsets are u32: a pack stays well below 4 GiB (the writer closes packs at `MAX_PACK_BYTES`). */
export const MAX_PACK_BYTES = 256 * 1024 * 1024;

/** Where one chunk object lies inside a pack. */
export interface PackEntry {
  /** The chunk's object name as 64 hex characters (its hash, or keyed hash in an encrypted store). */
  name: string;
  offset: number;
  length: number;
}

/** A new random pack key: packs/<xx>/<32 hex>. */
export function newPackKey(): string {
  const id = randomBytes(16).toString('hex');
  return `packs/${id.slice(0, 2)}/${id}`;
}

/** True for keys `newPackKey` makes (the catalog loads these and nothing else under packs/). */
export function isPackKey(key: string): boolean {
  return /^packs\/[0-9a-f]{2}\/[0-9a-f]{32}$/.test(key) && key.slice(6, 8) === key.slice(9, 11);
}

/** A pack ready to store: its bytes as parts to write one after another, its size, and its entries. */
export interface BuiltPack {
  parts: Buffer[];
  size: number;
  entries: PackEntry[];
  /** The parts joined into one buffer (a copy: for tests and tools, not the write path). */
  readonly bytes: Buffer;
}

/**
 * Builds a pack holding `objects` (each an already encoded chunk object under its name, whole or as
 * parts to join), with its directory encoded under `codec` and bound to `packKey`. The objects are not copied: the parts refer to
 * them, so a pack is written without ever being joined in memory.
 */
export function buildPack(packKey: string, objects: readonly { name: string; object: Uint8Array | readonly Uint8Array[] }[], codec: ObjectCodec): BuiltPack {
  const entries: PackEntry[] = [];
  const parts: Buffer[] = [PACK_MAGIC];
  let offset = PACK_MAGIC.length;
  const directory = Buffer.alloc(4 + objects.length * DIRECTORY_ENTRY_LENGTH);
  directory.writeUInt32LE(objects.length, 0);
  objects.forEach(({ name, object }, position) => {
    const at = 4 + position * DIRECTORY_ENTRY_LENGTH;
    if (Buffer.from(name, 'hex').copy(directory, at) !== NAME_LENGTH) throw new FerryError('internal', `pack entry name '${name}' is not 32 bytes of hex`);
    const objectParts = object instanceof Uint8Array ? [object] : object;
    const length = objectParts.reduce((total, part) => total + part.length, 0);
    directory.writeUInt32LE(offset, at + NAME_LENGTH);
    directory.writeUInt32LE(length, at + NAME_LENGTH + 4);
    entries.push({ name, offset, length });
    for (const part of objectParts) parts.push(Buffer.from(part.buffer, part.byteOffset, part.byteLength));
    offset += length;
  });
  const encodedDirectory = encodeChunkObject(directory, packKey, codec);
  const trailer = Buffer.alloc(TRAILER_LENGTH);
  trailer.writeUInt32LE(encodedDirectory.length, 0);
  TRAILER_MAGIC.copy(trailer, 8);
  parts.push(encodedDirectory, trailer);
  const size = offset + encodedDirectory.length + TRAILER_LENGTH;
  if (size > MAX_PACK_BYTES) throw new FerryError('internal', `pack of ${size} bytes exceeds ${MAX_PACK_BYTES}`);
  return {
    parts,
    size,
    entries,
    get bytes() {
      return Buffer.concat(parts);
    },
  };
}

/**
 * Reads a pack's directory with two range reads (trailer, then directory) given the pack's size.
 * Throws corrupt-data naming the pack when the trailer, the directory or an entry's bounds are wrong
 * (a truncated or damaged pack), not-found when the pack is gone, io-error when the medium fails.
 */
export async function readPackDirectory(backend: StoreBackend, packKey: string, packSize: number, codec: ObjectCodec): Promise<PackEntry[]> {
  const corrupt = (problem: string) => new FerryError('corrupt-data', `pack ${packKey} is damaged: ${problem}`, { details: { pack: packKey } });
  if (packSize < PACK_MAGIC.length + TRAILER_LENGTH) throw corrupt(`${packSize} bytes is too short to be a pack`);
  const trailer = await backend.getRange(packKey, packSize - TRAILER_LENGTH, TRAILER_LENGTH);
  if (!trailer.subarray(8).equals(TRAILER_MAGIC)) throw corrupt('no pack trailer at its end (truncated?)');
  const directoryLength = trailer.readUInt32LE(0);
  const directoryStart = packSize - TRAILER_LENGTH - directoryLength;
  if (directoryStart < PACK_MAGIC.length) throw corrupt(`its trailer says the directory is ${directoryLength} bytes, more than the pack holds`);
  const directory = decodeChunkObject(await backend.getRange(packKey, directoryStart, directoryLength), packKey, codec, MAX_PACK_BYTES);
  if (directory.length < 4) throw corrupt('its directory is empty');
  const count = directory.readUInt32LE(0);
  if (directory.length !== 4 + count * DIRECTORY_ENTRY_LENGTH) throw corrupt(`its directory says ${count} entries but holds ${directory.length} bytes`);
  const entries: PackEntry[] = [];
  for (let position = 0; position < count; position++) {
    const at = 4 + position * DIRECTORY_ENTRY_LENGTH;
    const entry = {
      name: directory.subarray(at, at + NAME_LENGTH).toString('hex'),
      offset: directory.readUInt32LE(at + NAME_LENGTH),
      length: directory.readUInt32LE(at + NAME_LENGTH + 4),
    };
    if (entry.offset < PACK_MAGIC.length || entry.offset + entry.length > directoryStart) {
      throw corrupt(`entry ${position} (${entry.name}) lies outside the pack's data (${entry.offset}+${entry.length})`);
    }
    entries.push(entry);
  }
  return entries;
}
