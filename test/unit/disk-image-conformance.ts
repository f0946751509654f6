/**
 * The shared conformance suites of the disk image readers and writers (src/disks/disk-image.ts), checked
 * against qemu-img, the reference implementation (Debian package qemu-utils; CI installs it, and there a
 * missing qemu-img fails the suite instead of skipping it).
 *
 * The source disk is a real ext4 file system (mke2fs -d) holding random and text files, with free space
 * left unallocated, in a raw file. `readerConformance` has qemu-img convert it to each subformat and
 * checks the reader returns it byte for byte, maps its holes honestly and refuses what it must;
 * `writerConformance` writes it with the writer and has `qemu-img compare` (and `qemu-img check` where the
 * format has one) judge the result.
 *
 * Usage, in a format's test file:
 *   readerConformance({ format: 'vhd', open: openVhd, subformats: [{ subformat: 'dynamic', qemu: ['-O', 'vpc', '-o', 'subformat=dynamic'], sparse: true }] });
 *   writerConformance({ writer: vhdWriter, qemuFormat: 'vpc', checkable: false, sparse: { dynamic: true, fixed: false } });
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, test, type TestContext } from 'node:test';
import { makeExt4Image } from '../../src/demo/ext4-image.js';
import type { DiskExtent, DiskFormat, DiskImageInput, DiskImageReader, DiskImageWriter } from '../../src/disks/disk-image.js';
import { FerryError } from '../../src/errors.js';
import { makeTempDir } from './helpers.js';

const run = promisify(execFile);
const MiB = 1024 * 1024;

/** Runs qemu-img with `args`; resolves with its stdout, rejects with its stderr in the message. */
export async function qemuImg(args: string[]): Promise<string> {
  try {
    return (await run('qemu-img', args, { maxBuffer: 64 * MiB })).stdout;
  } catch (error) {
    const failure = error as { stderr?: string; code?: number };
    throw new Error(`qemu-img ${args.join(' ')} exited ${failure.code}: ${failure.stderr ?? (error as Error).message}`);
  }
}

/** True when qemu-img can run; in CI (CI=true) a missing qemu-img fails the test instead. */
export async function requireQemuImg(t: TestContext): Promise<boolean> {
  const found = await run('qemu-img', ['--version']).then(() => true, () => false);
  if (found) return true;
  if (process.env.CI === 'true') assert.fail('this test needs qemu-img (Debian package qemu-utils; CI must install it)');
  t.skip('needs qemu-img (apt-get install qemu-utils)');
  return false;
}

/**
 * A raw disk of `sizeMiB` MiB holding an ext4 file system with random data (incompressible), text
 * (compressible) and an empty file's worth of free space, the free space left as holes in the file.
 */
export async function makeSourceDisk(directory: string, sizeMiB = 24, name = 'source.raw'): Promise<string> {
  const tree = path.join(directory, `${name}.tree`);
  await fs.mkdir(path.join(tree, 'var', 'log'), { recursive: true });
  await fs.writeFile(path.join(tree, 'random.bin'), randomBytes(Math.floor(sizeMiB / 4) * MiB));
  await fs.writeFile(path.join(tree, 'var', 'log', 'app.log'), Array.from({ length: 20_000 }, (_, line) => `line ${line}: the quick brown fox\n`).join(''));
  await fs.writeFile(path.join(tree, 'small.txt'), 'hello\n');
  const image = path.join(directory, name);
  await makeExt4Image(image, sizeMiB * MiB, tree);
  await fs.rm(tree, { recursive: true, force: true });
  return image;
}

/** The virtual size qemu-img reports for an image. */
export async function qemuVirtualSize(image: string, format: string): Promise<number> {
  return (JSON.parse(await qemuImg(['info', '--output=json', '-f', format, image])) as { 'virtual-size': number })['virtual-size'];
}

/** A raw file as writer input: 1 MiB pieces, all-zero pieces left out (they are holes). */
export function rawInput(buffer: Buffer): DiskImageInput {
  return {
    size: buffer.length,
    async *pieces() {
      for (let offset = 0; offset < buffer.length; offset += MiB) {
        const data = buffer.subarray(offset, Math.min(buffer.length, offset + MiB));
        if (data.some((byte) => byte !== 0)) yield { offset, data };
      }
    },
  };
}

/** Every extent of a reader, checked to be ascending, adjacent, merged and to cover [0, size). */
export async function checkedExtents(reader: DiskImageReader): Promise<DiskExtent[]> {
  const extents: DiskExtent[] = [];
  let next = 0;
  for await (const extent of reader.extents()) {
    assert.equal(extent.offset, next, `extents are adjacent: expected one at ${next}, got ${JSON.stringify(extent)}`);
    assert.ok(extent.length > 0, 'no empty extent');
    assert.ok(extent.kind === 'data' || extent.kind === 'zero');
    const previous = extents.at(-1);
    if (previous) assert.notEqual(previous.kind, extent.kind, `adjacent extents of one kind are merged (at ${extent.offset})`);
    extents.push(extent);
    next += extent.length;
  }
  assert.equal(next, reader.size, 'extents cover the whole disk');
  return extents;
}

/** Reads a whole reader in pieces of varying length and alignment. */
export async function readAll(reader: DiskImageReader): Promise<Buffer> {
  const whole = Buffer.alloc(reader.size);
  const lengths = [1, 511, 4096, 65_536 + 7, 3 * MiB];
  let offset = 0;
  for (let turn = 0; offset < reader.size; turn++) {
    const length = Math.min(lengths[turn % lengths.length]!, reader.size - offset);
    const piece = Buffer.alloc(length);
    await reader.read(piece, length, offset);
    piece.copy(whole, offset);
    offset += length;
  }
  return whole;
}

/** One subformat a reader is checked with: how qemu-img makes it, and whether the image keeps holes. */
export interface ReaderCase {
  subformat: string;
  /** qemu-img convert arguments after `convert -f raw`, e.g. ['-O', 'vpc', '-o', 'subformat=dynamic']. */
  qemu: string[];
  /** True when unallocated space stays unallocated in this subformat: the reader must report zero extents. */
  sparse: boolean;
  /** Extra files qemu-img writes beside the image (e.g. VMDK extents), for information only. */
  note?: string;
}

/** The reader suite: one `describe` per format, one group of tests per subformat. */
export function readerConformance(options: { format: DiskFormat; open: (path: string) => Promise<DiskImageReader>; cases: ReaderCase[]; sizeMiB?: number }): void {
  describe(`${options.format} reader conformance`, () => {
    let directory = '';
    let source = '';
    let sourceBytes = Buffer.alloc(0);
    before(async () => {
      directory = await makeTempDir(`ferry-${options.format}-reader-`);
      source = await makeSourceDisk(directory, options.sizeMiB ?? 24);
      sourceBytes = await fs.readFile(source);
    });
    after(() => fs.rm(directory, { recursive: true, force: true }));

    for (const readerCase of options.cases) {
      const image = () => path.join(directory, `image-${readerCase.subformat}.${options.format}`);
      const convert = async () => {
        await fs.rm(image(), { force: true });
        await qemuImg(['convert', '-f', 'raw', ...readerCase.qemu, source, image()]);
      };

      test(`${readerCase.subformat}: reads a qemu-img image byte for byte, with its size and format`, async (t) => {
        if (!(await requireQemuImg(t))) return;
        await convert();
        const reader = await options.open(image());
        try {
          assert.equal(reader.format, options.format);
          assert.equal(reader.subformat, readerCase.subformat);
          const qemuSize = await qemuVirtualSize(image(), readerCase.qemu[readerCase.qemu.indexOf('-O') + 1]!);
          assert.equal(reader.size, qemuSize, 'the virtual size qemu-img reports');
          const content = await readAll(reader);
          assert.ok(content.subarray(0, sourceBytes.length).equals(sourceBytes), 'the source disk, byte for byte');
          assert.ok(content.subarray(sourceBytes.length).every((byte) => byte === 0), 'zeros past the source (formats that round sizes up)');
        } finally {
          await reader.close();
          await reader.close(); // twice is harmless
        }
      });

      test(`${readerCase.subformat}: extents cover the disk, zero extents read as zeros${readerCase.sparse ? ', free space is reported as holes' : ''}`, async (t) => {
        if (!(await requireQemuImg(t))) return;
        await convert();
        const reader = await options.open(image());
        try {
          const extents = await checkedExtents(reader);
          const zeroBytes = extents.filter((extent) => extent.kind === 'zero').reduce((total, extent) => total + extent.length, 0);
          for (const extent of extents.filter((each) => each.kind === 'zero')) {
            for (let offset = extent.offset; offset < extent.offset + extent.length; offset += 4 * MiB) {
              const length = Math.min(4 * MiB, extent.offset + extent.length - offset);
              const piece = Buffer.alloc(length, 0xaa);
              await reader.read(piece, length, offset);
              assert.ok(piece.every((byte) => byte === 0), `zero extent at ${offset} reads as zeros`);
            }
          }
          if (readerCase.sparse) assert.ok(zeroBytes >= reader.size / 4, `free space is reported as holes: ${zeroBytes} of ${reader.size} bytes`);
        } finally {
          await reader.close();
        }
      });

      test(`${readerCase.subformat}: a read past the end is refused; a truncated image is refused with corrupt-data, not a crash or a hang`, async (t) => {
        if (!(await requireQemuImg(t))) return;
        await convert();
        const reader = await options.open(image());
        try {
          await assert.rejects(reader.read(Buffer.alloc(4096), 4096, reader.size - 1024), (error: unknown) => error instanceof FerryError && error.code === 'invalid-request');
        } finally {
          await reader.close();
        }
        const stat = await fs.stat(image());
        const truncated = path.join(directory, `truncated-${readerCase.subformat}.${options.format}`);
        await fs.copyFile(image(), truncated);
        await fs.truncate(truncated, Math.floor(stat.size / 3));
        const attempt = (async () => {
          const damaged = await options.open(truncated);
          try {
            await readAll(damaged);
            for await (const extent of damaged.extents()) void extent;
          } finally {
            await damaged.close();
          }
        })();
        const outcome = await Promise.race([attempt.then(() => 'read', (error: unknown) => error), new Promise((resolve) => setTimeout(() => resolve('hang'), 20_000))]);
        // Formats whose data for the kept third is complete (raw, flat extents) may read it all: zeros past
        // the end are what a shorter file gives. Every other outcome must be a named corrupt-data error.
        if (outcome !== 'read') {
          assert.ok(outcome instanceof FerryError, `a FerryError, not ${String(outcome)}`);
          assert.equal(outcome.code, 'corrupt-data', outcome.message);
          assert.ok(outcome.message.includes(truncated), `the message names the file: ${outcome.message}`);
        }
      });

      test(`${readerCase.subformat}: fuzz: mutated headers and tables give a FerryError or a readable disk, never a crash or a hang`, { timeout: 120_000 }, async (t) => {
        if (!(await requireQemuImg(t))) return;
        await convert();
        const pristine = await fs.readFile(image());
        const mutated = path.join(directory, `fuzz-${readerCase.subformat}.${options.format}`);
        let seed = 0x9e3779b9;
        const random = () => ((seed = (Math.imul(seed ^ (seed >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0) / 2 ** 32);
        const outcomes = new Map<string, number>();
        for (let round = 0; round < 60; round++) {
          const copy = Buffer.from(pristine);
          // Metadata lives at the start and the end of every format here: mutate there, and now and then anywhere.
          for (let flips = 1 + Math.floor(random() * 8); flips > 0; flips--) {
            const zone = random();
            const window = Math.min(copy.length, 128 * 1024);
            const at = zone < 0.45 ? Math.floor(random() * window) : zone < 0.9 ? copy.length - 1 - Math.floor(random() * window) : Math.floor(random() * copy.length);
            copy[at] = random() < 0.3 ? 0xff : Math.floor(random() * 256);
          }
          await fs.writeFile(mutated, copy);
          const attempt = (async () => {
            const reader = await options.open(mutated);
            try {
              for await (const extent of reader.extents()) void extent;
              const length = Math.min(reader.size, 2 * MiB);
              await reader.read(Buffer.alloc(length), length, 0);
              const last = Math.min(reader.size, MiB);
              await reader.read(Buffer.alloc(last), last, reader.size - last);
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
        t.diagnostic(`fuzz outcomes: ${JSON.stringify(Object.fromEntries(outcomes))}`);
      });
    }
  });
}

/** The writer suite: for each subformat, qemu-img must accept and compare equal what the writer makes. */
export function writerConformance(options: {
  writer: DiskImageWriter;
  /** The format's name for qemu-img (-f), e.g. 'vpc' for VHD. */
  qemuFormat: string;
  /** True when `qemu-img check` supports the format. */
  checkable: boolean;
  /** Per subformat: true when the image must hold fewer blocks than the disk (free space not stored, or left as holes). */
  sparse: Record<string, boolean>;
  sizeMiB?: number;
}): void {
  describe(`${options.writer.format} writer conformance`, () => {
    let directory = '';
    let source = '';
    let sourceBytes = Buffer.alloc(0);
    before(async () => {
      directory = await makeTempDir(`ferry-${options.writer.format}-writer-`);
      source = await makeSourceDisk(directory, options.sizeMiB ?? 24);
      sourceBytes = await fs.readFile(source);
    });
    after(() => fs.rm(directory, { recursive: true, force: true }));

    for (const subformat of options.writer.subformats) {
      test(`${subformat}: qemu-img compares the image equal to the disk${options.checkable ? ' and checks it clean' : ''}`, async (t) => {
        if (!(await requireQemuImg(t))) return;
        const image = path.join(directory, `out-${subformat}.${options.writer.format}`);
        let progress = 0;
        const onDisk = await options.writer.write(image, rawInput(sourceBytes), { subformat, onProgress: (done) => (progress = done) });
        assert.equal(onDisk, (await fs.stat(image)).size, 'resolves with the size on disk');
        assert.ok(progress > 0 && progress <= sourceBytes.length, `progress reported: ${progress}`);
        await qemuImg(['compare', '-f', options.qemuFormat, '-F', 'raw', image, source]);
        if (options.checkable) await qemuImg(['check', '-f', options.qemuFormat, image]);
        const virtualSize = await qemuVirtualSize(image, options.qemuFormat);
        assert.ok(virtualSize >= sourceBytes.length && virtualSize - sourceBytes.length < 4 * MiB, `virtual size ${virtualSize} for a ${sourceBytes.length}-byte disk`);
        // Judged by the blocks the file holds, not its length: a fixed VHD keeps its free space as holes.
        const allocated = (await fs.stat(image)).blocks * 512;
        if (options.sparse[subformat]) assert.ok(allocated < sourceBytes.length * 0.8, `free space is not stored: ${allocated} bytes allocated for a ${sourceBytes.length}-byte disk`);
      });
    }

    test('a write that is aborted leaves no image behind', async (t) => {
      if (!(await requireQemuImg(t))) return;
      const image = path.join(directory, `aborted.${options.writer.format}`);
      const controller = new AbortController();
      const input: DiskImageInput = {
        size: sourceBytes.length,
        async *pieces() {
          yield { offset: 0, data: sourceBytes.subarray(0, MiB) };
          controller.abort(new Error('stop'));
          yield { offset: MiB, data: sourceBytes.subarray(MiB, 2 * MiB) };
        },
      };
      await assert.rejects(options.writer.write(image, input, { signal: controller.signal }));
      await assert.rejects(fs.stat(image), { code: 'ENOENT' });
      assert.deepEqual((await fs.readdir(directory)).filter((name) => name.startsWith('aborted')), [], 'no temporary file left');
    });
  });
}
