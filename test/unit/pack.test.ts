/**
 * Pack files (src/store/pack.ts): the layout buildPack writes and readPackDirectory reads back, under
 * every codec a store can have (plain, zstd, encrypted, both); pack keys; and hostile or damaged packs
 * (truncated, a wrong trailer, a directory or an entry pointing outside the pack, a flipped byte in an
 * encrypted directory), each of which must give corrupt-data naming the pack, never a crash or an
 * entry that points outside the pack's data.
 */
import { randomBytes } from 'node:crypto';
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { FerryError } from '../../src/errors.js';
import type { ObjectStat, StoreBackend } from '../../src/store/backend.js';
import { chunkKey } from '../../src/store/chunk-store.js';
import { decodeChunkObject, encodeChunkObject, type ObjectCodec, PLAIN_CODEC } from '../../src/store/chunk-object.js';
import { hashChunk } from '../../src/store/chunking.js';
import { buildPack, isPackKey, newPackKey, type PackEntry, readPackDirectory } from '../../src/store/pack.js';
import { ferryError } from './helpers.js';

const dataKey = randomBytes(32);
const codecs: Record<string, ObjectCodec> = {
  plain: PLAIN_CODEC,
  zstd: { compressionLevel: 3, dataKey: null },
  encrypted: { compressionLevel: null, dataKey },
  'encrypted + zstd': { compressionLevel: 3, dataKey },
};
const ENCRYPTED: ObjectCodec = { compressionLevel: 3, dataKey };

/** Objects in memory, with every range read recorded: enough of a backend for readPackDirectory. */
class MemoryBackend implements StoreBackend {
  readonly location = 'memory';
  readonly objects = new Map<string, Buffer>();
  readonly rangeReads: { key: string; offset: number; length: number }[] = [];

  async put(key: string, data: Uint8Array): Promise<void> {
    this.objects.set(key, Buffer.from(data));
  }
  async get(key: string): Promise<Buffer> {
    const object = this.objects.get(key);
    if (!object) throw new FerryError('not-found', `object '${key}' not found`);
    return Buffer.from(object);
  }
  async getRange(key: string, offset: number, length: number): Promise<Buffer> {
    this.rangeReads.push({ key, offset, length });
    const object = await this.get(key);
    if (offset + length > object.length) throw new FerryError('corrupt-data', `object '${key}' is truncated`);
    return object.subarray(offset, offset + length);
  }
  async has(key: string): Promise<boolean> {
    return this.objects.has(key);
  }
  async delete(key: string): Promise<void> {
    this.objects.delete(key);
  }
  async *list(prefix: string): AsyncIterable<string> {
    for (const key of this.objects.keys()) if (key.startsWith(prefix)) yield key;
  }
  async stat(key: string): Promise<ObjectStat | null> {
    const object = this.objects.get(key);
    return object ? { size: object.length, modifiedAt: 0 } : null;
  }
  async touch(key: string): Promise<boolean> {
    return this.objects.has(key);
  }
}

/** `count` random chunks encoded as a store with `codec` stores them, under their hash as name. */
function chunkObjects(count: number, codec: ObjectCodec): { name: string; data: Buffer; object: Buffer }[] {
  return Array.from({ length: count }, (_, position) => {
    // Alternate incompressible and compressible chunks, of different lengths.
    const data = position % 2 === 0 ? randomBytes(1000 + position * 100) : Buffer.from(`chunk ${position} `.repeat(200 + position));
    const name = hashChunk(data).toString('hex');
    return { name, data, object: encodeChunkObject(data, chunkKey(name), codec) };
  });
}

/** Reads the directory of the pack stored at `key`, its size taken from the backend. */
async function directoryOf(backend: MemoryBackend, key: string, codec: ObjectCodec): Promise<PackEntry[]> {
  return readPackDirectory(backend, key, backend.objects.get(key)!.length, codec);
}

/** A pack by hand: magic, `data`, `directory` encoded under `codec` bound to `key`, and a trailer. */
function assemblePack(key: string, data: Buffer, directory: Buffer, codec: ObjectCodec, trailerLength?: number): Buffer {
  const encoded = encodeChunkObject(directory, key, codec);
  const trailer = Buffer.alloc(16);
  trailer.writeUInt32LE(trailerLength ?? encoded.length, 0);
  trailer.write('FRYPEND1', 8, 'latin1');
  return Buffer.concat([Buffer.from('FRYPACK1', 'latin1'), data, encoded, trailer]);
}

/** A directory payload: u32 count, then name (32 bytes) | u32 offset | u32 length per entry. */
function directoryPayload(entries: readonly { name: string; offset: number; length: number }[], count = entries.length): Buffer {
  const directory = Buffer.alloc(4 + entries.length * 40);
  directory.writeUInt32LE(count, 0);
  entries.forEach((entry, position) => {
    const at = 4 + position * 40;
    Buffer.from(entry.name, 'hex').copy(directory, at);
    directory.writeUInt32LE(entry.offset, at + 32);
    directory.writeUInt32LE(entry.length, at + 36);
  });
  return directory;
}

/** Asserts that reading `bytes` as the pack at `key` fails with corrupt-data naming the pack. */
async function assertDamaged(key: string, bytes: Buffer, codec: ObjectCodec, messageIncludes: string[] = []): Promise<void> {
  const backend = new MemoryBackend();
  await backend.put(key, bytes);
  await assert.rejects(directoryOf(backend, key, codec), ferryError('corrupt-data', [key, ...messageIncludes]));
}

describe('pack keys', () => {
  test('newPackKey gives distinct packs/<xx>/<32 hex> keys, and isPackKey accepts exactly those', () => {
    const keys = Array.from({ length: 200 }, () => newPackKey());
    assert.equal(new Set(keys).size, keys.length);
    for (const key of keys) {
      assert.match(key, /^packs\/([0-9a-f]{2})\/\1[0-9a-f]{30}$/);
      assert.equal(isPackKey(key), true, key);
    }
    const id = 'ab'.padEnd(32, '0');
    assert.equal(isPackKey(`packs/ab/${id}`), true);
    for (const other of [`packs/cd/${id}`, `packs/ab/${id}0`, `packs/ab/${id.slice(1)}`, `packs/AB/${id.toUpperCase()}`, `chunks/ab/${id}`, `packs/ab/${id}.tmp`, `x/packs/ab/${id}`]) {
      assert.equal(isPackKey(other), false, other);
    }
  });
});

describe('pack round trip', () => {
  for (const [name, codec] of Object.entries(codecs)) {
    test(`${name}: buildPack's entries are what readPackDirectory reads back, in two small range reads`, async () => {
      const key = newPackKey();
      const objects = chunkObjects(12, codec);
      const { bytes, entries } = buildPack(key, objects, codec);
      assert.equal(bytes.subarray(0, 8).toString('latin1'), 'FRYPACK1');
      assert.equal(bytes.subarray(-8).toString('latin1'), 'FRYPEND1');
      assert.deepEqual(
        entries.map((entry) => entry.name),
        objects.map((object) => object.name),
      );

      const backend = new MemoryBackend();
      await backend.put(key, bytes);
      assert.deepEqual(await directoryOf(backend, key, codec), entries);
      assert.equal(backend.rangeReads.length, 2, 'the trailer, then the directory');
      const dataEnd = entries.at(-1)!.offset + entries.at(-1)!.length;
      for (const read of backend.rangeReads) assert.ok(read.offset >= dataEnd, `read at ${read.offset} is not in the chunk data (which ends at ${dataEnd})`);

      objects.forEach((object, position) => {
        const entry = entries[position]!;
        const stored = bytes.subarray(entry.offset, entry.offset + entry.length);
        assert.deepEqual(stored, object.object, 'an entry is byte for byte the loose chunk object');
        assert.deepEqual(decodeChunkObject(stored, chunkKey(object.name), codec), object.data);
      });
    });
  }

  test('an empty pack has an empty directory', async () => {
    for (const codec of Object.values(codecs)) {
      const key = newPackKey();
      const backend = new MemoryBackend();
      await backend.put(key, buildPack(key, [], codec).bytes);
      assert.deepEqual(await directoryOf(backend, key, codec), []);
    }
  });

  test('an encrypted directory does not show the object names; a plain one (the control) does', () => {
    const objects = chunkObjects(3, PLAIN_CODEC);
    const plain = buildPack(newPackKey(), objects, PLAIN_CODEC).bytes;
    const encryptedObjects = objects.map((object) => ({ name: object.name, object: encodeChunkObject(object.data, chunkKey(object.name), ENCRYPTED) }));
    const encrypted = buildPack(newPackKey(), encryptedObjects, ENCRYPTED).bytes;
    for (const object of objects) {
      assert.equal(plain.includes(Buffer.from(object.name, 'hex')), true, 'control');
      assert.equal(encrypted.includes(Buffer.from(object.name, 'hex')), false);
    }
  });

  test('buildPack refuses an object name that is not 32 bytes of hex', () => {
    const [object] = chunkObjects(1, PLAIN_CODEC);
    assert.throws(() => buildPack(newPackKey(), [{ name: 'abc', object: object!.object }], PLAIN_CODEC), ferryError('internal', ['abc']));
    assert.throws(() => buildPack(newPackKey(), [{ name: object!.name.slice(2), object: object!.object }], PLAIN_CODEC), ferryError('internal'));
  });
});

describe('damaged and hostile packs', () => {
  test('a pack truncated anywhere is corrupt-data naming it', async () => {
    const key = newPackKey();
    const { bytes } = buildPack(key, chunkObjects(3, PLAIN_CODEC), PLAIN_CODEC);
    for (const length of [0, 1, 23, 24, 100, bytes.length - 17, bytes.length - 16, bytes.length - 1]) {
      await assertDamaged(key, bytes.subarray(0, length), PLAIN_CODEC);
    }
    await assertDamaged(key, bytes.subarray(0, 20), PLAIN_CODEC, ['too short']);
    await assertDamaged(key, bytes.subarray(0, bytes.length - 1), PLAIN_CODEC, ['trailer']);
  });

  test('a wrong trailer magic is corrupt-data', async () => {
    const key = newPackKey();
    const { bytes } = buildPack(key, chunkObjects(2, PLAIN_CODEC), PLAIN_CODEC);
    const damaged = Buffer.from(bytes);
    damaged.write('FRYPEND2', damaged.length - 8, 'latin1');
    await assertDamaged(key, damaged, PLAIN_CODEC, ['trailer']);
  });

  test('a trailer giving a directory longer than the pack is corrupt-data', async () => {
    const key = newPackKey();
    const { bytes } = buildPack(key, chunkObjects(2, PLAIN_CODEC), PLAIN_CODEC);
    for (const length of [bytes.length - 16 - 7, bytes.length, 0xffffffff]) {
      const damaged = Buffer.from(bytes);
      damaged.writeUInt32LE(length, damaged.length - 16);
      await assertDamaged(key, damaged, PLAIN_CODEC, ['directory', 'more than the pack holds']);
    }
  });

  test('a directory shorter than its trailer says, or one that is not an object, is corrupt-data', async () => {
    const key = newPackKey();
    const { bytes } = buildPack(key, chunkObjects(2, PLAIN_CODEC), PLAIN_CODEC);
    const directoryLength = bytes.readUInt32LE(bytes.length - 16);
    for (const length of [0, 3, directoryLength - 1, directoryLength + 1]) {
      const damaged = Buffer.from(bytes);
      damaged.writeUInt32LE(length, damaged.length - 16);
      await assertDamaged(key, damaged, PLAIN_CODEC);
    }
  });

  test('a directory entry pointing past the chunk data, or into the magic, is corrupt-data naming the entry', async () => {
    const key = newPackKey();
    const data = randomBytes(1000);
    const name = hashChunk(data).toString('hex');
    const cases = [
      { name, offset: 8, length: 1001 }, // runs into the directory
      { name, offset: 900, length: 200 },
      { name, offset: 0xfffffff0, length: 0x20 }, // u32 wrap-around must not slip through
      { name, offset: 4, length: 100 }, // inside "FRYPACK1"
    ];
    for (const entry of cases) {
      for (const codec of [PLAIN_CODEC, ENCRYPTED]) {
        const pack = assemblePack(key, data, directoryPayload([{ name, offset: 8, length: 1000 }, entry]), codec);
        await assertDamaged(key, pack, codec, ['entry 1', name, 'outside']);
      }
    }
    // The same pack with a sane entry is read (the cases above fail for their entry, not the assembly).
    const backend = new MemoryBackend();
    await backend.put(key, assemblePack(key, data, directoryPayload([{ name, offset: 8, length: 1000 }]), ENCRYPTED));
    assert.deepEqual(await directoryOf(backend, key, ENCRYPTED), [{ name, offset: 8, length: 1000 }]);
  });

  test('a directory whose entry count does not match its length, or an empty one, is corrupt-data', async () => {
    const key = newPackKey();
    const data = randomBytes(100);
    const entry = { name: hashChunk(data).toString('hex'), offset: 8, length: 100 };
    await assertDamaged(key, assemblePack(key, data, directoryPayload([entry], 2), PLAIN_CODEC), PLAIN_CODEC, ['2 entries']);
    await assertDamaged(key, assemblePack(key, data, directoryPayload([entry], 0xffffffff), PLAIN_CODEC), PLAIN_CODEC, ['entries']);
    await assertDamaged(key, assemblePack(key, data, Buffer.alloc(0), PLAIN_CODEC), PLAIN_CODEC, ['empty']);
  });

  test('a flipped byte in an encrypted directory fails authentication: corrupt-data naming the pack', async () => {
    const key = newPackKey();
    const { bytes, entries } = buildPack(key, chunkObjects(4, ENCRYPTED), ENCRYPTED);
    const directoryStart = entries.at(-1)!.offset + entries.at(-1)!.length;
    const directoryEnd = bytes.length - 16;
    for (const at of [directoryStart + 5, directoryStart + 20, Math.floor((directoryStart + directoryEnd) / 2), directoryEnd - 1]) {
      const damaged = Buffer.from(bytes);
      damaged[at]! ^= 0x01;
      await assertDamaged(key, damaged, ENCRYPTED, ['authentication']);
    }
  });

  test('an encrypted pack moved to another key, or a plain directory planted in an encrypted store, is corrupt-data', async () => {
    const key = newPackKey();
    const { bytes } = buildPack(key, chunkObjects(2, ENCRYPTED), ENCRYPTED);
    await assertDamaged(newPackKey(), bytes, ENCRYPTED, ['authentication']);
    const planted = newPackKey();
    await assertDamaged(planted, buildPack(planted, chunkObjects(2, PLAIN_CODEC), PLAIN_CODEC).bytes, ENCRYPTED, ['not encrypted']);
    await assertDamaged(planted, buildPack(planted, chunkObjects(2, ENCRYPTED), ENCRYPTED).bytes, { compressionLevel: null, dataKey: randomBytes(32) }, ['authentication']);
  });

  // Whatever a damaged pack holds, reading it gives corrupt-data naming it or entries inside its data:
  // never another error, never a crash, never an entry a reader would follow outside the pack.
  for (const [name, codec] of Object.entries(codecs)) {
    test(`${name}: every single-byte flip in the directory or trailer, and every truncation, is survived`, async () => {
      const key = newPackKey();
      const { bytes, entries } = buildPack(key, chunkObjects(3, codec), codec);
      const directoryStart = entries.at(-1)!.offset + entries.at(-1)!.length;
      const outcomes = { damaged: 0, read: 0 };
      const check = async (pack: Buffer, what: string) => {
        const backend = new MemoryBackend();
        await backend.put(key, pack);
        try {
          const read = await directoryOf(backend, key, codec);
          const end = pack.length - 16 - pack.readUInt32LE(pack.length - 16);
          for (const entry of read) assert.ok(entry.offset >= 8 && entry.offset + entry.length <= end, `${what}: entry ${JSON.stringify(entry)} lies outside the data`);
          outcomes.read++;
        } catch (error) {
          ferryError('corrupt-data', [key])(error);
          outcomes.damaged++;
        }
      };
      for (let at = directoryStart; at < bytes.length; at++) {
        const damaged = Buffer.from(bytes);
        damaged[at]! ^= 0x80;
        await check(damaged, `flip at ${at}`);
      }
      for (let length = 0; length < bytes.length; length++) await check(bytes.subarray(0, length), `truncated to ${length}`);
      assert.ok(outcomes.damaged > bytes.length - directoryStart, `most changes are detected (${JSON.stringify(outcomes)})`);
      if (codec.dataKey) assert.ok(outcomes.read <= 4, `encrypted: only the 4 reserved trailer bytes may change unnoticed (${JSON.stringify(outcomes)})`);
    });
  }
});
