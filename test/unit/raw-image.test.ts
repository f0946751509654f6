import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, test } from 'node:test';
import type { DiskImageInput } from '../../src/disks/disk-image.js';
import { openRawImage, rawImageFormat, rawImageWriter, scanZeroExtents, sniffRaw, writeRawImage } from '../../src/disks/raw-image.js';
import { FerryError } from '../../src/errors.js';
import { checkedExtents, qemuImg, rawInput, readAll, readerConformance, requireQemuImg, writerConformance } from './disk-image-conformance.js';
import { tempDirFor } from './helpers.js';

const MiB = 1024 * 1024;

readerConformance({ format: 'raw', open: openRawImage, cases: [{ subformat: 'raw', qemu: ['-O', 'raw'], sparse: true }] });

// A raw file's apparent size is the disk's size, holes or not: its sparseness is checked below by allocated blocks.
writerConformance({ writer: rawImageWriter, qemuFormat: 'raw', checkable: false, sparse: { raw: true } });

const isFerryError = (code: string) => (error: unknown) => error instanceof FerryError && error.code === code;

describe('raw images', () => {
  test('the module: format raw, never sniffed (raw is the fallback), writes subformat raw only', () => {
    assert.equal(rawImageFormat.format, 'raw');
    assert.equal(rawImageFormat.open, openRawImage);
    assert.equal(sniffRaw(Buffer.from('conectix'), 8), false);
    assert.equal(rawImageFormat.sniff(Buffer.alloc(4096), 4096), false);
    assert.deepEqual(rawImageWriter.subformats, ['raw']);
  });

  test('extents: 1 MiB-aligned zero ranges are zero, merged, an unaligned tail included', async (t) => {
    const directory = await tempDirFor(t, 'ferry-raw-');
    const disk = Buffer.alloc(7 * MiB + 1000);
    randomBytes(10).copy(disk, MiB + 5); // MiB 1: data
    randomBytes(MiB).copy(disk, 2 * MiB); // MiB 2: data (merged with 1)
    disk[5 * MiB + MiB - 1] = 1; // the last byte of MiB 5
    disk[7 * MiB + 999] = 7; // the tail
    const image = path.join(directory, 'disk.raw');
    await fs.writeFile(image, disk);
    const reader = await openRawImage(image);
    try {
      assert.equal(reader.format, 'raw');
      assert.equal(reader.subformat, 'raw');
      assert.equal(reader.size, disk.length);
      assert.deepEqual(await checkedExtents(reader), [
        { offset: 0, length: MiB, kind: 'zero' },
        { offset: MiB, length: 2 * MiB, kind: 'data' },
        { offset: 3 * MiB, length: 2 * MiB, kind: 'zero' },
        { offset: 5 * MiB, length: MiB, kind: 'data' },
        { offset: 6 * MiB, length: MiB, kind: 'zero' },
        { offset: 7 * MiB, length: 1000, kind: 'data' },
      ]);
      const ranged = [];
      for await (const extent of scanZeroExtents(reader, MiB + 10, 3 * MiB + 10)) ranged.push(extent);
      assert.deepEqual(ranged, [
        { offset: MiB + 10, length: 2 * MiB - 10, kind: 'data' },
        { offset: 3 * MiB, length: 10, kind: 'zero' },
      ]);
      assert.ok((await readAll(reader)).equals(disk));
      await assert.rejects(reader.read(Buffer.alloc(10), 10, disk.length - 5), isFerryError('invalid-request'));
      await assert.rejects(reader.read(Buffer.alloc(10), 10, -1), isFerryError('invalid-request'));
      await assert.rejects(reader.read(Buffer.alloc(10), 20, 0), isFerryError('invalid-request'));
    } finally {
      await reader.close();
    }
  });

  test('opening a missing file is disk-unreadable', async (t) => {
    const directory = await tempDirFor(t, 'ferry-raw-');
    await assert.rejects(openRawImage(path.join(directory, 'missing.raw')), isFerryError('disk-unreadable'));
  });

  test('the writer keeps holes: only non-zero data is allocated, the file is the disk size', async (t) => {
    const directory = await tempDirFor(t, 'ferry-raw-');
    const disk = Buffer.alloc(64 * MiB);
    randomBytes(MiB).copy(disk, 3 * MiB);
    randomBytes(4096).copy(disk, 40 * MiB + 8192);
    const image = path.join(directory, 'sparse.raw');
    const written = await writeRawImage(image, rawInput(disk));
    const stat = await fs.stat(image);
    assert.equal(written, disk.length);
    assert.equal(stat.size, disk.length);
    assert.ok(stat.blocks * 512 < 8 * MiB, `allocated ${stat.blocks * 512} bytes for ~1 MiB of data`);
    assert.ok((await fs.readFile(image)).equals(disk));
    if (await requireQemuImg(t)) {
      const source = path.join(directory, 'source.raw');
      await fs.writeFile(source, disk);
      await qemuImg(['compare', '-f', 'raw', '-F', 'raw', image, source]);
    }
  });

  test('the writer skips zeros inside pieces, replaces an existing file, and keeps an all-zero disk a hole', async (t) => {
    const directory = await tempDirFor(t, 'ferry-raw-');
    const image = path.join(directory, 'disk.raw');
    await fs.writeFile(image, 'old content');
    const piece = Buffer.alloc(8 * MiB);
    piece.fill(9, 4096, 8192);
    piece.fill(3, 8 * MiB - 100);
    const input: DiskImageInput = { size: 16 * MiB, pieces: async function* () { yield { offset: 0, data: piece }; } };
    await writeRawImage(image, input);
    const content = await fs.readFile(image);
    assert.equal(content.length, 16 * MiB);
    assert.ok(content.subarray(0, 8 * MiB).equals(piece));
    assert.ok((await fs.stat(image)).blocks * 512 < MiB);
    const empty = path.join(directory, 'empty.raw');
    await writeRawImage(empty, { size: 5 * MiB + 3, pieces: async function* () { yield { offset: 0, data: Buffer.alloc(MiB) }; } });
    assert.equal((await fs.stat(empty)).size, 5 * MiB + 3);
    assert.ok((await fs.stat(empty)).blocks * 512 <= 4096);
    assert.deepEqual((await fs.readdir(directory)).sort(), ['disk.raw', 'empty.raw'], 'no temporary file left');
  });

  test('the writer refuses out-of-order or out-of-range pieces and unknown subformats, leaving nothing behind', async (t) => {
    const directory = await tempDirFor(t, 'ferry-raw-');
    const image = path.join(directory, 'bad.raw');
    const outOfOrder: DiskImageInput = {
      size: 4 * MiB,
      pieces: async function* () {
        yield { offset: MiB, data: Buffer.alloc(10, 1) };
        yield { offset: 0, data: Buffer.alloc(10, 1) };
      },
    };
    await assert.rejects(writeRawImage(image, outOfOrder), isFerryError('invalid-request'));
    const pastEnd: DiskImageInput = { size: MiB, pieces: async function* () { yield { offset: MiB - 5, data: Buffer.alloc(10, 1) }; } };
    await assert.rejects(writeRawImage(image, pastEnd), isFerryError('invalid-request'));
    await assert.rejects(writeRawImage(image, rawInput(Buffer.alloc(MiB)), { subformat: 'qcow2' }), isFerryError('invalid-request'));
    assert.deepEqual(await fs.readdir(directory), []);
  });
});
