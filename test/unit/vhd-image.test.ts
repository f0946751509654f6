import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, test, type TestContext } from 'node:test';
import { openVhd, sniffVhd, vhdImageFormat, vhdWriter, writeVhd } from '../../src/disks/vhd.js';
import { FerryError } from '../../src/errors.js';
import { checkedExtents, qemuImg, qemuVirtualSize, rawInput, readAll, readerConformance, requireQemuImg, writerConformance } from './disk-image-conformance.js';
import { tempDirFor } from './helpers.js';

const MiB = 1024 * 1024;
const BLOCK = 2 * MiB;

readerConformance({
  format: 'vhd',
  open: openVhd,
  cases: [
    // A fixed disk is read like raw: its zero MiBs are found by reading, so it reports holes too.
    { subformat: 'fixed', qemu: ['-O', 'vpc', '-o', 'subformat=fixed,force_size=on'], sparse: true },
    { subformat: 'dynamic', qemu: ['-O', 'vpc', '-o', 'subformat=dynamic'], sparse: true },
  ],
});

// Fixed keeps holes in the file, but the suite judges sparseness by the file's apparent size, which for a
// fixed VHD is the disk's size plus the footer: its holes are checked below by allocated blocks instead.
writerConformance({ writer: vhdWriter, qemuFormat: 'vpc', checkable: false, sparse: { dynamic: true, fixed: true } });

const isFerryError = (code: string, includes?: string) => (error: unknown) => {
  assert.ok(error instanceof FerryError, `a FerryError, not ${String(error)}`);
  assert.equal(error.code, code, error.message);
  if (includes) assert.ok(error.message.includes(includes), `"${error.message}" mentions "${includes}"`);
  return true;
};

// ---- An independent, test-side VHD builder (from the specification, not the module) for hostile and differencing images.

/** The one's complement of the byte sum, the checksum field counted as zero. */
function specChecksum(bytes: Buffer, at: number): number {
  let sum = 0;
  bytes.forEach((byte, index) => {
    if (index < at || index >= at + 4) sum += byte;
  });
  return ~sum >>> 0;
}

function refreshFooterChecksum(footer: Buffer): void {
  footer.writeUInt32BE(specChecksum(footer, 64), 64);
}

function refreshHeaderChecksum(header: Buffer): void {
  header.writeUInt32BE(specChecksum(header, 36), 36);
}

function specFooter(diskType: number, size: number, dataOffset: bigint, uniqueId: Buffer): Buffer {
  const footer = Buffer.alloc(512);
  footer.write('conectix', 0, 'latin1');
  footer.writeUInt32BE(2, 8);
  footer.writeUInt32BE(0x00010000, 12);
  footer.writeBigUInt64BE(dataOffset, 16);
  footer.write('test', 28, 'latin1');
  footer.write('Wi2k', 36, 'latin1');
  footer.writeBigUInt64BE(BigInt(size), 40);
  footer.writeBigUInt64BE(BigInt(size), 48);
  footer.writeUInt32BE(diskType, 60);
  uniqueId.copy(footer, 68);
  refreshFooterChecksum(footer);
  return footer;
}

interface ChildBlock {
  index: number;
  /** Bit per sector, most significant first: set means the child holds the sector. */
  bitmap: Buffer;
  data: Buffer;
}

/**
 * Writes a differencing VHD by the specification: footer copy at 0, dynamic header at 512, BAT at 1536,
 * parent locator data at 2048 (one 512-byte sector per locator), blocks (bitmap + 2 MiB) from 8192, footer.
 */
async function writeDifferencingChild(file: string, options: { size: number; uniqueId: Buffer; parentUniqueId: Buffer; parentName?: string; locators: { code: string; data: Buffer }[]; blocks: ChildBlock[] }): Promise<void> {
  const blockCount = Math.ceil(options.size / BLOCK);
  const header = Buffer.alloc(1024);
  header.write('cxsparse', 0, 'latin1');
  header.writeBigUInt64BE(0xffffffffffffffffn, 8);
  header.writeBigUInt64BE(1536n, 16);
  header.writeUInt32BE(0x00010000, 24);
  header.writeUInt32BE(blockCount, 28);
  header.writeUInt32BE(BLOCK, 32);
  options.parentUniqueId.copy(header, 40);
  if (options.parentName) Buffer.from(options.parentName, 'utf16le').swap16().copy(header, 64);
  options.locators.forEach((locator, entry) => {
    const at = 576 + entry * 24;
    header.write(locator.code, at, 'latin1');
    header.writeUInt32BE(1, at + 4);
    header.writeUInt32BE(locator.data.length, at + 8);
    header.writeBigUInt64BE(BigInt(2048 + entry * 512), at + 16);
  });
  refreshHeaderChecksum(header);
  const table = Buffer.alloc(Math.ceil((blockCount * 4) / 512) * 512, 0xff);
  const parts: { at: number; bytes: Buffer }[] = [{ at: 512, bytes: header }, { at: 1536, bytes: table }];
  options.locators.forEach((locator, entry) => parts.push({ at: 2048 + entry * 512, bytes: locator.data }));
  let next = 8192;
  for (const block of options.blocks) {
    table.writeUInt32BE(next / 512, block.index * 4);
    const bitmap = Buffer.alloc(512);
    block.bitmap.copy(bitmap);
    parts.push({ at: next, bytes: bitmap }, { at: next + 512, bytes: block.data });
    next += 512 + BLOCK;
  }
  const footer = specFooter(4, options.size, 512n, options.uniqueId);
  parts.push({ at: 0, bytes: footer }, { at: next, bytes: footer });
  const handle = await fs.open(file, 'w');
  try {
    for (const part of parts) await handle.write(part.bytes, 0, part.bytes.length, part.at);
  } finally {
    await handle.close();
  }
}

const utf16 = (text: string) => Buffer.from(text, 'utf16le');

/** A dynamic VHD made by qemu-img from `disk`, and its unique id. */
async function qemuDynamic(directory: string, name: string, disk: Buffer): Promise<{ image: string; uniqueId: Buffer }> {
  const raw = path.join(directory, `${name}.raw`);
  await fs.writeFile(raw, disk);
  const image = path.join(directory, name);
  await qemuImg(['convert', '-f', 'raw', '-O', 'vpc', '-o', 'subformat=dynamic', raw, image]);
  const footer = Buffer.alloc(512);
  const handle = await fs.open(image, 'r');
  await handle.read(footer, 0, 512, 0);
  await handle.close();
  return { image, uniqueId: footer.subarray(68, 84) };
}

/** An 8 MiB disk with data in blocks 0 and 2 (block 1 and 3 empty). */
function baseDisk(): Buffer {
  const disk = Buffer.alloc(8 * MiB);
  randomBytes(BLOCK).copy(disk, 0);
  randomBytes(MiB).copy(disk, 2 * BLOCK + MiB / 2);
  return disk;
}

async function patch(file: string, at: number, bytes: Buffer): Promise<void> {
  const handle = await fs.open(file, 'r+');
  try {
    await handle.write(bytes, 0, bytes.length, at);
  } finally {
    await handle.close();
  }
}

async function readAt(file: string, at: number, length: number): Promise<Buffer> {
  const bytes = Buffer.alloc(length);
  const handle = await fs.open(file, 'r');
  try {
    await handle.read(bytes, 0, length, at);
  } finally {
    await handle.close();
  }
  return bytes;
}

async function expectOpenRefused(file: string, code: string, includes: string): Promise<void> {
  await assert.rejects(async () => {
    const reader = await openVhd(file);
    try {
      await readAll(reader);
    } finally {
      await reader.close();
    }
  }, isFerryError(code, includes));
}

async function withQemu(t: TestContext): Promise<string | null> {
  if (!(await requireQemuImg(t))) return null;
  return tempDirFor(t, 'ferry-vhd-');
}

describe('vhd images', () => {
  test('sniff: a dynamic disk by its footer copy, a small fixed disk by its footer; raw is not a VHD', async (t) => {
    const directory = await withQemu(t);
    if (!directory) return;
    const { image } = await qemuDynamic(directory, 'dynamic.vhd', baseDisk());
    const head = await readAt(image, 0, 64 * 1024);
    assert.equal(vhdImageFormat.sniff(head, (await fs.stat(image)).size), true);
    const fixed = path.join(directory, 'fixed.vhd');
    await qemuImg(['create', '-f', 'vpc', '-o', 'subformat=fixed,force_size=on', fixed, '16K']);
    const whole = await fs.readFile(fixed);
    assert.equal(sniffVhd(whole, whole.length), true);
    assert.equal(sniffVhd(Buffer.alloc(4096), 4096), false);
    assert.equal(vhdImageFormat.format, 'vhd');
    assert.deepEqual(vhdWriter.subformats, ['dynamic', 'fixed']);
  });

  test('fixed writer: size rounded up to a whole MiB, the footer says exactly that, holes kept in the file', async (t) => {
    const directory = await withQemu(t);
    if (!directory) return;
    const disk = Buffer.alloc(40 * MiB + 1000);
    randomBytes(MiB).copy(disk, 5 * MiB);
    disk.fill(0x5a, 40 * MiB, 40 * MiB + 1000);
    const image = path.join(directory, 'out.vhd');
    const written = await writeVhd(image, rawInput(disk), { subformat: 'fixed' });
    assert.equal(written, 41 * MiB + 512);
    const footer = await readAt(image, 41 * MiB, 512);
    assert.equal(footer.toString('latin1', 0, 8), 'conectix');
    assert.equal(footer.readBigUInt64BE(48), BigInt(41 * MiB), 'current size');
    assert.equal(footer.readUInt32BE(60), 2, 'fixed');
    assert.equal(await qemuVirtualSize(image, 'vpc'), 41 * MiB);
    assert.ok((await fs.stat(image)).blocks * 512 < 4 * MiB, 'holes stay holes');
    const source = path.join(directory, 'source.raw');
    await fs.writeFile(source, disk);
    await qemuImg(['compare', '-f', 'vpc', '-F', 'raw', image, source]);
    const reader = await openVhd(image);
    try {
      assert.equal(reader.subformat, 'fixed');
      assert.equal(reader.size, 41 * MiB);
      const content = await readAll(reader);
      assert.ok(content.subarray(0, disk.length).equals(disk));
    } finally {
      await reader.close();
    }
  });

  test('dynamic writer: all-zero blocks are not allocated, written ones read back, qemu-img agrees', async (t) => {
    const directory = await withQemu(t);
    if (!directory) return;
    const disk = Buffer.alloc(9 * MiB + 512 * 3);
    randomBytes(100).copy(disk, BLOCK + 7); // block 1
    randomBytes(512 * 3).copy(disk, 9 * MiB); // block 4, the partial last block
    const image = path.join(directory, 'out.vhd');
    await writeVhd(image, rawInput(disk));
    assert.equal(await qemuVirtualSize(image, 'vpc'), disk.length);
    const source = path.join(directory, 'source.raw');
    await fs.writeFile(source, disk);
    await qemuImg(['compare', '-f', 'vpc', '-F', 'raw', image, source]);
    assert.equal((await fs.stat(image)).size, 4096 - 512 + 2 * (512 + BLOCK) + 512, 'two blocks stored (the first bitmap at 3584, so data is 4 KiB-aligned), then the footer');
    const reader = await openVhd(image);
    try {
      assert.equal(reader.subformat, 'dynamic');
      assert.ok((await readAll(reader)).equals(disk));
      assert.deepEqual(await checkedExtents(reader), [
        { offset: 0, length: BLOCK, kind: 'zero' },
        { offset: BLOCK, length: BLOCK, kind: 'data' },
        { offset: 2 * BLOCK, length: 2 * BLOCK, kind: 'zero' },
        { offset: 4 * BLOCK, length: disk.length - 4 * BLOCK, kind: 'data' },
      ]);
    } finally {
      await reader.close();
    }
  });

  test('writer: an unknown subformat is refused before any file is made', async (t) => {
    const directory = await tempDirFor(t, 'ferry-vhd-');
    await assert.rejects(writeVhd(path.join(directory, 'x.vhd'), rawInput(Buffer.alloc(MiB)), { subformat: 'differencing' }), isFerryError('invalid-request'));
    assert.deepEqual(await fs.readdir(directory), []);
  });

  describe('hostile input', () => {
    test('a BAT entry pointing past the end of the file', async (t) => {
      const directory = await withQemu(t);
      if (!directory) return;
      const { image } = await qemuDynamic(directory, 'past-end.vhd', baseDisk());
      const entry = Buffer.alloc(4);
      entry.writeUInt32BE(0x7fff0000);
      await patch(image, 1536 + 2 * 4, entry);
      await expectOpenRefused(image, 'corrupt-data', 'BAT entry 2 points past the end of the file');
    });

    test('BAT entries pointing into the footer copy, the dynamic header and the BAT itself', async (t) => {
      const directory = await withQemu(t);
      if (!directory) return;
      const { image } = await qemuDynamic(directory, 'into-metadata.vhd', baseDisk());
      const pristine = await fs.readFile(image);
      for (const [sector, what] of [[0, 'the footer copy'], [1, 'the dynamic disk header'], [3, 'the BAT']] as const) {
        const copy = Buffer.from(pristine);
        copy.writeUInt32BE(sector, 1536);
        await fs.writeFile(image, copy);
        await expectOpenRefused(image, 'corrupt-data', `BAT entry 0 points into ${what}`);
      }
    });

    test('a BAT entry pointing into the end footer (the block would run into it)', async (t) => {
      const directory = await withQemu(t);
      if (!directory) return;
      const { image } = await qemuDynamic(directory, 'into-footer.vhd', baseDisk());
      const size = (await fs.stat(image)).size;
      const entry = Buffer.alloc(4);
      entry.writeUInt32BE((size - 512) / 512);
      await patch(image, 1536, entry);
      await expectOpenRefused(image, 'corrupt-data', 'BAT entry 0 points past the end of the file');
    });

    test('footer and dynamic header checksum mismatches', async (t) => {
      const directory = await withQemu(t);
      if (!directory) return;
      const fixed = path.join(directory, 'fixed.vhd');
      await qemuImg(['create', '-f', 'vpc', '-o', 'subformat=fixed,force_size=on', fixed, '4M']);
      await patch(fixed, 4 * MiB + 24, Buffer.from([1, 2, 3, 4])); // the timestamp, checksum left as it was
      await expectOpenRefused(fixed, 'corrupt-data', 'footer checksum mismatch');

      const { image } = await qemuDynamic(directory, 'dynamic.vhd', baseDisk());
      const size = (await fs.stat(image)).size;
      // Both footers damaged: nothing to recover from.
      await patch(image, 24, Buffer.from([1, 2, 3, 4]));
      await patch(image, size - 512 + 24, Buffer.from([1, 2, 3, 4]));
      await expectOpenRefused(image, 'corrupt-data', 'footer checksum mismatch');

      const { image: headerDamaged } = await qemuDynamic(directory, 'header.vhd', baseDisk());
      await patch(headerDamaged, 512 + 32, Buffer.from([0, 0x10, 0, 0])); // block size 1 MiB, checksum left as it was
      await expectOpenRefused(headerDamaged, 'corrupt-data', 'dynamic disk header checksum mismatch');
    });

    test('a dynamic disk whose end footer is damaged is read through its footer copy', async (t) => {
      const directory = await withQemu(t);
      if (!directory) return;
      const disk = baseDisk();
      const { image } = await qemuDynamic(directory, 'copy.vhd', disk);
      await patch(image, (await fs.stat(image)).size - 512 + 24, Buffer.from([1, 2, 3, 4]));
      const reader = await openVhd(image);
      try {
        assert.ok((await readAll(reader)).subarray(0, disk.length).equals(disk));
      } finally {
        await reader.close();
      }
    });

    test('absurd sizes (2^60 and 2^50 bytes) are refused without allocating', async (t) => {
      const directory = await withQemu(t);
      if (!directory) return;
      for (const [claim, fixedProblem, dynamicProblem] of [
        [1n << 60n, 'virtual size 1152921504606846976 is not a plausible', 'virtual size 1152921504606846976 is not a plausible'],
        [1n << 50n, 'claims a 1125899906842624-byte disk', 'entries, too few for a 1125899906842624-byte disk'],
      ] as const) {
        const absurd = Buffer.alloc(8);
        absurd.writeBigUInt64BE(claim);
        for (const subformat of ['fixed', 'dynamic']) {
          const image = path.join(directory, `${subformat}-${claim}.vhd`);
          await qemuImg(['create', '-f', 'vpc', '-o', `subformat=${subformat}`, image, '4M']);
          const size = (await fs.stat(image)).size;
          for (const at of subformat === 'fixed' ? [size - 512] : [0, size - 512]) {
            const footer = await readAt(image, at, 512);
            absurd.copy(footer, 48);
            refreshFooterChecksum(footer);
            await patch(image, at, footer);
          }
          const before = process.memoryUsage().arrayBuffers;
          await expectOpenRefused(image, 'corrupt-data', subformat === 'fixed' ? fixedProblem : dynamicProblem);
          assert.ok(process.memoryUsage().arrayBuffers - before < 64 * MiB, 'nothing sized by the claim was allocated');
        }
      }
      // A BAT claiming 2^32-1 entries for a disk that needs few loads only the entries the disk needs.
      const image = path.join(directory, 'entries.vhd');
      await qemuImg(['create', '-f', 'vpc', '-o', 'subformat=dynamic', image, '4M']);
      const header = await readAt(image, 512, 1024);
      header.writeUInt32BE(0xffffffff, 28);
      refreshHeaderChecksum(header);
      await patch(image, 512, header);
      const reader = await openVhd(image);
      await reader.close();
    });

    test('a truncated fixed disk (data shorter than the footer claims) is refused', async (t) => {
      const directory = await withQemu(t);
      if (!directory) return;
      const image = path.join(directory, 'short.vhd');
      await qemuImg(['create', '-f', 'vpc', '-o', 'subformat=fixed,force_size=on', image, '4M']);
      const footer = await readAt(image, 4 * MiB, 512);
      await fs.truncate(image, 2 * MiB);
      await patch(image, 2 * MiB, footer);
      await expectOpenRefused(image, 'corrupt-data', 'the footer claims a 4194304-byte disk but the file holds 2097152 bytes');
    });
  });

  describe('differencing disks (qemu-img 7.2 cannot create them: children are written here from the specification)', () => {
    /**
     * How this is checked: the base is made by qemu-img; the child is written byte by byte by
     * writeDifferencingChild above (independent of the module), with a block whose bitmap holds only
     * some sectors; the expected disk is computed in memory as the base with the child's sectors laid
     * over it, and the reader must return exactly that and map it consistently.
     */
    test('reads as the parent with the child\'s sectors over it, per the sector bitmaps', async (t) => {
      const directory = await withQemu(t);
      if (!directory) return;
      const disk = baseDisk();
      const { uniqueId } = await qemuDynamic(directory, 'base.vhd', disk);
      // Block 0: the child holds sectors 0-7 and 100 only; block 1: the whole block; blocks 2 and 3: the parent's.
      const partialBitmap = Buffer.alloc(512);
      partialBitmap[0] = 0xff;
      partialBitmap[100 >> 3] = 0x80 >> (100 & 7);
      const partialData = randomBytes(BLOCK);
      const fullData = randomBytes(BLOCK);
      const child = path.join(directory, 'child.vhd');
      await writeDifferencingChild(child, {
        size: disk.length,
        uniqueId: randomBytes(16),
        parentUniqueId: uniqueId,
        parentName: 'base.vhd',
        locators: [
          { code: 'W2ku', data: utf16('C:\\Hyper-V\\somewhere-else\\base.vhd') },
          { code: 'W2ru', data: utf16('.\\base.vhd') },
        ],
        blocks: [
          { index: 0, bitmap: partialBitmap, data: partialData },
          { index: 1, bitmap: Buffer.alloc(512, 0xff), data: fullData },
        ],
      });
      const expected = Buffer.from(disk);
      partialData.copy(expected, 0, 0, 8 * 512);
      partialData.copy(expected, 100 * 512, 100 * 512, 101 * 512);
      fullData.copy(expected, BLOCK);
      const reader = await openVhd(child);
      try {
        assert.equal(reader.subformat, 'differencing');
        assert.equal(reader.size, disk.length);
        assert.ok((await readAll(reader)).equals(expected), 'base + child');
        const extents = await checkedExtents(reader);
        for (const extent of extents.filter((each) => each.kind === 'zero')) {
          assert.ok(expected.subarray(extent.offset, extent.offset + extent.length).every((byte) => byte === 0), `zero extent at ${extent.offset}`);
        }
        // Base blocks 0 and 2 hold data, block 1 and 3 do not; the child holds block 1: only block 3 is a hole.
        assert.deepEqual(extents.at(-1), { offset: 3 * BLOCK, length: BLOCK, kind: 'zero' });
        assert.equal(extents.filter((each) => each.kind === 'zero').reduce((sum, each) => sum + each.length, 0), BLOCK);
      } finally {
        await reader.close();
      }
    });

    test('the parent is found by an absolute W2ku path when there is no relative one', async (t) => {
      const directory = await withQemu(t);
      if (!directory) return;
      const disk = baseDisk();
      await fs.mkdir(path.join(directory, 'parents'));
      const { uniqueId } = await qemuDynamic(path.join(directory, 'parents'), 'base.vhd', disk);
      const child = path.join(directory, 'child.vhd');
      await writeDifferencingChild(child, { size: disk.length, uniqueId: randomBytes(16), parentUniqueId: uniqueId, locators: [{ code: 'W2ku', data: utf16(path.join(directory, 'parents', 'base.vhd')) }], blocks: [] });
      const reader = await openVhd(child);
      try {
        assert.ok((await readAll(reader)).equals(disk));
      } finally {
        await reader.close();
      }
    });

    test('a missing parent is disk-unreadable, naming the parent path', async (t) => {
      const directory = await tempDirFor(t, 'ferry-vhd-');
      const child = path.join(directory, 'orphan.vhd');
      await writeDifferencingChild(child, { size: 4 * MiB, uniqueId: randomBytes(16), parentUniqueId: randomBytes(16), locators: [{ code: 'W2ru', data: utf16('.\\gone\\base.vhd') }], blocks: [] });
      await expectOpenRefused(child, 'disk-unreadable', path.join(directory, 'gone', 'base.vhd'));
    });

    test('a loop in the chain (A\'s parent is B, B\'s parent is A) is refused', async (t) => {
      const directory = await tempDirFor(t, 'ferry-vhd-');
      const idA = randomBytes(16);
      const idB = randomBytes(16);
      const a = path.join(directory, 'a.vhd');
      const b = path.join(directory, 'b.vhd');
      await writeDifferencingChild(a, { size: 4 * MiB, uniqueId: idA, parentUniqueId: idB, locators: [{ code: 'W2ru', data: utf16('.\\b.vhd') }], blocks: [] });
      await writeDifferencingChild(b, { size: 4 * MiB, uniqueId: idB, parentUniqueId: idA, locators: [{ code: 'W2ru', data: utf16('.\\a.vhd') }], blocks: [] });
      await expectOpenRefused(a, 'corrupt-data', 'the differencing chain loops');
      const self = path.join(directory, 'self.vhd');
      const idSelf = randomBytes(16);
      await writeDifferencingChild(self, { size: 4 * MiB, uniqueId: idSelf, parentUniqueId: idSelf, locators: [{ code: 'W2ru', data: utf16('self.vhd') }], blocks: [] });
      await expectOpenRefused(self, 'corrupt-data', 'the differencing chain loops');
    });

    test('a parent whose unique id is not the one the child records is refused', async (t) => {
      const directory = await withQemu(t);
      if (!directory) return;
      await qemuDynamic(directory, 'base.vhd', baseDisk());
      const child = path.join(directory, 'child.vhd');
      await writeDifferencingChild(child, { size: 8 * MiB, uniqueId: randomBytes(16), parentUniqueId: randomBytes(16), locators: [{ code: 'W2ru', data: utf16('.\\base.vhd') }], blocks: [] });
      await expectOpenRefused(child, 'corrupt-data', 'unique id');
    });

    test('a parent locator pointing past the end of the file is refused', async (t) => {
      const directory = await tempDirFor(t, 'ferry-vhd-');
      const child = path.join(directory, 'child.vhd');
      await writeDifferencingChild(child, { size: 4 * MiB, uniqueId: randomBytes(16), parentUniqueId: randomBytes(16), locators: [{ code: 'W2ru', data: utf16('.\\base.vhd') }], blocks: [] });
      const header = await readAt(child, 512, 1024);
      header.writeBigUInt64BE(1n << 40n, 576 + 16);
      refreshHeaderChecksum(header);
      await patch(child, 512, header);
      await expectOpenRefused(child, 'corrupt-data', 'parent locator 0');
    });
  });
});
