import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { alignedInMemory } from '../../src/disks/direct-io.js';
import { ChunkCodecPool } from '../../src/store/chunk-codec-pool.js';
import { ChunkStore } from '../../src/store/chunk-store.js';
import { FilesystemBackend } from '../../src/store/fs-backend.js';
import { restoreDiskToFile } from '../../src/store/restore.js';
import { buildDisk, ferryError, flipChunkByte, loseChunk, storeDisk, tempDirFor, type ChunkFill } from './helpers.js';

const CHUNK_SIZE = 64 * 1024;

async function setUp(t: TestContext): Promise<{ store: ChunkStore; directory: string }> {
  const directory = await tempDirFor(t);
  return { store: new ChunkStore(new FilesystemBackend(path.join(directory, 'store'))), directory };
}

describe('restoreDiskToFile', () => {
  test('writes a byte-identical disk: random data, zero runs and a short last chunk', async (t) => {
    const { store, directory } = await setUp(t);
    const layout: ChunkFill[] = ['random', 'zero', 'zero', 'random', 'random', 'zero', 'random', 'zero', 'random', 'random'];
    const disk = buildDisk(CHUNK_SIZE, layout, 5000);
    // The same chunk twice: the store holds it once, the restore must still write it at both offsets.
    disk.copy(disk, 4 * CHUNK_SIZE, 3 * CHUNK_SIZE, 4 * CHUNK_SIZE);
    const index = await storeDisk(store, disk, CHUNK_SIZE);
    const output = path.join(directory, 'disk0.raw');
    const progress: number[] = [];

    await restoreDiskToFile(store, index, output, (doneBytes) => progress.push(doneBytes));

    const restored = await fs.readFile(output);
    assert.equal(restored.length, disk.length);
    assert.ok(restored.equals(disk), 'restored disk differs from the original');
    assert.equal(progress.at(-1), disk.length);
    for (let i = 1; i < progress.length; i++) assert.ok(progress[i]! > progress[i - 1]!, 'progress must only grow');
  });

  test('a disk that ends in zero chunks keeps its full size', async (t) => {
    const { store, directory } = await setUp(t);
    const disk = buildDisk(CHUNK_SIZE, ['random', 'zero', 'zero'], 100);
    const output = path.join(directory, 'disk.raw');
    await restoreDiskToFile(store, await storeDisk(store, disk, CHUNK_SIZE), output);
    assert.equal((await fs.stat(output)).size, disk.length);
    assert.ok((await fs.readFile(output)).equals(disk));
  });

  test('zero chunks become holes: a mostly-zero disk allocates far less than its size', async (t) => {
    const { store, directory } = await setUp(t);
    const layout: ChunkFill[] = Array.from({ length: 256 }, (_, position) => (position === 7 || position === 200 ? 'random' : 'zero'));
    const disk = buildDisk(CHUNK_SIZE, layout); // 16 MiB, 128 KiB of data
    const output = path.join(directory, 'sparse.raw');
    await restoreDiskToFile(store, await storeDisk(store, disk, CHUNK_SIZE), output);
    const stat = await fs.stat(output);
    assert.equal(stat.size, disk.length);
    assert.ok(stat.blocks * 512 < disk.length / 4, `allocated ${stat.blocks * 512} bytes for a ${disk.length}-byte disk`);
    assert.ok((await fs.readFile(output)).equals(disk));
  });

  test('leaves no .partial file after success', async (t) => {
    const { store, directory } = await setUp(t);
    const disk = buildDisk(CHUNK_SIZE, ['random', 'zero', 'random']);
    await restoreDiskToFile(store, await storeDisk(store, disk, CHUNK_SIZE), path.join(directory, 'disk.raw'));
    assert.deepEqual((await fs.readdir(directory)).sort(), ['disk.raw', 'store']);
  });

  test('a missing chunk makes it throw, leaving neither the output nor a .partial file', async (t) => {
    const { store, directory } = await setUp(t);
    const disk = buildDisk(CHUNK_SIZE, Array.from({ length: 40 }, (): ChunkFill => 'random'));
    const index = await storeDisk(store, disk, CHUNK_SIZE);
    await loseChunk(store, index.hashAt(33).toString('hex')); // its pack deleted behind the store's back
    const output = path.join(directory, 'disk.raw');

    await assert.rejects(restoreDiskToFile(store, index, output), ferryError('not-found'));
    // Other readers may still be finishing when the error surfaces; give them a moment to misbehave.
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.deepEqual(await fs.readdir(directory), ['store']);
  });

  test('a corrupt chunk makes it throw corrupt-data and leaves an existing output untouched', async (t) => {
    const { store, directory } = await setUp(t);
    const disk = buildDisk(CHUNK_SIZE, ['random', 'random', 'random']);
    const index = await storeDisk(store, disk, CHUNK_SIZE);
    const output = path.join(directory, 'disk.raw');
    await fs.writeFile(output, 'previous complete restore');
    await flipChunkByte(store, index.hashAt(1).toString('hex'), 50, 0xff);

    await assert.rejects(restoreDiskToFile(store, index, output), ferryError('corrupt-data'));
    assert.equal(await fs.readFile(output, 'utf8'), 'previous complete restore');
    assert.deepEqual((await fs.readdir(directory)).sort(), ['disk.raw', 'store']);
  });

  test("borrows page-aligned buffers from the store's codec pool and gives them back: a second restore makes none of its own", async (t) => {
    const { store, directory } = await setUp(t);
    const pool = new ChunkCodecPool(2);
    t.after(() => pool.close());
    store.codecPool = pool;
    // Observe the real pool: which buffers it hands out, and how many come back.
    const taken: Buffer[] = [];
    let givenBack = 0;
    const take = pool.takeShared.bind(pool);
    const give = pool.giveShared.bind(pool);
    pool.takeShared = (length) => {
      const buffer = take(length);
      taken.push(buffer);
      return buffer;
    };
    pool.giveShared = (buffer) => {
      givenBack++;
      give(buffer);
    };
    const disk = buildDisk(CHUNK_SIZE, ['random', 'zero', 'random', 'random'], 300);
    const index = await storeDisk(store, disk, CHUNK_SIZE);
    taken.length = 0;
    givenBack = 0;

    await restoreDiskToFile(store, index, path.join(directory, 'first.raw'));
    // Two for each of the four windows in flight (those with no window left give theirs back at once).
    assert.equal(taken.length, 8);
    assert.equal(givenBack, 8);
    const firstRestore = new Set(taken.map((buffer) => buffer.buffer));
    assert.ok(taken.every(alignedInMemory), 'the decoded chunks are written from page-aligned memory (O_DIRECT)');

    taken.length = 0;
    await restoreDiskToFile(store, index, path.join(directory, 'second.raw'));
    assert.equal(taken.length, 8);
    assert.ok(taken.every((buffer) => firstRestore.has(buffer.buffer)), 'the second restore made buffers of its own');
    assert.ok((await fs.readFile(path.join(directory, 'second.raw'))).equals(disk));
  });

  test('restoring over an existing file replaces it completely', async (t) => {
    const { store, directory } = await setUp(t);
    const disk = buildDisk(CHUNK_SIZE, ['zero', 'random'], 10);
    const output = path.join(directory, 'disk.raw');
    await fs.writeFile(output, Buffer.alloc(10 * CHUNK_SIZE, 0x77)); // larger, and non-zero where the new disk has a hole
    await restoreDiskToFile(store, await storeDisk(store, disk, CHUNK_SIZE), output);
    assert.ok((await fs.readFile(output)).equals(disk));
  });
});
