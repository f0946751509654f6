/**
 * qcow2 reader and writer (src/disks/qcow2.ts): the shared conformance suites against qemu-img, backing
 * chains built with qemu-img and qemu-io (checked byte for byte against `qemu-img convert -O raw`), and
 * hostile images made by editing qemu-img's output: tables past the end, unaligned entries, compressed
 * clusters that do not inflate to one cluster, absurd header fields, feature bits, backing loops.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, test, type TestContext } from 'node:test';
import { promisify } from 'node:util';
import { deflateRawSync } from 'node:zlib';
import zstd from 'zstd-napi/binding.js';
import type { DiskImageInput } from '../../src/disks/disk-image.js';
import { openQcow2, qcow2ImageFormat, qcow2Writer, sniffQcow2, writeQcow2 } from '../../src/disks/qcow2.js';
import { FerryError, type ErrorCode } from '../../src/errors.js';
import { checkedExtents, makeSourceDisk, qemuImg, readAll, readerConformance, requireQemuImg, writerConformance } from './disk-image-conformance.js';
import { tempDirFor } from './helpers.js';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const CLUSTER = 65536;

readerConformance({
  format: 'qcow2',
  open: openQcow2,
  cases: [
    { subformat: 'v3', qemu: ['-O', 'qcow2', '-o', 'compat=1.1'], sparse: true },
    { subformat: 'v2', qemu: ['-O', 'qcow2', '-o', 'compat=0.10'], sparse: true },
    { subformat: 'v3', qemu: ['-O', 'qcow2', '-c', '-o', 'compat=1.1'], sparse: true, note: 'zlib-compressed clusters' },
    { subformat: 'v3', qemu: ['-O', 'qcow2', '-c', '-o', 'compat=1.1,compression_type=zstd'], sparse: true, note: 'zstd-compressed clusters' },
  ],
});

writerConformance({ writer: qcow2Writer, qemuFormat: 'qcow2', checkable: true, sparse: { v3: true, 'v3-compressed': true } });

/** Runs qemu-io on an image (qemu-utils ships it), one -c per command. */
async function qemuIo(image: string, commands: string[]): Promise<void> {
  await run('qemu-io', [...commands.flatMap((command) => ['-c', command]), image]);
}

/** A small raw disk: random data in the first MiB, text (compressible) in the second, zeros after. */
async function makeSmallRaw(directory: string, name = 'small.raw', size = 4 * MiB): Promise<{ file: string; bytes: Buffer }> {
  const bytes = Buffer.alloc(size);
  Buffer.from('compressible text. '.repeat(60_000)).copy(bytes, 0, 0, MiB);
  randomBytes(MiB).copy(bytes, MiB);
  const file = path.join(directory, name);
  await fs.writeFile(file, bytes);
  return { file, bytes };
}

async function convertToQcow2(raw: string, image: string, extra: string[] = ['-o', 'compat=1.1']): Promise<void> {
  await qemuImg(['convert', '-f', 'raw', '-O', 'qcow2', ...extra, raw, image]);
}

async function patch(file: string, offset: number, bytes: Buffer): Promise<void> {
  const handle = await fs.open(file, 'r+');
  try {
    await handle.write(bytes, 0, bytes.length, offset);
  } finally {
    await handle.close();
  }
}

function u32(value: number): Buffer {
  const buffer = Buffer.alloc(4);
  buffer.writeUInt32BE(value);
  return buffer;
}

function u64(value: bigint): Buffer {
  const buffer = Buffer.alloc(8);
  buffer.writeBigUInt64BE(value);
  return buffer;
}

/** Where the first L2 table is and the file offset of guest cluster `guestCluster`'s L2 entry. */
async function l2EntryLocation(image: string, guestCluster: number): Promise<{ entryOffset: number; entry: bigint }> {
  const file = await fs.readFile(image);
  const l1Offset = Number(file.readBigUInt64BE(40));
  const l2Offset = Number(file.readBigUInt64BE(l1Offset) & 0x00fffffffffffe00n);
  const entryOffset = l2Offset + guestCluster * 8;
  return { entryOffset, entry: file.readBigUInt64BE(entryOffset) };
}

/** Offset and stored length of a compressed L2 entry (64 KiB clusters: x = 54). */
function compressedDescriptor(entry: bigint): { hostOffset: number; storedLength: number } {
  assert.ok((entry & (1n << 62n)) !== 0n, 'the entry is compressed');
  const hostOffset = Number(entry & ((1n << 54n) - 1n));
  const sectors = Number((entry >> 54n) & 0xffn) + 1;
  return { hostOffset, storedLength: sectors * 512 - (hostOffset % 512) };
}

/** Asserts `attempt` rejects with a FerryError of `code` whose message holds every one of `includes`. */
async function rejectsWith(attempt: Promise<unknown>, code: ErrorCode, includes: string[]): Promise<void> {
  await assert.rejects(attempt, (error: unknown) => {
    assert.ok(error instanceof FerryError, `a FerryError, not ${String(error)}`);
    assert.equal(error.code, code, error.message);
    for (const part of includes) assert.ok(error.message.includes(part), `message names ${part}: ${error.message}`);
    return true;
  });
}

/** Opens, reads all and walks the extents of an image: what a replication would do. */
async function readWhole(image: string): Promise<Buffer> {
  const reader = await openQcow2(image);
  try {
    await checkedExtents(reader);
    return await readAll(reader);
  } finally {
    await reader.close();
  }
}

async function setup(t: TestContext): Promise<string | null> {
  if (!(await requireQemuImg(t))) return null;
  return tempDirFor(t, 'ferry-qcow2-');
}

describe('qcow2 backing chains', () => {
  test('a child over a qcow2 base reads as base + changes, byte for byte as qemu-img sees it; extents ask the base', async (t) => {
    const directory = await setup(t);
    if (!directory) return;
    const source = await makeSourceDisk(directory, 8);
    const base = path.join(directory, 'base.qcow2');
    await convertToQcow2(source, base);
    const child = path.join(directory, 'child.qcow2');
    await qemuImg(['create', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', child]); // relative: resolved beside the child
    await qemuIo(child, ['write -P 0xab 1M 64k', 'write -P 0xcd 3000000 5000', 'write -z 2M 128k', 'write -P 0x11 7M 4k']);
    const expected = path.join(directory, 'expected.raw');
    await qemuImg(['convert', '-f', 'qcow2', '-O', 'raw', child, expected]);
    const expectedBytes = await fs.readFile(expected);

    const reader = await openQcow2(child);
    try {
      assert.equal(reader.subformat, 'v3');
      assert.equal(reader.size, 8 * MiB);
      assert.ok((await readAll(reader)).equals(expectedBytes), 'base + changes, byte for byte');
      const extents = await checkedExtents(reader);
      for (const extent of extents) {
        if (extent.kind === 'zero') assert.ok(expectedBytes.subarray(extent.offset, extent.offset + extent.length).every((byte) => byte === 0), `zero extent at ${extent.offset} is zeros`);
      }
      const zeroBytes = extents.filter((extent) => extent.kind === 'zero').reduce((total, extent) => total + extent.length, 0);
      assert.ok(zeroBytes > MiB, `the base's free space is reported as holes through the child: ${zeroBytes}`);
      const zeroFlagged = extents.find((extent) => extent.kind === 'zero' && extent.offset <= 2 * MiB && extent.offset + extent.length >= 2 * MiB + 128 * 1024);
      assert.ok(zeroFlagged, `the child's zero clusters over base data are a zero extent: ${JSON.stringify(extents)}`);
    } finally {
      await reader.close();
      await reader.close();
    }
  });

  test('a raw backing file, a backing file shorter than the disk (zeros past its end), a sniffed backing format', async (t) => {
    const directory = await setup(t);
    if (!directory) return;
    const { file: raw } = await makeSmallRaw(directory, 'base.raw', 4 * MiB);
    const base = path.join(directory, 'base.qcow2');
    await convertToQcow2(raw, base);
    const cases: Array<{ name: string; backing: string; format: string; size: string }> = [
      { name: 'over-raw.qcow2', backing: raw, format: 'raw', size: '4M' },
      { name: 'longer.qcow2', backing: base, format: 'qcow2', size: '12M' },
      { name: 'longer-raw.qcow2', backing: raw, format: 'raw', size: '6M' },
    ];
    for (const each of cases) {
      const child = path.join(directory, each.name);
      await qemuImg(['create', '-f', 'qcow2', '-b', each.backing, '-F', each.format, child, each.size]);
      // On a disk longer than its backing file, the last write straddles the backing file's end.
      await qemuIo(child, ['write -P 0x5a 512k 100k', 'write -P 0x77 3968k 128k', ...(each.size === '4M' ? [] : ['write -P 0x33 4032k 128k'])]);
      const expected = path.join(directory, `${each.name}.raw`);
      await qemuImg(['convert', '-f', 'qcow2', '-O', 'raw', child, expected]);
      assert.ok((await readWhole(child)).equals(await fs.readFile(expected)), `${each.name}: as qemu-img reads it`);
    }

    // Without the backing format extension the backing file is sniffed (qcow2 magic, else raw).
    for (const each of cases.slice(0, 2)) {
      const child = path.join(directory, each.name);
      const file = await fs.readFile(child);
      const at = file.subarray(0, CLUSTER).indexOf(u32(0xe2792aca));
      assert.ok(at > 0, 'qemu-img wrote a backing format extension');
      await patch(child, at, u32(0x0badf00d)); // an unknown extension type: ignored
      assert.ok((await readWhole(child)).equals(await fs.readFile(path.join(directory, `${each.name}.raw`))), `${each.name}: sniffed backing`);
    }
  });

  test('a backing chain loop is refused with corrupt-data; so is a chain deeper than 16', async (t) => {
    const directory = await setup(t);
    if (!directory) return;
    const a = path.join(directory, 'a.qcow2');
    const b = path.join(directory, 'b.qcow2');
    await qemuImg(['create', '-f', 'qcow2', a, '4M']);
    await qemuImg(['create', '-f', 'qcow2', '-b', 'a.qcow2', '-F', 'qcow2', b]);
    await qemuImg(['rebase', '-u', '-f', 'qcow2', '-b', 'b.qcow2', '-F', 'qcow2', a]);
    await rejectsWith(openQcow2(a), 'corrupt-data', [a, 'loop']);
    const self = path.join(directory, 'self.qcow2');
    await qemuImg(['create', '-f', 'qcow2', self, '4M']);
    await qemuImg(['rebase', '-u', '-f', 'qcow2', '-b', 'self.qcow2', '-F', 'qcow2', self]);
    await rejectsWith(openQcow2(self), 'corrupt-data', [self, 'loop']);

    let below = path.join(directory, 'chain-0.qcow2');
    await qemuImg(['create', '-f', 'qcow2', below, '1M']);
    for (let depth = 1; depth <= 17; depth++) {
      const above = path.join(directory, `chain-${depth}.qcow2`);
      await qemuImg(['create', '-f', 'qcow2', '-b', path.basename(below), '-F', 'qcow2', above]);
      below = above;
      if (depth === 16) assert.equal((await readWhole(above)).length, MiB, 'a chain of 17 images (16 backing files) is read');
    }
    await rejectsWith(openQcow2(below), 'corrupt-data', ['deeper than 16']);
  });

  test('a missing backing file is refused with disk-unreadable naming it; an unsupported backing format with invalid-request', async (t) => {
    const directory = await setup(t);
    if (!directory) return;
    const base = path.join(directory, 'gone.qcow2');
    const child = path.join(directory, 'orphan.qcow2');
    await qemuImg(['create', '-f', 'qcow2', base, '4M']);
    await qemuImg(['create', '-f', 'qcow2', '-b', 'gone.qcow2', '-F', 'qcow2', child]);
    await fs.rm(base);
    await rejectsWith(openQcow2(child), 'disk-unreadable', [base, child]);

    const vmdkBase = path.join(directory, 'base.vmdk');
    const overVmdk = path.join(directory, 'over-vmdk.qcow2');
    await qemuImg(['create', '-f', 'vmdk', vmdkBase, '4M']);
    await qemuImg(['create', '-f', 'qcow2', '-b', 'base.vmdk', '-F', 'vmdk', overVmdk]);
    await rejectsWith(openQcow2(overVmdk), 'invalid-request', ['vmdk']);
  });
});

describe('qcow2 hostile input', () => {
  test('an L1 entry pointing past the end of the file', async (t) => {
    const directory = await setup(t);
    if (!directory) return;
    const { file: raw } = await makeSmallRaw(directory);
    const image = path.join(directory, 'l1.qcow2');
    await convertToQcow2(raw, image);
    const l1Offset = Number((await fs.readFile(image)).readBigUInt64BE(40));
    await patch(image, l1Offset, u64((1n << 63n) | (1n << 40n)));
    await rejectsWith(readWhole(image), 'corrupt-data', [image, 'L1 entry 0', 'past the end']);
  });

  test('an L2 entry that is not cluster aligned, or points past the end, or into the L1 table', async (t) => {
    const directory = await setup(t);
    if (!directory) return;
    const { file: raw } = await makeSmallRaw(directory);
    const image = path.join(directory, 'l2.qcow2');
    await convertToQcow2(raw, image);
    const pristine = await fs.readFile(image);
    const { entryOffset, entry } = await l2EntryLocation(image, 20);
    assert.ok(entry !== 0n, 'guest cluster 20 holds data');

    await patch(image, entryOffset, u64(entry + 0x200n));
    await rejectsWith(readWhole(image), 'corrupt-data', [image, 'not cluster aligned']);
    await fs.writeFile(image, pristine);
    await patch(image, entryOffset, u64((1n << 63n) | (1n << 44n)));
    await rejectsWith(readWhole(image), 'corrupt-data', [image, 'past the end']);
    await fs.writeFile(image, pristine);
    await patch(image, entryOffset, u64((1n << 63n) | pristine.readBigUInt64BE(40)));
    await rejectsWith(readWhole(image), 'corrupt-data', [image, 'L1 table']);
    // The zero flag does not exist in version 2.
    const v2 = path.join(directory, 'l2-v2.qcow2');
    await convertToQcow2(raw, v2, ['-o', 'compat=0.10']);
    const v2Entry = await l2EntryLocation(v2, 20);
    await patch(v2, v2Entry.entryOffset, u64(v2Entry.entry | 1n));
    await rejectsWith(readWhole(v2), 'corrupt-data', [v2, 'zero flag']);
  });

  test('compressed clusters that inflate beyond a cluster, to less than one, or not at all (zlib and zstd)', async (t) => {
    const directory = await setup(t);
    if (!directory) return;
    const { file: raw, bytes } = await makeSmallRaw(directory);
    const zstdContext = new zstd.CCtx();
    const zstdFrame = (data: Buffer) => {
      const frame = Buffer.alloc(zstd.compressBound(data.length));
      return frame.subarray(0, zstdContext.compress(frame, data, 3));
    };
    const codecs = [
      { name: 'zlib', options: 'compat=1.1', compress: (data: Buffer) => deflateRawSync(data, { windowBits: 12 }) },
      { name: 'zstd', options: 'compat=1.1,compression_type=zstd', compress: zstdFrame },
    ];
    for (const codec of codecs) {
      const image = path.join(directory, `compressed-${codec.name}.qcow2`);
      await convertToQcow2(raw, image, ['-c', '-o', codec.options]);
      assert.ok((await readWhole(image)).equals(bytes), `${codec.name}: the pristine image reads`);
      const pristine = await fs.readFile(image);
      const { entry } = await l2EntryLocation(image, 0);
      const { hostOffset, storedLength } = compressedDescriptor(entry);
      const damages: Array<{ data: Buffer; problem: string }> = [
        { data: codec.compress(Buffer.alloc(2 * CLUSTER, 0x61)), problem: 'beyond one cluster' },
        { data: codec.compress(Buffer.alloc(100, 0x61)), problem: 'not one cluster' },
        { data: randomBytes(storedLength), problem: 'compressed guest cluster 0' },
      ];
      for (const damage of damages) {
        assert.ok(damage.data.length <= storedLength, `${codec.name}: the damage fits the stored sectors`);
        await fs.writeFile(image, pristine);
        await patch(image, hostOffset, damage.data);
        await rejectsWith(readWhole(image), 'corrupt-data', [image, damage.problem]);
      }
    }
  });

  test('cluster_bits out of range, absurd sizes and L1 tables are refused before anything is allocated', async (t) => {
    const directory = await setup(t);
    if (!directory) return;
    const { file: raw } = await makeSmallRaw(directory);
    const image = path.join(directory, 'header.qcow2');
    await convertToQcow2(raw, image);
    const pristine = await fs.readFile(image);
    const damages: Array<{ at: number; bytes: Buffer; includes: string }> = [
      { at: 20, bytes: u32(8), includes: 'cluster_bits 8' },
      { at: 20, bytes: u32(30), includes: 'cluster_bits 30' },
      { at: 24, bytes: u64(1n << 60n), includes: 'virtual size' },
      { at: 24, bytes: u64(1n << 50n), includes: 'too small' }, // a 1 PiB disk with a 1-entry L1 table
      { at: 36, bytes: u32(0x7fffffff), includes: "QEMU's limit" },
      { at: 36, bytes: u32(1_000_000), includes: 'past the end of the file' },
      { at: 40, bytes: u64(0x12345n), includes: 'L1 table offset' },
      { at: 100, bytes: u32(50), includes: 'header_length' },
      { at: 0, bytes: Buffer.from('QFI\xfc', 'latin1'), includes: 'magic' },
    ];
    for (const damage of damages) {
      await fs.writeFile(image, pristine);
      await patch(image, damage.at, damage.bytes);
      await rejectsWith(openQcow2(image), 'corrupt-data', [image, damage.includes]);
    }
    await fs.writeFile(image, pristine.subarray(0, 50));
    await rejectsWith(openQcow2(image), 'corrupt-data', [image, 'too short']);
  });

  test('feature bits: corrupt is refused, dirty reads, unknown incompatible bits are refused by name', async (t) => {
    const directory = await setup(t);
    if (!directory) return;
    const { file: raw, bytes } = await makeSmallRaw(directory);
    const image = path.join(directory, 'features.qcow2');
    await convertToQcow2(raw, image);
    const pristine = await fs.readFile(image);

    await patch(image, 72, u64(1n << 1n));
    await rejectsWith(openQcow2(image), 'corrupt-data', [image, 'corrupt bit']);
    await patch(image, 72, u64(1n << 0n)); // dirty: refcounts may be stale, the mapping is not
    assert.ok((await readWhole(image)).equals(bytes), 'a dirty image reads');
    await patch(image, 72, u64(1n << 20n));
    await rejectsWith(openQcow2(image), 'invalid-request', [image, 'bit 20']);
    await fs.writeFile(image, pristine);
    await patch(image, 72, u64(1n << 3n)); // the compression-type bit with zlib (byte 104 = 0) is valid
    assert.ok((await readWhole(image)).equals(bytes));
    await patch(image, 104, Buffer.from([7]));
    await rejectsWith(openQcow2(image), 'invalid-request', ['compression type 7']);
  });

  test('encryption, external data files and extended L2 entries are refused with invalid-request naming them', async (t) => {
    const directory = await setup(t);
    if (!directory) return;
    // crypt_method 1 is AES, 2 LUKS (set by hand: a real LUKS image makes qemu-img time PBKDF, slow and flaky here).
    const encrypted = path.join(directory, 'encrypted.qcow2');
    for (const cryptMethod of [1, 2]) {
      await qemuImg(['create', '-f', 'qcow2', encrypted, '4M']);
      await patch(encrypted, 32, u32(cryptMethod));
      await rejectsWith(openQcow2(encrypted), 'invalid-request', [encrypted, 'encrypted']);
    }
    const external = path.join(directory, 'external.qcow2');
    await qemuImg(['create', '-f', 'qcow2', '-o', `data_file=${path.join(directory, 'external.data')}`, external, '4M']);
    await rejectsWith(openQcow2(external), 'invalid-request', [external, 'external data file']);
    const extended = path.join(directory, 'extended.qcow2');
    await qemuImg(['create', '-f', 'qcow2', '-o', 'extended_l2=on', extended, '4M']);
    await rejectsWith(openQcow2(extended), 'invalid-request', [extended, 'extended L2']);
  });
});

describe('qcow2 targeted fuzz', () => {
  test('mutations of the header, L1 table and L2 tables give a FerryError or a readable disk, never a crash or a hang', { timeout: 60_000 }, async (t) => {
    const directory = await setup(t);
    if (!directory) return;
    const { file: raw } = await makeSmallRaw(directory);
    const outcomes = new Map<string, number>();
    for (const options of [['-o', 'compat=1.1'], ['-c', '-o', 'compat=1.1'], ['-c', '-o', 'compat=1.1,compression_type=zstd'], ['-o', 'compat=0.10']]) {
      const image = path.join(directory, 'pristine.qcow2');
      await convertToQcow2(raw, image, options);
      const pristine = await fs.readFile(image);
      const l1Offset = Number(pristine.readBigUInt64BE(40));
      const l2Offset = Number(pristine.readBigUInt64BE(l1Offset) & 0x00fffffffffffe00n);
      const zones = [
        [0, 512],
        [l1Offset, l1Offset + 16],
        [l2Offset, l2Offset + 64 * 8],
      ] as const;
      let seed = 0x1234567;
      const random = () => ((seed = (Math.imul(seed ^ (seed >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0) / 2 ** 32);
      const mutated = path.join(directory, 'mutated.qcow2');
      for (let round = 0; round < 60; round++) {
        const copy = Buffer.from(pristine);
        for (let flips = 1 + Math.floor(random() * 4); flips > 0; flips--) {
          const [start, end] = zones[Math.floor(random() * zones.length)]!;
          copy[start + Math.floor(random() * (end - start))] = random() < 0.3 ? 0xff : Math.floor(random() * 256);
        }
        await fs.writeFile(mutated, copy);
        const attempt = (async () => {
          const reader = await openQcow2(mutated);
          try {
            for await (const extent of reader.extents()) void extent;
            const length = Math.min(reader.size, 4 * MiB);
            await reader.read(Buffer.alloc(length), length, 0);
          } finally {
            await reader.close();
          }
        })();
        const outcome = await Promise.race([attempt.then(() => 'read', (error: unknown) => error), new Promise((resolve) => setTimeout(() => resolve('hang'), 10_000))]);
        if (outcome !== 'read') {
          assert.ok(outcome instanceof FerryError, `round ${round}: a FerryError, not ${outcome instanceof Error ? outcome.stack : String(outcome)}`);
          assert.ok(['corrupt-data', 'invalid-request', 'disk-unreadable'].includes(outcome.code), `round ${round}: ${outcome.code}: ${outcome.message}`);
        }
        const key = outcome === 'read' ? 'read' : (outcome as FerryError).code;
        outcomes.set(key, (outcomes.get(key) ?? 0) + 1);
      }
    }
    t.diagnostic(`fuzz outcomes: ${JSON.stringify(Object.fromEntries(outcomes))}`);
    assert.ok((outcomes.get('corrupt-data') ?? 0) > 0, 'some mutations are caught');
  });
});

describe('qcow2 module', () => {
  test('the format module sniffs qcow2 and nothing else', async (t) => {
    const directory = await setup(t);
    if (!directory) return;
    const { file: raw, bytes } = await makeSmallRaw(directory);
    const image = path.join(directory, 'sniff.qcow2');
    await convertToQcow2(raw, image, ['-o', 'compat=0.10']);
    const head = (await fs.readFile(image)).subarray(0, 4096);
    assert.equal(qcow2ImageFormat.format, 'qcow2');
    assert.equal(qcow2ImageFormat.open, openQcow2);
    assert.equal(qcow2ImageFormat.writer, qcow2Writer);
    assert.ok(sniffQcow2(head, 4096));
    assert.ok(!sniffQcow2(bytes.subarray(0, 4096), bytes.length));
    assert.ok(!sniffQcow2(Buffer.from('QFI\xfb\0\0\0\x01', 'latin1'), 4096), 'qcow version 1 is another format');
  });

  test('the writer takes unaligned pieces and a size that is not a whole number of clusters; the reader reads it back', async (t) => {
    const directory = await setup(t);
    if (!directory) return;
    const size = 5 * MiB + 1234;
    const disk = Buffer.alloc(size);
    randomBytes(700_000).copy(disk, 100_001);
    Buffer.from('text '.repeat(300_000)).copy(disk, 2 * MiB + 3);
    disk.fill(0x42, size - 5000);
    const raw = path.join(directory, 'disk.raw');
    await fs.writeFile(raw, disk);
    const input: DiskImageInput = {
      size,
      async *pieces() {
        // Odd piece lengths straddling clusters, some all zero, one gap.
        for (let offset = 0, turn = 0; offset < size; turn++) {
          const length = Math.min([777, 65_537, 3_000_001, 12_345][turn % 4]!, size - offset);
          if (turn !== 5) yield { offset, data: disk.subarray(offset, offset + length) };
          offset += length;
        }
      },
    };
    const gapStart = 777 + 65_537 + 3_000_001 + 12_345 + 777;
    disk.fill(0, gapStart, gapStart + 65_537); // the piece not given is zero
    await fs.writeFile(raw, disk);
    for (const subformat of qcow2Writer.subformats) {
      const image = path.join(directory, `${subformat}.qcow2`);
      await writeQcow2(image, input, { subformat });
      await qemuImg(['check', '-f', 'qcow2', image]);
      await qemuImg(['compare', '-f', 'qcow2', '-F', 'raw', image, raw]);
      const readBack = await readWhole(image);
      assert.equal(readBack.length, Math.ceil(size / 512) * 512, 'the virtual size is rounded up to a whole sector, as QEMU needs');
      assert.ok(readBack.subarray(0, size).equals(disk) && readBack.subarray(size).every((byte) => byte === 0), `${subformat}: read back byte for byte`);
    }
    // An empty disk of some size: nothing but metadata.
    const empty = path.join(directory, 'empty.qcow2');
    const onDisk = await writeQcow2(empty, { size: 64 * MiB, async *pieces() {} });
    await qemuImg(['check', '-f', 'qcow2', empty]);
    assert.ok(onDisk <= 4 * CLUSTER, `an empty disk is metadata only: ${onDisk} bytes`);
    const reader = await openQcow2(empty);
    assert.deepEqual(await checkedExtents(reader), [{ offset: 0, length: 64 * MiB, kind: 'zero' }]);
    await reader.close();
  });

  test('the writer refuses an unknown subformat and pieces out of order, leaving nothing behind', async (t) => {
    const directory = await tempDirFor(t, 'ferry-qcow2-');
    const image = path.join(directory, 'refused.qcow2');
    const input: DiskImageInput = {
      size: 4 * MiB,
      async *pieces() {
        yield { offset: MiB, data: Buffer.alloc(10, 1) };
        yield { offset: 0, data: Buffer.alloc(10, 1) };
      },
    };
    await rejectsWith(writeQcow2(image, input, { subformat: 'v2' }), 'invalid-request', ["'v2'"]);
    await rejectsWith(writeQcow2(image, input), 'invalid-request', ['out of order']);
    await rejectsWith(writeQcow2(image, { size: -1, async *pieces() {} }), 'invalid-request', ['size']);
    assert.deepEqual(await fs.readdir(directory), []);
  });
});
