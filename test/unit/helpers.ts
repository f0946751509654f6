/** Shared fixtures for the unit suite: temporary directories and disks stored the way an agent stores them. */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { FerryError, type ErrorCode } from '../../src/errors.js';
import type { ChunkStore } from '../../src/store/chunk-store.js';
import { hashChunk, isAllZero } from '../../src/store/chunking.js';
import { DiskIndex } from '../../src/store/disk-index.js';

/** Creates an empty directory under the OS temp dir; the caller must remove it (see `tempDirFor`). */
export async function makeTempDir(prefix = 'ferry-unit-'): Promise<string> {
  return fs.mkdtemp(path.join(os.tmpdir(), prefix));
}

/** A fresh temporary directory removed when test `t` ends, so a failing assertion leaks nothing. */
export async function tempDirFor(t: TestContext, prefix?: string): Promise<string> {
  const directory = await makeTempDir(prefix);
  t.after(() => fs.rm(directory, { recursive: true, force: true }));
  return directory;
}

/** Which bytes each chunk of a synthetic disk holds: random data or zeros. */
export type ChunkFill = 'random' | 'zero';

/**
 * A disk image of `chunks.length` chunks of `chunkSize` bytes, the last one `lastChunkLength` long,
 * filled as described; built in memory so a test knows every byte it should get back.
 */
export function buildDisk(chunkSize: number, chunks: readonly ChunkFill[], lastChunkLength = chunkSize): Buffer {
  const size = (chunks.length - 1) * chunkSize + lastChunkLength;
  const disk = Buffer.alloc(size);
  chunks.forEach((fill, position) => {
    if (fill === 'random') {
      const start = position * chunkSize;
      randomBytes(Math.min(chunkSize, size - start)).copy(disk, start);
    }
  });
  return disk;
}

/**
 * Cuts `disk` into chunks, stores every non-zero one and returns its index, mirroring what the agent
 * does; the index is not published (call `store.putIndex` for that).
 */
export async function storeDisk(store: ChunkStore, disk: Buffer, chunkSize: number): Promise<DiskIndex> {
  const index = DiskIndex.empty(disk.length, chunkSize);
  for (let position = 0; position < index.chunkCount; position++) {
    const data = disk.subarray(position * chunkSize, position * chunkSize + index.lengthAt(position));
    if (isAllZero(data)) continue;
    const hash = hashChunk(data);
    await store.putChunk(hash.toString('hex'), data);
    index.setHash(position, hash);
  }
  return index;
}

/**
 * An `assert.rejects` validator for a FerryError of `code`, optionally checking its message, so a
 * test fails on the wrong kind of error and not only on no error.
 */
export function ferryError(code: ErrorCode, messageIncludes: readonly string[] = []): (error: unknown) => true {
  return (error: unknown) => {
    assert.ok(error instanceof FerryError, `expected a FerryError, got ${String(error)}`);
    assert.equal(error.code, code, `expected code '${code}', got '${error.code}': ${error.message}`);
    for (const part of messageIncludes) assert.ok(error.message.includes(part), `message '${error.message}' should mention '${part}'`);
    return true;
  };
}

/** Collects an async iterable, for asserting on everything `StoreBackend.list` yields. */
export async function collect<T>(iterable: AsyncIterable<T>): Promise<T[]> {
  const items: T[] = [];
  for await (const item of iterable) items.push(item);
  return items;
}

/** Stores `length` random bytes as a chunk in `store` and returns its name. */
export async function storeRandomChunk(store: ChunkStore, length: number): Promise<string> {
  const data = randomBytes(length);
  const hash = hashChunk(data).toString('hex');
  await store.putChunk(hash, data);
  return hash;
}

/**
 * Publishes an index naming `hashes` (null for a zero chunk) in `chunkSize` chunks, the last one
 * `lastLength` bytes long, and returns the index's name.
 */
export async function publishIndex(store: ChunkStore, hashes: readonly (string | null)[], chunkSize: number, lastLength = chunkSize): Promise<string> {
  const built = DiskIndex.empty((hashes.length - 1) * chunkSize + lastLength, chunkSize);
  hashes.forEach((hash, position) => hash && built.setHash(position, Buffer.from(hash, 'hex')));
  return store.putIndex(built);
}

// --- reaching into a store's files, as a disk fault or an operator would ---------------------------
// Chunks live in pack files (packs/<xx>/<32 hex>, see src/store/pack.ts); `ChunkStore.locateChunk` says
// which object holds a chunk and where. These helpers need a store over a FilesystemBackend, whose
// `location` is its root directory.

/** The file holding object `key` of a store over a FilesystemBackend. */
export function objectFile(store: ChunkStore, key: string): string {
  return path.join(store.backend.location, ...key.split('/'));
}

/** Where chunk `hash` is stored (pack or loose object, offset, length); fails the test if it is not catalogued. */
export async function locateStored(store: ChunkStore, hash: string): Promise<{ key: string; offset: number; length: number }> {
  const location = await store.locateChunk(hash);
  assert.ok(location, `chunk ${hash} should be in the store's catalog`);
  return location;
}

/** The stored object of chunk `hash` (header and payload), as its pack or loose file holds it. */
export async function storedChunkObject(store: ChunkStore, hash: string): Promise<Buffer> {
  const { key, offset, length } = await locateStored(store, hash);
  return store.backend.getRange(key, offset, length);
}

/**
 * Rewrites chunk `hash`'s stored object on disk in place: `change` gets a view of exactly the object's
 * bytes inside its pack (nothing else of the pack can be changed through it).
 */
export async function patchStoredChunk(store: ChunkStore, hash: string, change: (object: Buffer) => void): Promise<void> {
  const { key, offset, length } = await locateStored(store, hash);
  const file = objectFile(store, key);
  const bytes = await fs.readFile(file);
  change(bytes.subarray(offset, offset + length));
  await fs.writeFile(file, bytes);
}

/** Flips `mask` in one byte of chunk `hash`'s stored object; `at` counts from the object's start, negative from its end. */
export async function flipChunkByte(store: ChunkStore, hash: string, at = -1, mask = 0x01): Promise<void> {
  await patchStoredChunk(store, hash, (object) => {
    object[at < 0 ? object.length + at : at]! ^= mask;
  });
}

/**
 * Loses chunk `hash` behind the store's back (a disk fault, an operator's rm): deletes the pack holding
 * it, which must hold no other chunk (true of every chunk stored with its own `putChunk` call).
 * Returns the deleted key.
 */
export async function loseChunk(store: ChunkStore, hash: string): Promise<string> {
  const { key } = await locateStored(store, hash);
  const container = (await store.catalog()).container(key);
  assert.deepEqual([...(container?.names ?? [])], [store.chunkObjectName(hash)], `${key} should hold chunk ${hash} alone`);
  await store.backend.delete(key);
  return key;
}

/**
 * Sets the modification time of the objects at `keys` to `ms` (epoch milliseconds) and reloads the
 * store's catalog, which keeps chunk touch times in memory and takes them from the pack files' times
 * only when it is read.
 */
export async function setModified(store: ChunkStore, keys: Iterable<string>, ms: number): Promise<void> {
  const when = new Date(ms);
  for (const key of keys) await fs.utimes(objectFile(store, key), when, when);
  await store.reloadCatalog();
}

/** Ages chunk `hash` to `ms` by setting its pack's time (every chunk sharing the pack ages with it). */
export async function ageChunk(store: ChunkStore, hash: string, ms: number): Promise<void> {
  await setModified(store, [(await locateStored(store, hash)).key], ms);
}

/** Every object key under `prefix` ("" for the whole store), sorted. */
export async function objectKeys(store: ChunkStore, prefix = ''): Promise<string[]> {
  return (await collect(store.backend.list(prefix))).sort();
}
