/**
 * The VMDK reader and stream-optimized writer (src/disks/vmdk.ts): the shared conformance suites against
 * qemu-img, and hostile images (tables pointing past the end, corrupt or oversized compressed grains,
 * missing or escaping extent files, absurd sizes, delta links).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { deflateSync } from 'node:zlib';
import { describe, test } from 'node:test';
import { openVmdk, sniffVmdk, vmdkImageFormat, vmdkWriter, writeVmdk } from '../../src/disks/vmdk.js';
import { FerryError, type ErrorCode } from '../../src/errors.js';
import { qemuImg, rawInput, readAll, readerConformance, requireQemuImg, writerConformance } from './disk-image-conformance.js';
import { tempDirFor } from './helpers.js';

readerConformance({
  format: 'vmdk',
  open: openVmdk,
  cases: [
    { subformat: 'monolithicSparse', qemu: ['-O', 'vmdk', '-o', 'subformat=monolithicSparse'], sparse: true },
    { subformat: 'monolithicFlat', qemu: ['-O', 'vmdk', '-o', 'subformat=monolithicFlat'], sparse: false, note: 'a descriptor plus image-monolithicFlat-flat.vmdk' },
    { subformat: 'twoGbMaxExtentSparse', qemu: ['-O', 'vmdk', '-o', 'subformat=twoGbMaxExtentSparse'], sparse: true, note: 'a descriptor plus -s001.vmdk' },
    { subformat: 'streamOptimized', qemu: ['-O', 'vmdk', '-o', 'subformat=streamOptimized'], sparse: true },
  ],
});

writerConformance({ writer: vmdkWriter, qemuFormat: 'vmdk', checkable: true, sparse: { streamOptimized: true } });

const MiB = 1024 * 1024;
const SECTOR = 512;

/** A 4 MiB disk: random data in its first MiB, zeros after (so grains and a hole both exist). */
function smallDisk(): Buffer {
  const disk = Buffer.alloc(4 * MiB);
  randomBytes(MiB).copy(disk, 0);
  return disk;
}

/** Writes `disk` as raw and converts it with qemu-img to the VMDK `subformat`; resolves with the VMDK's path. */
async function qemuVmdk(directory: string, disk: Buffer, subformat: string): Promise<string> {
  const raw = path.join(directory, `${subformat}.raw`);
  await fs.writeFile(raw, disk);
  const image = path.join(directory, `${subformat}.vmdk`);
  await qemuImg(['convert', '-f', 'raw', '-O', 'vmdk', '-o', `subformat=${subformat}`, raw, image]);
  return image;
}

/** Opens `image`, reads it all and walks its extents; resolves when that works, rejects as the reader does. */
async function openAndReadAll(image: string): Promise<Buffer> {
  const reader = await openVmdk(image);
  try {
    for await (const extent of reader.extents()) void extent;
    return await readAll(reader);
  } finally {
    await reader.close();
  }
}

/** Asserts `attempt` rejects with a FerryError of `code` whose message matches `pattern`. */
async function rejectsWith(attempt: Promise<unknown>, code: ErrorCode, pattern: RegExp): Promise<void> {
  await assert.rejects(attempt, (error: unknown) => {
    assert.ok(error instanceof FerryError, `a FerryError, not ${String(error)}`);
    assert.equal(error.code, code, error.message);
    assert.match(error.message, pattern);
    return true;
  });
}

describe('vmdk: hostile images', () => {
  test('a grain directory entry past the end of the file is refused', async (t) => {
    if (!(await requireQemuImg(t))) return;
    const directory = await tempDirFor(t, 'ferry-vmdk-');
    const image = await qemuVmdk(directory, smallDisk(), 'monolithicSparse');
    const bytes = await fs.readFile(image);
    const directorySector = Number(bytes.readBigUInt64LE(56));
    bytes.writeUInt32LE(0x7fffffff, directorySector * SECTOR);
    await fs.writeFile(image, bytes);
    await rejectsWith(openVmdk(image), 'corrupt-data', /grain directory entry 0 points past the end/);
  });

  test('a grain table entry past the end of the file is refused when read', async (t) => {
    if (!(await requireQemuImg(t))) return;
    const directory = await tempDirFor(t, 'ferry-vmdk-');
    const image = await qemuVmdk(directory, smallDisk(), 'monolithicSparse');
    const bytes = await fs.readFile(image);
    const tableSector = bytes.readUInt32LE(Number(bytes.readBigUInt64LE(56)) * SECTOR);
    bytes.writeUInt32LE(0x7fffffff, tableSector * SECTOR);
    await fs.writeFile(image, bytes);
    await rejectsWith(openAndReadAll(image), 'corrupt-data', /grain table entry of grain 0 points past the end of the file/);
  });

  test('a compressed grain that does not inflate is refused', async (t) => {
    const directory = await tempDirFor(t, 'ferry-vmdk-');
    const image = path.join(directory, 'stream.vmdk');
    await writeVmdk(image, rawInput(smallDisk()));
    const bytes = await fs.readFile(image);
    const firstGrain = 128 * SECTOR; // the writer starts grains after 64 KiB of header and descriptor
    bytes.fill(0xa5, firstGrain + 12 + 2, firstGrain + 12 + 200); // keep the zlib header, ruin the stream
    await fs.writeFile(image, bytes);
    await rejectsWith(openAndReadAll(image), 'corrupt-data', /compressed grain 0 .*does not inflate/);
  });

  test('a compressed grain that inflates larger than the grain is refused (inflation is bounded)', async (t) => {
    const directory = await tempDirFor(t, 'ferry-vmdk-');
    const image = path.join(directory, 'stream.vmdk');
    await writeVmdk(image, rawInput(smallDisk()));
    const bytes = await fs.readFile(image);
    const firstGrain = 128 * SECTOR;
    const bomb = deflateSync(Buffer.alloc(64 * MiB, 1)); // 64 MiB of ones: a few KiB compressed
    assert.ok(bomb.length < bytes.readUInt32LE(firstGrain + 8), 'the bomb fits where the random grain was');
    bytes.writeUInt32LE(bomb.length, firstGrain + 8);
    bomb.copy(bytes, firstGrain + 12);
    await fs.writeFile(image, bytes);
    await rejectsWith(openAndReadAll(image), 'corrupt-data', /inflates to more than the grain size/);
  });

  test("a grain marker naming another grain's sector is refused", async (t) => {
    const directory = await tempDirFor(t, 'ferry-vmdk-');
    const image = path.join(directory, 'stream.vmdk');
    await writeVmdk(image, rawInput(smallDisk()));
    const bytes = await fs.readFile(image);
    bytes.writeBigUInt64LE(128n * 5n, 128 * SECTOR);
    await fs.writeFile(image, bytes);
    await rejectsWith(openAndReadAll(image), 'corrupt-data', /marker names sector 640/);
  });

  test('a stream-optimized image whose footer is gone is refused', async (t) => {
    const directory = await tempDirFor(t, 'ferry-vmdk-');
    const image = path.join(directory, 'stream.vmdk');
    await writeVmdk(image, rawInput(smallDisk()));
    const stat = await fs.stat(image);
    await fs.truncate(image, stat.size - 2 * SECTOR);
    await rejectsWith(openVmdk(image), 'corrupt-data', /footer/);
  });

  test('a descriptor naming a missing extent file: disk-unreadable naming the file', async (t) => {
    if (!(await requireQemuImg(t))) return;
    const directory = await tempDirFor(t, 'ferry-vmdk-');
    const image = await qemuVmdk(directory, smallDisk(), 'monolithicFlat');
    await fs.rm(path.join(directory, 'monolithicFlat-flat.vmdk'));
    await rejectsWith(openVmdk(image), 'disk-unreadable', /monolithicFlat-flat\.vmdk.*extent 1 of VMDK descriptor .*ENOENT/);
  });

  test('a flat extent shorter than the descriptor says is refused', async (t) => {
    if (!(await requireQemuImg(t))) return;
    const directory = await tempDirFor(t, 'ferry-vmdk-');
    const image = await qemuVmdk(directory, smallDisk(), 'monolithicFlat');
    await fs.truncate(path.join(directory, 'monolithicFlat-flat.vmdk'), MiB);
    await rejectsWith(openVmdk(image), 'corrupt-data', /shorter than/);
  });

  test("extent paths leaving the descriptor's directory are refused; subdirectories are allowed", async (t) => {
    if (!(await requireQemuImg(t))) return;
    const directory = await tempDirFor(t, 'ferry-vmdk-');
    const disk = smallDisk();
    const image = await qemuVmdk(directory, disk, 'monolithicFlat');
    const descriptor = await fs.readFile(image, 'utf8');
    for (const hostile of ['../monolithicFlat-flat.vmdk', '/etc/passwd', 'sub/../../x.vmdk', 'C:\\disks\\x.vmdk']) {
      await fs.writeFile(image, descriptor.replace('"monolithicFlat-flat.vmdk"', JSON.stringify(hostile)));
      await rejectsWith(openVmdk(image), 'invalid-request', /leaves the descriptor's directory/);
    }
    await fs.mkdir(path.join(directory, 'sub'));
    await fs.rename(path.join(directory, 'monolithicFlat-flat.vmdk'), path.join(directory, 'sub', 'flat.vmdk'));
    await fs.writeFile(image, descriptor.replace('"monolithicFlat-flat.vmdk"', '"sub/flat.vmdk"'));
    assert.ok((await openAndReadAll(image)).equals(disk));
  });

  test('absurd capacity, grain size or grain table size are refused without allocating', async (t) => {
    const directory = await tempDirFor(t, 'ferry-vmdk-');
    const image = path.join(directory, 'stream.vmdk');
    await writeVmdk(image, rawInput(smallDisk()));
    const pristine = await fs.readFile(image);
    const footer = pristine.length - 2 * SECTOR; // the footer's header copy takes precedence: damage both
    const cases: [string, (bytes: Buffer, at: number) => void, RegExp][] = [
      ['capacity', (bytes, at) => bytes.writeBigUInt64LE(2n ** 60n, at + 12), /capacity of .* sectors \(more than 64 TiB\)/],
      ['grain size', (bytes, at) => bytes.writeBigUInt64LE(3n, at + 20), /grain size of 3 sectors/],
      ['huge grain', (bytes, at) => bytes.writeBigUInt64LE(2n ** 40n, at + 20), /grain size of/],
      ['grain table entries', (bytes, at) => bytes.writeUInt32LE(2 ** 30, at + 44), /entries per grain table/],
    ];
    for (const [name, damage, pattern] of cases) {
      const bytes = Buffer.from(pristine);
      damage(bytes, 0);
      damage(bytes, footer);
      await fs.writeFile(image, bytes);
      await rejectsWith(openVmdk(image), 'corrupt-data', pattern).catch((error: unknown) => assert.fail(`${name}: ${(error as Error).message}`));
    }
    // A grain directory claiming more entries than the file holds is refused before it is read.
    const bytes = Buffer.from(pristine);
    bytes.writeBigUInt64LE(2n ** 37n, 12);
    bytes.writeBigUInt64LE(2n ** 37n, footer + 12);
    await fs.writeFile(image, bytes);
    await rejectsWith(openVmdk(image), 'corrupt-data', /grain directory .* lies past the end/);
  });

  test('a delta link (parentCID set, or a parentFileNameHint) is refused', async (t) => {
    if (!(await requireQemuImg(t))) return;
    const directory = await tempDirFor(t, 'ferry-vmdk-');
    const image = await qemuVmdk(directory, smallDisk(), 'monolithicFlat');
    const descriptor = await fs.readFile(image, 'utf8');
    await fs.writeFile(image, descriptor.replace('parentCID=ffffffff', 'parentCID=1234abcd'));
    await rejectsWith(openVmdk(image), 'invalid-request', /VMDK snapshots \(delta links\) are not supported yet/);
    await fs.writeFile(image, descriptor.replace('parentCID=ffffffff', 'parentCID=ffffffff\nparentFileNameHint="base.vmdk"'));
    await rejectsWith(openVmdk(image), 'invalid-request', /delta links/);
    // qemu-img's own delta: a sparse file with a backing file.
    const base = await qemuVmdk(directory, smallDisk(), 'monolithicSparse');
    const child = path.join(directory, 'child.vmdk');
    await qemuImg(['create', '-f', 'vmdk', '-b', base, '-F', 'vmdk', child]);
    await rejectsWith(openVmdk(child), 'invalid-request', /delta links/);
  });

  test('unsupported extent types and a file that is no VMDK are refused', async (t) => {
    if (!(await requireQemuImg(t))) return;
    const directory = await tempDirFor(t, 'ferry-vmdk-');
    const image = await qemuVmdk(directory, smallDisk(), 'monolithicFlat');
    const descriptor = await fs.readFile(image, 'utf8');
    await fs.writeFile(image, descriptor.replace(' FLAT ', ' VMFSSPARSE '));
    await rejectsWith(openVmdk(image), 'invalid-request', /extents of type VMFSSPARSE are not supported/);
    const other = path.join(directory, 'other.vmdk');
    await fs.writeFile(other, Buffer.alloc(4096, 7));
    await rejectsWith(openVmdk(other), 'corrupt-data', /not a VMDK/);
    await rejectsWith(openVmdk(path.join(directory, 'absent.vmdk')), 'disk-unreadable', /absent\.vmdk/);
  });
});

describe('vmdk: reading and writing', () => {
  test('ZERO extents and several extents in one descriptor read as one disk', async (t) => {
    if (!(await requireQemuImg(t))) return;
    const directory = await tempDirFor(t, 'ferry-vmdk-');
    const disk = smallDisk();
    await qemuVmdk(directory, disk, 'monolithicFlat');
    const descriptor = path.join(directory, 'custom.vmdk');
    const sectors = disk.length / SECTOR;
    await fs.writeFile(descriptor, `# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="custom"\n\n# Extent description\nRW ${sectors} FLAT "monolithicFlat-flat.vmdk" 0\nRW 2048 ZERO\nRDONLY 2048 FLAT "monolithicFlat-flat.vmdk" 0\n`);
    const reader = await openVmdk(descriptor);
    try {
      assert.equal(reader.subformat, 'custom');
      assert.equal(reader.size, disk.length + 2 * MiB);
      const content = await readAll(reader);
      assert.ok(content.subarray(0, disk.length).equals(disk));
      assert.ok(content.subarray(disk.length, disk.length + MiB).every((byte) => byte === 0));
      assert.ok(content.subarray(disk.length + MiB).equals(disk.subarray(0, MiB)));
      const extents = [];
      for await (const extent of reader.extents()) extents.push(extent);
      assert.deepEqual(extents, [
        { offset: 0, length: disk.length, kind: 'data' },
        { offset: disk.length, length: MiB, kind: 'zero' },
        { offset: disk.length + MiB, length: MiB, kind: 'data' },
      ]);
    } finally {
      await reader.close();
    }
  });

  test('the writer: a stream-optimized image that reads back, with holes where the disk is zero and an odd size', async (t) => {
    const directory = await tempDirFor(t, 'ferry-vmdk-');
    const disk = Buffer.alloc(3 * MiB + 1000);
    randomBytes(70_000).copy(disk, 100_000);
    disk.write('the end', disk.length - 7);
    const image = path.join(directory, 'odd.vmdk');
    // Pieces that do not line up with grains: the writer gathers grains across them.
    const input = {
      size: disk.length,
      async *pieces() {
        for (let offset = 0; offset < disk.length; offset += 40_000) yield { offset, data: disk.subarray(offset, Math.min(disk.length, offset + 40_000)) };
      },
    };
    await writeVmdk(image, input);
    const reader = await openVmdk(image);
    try {
      assert.equal(reader.subformat, 'streamOptimized');
      assert.equal(reader.size, Math.ceil(disk.length / SECTOR) * SECTOR);
      const content = await readAll(reader);
      assert.ok(content.subarray(0, disk.length).equals(disk));
      const extents = [];
      for await (const extent of reader.extents()) extents.push(extent);
      assert.deepEqual(extents.map((extent) => extent.kind), ['zero', 'data', 'zero', 'data']);
    } finally {
      await reader.close();
    }
    if (await requireQemuImg(t)) await qemuImg(['check', '-f', 'vmdk', image]);
  });

  test('the writer refuses other subformats and pieces out of order, leaving nothing behind', async (t) => {
    const directory = await tempDirFor(t, 'ferry-vmdk-');
    const image = path.join(directory, 'refused.vmdk');
    await rejectsWith(writeVmdk(image, rawInput(smallDisk()), { subformat: 'monolithicFlat' }), 'invalid-request', /streamOptimized/);
    const backwards = {
      size: 4 * MiB,
      async *pieces() {
        yield { offset: MiB, data: Buffer.alloc(10, 1) };
        yield { offset: 0, data: Buffer.alloc(10, 1) };
      },
    };
    await rejectsWith(writeVmdk(image, backwards), 'invalid-request', /out of order/);
    assert.deepEqual(await fs.readdir(directory), []);
  });

  test('sniff recognises sparse files and descriptors, nothing else', () => {
    assert.ok(sniffVmdk(Buffer.from('KDMV\x01\x00\x00\x00', 'latin1')));
    assert.ok(sniffVmdk(Buffer.from('# Disk DescriptorFile\nversion=1\n')));
    assert.ok(!sniffVmdk(Buffer.from('QFI\xfb', 'latin1')));
    assert.ok(!sniffVmdk(Buffer.alloc(0)));
    assert.equal(vmdkImageFormat.format, 'vmdk');
    assert.equal(vmdkImageFormat.writer, vmdkWriter);
  });
});
