/**
 * The bulk I/O under every disk image reader and writer: zero detection and the coalescing, pipelined
 * `ImageFileWriter` (src/disks/image-writer.ts, with O_DIRECT writes where aligned), parallel inflation
 * of compressed units (src/disks/parallel-inflate.ts, with qcow2 and VMDK images read in large pieces,
 * corrupt units among many), O_DIRECT reads of raw disks (src/disks/direct-io.ts) and the conversion
 * input (src/disks/convert.ts).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { constants, promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, test } from 'node:test';
import { deflateRawSync } from 'node:zlib';
import { convertImage, readerInput } from '../../src/disks/convert.js';
import { alignedBuffer, alignedSharedBuffer, DIRECT_ALIGNMENT, DirectReader, DirectWriter, openDirectRawDisk } from '../../src/disks/direct-io.js';
import { ImageFileWriter, isZero, nonZeroRuns, wholeBlocks } from '../../src/disks/image-writer.js';
import { type CompressedBytes, type Inflated, inflateUnits } from '../../src/disks/parallel-inflate.js';
import { openQcow2, writeQcow2 } from '../../src/disks/qcow2.js';
import { openRawImage } from '../../src/disks/raw-image.js';
import { openVmdk, writeVmdk } from '../../src/disks/vmdk.js';
import { FerryError } from '../../src/errors.js';
import { rawInput } from './disk-image-conformance.js';
import { collect, tempDirFor } from './helpers.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** `length` bytes of compressible, non-zero text (deflates to a fraction of its size). */
function text(length: number, seed = 0): Buffer {
  const words = ['ferry', 'disk', 'image', 'grain', 'cluster', 'block', 'zero', 'data'];
  const parts: string[] = [];
  let size = 0;
  for (let index = seed; size < length; index++) {
    const word = `${words[(index * 7) % words.length]}-${index} `;
    parts.push(word);
    size += word.length;
  }
  return Buffer.from(parts.join('')).subarray(0, length);
}

/** A FileHandle stand-in recording each `writev` (position, bytes, buffers), `delayMs` long each. */
function recordingHandle(options: { delayMs?: number; failAt?: number } = {}) {
  const writes: { position: number; bytes: Buffer; arrayBuffers: ArrayBufferLike[] }[] = [];
  let running = 0;
  let maxRunning = 0;
  const handle = {
    async writev(buffers: Uint8Array[], position: number) {
      running++;
      maxRunning = Math.max(maxRunning, running);
      await new Promise((resolve) => setTimeout(resolve, options.delayMs ?? 0));
      running--;
      if (options.failAt !== undefined && writes.length === options.failAt) throw Object.assign(new Error('disk on fire'), { code: 'EIO' });
      const bytes = Buffer.concat(buffers);
      writes.push({ position, bytes, arrayBuffers: buffers.map((each) => each.buffer) });
      return { bytesWritten: bytes.length, buffers };
    },
  };
  return { handle: handle as unknown as import('node:fs').promises.FileHandle, writes, maxRunning: () => maxRunning };
}

describe('disk image I/O: zero detection', () => {
  test('isZero compares ranges of any length against zeros', () => {
    const data = Buffer.alloc(200 * KiB);
    assert.ok(isZero(data));
    assert.ok(isZero(data, 5, 5)); // empty
    data[150 * KiB] = 1;
    assert.ok(!isZero(data));
    assert.ok(isZero(data, 0, 150 * KiB));
    assert.ok(!isZero(data, 150 * KiB, 150 * KiB + 1));
    assert.ok(isZero(data, 150 * KiB + 1));
  });

  test('nonZeroRuns cuts at multiples of the granularity counted from the disk start, and merges neighbours', () => {
    const data = Buffer.alloc(40 * KiB);
    // The data lies at 2 KiB of the disk: its 4 KiB blocks are [0, 2), [2, 6), [6, 10), [10, 14)... KiB of it.
    data[100] = 1; // the first, partial block
    data[9 * KiB] = 1; // [6, 10)
    data[10 * KiB] = 1; // [10, 14): merged with the one before
    data[40 * KiB - 1] = 1; // the last, partial block
    assert.deepEqual([...nonZeroRuns(data, 2 * KiB, 4 * KiB)], [
      { start: 0, end: 2 * KiB },
      { start: 6 * KiB, end: 14 * KiB },
      { start: 38 * KiB, end: 40 * KiB },
    ]);
    assert.deepEqual([...nonZeroRuns(Buffer.alloc(10 * KiB), 0, 4 * KiB)], []);
  });
});

describe('disk image I/O: wholeBlocks', () => {
  test('whole blocks of pieces: views where one piece covers a block, copies where pieces meet, zeros left out, the last one padded', async () => {
    const block = 64 * KiB;
    const first = randomBytes(3 * block); // blocks 0..2, block 1 zeroed below
    first.fill(0, block, 2 * block);
    const second = randomBytes(block / 2); // the first half of block 4
    const third = randomBytes(100); // the end of block 4, then into block 5 (a short last block)
    const pieces = [
      { offset: 0, data: first },
      { offset: 4 * block, data: second },
      { offset: 5 * block - 50, data: third },
    ];
    const blocks = await collect(
      wholeBlocks(
        (async function* () {
          yield* pieces;
        })(),
        block,
      ),
    );
    assert.deepEqual(
      blocks.map((each) => each.index),
      [0, 2, 4, 5],
    );
    assert.equal(blocks[0]!.data.buffer, first.buffer, 'a block one piece covers is a view of it');
    assert.ok(blocks[0]!.data.equals(first.subarray(0, block)));
    assert.ok(blocks[1]!.data.equals(first.subarray(2 * block)));
    const expected4 = Buffer.alloc(block);
    second.copy(expected4);
    third.copy(expected4, block - 50, 0, 50);
    assert.ok(blocks[2]!.data.equals(expected4), 'pieces meeting in a block are gathered, zeros between them');
    const expected5 = Buffer.alloc(block);
    third.copy(expected5, 0, 50);
    assert.equal(blocks[3]!.data.length, block, 'a short last block is a whole block, padded with zeros');
    assert.ok(blocks[3]!.data.equals(expected5));
  });
});

/** The resident bytes of each mapping of this process, by address range (/proc/self/smaps). */
async function residentByMapping(): Promise<Map<string, number>> {
  const resident = new Map<string, number>();
  let current = '';
  for (const line of (await fs.readFile('/proc/self/smaps', 'utf8')).split('\n')) {
    const range = /^([0-9a-f]+-[0-9a-f]+) /.exec(line);
    if (range) current = range[1]!;
    else if (line.startsWith('Rss:')) resident.set(current, Number(line.split(/\s+/)[1]) * KiB);
  }
  return resident;
}

/**
 * Runs `allocate`: what it returns, and the resident bytes of the mappings that appeared meanwhile.
 * WebAssembly memory is always mapped anew, so its pages count whatever else is allocated meanwhile.
 */
async function residentInNewMappings<T>(allocate: () => T | Promise<T>): Promise<{ memory: T; bytes: number }> {
  const before = await residentByMapping();
  const memory = await allocate();
  let bytes = 0;
  for (const [range, resident] of await residentByMapping()) if (!before.has(range)) bytes += resident;
  return { memory, bytes };
}

describe('disk image I/O: ImageFileWriter', () => {
  test('adjacent writes are gathered into one write of at most writeBytes; a gap or a full buffer starts another', async () => {
    const { handle, writes } = recordingHandle();
    const writer = new ImageFileWriter(handle, { writeBytes: 256 * KiB, writesInFlight: 2 });
    for (let index = 0; index < 6; index++) await writer.write(index * 64 * KiB, Buffer.alloc(64 * KiB, index + 1)); // 384 KiB from 0
    await writer.write(MiB, Buffer.from('after a gap'));
    await writer.flush();
    writes.sort((a, b) => a.position - b.position);
    assert.deepEqual(
      writes.map((each) => [each.position, each.bytes.length]),
      [
        [0, 256 * KiB],
        [256 * KiB, 128 * KiB],
        [MiB, 11],
      ],
    );
    assert.equal(writes[1]!.bytes[0], 5);
  });

  test('data is copied: the caller may reuse its buffer once write resolves', async () => {
    const { handle, writes } = recordingHandle({ delayMs: 5 });
    const writer = new ImageFileWriter(handle, { writeBytes: 64 * KiB });
    const buffer = Buffer.alloc(64 * KiB, 7);
    await writer.write(0, buffer);
    buffer.fill(9); // reused for the next block
    await writer.write(64 * KiB, buffer);
    await writer.flush();
    writes.sort((a, b) => a.position - b.position);
    assert.equal(writes[0]!.bytes[0], 7);
    assert.equal(writes[1]!.bytes[0], 9);
  });

  test('memory is bounded: at most writesInFlight writes at once, from at most writesInFlight + 1 buffers', async () => {
    const { handle, writes, maxRunning } = recordingHandle({ delayMs: 3 });
    const writer = new ImageFileWriter(handle, { writeBytes: 16 * KiB, writesInFlight: 3 });
    for (let index = 0; index < 40; index++) await writer.write(index * 32 * KiB, randomBytes(16 * KiB)); // gaps: a write each
    await writer.flush();
    assert.equal(writes.length, 40);
    assert.ok(maxRunning() <= 3, `at most 3 writes at once, saw ${maxRunning()}`);
    assert.ok(new Set(writes.flatMap((each) => each.arrayBuffers)).size <= 4, 'the gathering buffers are reused');
  });

  test('buffers are made as writes need them: a small write makes one (its page faults are all paid when it is made)', async () => {
    const { handle, writes } = recordingHandle();
    const writer = new ImageFileWriter(handle, { writeBytes: 16 * MiB, writesInFlight: 4 });
    const { bytes } = await residentInNewMappings(async () => {
      await writer.write(0, Buffer.alloc(4 * KiB, 1));
      await writer.flush();
    });
    assert.equal(writes.length, 1);
    // Five buffers made at once would be 80 MiB; what else the writes allocate is a few MiB.
    assert.ok(bytes >= 16 * MiB && bytes < 32 * MiB, `one 16 MiB buffer made, ${bytes / MiB} MiB resident`);
  });

  test('writeNonZero skips all-zero 4 KiB blocks: they stay holes of the file', async (t) => {
    const directory = await tempDirFor(t, 'ferry-image-io-');
    const file = path.join(directory, 'sparse.raw');
    const data = Buffer.alloc(8 * MiB);
    randomBytes(4 * KiB).copy(data, 0);
    randomBytes(10).copy(data, 6 * MiB + 5);
    const handle = await fs.open(file, 'w');
    try {
      const writer = new ImageFileWriter(handle);
      await writer.writeNonZero(0, data);
      await writer.flush();
      await handle.truncate(data.length);
    } finally {
      await handle.close();
    }
    assert.ok((await fs.readFile(file)).equals(data));
    const { blocks } = await fs.stat(file);
    assert.ok(blocks * 512 <= 64 * KiB, `two 4 KiB blocks hold data, ${blocks * 512} bytes are allocated`);
  });

  test('with a direct handle, aligned writes go around the page cache and the others through the ordinary one: the file holds them all', async (t) => {
    const directory = await tempDirFor(t, 'ferry-image-io-');
    const file = path.join(directory, 'mixed.img');
    const handle = await fs.open(file, 'wx');
    const direct = await DirectWriter.open(handle, file); // where the file system refuses O_DIRECT, all go the ordinary way
    const expected = Buffer.alloc(3 * MiB + 700);
    try {
      const writer = new ImageFileWriter(handle, { direct, writeBytes: MiB, writesInFlight: 2 });
      const pieces: [number, Buffer][] = [
        [0, Buffer.from('header, 23 bytes long..')], // unaligned length
        [64 * KiB, randomBytes(2 * MiB)], // aligned: two full gathered writes
        [64 * KiB + 2 * MiB + 512, randomBytes(4096)], // unaligned offset
        [3 * MiB, randomBytes(700)], // the unaligned tail
      ];
      for (const [position, data] of pieces) {
        await writer.write(position, data);
        data.copy(expected, position);
      }
      await writer.flush();
      await handle.sync();
    } finally {
      await direct.close();
      await handle.close();
    }
    assert.ok((await fs.readFile(file)).equals(expected));
  });

  test('DirectWriter: whole aligned blocks go direct and stay so; unaligned offsets, memory and tails go the ordinary way; the file holds every byte', async (t) => {
    const directory = await tempDirFor(t, 'ferry-image-io-');
    const file = path.join(directory, 'direct-writer.img');
    const handle = await fs.open(file, 'wx');
    // What goes the ordinary way is recorded (the real handle still writes it): everything else went direct.
    const ordinary: [number, number][] = [];
    const recording = new Proxy(handle, {
      get(target, property) {
        if (property === 'writev') {
          return (buffers: Uint8Array[], position: number) => {
            ordinary.push([position, buffers.reduce((total, buffer) => total + buffer.length, 0)]);
            return target.writev(buffers, position);
          };
        }
        const value = Reflect.get(target, property) as unknown;
        return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
      },
    });
    const writer = await DirectWriter.open(recording, file);
    const expected = Buffer.alloc(2 * MiB);
    try {
      // The test directory's file system allows O_DIRECT on this machine (CI's too): if it did not, this
      // test could not tell a direct write from an ordinary one, so it says so instead of passing.
      assert.ok(writer.writesDirect, `${directory} refuses O_DIRECT`);
      const memory = alignedSharedBuffer(2 * MiB);
      randomBytes(2 * MiB).copy(memory);
      const writes: [number, Uint8Array][] = [
        [0, memory.subarray(0, 256 * KiB)], // aligned everything: direct
        [256 * KiB, memory.subarray(256 * KiB, 512 * KiB + 100)], // aligned start, unaligned tail: both ways
        [768 * KiB + 512, memory.subarray(768 * KiB + 512, 772 * KiB + 512)], // unaligned offset: ordinary
        [MiB, memory.subarray(MiB + 1, MiB + 1 + 64 * KiB)], // memory at an odd address: ordinary, not an EINVAL that turns direct off
        [MiB + 128 * KiB, randomBytes(64 * KiB)], // memory not known to be aligned: ordinary
        [MiB + 256 * KiB, memory.subarray(MiB + 256 * KiB, 2 * MiB)], // aligned again: still direct
      ];
      for (const [position, data] of writes) {
        await writer.write(data, position);
        expected.set(data, position);
      }
      assert.ok(writer.writesDirect, 'no direct write was refused');
      assert.deepEqual(ordinary, [
        [512 * KiB, 100],
        [768 * KiB + 512, 4 * KiB],
        [MiB, 64 * KiB],
        [MiB + 128 * KiB, 64 * KiB],
      ]);
      await writer.close();
      await writer.close(); // twice is harmless
      await handle.sync();
    } finally {
      await writer.close();
      await handle.close();
    }
    assert.ok((await fs.readFile(file)).equals(expected));
  });

  test('a failed write fails the next flush with its error; settle waits for what runs and does not throw', async () => {
    const { handle } = recordingHandle({ delayMs: 2, failAt: 1 });
    const writer = new ImageFileWriter(handle, { writeBytes: 16 * KiB, writesInFlight: 2 });
    await writer.write(0, randomBytes(16 * KiB));
    await writer.write(64 * KiB, randomBytes(16 * KiB));
    await writer.write(128 * KiB, randomBytes(16 * KiB)).catch(() => undefined);
    await assert.rejects(writer.flush(), /disk on fire/);
    await writer.settle();
  });

  test('when every write fails, later writes fail too instead of waiting for a buffer forever', async () => {
    const { handle } = recordingHandle({ failAt: 0 }); // the first write fails, and so does every one after it
    const writer = new ImageFileWriter(handle, { writeBytes: 16 * KiB, writesInFlight: 1 });
    await assert.rejects(async () => {
      for (let index = 0; index < 10; index++) await writer.write(index * 64 * KiB, randomBytes(16 * KiB));
      await writer.flush();
    }, /disk on fire/);
    await writer.settle();
  });
});

describe('disk image I/O: inflateUnits', () => {
  /** Units of a fake file: compressed text and plain bytes, stored in shuffled order; each knows what it holds. */
  function fakeFile(count: number) {
    const units: { position: number; length: number; index: number; plain: boolean; expected: Buffer }[] = [];
    const stored: Buffer[] = [];
    let position = 0;
    const order = [...Array(count).keys()].sort((a, b) => ((a * 37) % count) - ((b * 37) % count)); // a fixed shuffle
    for (const index of order) {
      const plain = index % 5 === 0;
      const expected = plain ? randomBytes(64 * KiB) : text(64 * KiB, index);
      const bytes = plain ? expected : deflateRawSync(expected);
      units.push({ position, length: bytes.length, index, plain, expected });
      stored.push(bytes);
      position += bytes.length + 100; // a little gap between units
      stored.push(Buffer.alloc(100));
    }
    return { units: units.sort((a, b) => a.index - b.index), file: Buffer.concat(stored) };
  }

  test('many units in shuffled file order: every one delivered right, fetched with few reads, at most two reads at once', async () => {
    const { units, file } = fakeFile(200);
    const reads: number[] = [];
    let reading = 0;
    let maxReading = 0;
    const delivered = new Map<number, Buffer>();
    await inflateUnits(
      units,
      async (target, position) => {
        reading++;
        maxReading = Math.max(maxReading, reading);
        reads.push(target.length);
        await new Promise((resolve) => setTimeout(resolve, 1));
        file.copy(target, 0, position, position + target.length);
        reading--;
      },
      (unit, stored): Buffer | CompressedBytes => (unit.plain ? stored : { compression: 'deflate', data: stored, maxLength: 64 * KiB }),
      (unit, inflated: Inflated) => {
        assert.ok('data' in inflated, `unit ${unit.index} inflates`);
        delivered.set(unit.index, Buffer.from(inflated.data));
      },
    );
    assert.equal(delivered.size, units.length);
    for (const unit of units) assert.ok(delivered.get(unit.index)!.equals(unit.expected), `unit ${unit.index}`);
    assert.ok(reads.length <= Math.ceil(file.length / (4 * MiB)) + 1, `${reads.length} reads for ${file.length} bytes`);
    assert.ok(Math.max(...reads) <= 4 * MiB, 'a read covers at most 4 MiB');
    assert.ok(maxReading <= 2, `at most two reads at once, saw ${maxReading}`);
  });

  test('a unit that does not inflate is reported to deliver; the format error it throws rejects the whole read, once nothing runs', async () => {
    for (const count of [2, 40]) {
      // 2: inflated on the event loop; 40: by the worker pool. The outcome is the same.
      const { units, file } = fakeFile(count);
      const broken = units.find((unit) => !unit.plain && unit.index > 0)!;
      file.fill(0xff, broken.position, broken.position + 50);
      let deliveredAfterFailure = false;
      let failed = false;
      await assert.rejects(
        inflateUnits(
          units,
          async (target, position) => void file.copy(target, 0, position, position + target.length),
          (unit, stored) => (unit.plain ? stored : { compression: 'deflate', data: stored, maxLength: 64 * KiB }),
          (unit, inflated) => {
            if (failed) deliveredAfterFailure = true;
            if ('failure' in inflated) {
              failed = true;
              throw new FerryError('corrupt-data', `disk image /x.img: unit ${unit.index} does not inflate (${inflated.failure})`);
            }
          },
        ),
        (error: unknown) => error instanceof FerryError && error.code === 'corrupt-data' && error.message.includes(`unit ${broken.index} does not inflate`),
      );
      assert.ok(!deliveredAfterFailure, 'nothing is delivered after the failure');
    }
  });

  test('inflation is bounded: a unit inflating past maxLength is a tooLarge failure', async () => {
    const bomb = deflateRawSync(Buffer.alloc(8 * MiB, 1));
    const outcomes: Inflated[] = [];
    await inflateUnits(
      [{ position: 0, length: bomb.length }],
      async (target) => void bomb.copy(target),
      (_unit, stored) => ({ compression: 'deflate', data: stored, maxLength: 64 * KiB }),
      (_unit, inflated) => void outcomes.push(inflated),
    );
    assert.ok('failure' in outcomes[0]! && outcomes[0].tooLarge);
  });
});

describe('disk image I/O: compressed images read in large pieces', () => {
  test('qcow2: a corrupt compressed cluster among many fails a large read with corrupt-data naming the file and the cluster', async (t) => {
    const directory = await tempDirFor(t, 'ferry-image-io-');
    const image = path.join(directory, 'compressed.qcow2');
    const disk = text(4 * MiB);
    await writeQcow2(image, rawInput(disk), { subformat: 'v3-compressed' });
    const reader = await openQcow2(image);
    try {
      const whole = Buffer.alloc(4 * MiB);
      await reader.read(whole, whole.length, 0); // one read: 64 compressed clusters
      assert.ok(whole.equals(disk));
    } finally {
      await reader.close();
    }
    // Guest cluster 23's L2 entry (L1 at 64 KiB, one L2 table) gives where its compressed bytes lie.
    const bytes = await fs.readFile(image);
    const l2Offset = Number(bytes.readBigUInt64BE(64 * KiB) & 0x00fffffffffffe00n);
    const entry = bytes.readBigUInt64BE(l2Offset + 23 * 8);
    const hostOffset = Number(entry & ((1n << 54n) - 1n));
    bytes.fill(0xff, hostOffset, hostOffset + 64);
    await fs.writeFile(image, bytes);
    const broken = await openQcow2(image);
    try {
      await assert.rejects(broken.read(Buffer.alloc(4 * MiB), 4 * MiB, 0), (error: unknown) => {
        assert.ok(error instanceof FerryError && error.code === 'corrupt-data', String(error));
        assert.ok(error.message.startsWith(`disk image ${image}: compressed guest cluster 23 `), error.message);
        return true;
      });
    } finally {
      await broken.close();
    }
  });

  test('vmdk: a corrupt grain among many fails a large read with corrupt-data naming the file and the grain', async (t) => {
    const directory = await tempDirFor(t, 'ferry-image-io-');
    const image = path.join(directory, 'stream.vmdk');
    const disk = text(4 * MiB, 3);
    await writeVmdk(image, rawInput(disk));
    const reader = await openVmdk(image);
    try {
      const whole = Buffer.alloc(4 * MiB);
      await reader.read(whole, whole.length, 0); // one read: 64 grains
      assert.ok(whole.equals(disk));
    } finally {
      await reader.close();
    }
    // Grains follow each other from 64 KiB on, each a 12-byte marker and its stream padded to a sector.
    const bytes = await fs.readFile(image);
    let marker = 64 * KiB;
    for (let grain = 0; grain < 17; grain++) marker += Math.ceil((12 + bytes.readUInt32LE(marker + 8)) / 512) * 512;
    assert.equal(Number(bytes.readBigUInt64LE(marker)), 17 * 128, 'the 18th record is grain 17');
    bytes.fill(0xa5, marker + 12 + 2, marker + 12 + 100); // keep the zlib header, ruin the stream
    await fs.writeFile(image, bytes);
    const broken = await openVmdk(image);
    try {
      await assert.rejects(broken.read(Buffer.alloc(4 * MiB), 4 * MiB, 0), (error: unknown) => {
        assert.ok(error instanceof FerryError && error.code === 'corrupt-data', String(error));
        assert.ok(error.message.startsWith(`disk image ${image}: compressed grain 17 `), error.message);
        return true;
      });
    } finally {
      await broken.close();
    }
  });
});

describe('disk image I/O: direct reads and the conversion input', () => {
  test('DirectReader reads a sparse file of any size like an ordinary read, zeros past its end', async (t) => {
    const directory = await tempDirFor(t, 'ferry-image-io-');
    const file = path.join(directory, 'disk.raw');
    const size = 3 * MiB + 1000; // not a multiple of the alignment
    const content = Buffer.alloc(size);
    randomBytes(MiB).copy(content, 0);
    randomBytes(1000).copy(content, 3 * MiB);
    await fs.writeFile(file, content);
    const reader = await DirectReader.open(file);
    try {
      const buffer = alignedBuffer(4 * MiB);
      await reader.read(buffer, size, 0);
      assert.ok(buffer.subarray(0, size).equals(content));
      buffer.fill(1);
      await reader.read(buffer, 2 * MiB, 2 * MiB); // runs past the end
      assert.ok(buffer.subarray(0, MiB + 1000).equals(content.subarray(2 * MiB)));
      assert.ok(isZero(buffer, MiB + 1000, 2 * MiB), 'zeros past the end of the file');
      buffer.fill(1);
      await reader.read(buffer, 100, 3 * MiB + 1); // not aligned: read the ordinary way
      assert.ok(buffer.subarray(0, 100).equals(content.subarray(3 * MiB + 1, 3 * MiB + 101)));
      assert.equal(DIRECT_ALIGNMENT % 512, 0);
    } finally {
      await reader.close();
    }
  });

  test('alignedSharedBuffer: shared memory workers can use, whole 64 KiB pages, zeros, exactly the length asked for', () => {
    const buffer = alignedSharedBuffer(MiB + 4096);
    assert.equal(buffer.length, MiB + 4096);
    assert.ok(buffer.buffer instanceof SharedArrayBuffer, 'shared with worker threads');
    // WebAssembly memory comes in 64 KiB pages (and is page-aligned): the page count shows it is that memory.
    assert.equal(buffer.buffer.byteLength, MiB + 64 * KiB);
    assert.ok(isZero(buffer));
  });

  test('an aligned buffer is resident as soon as it is made (its pages faulted in one pass, so direct transfers from it make few device requests); a shared one only where used; both hold zeros', async () => {
    const buffers = await residentInNewMappings(() => [alignedBuffer(8 * MiB), alignedBuffer(8 * MiB), alignedBuffer(8 * MiB), alignedBuffer(8 * MiB)]);
    const shared = await residentInNewMappings(() => {
      const buffer = alignedSharedBuffer(16 * MiB);
      buffer.fill(1, 0, MiB); // an upload body filling the first MiB of a staging buffer
      return buffer;
    });
    // Memory mapped but never touched would count nothing.
    assert.ok(buffers.bytes >= 32 * MiB, `alignedBuffer: ${buffers.bytes / MiB} MiB resident of 32`);
    assert.ok(shared.bytes >= MiB && shared.bytes < 4 * MiB, `alignedSharedBuffer: ${shared.bytes / MiB} MiB resident, 1 MiB of 16 used`);
    assert.ok(buffers.memory.every((buffer) => isZero(buffer)) && isZero(shared.memory.subarray(MiB)));
  });

  test('openDirectRawDisk: a raw file read direct into aligned shared buffers, like openRawDisk; an unaligned read or a buffer without room reads the ordinary way', async (t) => {
    const directory = await tempDirFor(t, 'ferry-image-io-');
    const file = path.join(directory, 'disk.raw');
    const size = 2 * MiB + 1000;
    const content = randomBytes(size);
    await fs.writeFile(file, content);
    // Whether this file system takes O_DIRECT at all (tmpfs does not): then every read is an ordinary one.
    const directAllowed = await fs.open(file, constants.O_RDONLY | constants.O_DIRECT).then(async (handle) => (await handle.close(), true), () => false);
    const disk = await openDirectRawDisk(file);
    try {
      assert.equal(disk.size, size);
      assert.equal(disk.path, file);
      const buffer = alignedSharedBuffer(2 * MiB + 4096);
      await disk.read(buffer, size, 0);
      assert.ok(buffer.subarray(0, size).equals(content));
      const tail = Buffer.alloc(1000); // no room for a whole aligned block: read the ordinary way
      await disk.read(tail, 1000, 2 * MiB);
      assert.ok(tail.equals(content.subarray(2 * MiB)));
      await disk.read(buffer, 5000, 123); // not aligned
      assert.ok(buffer.subarray(0, 5000).equals(content.subarray(123, 5123)));
      assert.equal(disk.readsDirect, directAllowed, 'reads stay direct where the file system allows it');
    } finally {
      await disk.close();
    }
    await assert.rejects(openDirectRawDisk(path.join(directory, 'missing.raw')), (error) => error instanceof FerryError && error.code === 'disk-unreadable');
  });

  test("readerInput: a raw disk's pieces cover its data, none all zero at 64 KiB, ascending; a writer stopping early leaves nothing running", async (t) => {
    const directory = await tempDirFor(t, 'ferry-image-io-');
    const file = path.join(directory, 'disk.raw');
    const content = Buffer.alloc(20 * MiB + 4096);
    randomBytes(3 * MiB).copy(content, MiB);
    randomBytes(64 * KiB).copy(content, 19 * MiB);
    await fs.writeFile(file, content);
    const reader = await openRawImage(file);
    try {
      const rebuilt = Buffer.alloc(content.length);
      let next = 0;
      for await (const piece of readerInput(reader).pieces()) {
        assert.ok(piece.offset >= next, 'ascending');
        assert.ok(!isZero(piece.data), 'no all-zero piece');
        piece.data.copy(rebuilt, piece.offset);
        next = piece.offset + piece.data.length;
      }
      assert.ok(rebuilt.equals(content));
      for await (const piece of readerInput(reader).pieces()) if (piece.offset > 0) break; // stops early
    } finally {
      await reader.close();
    }
  });

  test('a raw disk of an odd size converts to raw and back byte for byte', async (t) => {
    const directory = await tempDirFor(t, 'ferry-image-io-');
    const source = path.join(directory, 'odd.raw');
    const content = Buffer.alloc(9 * MiB + 512);
    randomBytes(2 * MiB).copy(content, 7 * MiB + 512);
    await fs.writeFile(source, content);
    const target = path.join(directory, 'copy.raw');
    await convertImage(source, target, 'raw');
    assert.ok((await fs.readFile(target)).equals(content));
  });
});
