import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, test, type TestContext } from 'node:test';
import { promisify } from 'node:util';
import { convertImage } from '../../src/disks/convert.js';
import { DATA_MAP_ALIGNMENT, fileDataRanges, parseSeekOutput } from '../../src/disks/file-data-map.js';
import { openRawImage, scanZeroExtents } from '../../src/disks/raw-image.js';
import { checkedExtents } from './disk-image-conformance.js';
import { tempDirFor } from './helpers.js';

const run = promisify(execFile);
const KiB = 1024;
const MiB = 1024 * KiB;

/** True when xfs_io can run; in CI (CI=true) a missing xfs_io fails the test instead. */
async function requireXfsIo(t: TestContext): Promise<boolean> {
  const found = await run('xfs_io', ['-V']).then(() => true, () => false);
  if (found) return true;
  if (process.env.CI === 'true') assert.fail('this test needs xfs_io (Debian package xfsprogs; CI must install it)');
  t.skip('needs xfs_io (apt-get install xfsprogs)');
  return false;
}

/** A sparse file of `size` bytes with random data written at each of `writes` (offset, length). */
async function sparseFile(directory: string, size: number, writes: ReadonlyArray<[number, number]>, options: { sync?: boolean } = {}): Promise<{ file: string; bytes: Buffer }> {
  const file = path.join(directory, 'sparse.raw');
  const bytes = Buffer.alloc(size);
  const handle = await fs.open(file, 'w');
  try {
    await handle.truncate(size);
    for (const [offset, length] of writes) {
      const data = randomBytes(length);
      data.copy(bytes, offset);
      await handle.write(data, 0, length, offset);
    }
    if (options.sync ?? true) await handle.sync();
  } finally {
    await handle.close();
  }
  return { file, bytes };
}

describe('file data map (SEEK_DATA through xfs_io)', () => {
  test('parsing: transitions become data ranges widened to 64 KiB, merged, clipped to the size', () => {
    const output = ['Whence\tResult', 'HOLE\t0', 'DATA\t10485760', 'HOLE\t13631488', 'DATA\t20000000', 'HOLE\t20004096', 'DATA\t20070000', 'HOLE\t20074096', 'DATA\t30000000', ''].join('\n');
    const size = 30_001_000;
    assert.deepEqual(parseSeekOutput(output, size), [
      { offset: 10 * MiB, length: 3 * MiB },
      // 20000000 rounds down to 19988480, 20074096 up to 20119552: the 64 KiB-wide hole between them reads as data.
      { offset: 19_988_480, length: 20_119_552 - 19_988_480 },
      // The last data range runs to the end of the file, clipped to the size.
      { offset: 29_949_952, length: size - 29_949_952 },
    ]);
    assert.equal(DATA_MAP_ALIGNMENT, 64 * KiB);
    assert.deepEqual(parseSeekOutput('Whence\tResult\nHOLE\t0\n', MiB), [], 'a file that is one hole has no data');
    assert.deepEqual(parseSeekOutput('Whence\tResult\nDATA\tEOF\n', 0), [], 'an empty file has no data');
    assert.deepEqual(parseSeekOutput('Whence\tResult\nDATA\t0\nHOLE\t4096\n', 1000), [{ offset: 0, length: 1000 }]);
  });

  test('parsing: anything but xfs_io seek output gives no map', () => {
    assert.equal(parseSeekOutput('', MiB), null, 'no header');
    assert.equal(parseSeekOutput('DATA\t0\n', MiB), null, 'no header');
    assert.equal(parseSeekOutput('Whence\tResult\nDATA\t0\nbad line\n', MiB), null);
    assert.equal(parseSeekOutput('Whence\tResult\nDATA\t0\nHOLE\t0\n', MiB), null, 'offsets must ascend');
    assert.equal(parseSeekOutput('Whence\tResult\nDATA\t8192\nHOLE\t4096\n', MiB), null, 'offsets must ascend');
    assert.equal(parseSeekOutput('Whence\tResult\nDATA\t99999999999999999999\n', MiB), null, 'beyond a safe integer');
  });

  test('a real sparse file: the data ranges are where it was written, unsynced writes included', async (t) => {
    if (!(await requireXfsIo(t))) return;
    const directory = await tempDirFor(t, 'ferry-data-map-');
    const writes: Array<[number, number]> = [
      [MiB, 3 * MiB],
      [10 * MiB + 4 * KiB, 4 * KiB],
      [31 * MiB, MiB],
    ];
    for (const sync of [true, false]) {
      // Unsynced: the data is only in the page cache (ext4: delayed allocation), and must be found all the same.
      const { file } = await sparseFile(directory, 32 * MiB, writes, { sync });
      assert.deepEqual(await fileDataRanges(file, 32 * MiB), [
        { offset: MiB, length: 3 * MiB },
        { offset: 10 * MiB, length: 64 * KiB },
        { offset: 31 * MiB, length: MiB },
      ], `sync: ${sync}`);
    }
  });

  test('no map for a device, a missing file, a missing tool, or a tool that complains', async (t) => {
    if (!(await requireXfsIo(t))) return;
    const directory = await tempDirFor(t, 'ferry-data-map-');
    const { file } = await sparseFile(directory, 4 * MiB, [[0, MiB]]);
    assert.notEqual(await fileDataRanges(file, 4 * MiB), null);
    // xfs_io says "HOLE 0" for /dev/null (and exits 0): a device must never be taken for one hole.
    assert.equal(await fileDataRanges('/dev/null', MiB), null);
    assert.equal(await fileDataRanges(path.join(directory, 'missing.raw'), MiB), null);
    assert.equal(await fileDataRanges(file, 4 * MiB, { command: path.join(directory, 'no-such-tool') }), null);
    // Well-formed output, but an error on standard error: not trusted.
    const complaining = path.join(directory, 'complaining-tool');
    await fs.writeFile(complaining, '#!/bin/sh\nprintf "Whence\\tResult\\nHOLE\\t0\\n"\necho "Invalid seek result" >&2\n', { mode: 0o755 });
    assert.equal(await fileDataRanges(file, 4 * MiB, { command: complaining }), null);
    const failing = path.join(directory, 'failing-tool');
    await fs.writeFile(failing, '#!/bin/sh\nprintf "Whence\\tResult\\nHOLE\\t0\\n"\nexit 1\n', { mode: 0o755 });
    assert.equal(await fileDataRanges(file, 4 * MiB, { command: failing }), null);
    const hanging = path.join(directory, 'hanging-tool');
    await fs.writeFile(hanging, '#!/bin/sh\nexec sleep 30\n', { mode: 0o755 });
    const started = Date.now();
    assert.equal(await fileDataRanges(file, 4 * MiB, { command: hanging, timeoutMs: 200 }), null);
    assert.ok(Date.now() - started < 5000, 'a hung tool is killed at the time limit');
  });

  test('the zero scan reads only the file data ranges it is given', async () => {
    const disk = Buffer.alloc(8 * MiB);
    disk.fill(1, 2 * MiB, 3 * MiB);
    const reads: Array<[number, number]> = [];
    const source = {
      size: disk.length,
      read: async (buffer: Buffer, length: number, offset: number) => {
        reads.push([offset, length]);
        disk.copy(buffer, 0, offset, offset + length);
      },
    };
    const extents = [];
    // MiB 5 is "allocated" but zero: the scan finds it zero.
    for await (const extent of scanZeroExtents(source, 0, disk.length, [{ offset: 2 * MiB, length: MiB }, { offset: 5 * MiB, length: MiB }])) extents.push(extent);
    assert.deepEqual(extents, [
      { offset: 0, length: 2 * MiB, kind: 'zero' },
      { offset: 2 * MiB, length: MiB, kind: 'data' },
      { offset: 3 * MiB, length: 5 * MiB, kind: 'zero' },
    ]);
    assert.deepEqual(reads, [
      [2 * MiB, MiB],
      [5 * MiB, MiB],
    ]);
    // A sub-range: only the parts of data ranges inside it are read.
    reads.length = 0;
    extents.length = 0;
    for await (const extent of scanZeroExtents(source, 2 * MiB + 100, 6 * MiB, [{ offset: 0, length: 3 * MiB }, { offset: 5 * MiB, length: 3 * MiB }])) extents.push(extent);
    assert.deepEqual(extents, [
      { offset: 2 * MiB + 100, length: MiB - 100, kind: 'data' },
      { offset: 3 * MiB, length: 3 * MiB, kind: 'zero' },
    ]);
    assert.deepEqual(reads, [
      [2 * MiB + 100, MiB - 100],
      [5 * MiB, MiB],
    ]);
  });

  test('a sparse raw image: its holes map as zero, and it converts byte for byte', async (t) => {
    if (!(await requireXfsIo(t))) return;
    const directory = await tempDirFor(t, 'ferry-data-map-');
    const { file, bytes } = await sparseFile(directory, 40 * MiB + 4 * KiB, [
      [3 * MiB, 2 * MiB],
      [17 * MiB + 8 * KiB, 8 * KiB],
      [40 * MiB, 4 * KiB],
    ]);
    const reader = await openRawImage(file);
    try {
      assert.deepEqual(await checkedExtents(reader), [
        { offset: 0, length: 3 * MiB, kind: 'zero' },
        { offset: 3 * MiB, length: 2 * MiB, kind: 'data' },
        { offset: 5 * MiB, length: 12 * MiB, kind: 'zero' },
        { offset: 17 * MiB, length: 64 * KiB, kind: 'data' },
        { offset: 17 * MiB + 64 * KiB, length: 23 * MiB - 64 * KiB, kind: 'zero' },
        { offset: 40 * MiB, length: 4 * KiB, kind: 'data' },
      ]);
    } finally {
      await reader.close();
    }
    for (const target of ['raw', 'vhd:fixed']) {
      const converted = path.join(directory, `converted.${target.replace(':', '-')}`);
      await convertImage(file, converted, target);
      const back = path.join(directory, 'back.raw');
      await convertImage(converted, back, 'raw');
      // A fixed VHD's disk is a whole number of MiB (Azure's rule): zeros after the original's end.
      const expected = target === 'raw' ? bytes : Buffer.concat([bytes, Buffer.alloc(41 * MiB - bytes.length)]);
      assert.ok((await fs.readFile(back)).equals(expected), `${target} and back`);
    }
  });
});
