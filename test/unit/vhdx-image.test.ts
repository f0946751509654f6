/**
 * VHDX images (src/disks/vhdx.ts) and CRC-32C (src/disks/crc32c.ts): the shared reader and writer
 * conformance suites against qemu-img, plus hostile images made by damaging a good one in the ways the
 * specification's checks exist for.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, test, type TestContext } from 'node:test';
import { crc32c } from '../../src/disks/crc32c.js';
import type { DiskImageInput } from '../../src/disks/disk-image.js';
import { createVhdxWriter, openVhdx, sniffVhdx, vhdxImageFormat, vhdxWriter, writeVhdx } from '../../src/disks/vhdx.js';
import { FerryError, type ErrorCode } from '../../src/errors.js';
import { checkedExtents, qemuImg, rawInput, readAll, readerConformance, requireQemuImg, writerConformance } from './disk-image-conformance.js';
import { tempDirFor } from './helpers.js';

const MiB = 1024 * 1024;

describe('crc32c', () => {
  test('matches the CRC-32C check value for "123456789"', () => {
    assert.equal(crc32c(Buffer.from('123456789')), 0xe3069283);
  });

  test('is 0 for no data, and chains over parts', () => {
    assert.equal(crc32c(Buffer.alloc(0)), 0);
    const data = randomBytes(10_000);
    assert.equal(crc32c(data.subarray(3000), crc32c(data.subarray(0, 3000))), crc32c(data));
  });

  test('matches known vectors (RFC 3720 B.4: 32 bytes of zeros, of 0xff)', () => {
    assert.equal(crc32c(Buffer.alloc(32)), 0x8a9136aa);
    assert.equal(crc32c(Buffer.alloc(32, 0xff)), 0x62a8ab43);
  });
});

// qemu-img picks 8 MiB blocks for disks under 1 GiB, and ext4 keeps superblock backups in block groups
// 1, 3, 5, 7 (8 MiB each): the 24 MiB default source disk has data in all three of its 8 MiB blocks, so
// it has no hole to report. On a 64 MiB one, blocks 4 and 6 (a quarter of the disk) stay free.
readerConformance({
  format: 'vhdx',
  sizeMiB: 64,
  open: openVhdx,
  cases: [
    { subformat: 'dynamic', qemu: ['-O', 'vhdx', '-o', 'subformat=dynamic'], sparse: true },
    { subformat: 'fixed', qemu: ['-O', 'vhdx', '-o', 'subformat=fixed'], sparse: false },
  ],
});

writerConformance({ writer: vhdxWriter, qemuFormat: 'vhdx', checkable: true, sparse: { dynamic: true, fixed: true } });

/** An 8 MiB disk with random data in blocks 0, 3 and 7 (1 MiB blocks), the rest zeros. */
function sampleDisk(): Buffer {
  const disk = Buffer.alloc(8 * MiB);
  for (const block of [0, 3, 7]) randomBytes(MiB).copy(disk, block * MiB);
  return disk;
}

/** The fields of a VHDX file a test damages: where its structures are, read the way the format defines them. */
interface ImageLayout {
  batOffset: number;
  metadataOffset: number;
  metadataEntryCount: number;
  /** Offset in the file of each metadata item, by the GUID's text in on-disk byte order (hex). */
  itemOffsets: Map<string, number>;
}

function layoutOf(image: Buffer): ImageLayout {
  const table = image.subarray(192 * 1024);
  const regions = new Map<string, number>();
  for (let index = 0; index < table.readUInt32LE(8); index++) {
    const at = 16 + index * 32;
    regions.set(table.subarray(at, at + 16).toString('hex'), Number(table.readBigUInt64LE(at + 16)));
  }
  const batOffset = regions.get('6677c22d23f600429d64115e9bfd4a08')!;
  const metadataOffset = regions.get('06a27c8b90479a4bb8fe575f050f886e')!;
  const metadata = image.subarray(metadataOffset);
  const metadataEntryCount = metadata.readUInt16LE(10);
  const itemOffsets = new Map<string, number>();
  for (let index = 0; index < metadataEntryCount; index++) {
    const at = 32 + index * 32;
    itemOffsets.set(metadata.subarray(at, at + 16).toString('hex'), metadataOffset + metadata.readUInt32LE(at + 16));
  }
  return { batOffset, metadataOffset, metadataEntryCount, itemOffsets };
}

/** On-disk hex of the metadata items the tests change. */
const FILE_PARAMETERS = '3767a1ca36fa434db3b633f0aa44e76b';
const VIRTUAL_DISK_SIZE = '2442a52f1bcd7648b2115dbed83bf4b8';

/** Recomputes the CRC-32C of the structure of `size` bytes at `offset` (checksum at +4). */
function reseal(image: Buffer, offset: number, size: number): void {
  const structure = image.subarray(offset, offset + size);
  structure.writeUInt32LE(0, 4);
  structure.writeUInt32LE(crc32c(structure), 4);
}

const HEADERS = [64 * 1024, 128 * 1024];

/** Inverts every bit of one byte. */
function flipByte(image: Buffer, at: number): void {
  image.writeUInt8(image.readUInt8(at) ^ 0xff, at);
}
const REGION_TABLES = [192 * 1024, 256 * 1024];

describe('vhdx hostile images', () => {
  /** Writes the sample disk as VHDX, lets `damage` change its bytes, and returns the damaged file's path. */
  async function damagedImage(t: TestContext, damage: (image: Buffer, layout: ImageLayout) => void): Promise<string> {
    const directory = await tempDirFor(t, 'ferry-vhdx-hostile-');
    const imagePath = path.join(directory, 'damaged.vhdx');
    await writeVhdx(imagePath, rawInput(sampleDisk()));
    const image = await fs.readFile(imagePath);
    damage(image, layoutOf(image));
    await fs.writeFile(imagePath, image);
    return imagePath;
  }

  async function assertRefused(imagePath: string, code: ErrorCode, pattern: RegExp): Promise<void> {
    await assert.rejects(openVhdx(imagePath), (error: unknown) => {
      assert.ok(error instanceof FerryError, String(error));
      assert.equal(error.code, code, error.message);
      assert.match(error.message, pattern);
      assert.ok(error.message.includes(imagePath), `names the file: ${error.message}`);
      return true;
    });
  }

  async function assertOpens(imagePath: string): Promise<void> {
    const reader = await openVhdx(imagePath);
    await reader.close();
  }

  test('both headers with bad checksums are refused; one bad header falls back to the other', async (t) => {
    const oneBad = await damagedImage(t, (image) => {
      flipByte(image, HEADERS[1]! + 200);
    });
    await assertOpens(oneBad);
    const bothBad = await damagedImage(t, (image) => {
      for (const header of HEADERS) flipByte(image, header + 200);
    });
    await assertRefused(bothBad, 'corrupt-data', /neither VHDX header is valid/);
  });

  test('a region table with a bad checksum is refused when the copy is bad too; the copy is used otherwise', async (t) => {
    const firstBad = await damagedImage(t, (image) => {
      flipByte(image, REGION_TABLES[0]! + 100);
    });
    await assertOpens(firstBad);
    const bothBad = await damagedImage(t, (image) => {
      for (const table of REGION_TABLES) flipByte(image, table + 100);
    });
    await assertRefused(bothBad, 'corrupt-data', /region table/);
  });

  test('an unknown required region is refused', async (t) => {
    const imagePath = await damagedImage(t, (image) => {
      for (const table of REGION_TABLES) {
        const count = image.readUInt32LE(table + 8);
        const at = table + 16 + count * 32;
        randomBytes(16).copy(image, at);
        image.writeBigUInt64LE(BigInt(100 * MiB), at + 16);
        image.writeUInt32LE(MiB, at + 24);
        image.writeUInt32LE(1, at + 28);
        image.writeUInt32LE(count + 1, table + 8);
        reseal(image, table, 64 * 1024);
      }
    });
    await assertRefused(imagePath, 'corrupt-data', /unknown required region/);
  });

  test('a BAT entry pointing past the end of the file is refused', async (t) => {
    const imagePath = await damagedImage(t, (image, layout) => {
      const pastTheEnd = Math.ceil(image.length / MiB) + 10;
      image.writeUInt32LE(((pastTheEnd << 20) | 6) >>> 0, layout.batOffset);
    });
    await assertRefused(imagePath, 'corrupt-data', /BAT entry of block 0 points past the end of the file/);
  });

  test('a BAT entry pointing into the metadata region is refused', async (t) => {
    const imagePath = await damagedImage(t, (image, layout) => {
      image.writeUInt32LE((((layout.metadataOffset / MiB) << 20) | 6) >>> 0, layout.batOffset + 3 * 8);
    });
    await assertRefused(imagePath, 'corrupt-data', /block 3 points inside the metadata region/);
  });

  test('a BAT entry whose offset is not 1 MiB aligned (reserved bits set) is refused', async (t) => {
    const imagePath = await damagedImage(t, (image, layout) => {
      const entry = image.readUInt32LE(layout.batOffset);
      image.writeUInt32LE((entry | 0x8000) >>> 0, layout.batOffset);
    });
    await assertRefused(imagePath, 'corrupt-data', /not 1 MiB aligned/);
  });

  test('absurd virtual sizes are refused before anything is allocated', async (t) => {
    const huge = await damagedImage(t, (image, layout) => {
      image.writeBigUInt64LE(2n ** 60n, layout.itemOffsets.get(VIRTUAL_DISK_SIZE)!);
    });
    await assertRefused(huge, 'corrupt-data', /over the 64 TiB limit/);
    // 64 TiB is allowed, but with 1 MiB blocks it needs a 512 MiB BAT the 1 MiB BAT region cannot hold.
    const before = process.memoryUsage().rss;
    const tooBigForItsBat = await damagedImage(t, (image, layout) => {
      image.writeBigUInt64LE(2n ** 46n, layout.itemOffsets.get(VIRTUAL_DISK_SIZE)!);
    });
    await assertRefused(tooBigForItsBat, 'corrupt-data', /BAT region .* is too small/);
    assert.ok(process.memoryUsage().rss - before < 256 * MiB, 'no BAT of the claimed size was allocated');
    const unaligned = await damagedImage(t, (image, layout) => {
      image.writeBigUInt64LE(BigInt(8 * MiB - 100), layout.itemOffsets.get(VIRTUAL_DISK_SIZE)!);
    });
    await assertRefused(unaligned, 'corrupt-data', /not a multiple of the 512-byte sector/);
  });

  test('block sizes that are not a power of two or out of the 1 MiB..256 MiB range are refused', async (t) => {
    for (const blockSize of [3 * MiB, 512 * 1024, 512 * MiB, 0, 0xffffffff]) {
      const imagePath = await damagedImage(t, (image, layout) => {
        image.writeUInt32LE(blockSize, layout.itemOffsets.get(FILE_PARAMETERS)!);
      });
      await assertRefused(imagePath, 'corrupt-data', /block size .* is not a power of two between 1 MiB and 256 MiB/);
    }
  });

  test('an image with a log to replay (non-zero log GUID) is refused', async (t) => {
    const imagePath = await damagedImage(t, (image) => {
      for (const header of HEADERS) {
        randomBytes(16).copy(image, header + 48);
        reseal(image, header, 4096);
      }
    });
    await assertRefused(imagePath, 'corrupt-data', /log that must be replayed/);
  });

  test('an unknown required metadata item is refused; an unknown optional one is ignored', async (t) => {
    const addItem = (flags: number) => (image: Buffer, layout: ImageLayout) => {
      const at = layout.metadataOffset + 32 + layout.metadataEntryCount * 32;
      randomBytes(16).copy(image, at);
      image.writeUInt32LE(128 * 1024, at + 16);
      image.writeUInt32LE(8, at + 20);
      image.writeUInt32LE(flags, at + 24);
      image.writeUInt16LE(layout.metadataEntryCount + 1, layout.metadataOffset + 10);
    };
    await assertRefused(await damagedImage(t, addItem(4)), 'corrupt-data', /unknown required metadata item/);
    await assertOpens(await damagedImage(t, addItem(2)));
  });

  test('a metadata item outside the metadata region is refused', async (t) => {
    const imagePath = await damagedImage(t, (image, layout) => {
      image.writeUInt32LE(0xfffffff0, layout.metadataOffset + 32 + 16);
    });
    await assertRefused(imagePath, 'corrupt-data', /outside the metadata region/);
  });

  test('a differencing image (has-parent) is refused as not supported yet', async (t) => {
    const imagePath = await damagedImage(t, (image, layout) => {
      const at = layout.itemOffsets.get(FILE_PARAMETERS)! + 4;
      image.writeUInt32LE(image.readUInt32LE(at) | 2, at);
    });
    await assertRefused(imagePath, 'invalid-request', /differencing VHDX is not supported yet/);
  });

  test('blocks undefined, zero or unmapped read as zeros; reserved and partially present states are refused', async (t) => {
    for (const state of [1, 2, 3]) {
      const imagePath = await damagedImage(t, (image, layout) => {
        image.writeUInt32LE(((image.readUInt32LE(layout.batOffset + 3 * 8) & ~7) | state) >>> 0, layout.batOffset + 3 * 8);
      });
      const reader = await openVhdx(imagePath);
      try {
        const extents = await checkedExtents(reader);
        assert.deepEqual(extents.map((extent) => [extent.offset / MiB, extent.length / MiB, extent.kind]), [[0, 1, 'data'], [1, 6, 'zero'], [7, 1, 'data']], `state ${state}`);
        const block = Buffer.alloc(MiB, 0xaa);
        await reader.read(block, MiB, 3 * MiB);
        assert.ok(block.every((byte) => byte === 0), `state ${state} reads as zeros`);
      } finally {
        await reader.close();
      }
    }
    for (const [state, pattern] of [[4, /reserved state 4/], [5, /reserved state 5/], [7, /partially present/]] as const) {
      const imagePath = await damagedImage(t, (image, layout) => {
        image.writeUInt32LE(((image.readUInt32LE(layout.batOffset) & ~7) | state) >>> 0, layout.batOffset);
      });
      await assertRefused(imagePath, 'corrupt-data', pattern);
    }
  });

  test('fuzz: random damage to headers, region tables, metadata and BAT (checksums resealed half the time) gives a FerryError or a readable disk', { timeout: 120_000 }, async (t) => {
    const directory = await tempDirFor(t, 'ferry-vhdx-fuzz-');
    const pristinePath = path.join(directory, 'pristine.vhdx');
    await writeVhdx(pristinePath, rawInput(sampleDisk()));
    const pristine = await fs.readFile(pristinePath);
    const layout = layoutOf(pristine);
    const zones = [
      { offset: 0, length: 16 },
      { offset: HEADERS[0]!, length: 80 },
      { offset: HEADERS[1]!, length: 80 },
      { offset: REGION_TABLES[0]!, length: 80 },
      { offset: REGION_TABLES[1]!, length: 80 },
      { offset: layout.metadataOffset, length: 32 + 6 * 32 },
      { offset: layout.metadataOffset + 64 * 1024, length: 48 },
      { offset: layout.batOffset, length: 64 },
    ];
    let seed = 12345;
    const random = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32);
    const mutated = path.join(directory, 'mutated.vhdx');
    const outcomes = new Map<string, number>();
    for (let round = 0; round < 300; round++) {
      const copy = Buffer.from(pristine);
      for (let flips = 1 + Math.floor(random() * 4); flips > 0; flips--) {
        const zone = zones[Math.floor(random() * zones.length)]!;
        copy[zone.offset + Math.floor(random() * zone.length)] = random() < 0.3 ? 0xff : Math.floor(random() * 256);
      }
      if (random() < 0.5) {
        for (const header of HEADERS) reseal(copy, header, 4096);
        for (const table of REGION_TABLES) reseal(copy, table, 64 * 1024);
      }
      await fs.writeFile(mutated, copy);
      let outcome = 'read';
      try {
        const reader = await openVhdx(mutated);
        try {
          for await (const extent of reader.extents()) void extent;
          const length = Math.min(reader.size, 2 * MiB);
          await reader.read(Buffer.alloc(length), length, 0);
          await reader.read(Buffer.alloc(Math.min(reader.size, MiB)), Math.min(reader.size, MiB), reader.size - Math.min(reader.size, MiB));
        } finally {
          await reader.close();
        }
      } catch (error) {
        assert.ok(error instanceof FerryError, `round ${round}: a FerryError, not ${error instanceof Error ? error.stack : String(error)}`);
        assert.ok(['corrupt-data', 'invalid-request'].includes(error.code), `round ${round}: ${error.code}: ${error.message}`);
        outcome = error.code;
      }
      outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
    }
    t.diagnostic(`fuzz outcomes: ${JSON.stringify(Object.fromEntries(outcomes))}`);
    assert.ok((outcomes.get('corrupt-data') ?? 0) > 0, 'some damage is detected');
  });

  test('a file that is not VHDX, or too short, is refused with corrupt-data', async (t) => {
    const directory = await tempDirFor(t, 'ferry-vhdx-hostile-');
    const short = path.join(directory, 'short.vhdx');
    await fs.writeFile(short, 'vhdxfile');
    await assertRefused(short, 'corrupt-data', /too short/);
    const other = path.join(directory, 'other.vhdx');
    await fs.writeFile(other, Buffer.alloc(2 * MiB));
    await assertRefused(other, 'corrupt-data', /not a VHDX image/);
    await assert.rejects(openVhdx(path.join(directory, 'missing.vhdx')), (error: unknown) => error instanceof FerryError && error.code === 'disk-unreadable');
  });
});

describe('vhdx writer and reader', () => {
  test('sniff recognises the file type identifier; the module exports both sides', () => {
    assert.equal(sniffVhdx(Buffer.from('vhdxfile\0\0'), 10), true);
    assert.equal(sniffVhdx(Buffer.from('conectix'), 8), false);
    assert.equal(sniffVhdx(Buffer.alloc(4), 4), false);
    assert.equal(vhdxImageFormat.format, 'vhdx');
    assert.equal(vhdxImageFormat.writer, vhdxWriter);
    assert.deepEqual(vhdxWriter.subformats, ['dynamic', 'fixed']);
  });

  test('a written image reads back through the reader, holes as zero extents, in both subformats', async (t) => {
    const directory = await tempDirFor(t, 'ferry-vhdx-roundtrip-');
    const disk = sampleDisk();
    for (const subformat of ['dynamic', 'fixed']) {
      const imagePath = path.join(directory, `${subformat}.vhdx`);
      const onDisk = await writeVhdx(imagePath, rawInput(disk), { subformat });
      const reader = await openVhdx(imagePath);
      try {
        assert.equal(reader.subformat, subformat);
        assert.equal(reader.size, disk.length);
        assert.ok((await readAll(reader)).equals(disk));
        const extents = await checkedExtents(reader);
        if (subformat === 'dynamic') {
          assert.deepEqual(extents.map((extent) => [extent.offset / MiB, extent.length / MiB, extent.kind]), [[0, 1, 'data'], [1, 2, 'zero'], [3, 1, 'data'], [4, 3, 'zero'], [7, 1, 'data']]);
          assert.equal(onDisk, 4 * MiB + 3 * MiB, 'header section, log, BAT, metadata and three blocks');
        } else {
          assert.deepEqual(extents, [{ offset: 0, length: disk.length, kind: 'data' }]);
          assert.equal(onDisk, 4 * MiB + 8 * MiB);
        }
      } finally {
        await reader.close();
      }
    }
  });

  test('sizes that are not a multiple of the block or the sector round up, and qemu-img agrees (32 MiB blocks too)', async (t) => {
    if (!(await requireQemuImg(t))) return;
    const directory = await tempDirFor(t, 'ferry-vhdx-odd-');
    const disk = randomBytes(5 * MiB + 1000);
    disk.fill(0, MiB, 3 * MiB);
    const rawPath = path.join(directory, 'disk.raw');
    await fs.writeFile(rawPath, disk);
    for (const [name, writer] of [['1 MiB', vhdxWriter], ['32 MiB', createVhdxWriter({ blockSize: 32 * MiB })]] as const) {
      for (const subformat of writer.subformats) {
        const imagePath = path.join(directory, `odd-${name.replace(' ', '')}-${subformat}.vhdx`);
        await writer.write(imagePath, rawInput(disk), { subformat });
        await qemuImg(['check', '-f', 'vhdx', imagePath]);
        await qemuImg(['compare', '-f', 'vhdx', '-F', 'raw', imagePath, rawPath]);
        const reader = await openVhdx(imagePath);
        try {
          assert.equal(reader.size, 5 * MiB + 1024, `${name} ${subformat}: rounded up to the sector`);
          const content = await readAll(reader);
          assert.ok(content.subarray(0, disk.length).equals(disk), `${name} ${subformat}: content`);
          assert.ok(content.subarray(disk.length).every((byte) => byte === 0));
        } finally {
          await reader.close();
        }
      }
    }
  });

  test('a disk over 4 GiB has a sector bitmap entry after each 4096 payload entries, and qemu-img agrees', { timeout: 120_000 }, async (t) => {
    if (!(await requireQemuImg(t))) return;
    const directory = await tempDirFor(t, 'ferry-vhdx-chunks-');
    const size = 4 * 1024 * MiB + 3 * MiB;
    const pieces = [0, 4 * 1024 * MiB - MiB, 4 * 1024 * MiB + MiB].map((offset) => ({ offset, data: randomBytes(MiB) }));
    const input: DiskImageInput = { size, pieces: async function* () { yield* pieces; } };
    const imagePath = path.join(directory, 'big.vhdx');
    const onDisk = await writeVhdx(imagePath, input);
    assert.equal(onDisk, 4 * MiB + 3 * MiB, 'three blocks after the header section, log, BAT and metadata');
    const image = await fs.readFile(imagePath);
    const { batOffset } = layoutOf(image);
    assert.equal(image.readUInt32LE(batOffset + 4095 * 8) & 7, 6, 'payload block 4095 is the last entry of chunk 0');
    assert.equal(image.readUInt32LE(batOffset + 4096 * 8) & 7, 0, 'the sector bitmap entry of chunk 0 follows it, not present');
    assert.equal(image.readUInt32LE(batOffset + 4098 * 8) & 7, 6, 'payload block 4097 is one entry further');
    await qemuImg(['check', '-f', 'vhdx', imagePath]);
    // Comparing all 4 GiB through qemu takes seconds: have it copy out the last 4 MiB, around the chunk boundary
    // (no count=: qemu-img 7.2's dd refuses skip= beyond count=).
    const tailPath = path.join(directory, 'tail.raw');
    await qemuImg(['dd', '-f', 'vhdx', '-O', 'raw', 'bs=1M', 'skip=4095', `if=${imagePath}`, `of=${tailPath}`]);
    assert.ok((await fs.readFile(tailPath)).equals(Buffer.concat([pieces[1]!.data, Buffer.alloc(MiB), pieces[2]!.data, Buffer.alloc(MiB)])), 'qemu-img reads the blocks around the sector bitmap entry');
    const reader = await openVhdx(imagePath);
    try {
      const extents = await checkedExtents(reader);
      assert.deepEqual(extents.map((extent) => [extent.offset / MiB, extent.length / MiB, extent.kind]), [[0, 1, 'data'], [1, 4094, 'zero'], [4095, 1, 'data'], [4096, 1, 'zero'], [4097, 1, 'data'], [4098, 1, 'zero']]);
      for (const piece of pieces) {
        const back = Buffer.alloc(MiB);
        await reader.read(back, MiB, piece.offset);
        assert.ok(back.equals(piece.data), `block at ${piece.offset / MiB} MiB`);
      }
    } finally {
      await reader.close();
    }
  });

  test('the writer refuses bad requests and leaves nothing behind', async (t) => {
    const directory = await tempDirFor(t, 'ferry-vhdx-refuse-');
    const imagePath = path.join(directory, 'refused.vhdx');
    const isInvalid = (error: unknown) => error instanceof FerryError && error.code === 'invalid-request';
    await assert.rejects(writeVhdx(imagePath, rawInput(sampleDisk()), { subformat: 'differencing' }), isInvalid);
    await assert.rejects(writeVhdx(imagePath, { size: 0, async *pieces() {} }), isInvalid);
    const unordered: DiskImageInput = {
      size: 4 * MiB,
      async *pieces() {
        yield { offset: 2 * MiB, data: Buffer.alloc(MiB, 1) };
        yield { offset: MiB, data: Buffer.alloc(MiB, 1) };
      },
    };
    await assert.rejects(writeVhdx(imagePath, unordered), isInvalid);
    const pastTheEnd: DiskImageInput = {
      size: MiB,
      async *pieces() {
        yield { offset: 512 * 1024, data: Buffer.alloc(MiB, 1) };
      },
    };
    await assert.rejects(writeVhdx(imagePath, pastTheEnd), isInvalid);
    assert.throws(() => createVhdxWriter({ blockSize: 3 * MiB }), isInvalid);
    assert.deepEqual(await fs.readdir(directory), []);
  });
});
