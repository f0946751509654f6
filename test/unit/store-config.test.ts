import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { exitCodeOf, FerryError, httpStatusOf } from '../../src/errors.js';
import { ChunkCodec, codecOf, DEFAULT_ZSTD_LEVEL, encodeChunkObject } from '../../src/store/chunk-object.js';
import { ChunkStore, chunkKey, indexKey } from '../../src/store/chunk-store.js';
import { hashChunk } from '../../src/store/chunking.js';
import { DiskIndex } from '../../src/store/disk-index.js';
import { FilesystemBackend } from '../../src/store/fs-backend.js';
import { openStoreConfig, STORE_CONFIG_KEY, type StoreConfig, type StoreOpenOptions } from '../../src/store/store-config.js';
import { collect, ferryError, locateStored, patchStoredChunk, storedChunkObject, tempDirFor } from './helpers.js';

/** Cheap scrypt for tests (the default costs ~0.8 s per derivation); still real scrypt. */
const FAST_SCRYPT = { N: 2 ** 10, r: 8, p: 1 };

interface Fixture {
  directory: string;
  root: string;
  backend: FilesystemBackend;
}

async function fixture(t: TestContext): Promise<Fixture> {
  const directory = await tempDirFor(t);
  const root = path.join(directory, 'store');
  return { directory, root, backend: new FilesystemBackend(root) };
}

async function keyFile(directory: string, name: string, content: Buffer | string = randomBytes(32)): Promise<string> {
  const file = path.join(directory, name);
  await fs.writeFile(file, content, { mode: 0o600 });
  return file;
}

async function readConfig(fixture: Fixture): Promise<StoreConfig> {
  return JSON.parse(await fs.readFile(path.join(fixture.root, STORE_CONFIG_KEY), 'utf8')) as StoreConfig;
}

/** Every file under the store with its bytes, to prove a refused open wrote nothing. */
async function snapshot(root: string): Promise<Map<string, string>> {
  const files = new Map<string, string>();
  const entries = await fs.readdir(root, { recursive: true, withFileTypes: true }).catch(() => []);
  for (const entry of entries) {
    if (!entry.isFile()) continue;
    const file = path.join(entry.parentPath, entry.name);
    files.set(path.relative(root, file), (await fs.readFile(file)).toString('hex'));
  }
  return files;
}

async function assertRefusedWritingNothing(fixture: Fixture, options: StoreOpenOptions, code: 'wrong-key' | 'invalid-request' | 'conflict', message: string[]): Promise<void> {
  const before = await snapshot(fixture.root);
  await assert.rejects(ChunkStore.open(fixture.backend, options), ferryError(code, message));
  assert.deepEqual(await snapshot(fixture.root), before, 'a refused open writes nothing');
}

function text(marker: string, length = 65536): Buffer {
  return Buffer.from(`${marker} `.repeat(Math.ceil(length / (marker.length + 1))).slice(0, length));
}

/** Stores `data` as a chunk and returns its hash. */
async function put(store: ChunkStore, data: Buffer): Promise<string> {
  const hash = hashChunk(data).toString('hex');
  await store.putChunk(hash, data);
  return hash;
}

describe('store config: creating and opening', () => {
  test('a new store with no options gets zstd and no encryption, and opens again the same way', async (t) => {
    const f = await fixture(t);
    const opened = await openStoreConfig(f.backend);
    assert.equal(opened.created, true);
    const config = await readConfig(f);
    assert.deepEqual(config, opened.config);
    assert.deepEqual(config.compression, { algorithm: 'zstd', level: DEFAULT_ZSTD_LEVEL });
    assert.equal(config.encryption, null);
    assert.match(config.storeId, /^[0-9a-f]{32}$/);

    const store = await ChunkStore.open(f.backend);
    assert.equal(store.encrypted, false);
    const data = text('compressible');
    const hash = await put(store, data);
    assert.equal(store.chunkObjectName(hash), hash, 'plain store: the object name is the hash');
    assert.equal(codecOf(await storedChunkObject(store, hash)), ChunkCodec.Zstd);
    assert.deepEqual(await store.getChunk(hash), data);
    assert.equal((await openStoreConfig(f.backend)).created, false);
    assert.deepEqual(await readConfig(f), config, 'opening does not rewrite the config');
  });

  test('--store-compression none is kept in the config; asking for another compression later is a conflict', async (t) => {
    const f = await fixture(t);
    const store = await ChunkStore.open(f.backend, { compression: 'none' });
    assert.deepEqual((await readConfig(f)).compression, { algorithm: 'none' });
    const hash = await put(store, text('not compressed'));
    assert.equal(codecOf(await storedChunkObject(store, hash)), ChunkCodec.None);
    await ChunkStore.open(f.backend, { compression: 'none' });
    await assertRefusedWritingNothing(f, { compression: 'zstd' }, 'conflict', ["compression 'none'", 'created']);
  });

  test('a passphrase store: round trip of chunks and indexes, and reopening with the same passphrase', async (t) => {
    const f = await fixture(t);
    const store = await ChunkStore.open(f.backend, { passphrase: 'correct horse battery staple', scrypt: FAST_SCRYPT });
    const config = await readConfig(f);
    assert.equal(config.encryption?.cipher, 'aes-256-gcm');
    assert.deepEqual({ ...config.encryption?.kdf, salt: undefined }, { name: 'scrypt', salt: undefined, ...FAST_SCRYPT });
    assert.ok(!JSON.stringify(config).includes('correct horse'), 'the passphrase is not in the config');

    const a = text('first chunk');
    const b = randomBytes(1000);
    const hashA = await put(store, a);
    const hashB = await put(store, b);
    const index = DiskIndex.empty(3 * 65536, 65536);
    index.setHash(0, Buffer.from(hashA, 'hex'));
    index.setHash(2, Buffer.from(hashB, 'hex'));
    const indexHash = await store.putIndex(index);
    assert.equal(codecOf(await storedChunkObject(store, hashA)), ChunkCodec.Aes256GcmZstd);
    assert.equal(codecOf(await storedChunkObject(store, hashB)), ChunkCodec.Aes256Gcm, 'random bytes: encrypted, not compressed');
    assert.ok([ChunkCodec.Aes256Gcm, ChunkCodec.Aes256GcmZstd].includes(codecOf(await f.backend.get(indexKey(indexHash))) as 2 | 3), 'indexes are encrypted too');
    assert.deepEqual(await collect(store.listIndexHashes()), [indexHash]);

    const reopened = await ChunkStore.open(f.backend, { passphrase: 'correct horse battery staple' });
    assert.deepEqual(await reopened.getChunk(hashA), a);
    assert.deepEqual(await reopened.getChunk(hashB), b);
    assert.deepEqual((await reopened.getIndex(indexHash)).hashes, index.hashes);
    assert.deepEqual(await reopened.missingChunks([hashA, hashB]), []);
  });

  test('a wrong passphrase is refused with wrong-key and writes nothing', async (t) => {
    const f = await fixture(t);
    const store = await ChunkStore.open(f.backend, { passphrase: 'right one', scrypt: FAST_SCRYPT });
    await put(store, text('data'));
    await assertRefusedWritingNothing(f, { passphrase: 'wrong one' }, 'wrong-key', [f.backend.location, 'encrypted', 'does not open it']);
    await assertRefusedWritingNothing(f, { passphrase: 'right one ' }, 'wrong-key', ['does not open it']);
  });

  test('a passphrase file: one trailing newline is ignored, so it opens a store made with the bare passphrase', async (t) => {
    const f = await fixture(t);
    await ChunkStore.open(f.backend, { passphrase: 's3cret phrase', scrypt: FAST_SCRYPT });
    await ChunkStore.open(f.backend, { passphraseFile: await keyFile(f.directory, 'pass', 's3cret phrase\n') });
    await ChunkStore.open(f.backend, { passphraseFile: await keyFile(f.directory, 'pass-crlf', 's3cret phrase\r\n') });
    await assertRefusedWritingNothing(f, { passphraseFile: await keyFile(f.directory, 'pass2', 's3cret phrase\n\n') }, 'wrong-key', ['does not open it']);
  });

  test('a key file, raw or hex, opens the store; another key file is refused with wrong-key and writes nothing', async (t) => {
    const f = await fixture(t);
    const key = randomBytes(32);
    const raw = await keyFile(f.directory, 'key.bin', key);
    const store = await ChunkStore.open(f.backend, { keyFile: raw });
    assert.deepEqual((await readConfig(f)).encryption?.kdf, { name: 'keyfile' });
    const data = text('key file data');
    const hash = await put(store, data);

    const hexFile = await keyFile(f.directory, 'key.hex', `${key.toString('hex').toUpperCase()}\n`);
    assert.deepEqual(await (await ChunkStore.open(f.backend, { keyFile: hexFile })).getChunk(hash), data);

    await assertRefusedWritingNothing(f, { keyFile: await keyFile(f.directory, 'other.bin') }, 'wrong-key', ['encrypted', 'key given does not open it']);
    await assertRefusedWritingNothing(f, { passphrase: key.toString('hex') }, 'wrong-key', ['key file', 'passphrase was given']);
  });

  test('an encrypted store opened without a key is refused, saying how to give one', async (t) => {
    const f = await fixture(t);
    await ChunkStore.open(f.backend, { keyFile: await keyFile(f.directory, 'key') });
    await assertRefusedWritingNothing(f, {}, 'invalid-request', ['is encrypted', '--store-key-file', '--store-passphrase-file', 'FERRY_STORE_PASSPHRASE']);
  });

  test('a plain store opened with a key is refused: encryption is chosen when a store is created', async (t) => {
    const f = await fixture(t);
    await put(await ChunkStore.open(f.backend), text('plain'));
    await assertRefusedWritingNothing(f, { keyFile: await keyFile(f.directory, 'key') }, 'conflict', ['not encrypted', 'created']);
    await assertRefusedWritingNothing(f, { passphrase: 'p' }, 'conflict', ['not encrypted']);
  });

  test('a store from before configs existed opens as it is, gets a config, and cannot become encrypted', async (t) => {
    const f = await fixture(t);
    // The first format: loose chunk files of codec 0, no config.
    const old = text('written before configs');
    const oldHash = hashChunk(old).toString('hex');
    await f.backend.put(chunkKey(oldHash), encodeChunkObject(old));
    // A store without settings writes packs of codec 0, and no config either.
    const legacy = new ChunkStore(f.backend);
    const packed = text('packed before configs');
    const packedHash = await put(legacy, packed);
    assert.equal(codecOf(await storedChunkObject(legacy, packedHash)), ChunkCodec.None);
    const oldIndex = DiskIndex.empty(2 * 65536, 65536);
    oldIndex.setHash(0, Buffer.from(oldHash, 'hex'));
    oldIndex.setHash(1, Buffer.from(packedHash, 'hex'));
    const oldIndexHash = await legacy.putIndex(oldIndex);
    // Indexes used to be stored bare, without the object header: put one the old way.
    await f.backend.put(indexKey(oldIndexHash), oldIndex.encode());

    await assertRefusedWritingNothing(f, { keyFile: await keyFile(f.directory, 'key') }, 'conflict', ['unencrypted data']);
    assert.equal(await f.backend.has(STORE_CONFIG_KEY), false);

    const store = await ChunkStore.open(f.backend);
    assert.deepEqual((await readConfig(f)).compression, { algorithm: 'zstd', level: DEFAULT_ZSTD_LEVEL });
    assert.deepEqual(await store.getChunk(oldHash), old);
    assert.deepEqual(await store.getChunk(packedHash), packed);
    assert.deepEqual((await store.getIndex(oldIndexHash)).hashes, oldIndex.hashes);
    const fresh = await put(store, text('written after'));
    assert.equal(codecOf(await storedChunkObject(store, fresh)), ChunkCodec.Zstd);
    assert.deepEqual(await store.missingChunks([oldHash, packedHash, fresh]), []);
  });

  test('bad keys and key files are invalid-request, and nothing is created', async (t) => {
    const f = await fixture(t);
    const cases: [StoreOpenOptions, string[]][] = [
      [{ keyFile: await keyFile(f.directory, 'short', randomBytes(31)) }, ['32 bytes or 64 hex']],
      [{ keyFile: await keyFile(f.directory, 'long', randomBytes(33)) }, ['32 bytes or 64 hex']],
      [{ keyFile: await keyFile(f.directory, 'nothex', 'z'.repeat(64)) }, ['32 bytes or 64 hex']],
      [{ keyFile: path.join(f.directory, 'absent') }, ['cannot read', 'absent']],
      [{ passphraseFile: path.join(f.directory, 'absent') }, ['cannot read']],
      [{ passphrase: '' }, ['empty']],
      [{ passphraseFile: await keyFile(f.directory, 'empty-pass', '\n') }, ['empty']],
      [{ passphrase: 'a', keyFile: await keyFile(f.directory, 'k') }, ['at most one']],
      [{ passphrase: 'a', scrypt: { N: 3000, r: 8, p: 1 } }, ['power of two']],
      [{ passphrase: 'a', scrypt: { N: 2 ** 21, r: 8, p: 1 } }, ['out of bounds']],
    ];
    for (const [options, message] of cases) await assertRefusedWritingNothing(f, options, 'invalid-request', message);
    assert.deepEqual(await collect(f.backend.list('')), []);
  });

  test('a damaged config is corrupt-data, not a silent new store', async (t) => {
    const f = await fixture(t);
    await ChunkStore.open(f.backend);
    const config = await readConfig(f);
    const file = path.join(f.root, STORE_CONFIG_KEY);
    await fs.writeFile(file, '{"format":"ferry-chunk-store",');
    await assert.rejects(ChunkStore.open(f.backend), ferryError('corrupt-data', ['not valid JSON']));
    await fs.writeFile(file, JSON.stringify({ ...config, version: 2 }));
    await assert.rejects(ChunkStore.open(f.backend), ferryError('corrupt-data', ['not one this Ferry understands', 'version']));
  });

  test('wrong-key maps to HTTP 500 (a server fault, not the client token) and CLI exit 4 (refused)', () => {
    assert.equal(httpStatusOf('wrong-key'), 500);
    assert.equal(exitCodeOf(new FerryError('wrong-key', 'x')), 4);
    assert.equal(new FerryError('wrong-key', 'x').retryable, false);
  });
});

describe('encrypted store: keyed chunk names and no plaintext at rest', () => {
  test('the same chunk gets different object names in two encrypted stores, even with the same key file', async (t) => {
    const f = await fixture(t);
    const sharedKey = await keyFile(f.directory, 'shared');
    const stores = [
      await ChunkStore.open(new FilesystemBackend(path.join(f.directory, 'one')), { keyFile: sharedKey }),
      await ChunkStore.open(new FilesystemBackend(path.join(f.directory, 'two')), { keyFile: sharedKey }),
      await ChunkStore.open(new FilesystemBackend(path.join(f.directory, 'three')), { keyFile: await keyFile(f.directory, 'other') }),
      await ChunkStore.open(new FilesystemBackend(path.join(f.directory, 'four')), { passphrase: 'p', scrypt: FAST_SCRYPT }),
    ];
    const data = text('same chunk everywhere');
    const hash = hashChunk(data).toString('hex');
    const names = new Set<string>();
    for (const store of stores) {
      await store.putChunk(hash, data);
      const name = store.chunkObjectName(hash);
      assert.match(name, /^[0-9a-f]{64}$/);
      assert.notEqual(name, hash);
      // The pack's directory holds the keyed name; no object is named after the chunk.
      assert.deepEqual([...((await store.catalog()).container((await locateStored(store, hash)).key)?.names ?? [])], [name]);
      assert.deepEqual(await collect(store.backend.list('chunks/')), []);
      assert.equal(await store.hasChunk(hash), true);
      names.add(name);
    }
    assert.equal(names.size, stores.length, 'no two stores share an object name for the same chunk');
  });

  test('chunk and index files of an encrypted store hold no plaintext; a plain store (the control) does', async (t) => {
    const f = await fixture(t);
    const marker = Buffer.from('FERRY-MARKER-4b1d-plaintext-must-not-show');
    // Random bytes around the marker: zstd cannot shrink it, so a plain store keeps it as it is.
    const data = Buffer.concat([randomBytes(30000), marker, randomBytes(30000)]);
    const plain = await ChunkStore.open(new FilesystemBackend(path.join(f.directory, 'plain')));
    const encrypted = await ChunkStore.open(new FilesystemBackend(path.join(f.directory, 'encrypted')), { keyFile: await keyFile(f.directory, 'key') });
    for (const store of [plain, encrypted]) {
      const hash = await put(store, data);
      const index = DiskIndex.empty(65536, 65536);
      index.setHash(0, Buffer.from(hash, 'hex'));
      await store.putIndex(index);
    }
    const contains = async (directory: string, needle: Buffer) => {
      for (const [, content] of await snapshot(path.join(f.directory, directory))) if (Buffer.from(content, 'hex').includes(needle)) return true;
      return false;
    };
    const hashBytes = hashChunk(data);
    assert.equal(await contains('plain', marker), true, 'control: a plain store holds the bytes as they are');
    assert.equal(await contains('plain', hashBytes), true, 'control: a plain index holds the chunk hash');
    assert.equal(await contains('encrypted', marker), false);
    assert.equal(await contains('encrypted', hashBytes), false, 'the encrypted index does not show chunk hashes');
    assert.equal((await snapshot(path.join(f.directory, 'encrypted'))).has(path.join('chunks', hashBytes.toString('hex').slice(0, 2), hashBytes.toString('hex'))), false);
  });

  test('an encrypted chunk tampered with, or swapped with another, is corrupt-data', async (t) => {
    const f = await fixture(t);
    const store = await ChunkStore.open(f.backend, { keyFile: await keyFile(f.directory, 'key') });
    const a = await put(store, text('chunk a'));
    const b = await put(store, text('chunk b'));
    const original = await storedChunkObject(store, a);
    const other = await storedChunkObject(store, b);

    await patchStoredChunk(store, a, (object) => {
      object[object.length - 20]! ^= 0x01;
    });
    await assert.rejects(store.getChunk(a), ferryError('corrupt-data', ['authentication']));

    assert.equal(other.length, original.length, 'precondition: the two objects can be swapped in place');
    await patchStoredChunk(store, a, (object) => other.copy(object));
    await assert.rejects(store.getChunk(a), ferryError('corrupt-data', ['authentication']));

    const planted = encodeChunkObject(text('chunk a')); // planted in plain (as much of it as fits): refused too
    await patchStoredChunk(store, a, (object) => planted.copy(object, 0, 0, object.length));
    await assert.rejects(store.getChunk(a), ferryError('corrupt-data', ['not encrypted']));

    await patchStoredChunk(store, a, (object) => original.copy(object));
    assert.deepEqual(await store.getChunk(a), text('chunk a'));
  });

  test('a bare index planted in an encrypted store is corrupt-data', async (t) => {
    const f = await fixture(t);
    const store = await ChunkStore.open(f.backend, { keyFile: await keyFile(f.directory, 'key') });
    const index = DiskIndex.empty(65536, 65536);
    const indexHash = await store.putIndex(index);
    await f.backend.put(indexKey(indexHash), index.encode());
    await assert.rejects(store.getIndex(indexHash), ferryError('corrupt-data', ['not encrypted']));
  });
});
