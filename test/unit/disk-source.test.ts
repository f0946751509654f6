import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { openRawDisk, probeDiskSize } from '../../src/disks/disk-source.js';
import { ferryError, tempDirFor } from './helpers.js';

describe('openRawDisk', () => {
  test('a missing path is disk-unreadable naming the path', async (t) => {
    const missing = path.join(await tempDirFor(t), 'no-such-disk.raw');
    await assert.rejects(openRawDisk(missing), (error: unknown) => {
      ferryError('disk-unreadable', [missing, 'ENOENT'])(error);
      assert.deepEqual((error as { details?: unknown }).details, { path: missing });
      assert.equal((error as { retryable?: boolean }).retryable, true);
      return true;
    });
    await assert.rejects(probeDiskSize(missing), ferryError('disk-unreadable', [missing]));
  });

  test('a directory is refused as disk-unreadable', async (t) => {
    const directory = await tempDirFor(t);
    await assert.rejects(openRawDisk(directory), ferryError('disk-unreadable', [directory, 'not a regular file']));
  });

  test('a regular file has its size and reads the right bytes at any offset', async (t) => {
    const file = path.join(await tempDirFor(t), 'disk.raw');
    const content = randomBytes(3 * 65536 + 123);
    await fs.writeFile(file, content);
    const disk = await openRawDisk(file);
    t.after(() => disk.close());
    assert.equal(disk.path, file);
    assert.equal(disk.size, content.length);
    assert.equal(await probeDiskSize(file), content.length);

    for (const [offset, length] of [
      [0, 65536],
      [65536, 65536],
      [1000, 1],
      [12345, 70000],
      [content.length - 123, 123],
    ] as const) {
      const buffer = Buffer.alloc(length, 0xaa);
      await disk.read(buffer, length, offset);
      assert.deepEqual(buffer, content.subarray(offset, offset + length), `read at ${offset}`);
    }
  });

  test('reading past the end of the file gives zeros, as for a sparse disk', async (t) => {
    const file = path.join(await tempDirFor(t), 'disk.raw');
    await fs.writeFile(file, Buffer.alloc(100, 0x11));
    const disk = await openRawDisk(file);
    t.after(() => disk.close());
    const buffer = Buffer.alloc(200, 0xff);
    await disk.read(buffer, 200, 0);
    assert.deepEqual(buffer, Buffer.concat([Buffer.alloc(100, 0x11), Buffer.alloc(100)]));
  });

  test('a sparse file reads its holes as zeros and keeps its apparent size', async (t) => {
    const file = path.join(await tempDirFor(t), 'sparse.raw');
    const handle = await fs.open(file, 'w');
    await handle.truncate(1 << 20);
    await handle.write(Buffer.from('end'), 0, 3, (1 << 20) - 3);
    await handle.close();
    const disk = await openRawDisk(file);
    t.after(() => disk.close());
    assert.equal(disk.size, 1 << 20);
    const buffer = Buffer.alloc(4096, 0xff);
    await disk.read(buffer, 4096, 8192);
    assert.deepEqual(buffer, Buffer.alloc(4096));
    const tail = Buffer.alloc(3);
    await disk.read(tail, 3, (1 << 20) - 3);
    assert.equal(tail.toString(), 'end');
  });
});
