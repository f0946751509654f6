/**
 * Raw disk images: a file (or a block device) whose bytes are the virtual disk, byte for byte. There is
 * no specification beyond that; what this module adds to `openRawDisk` (disk-source.ts) is what the
 * image interface in disk-image.ts asks of every format:
 * - reading: `extents()` reports where the disk is zero: the file's holes, as the file system reports
 *   them (file-data-map.ts; node:fs has no SEEK_DATA), and within its data each 1 MiB-aligned range that
 *   holds only zeros, found by reading it. A block device, or a file whose map cannot be had, is read
 *   whole;
 * - writing: a sparse raw file. Only non-zero bytes are written (4 KiB-aligned runs, coalesced into large
 *   writes by the `ImageFileWriter` of image-writer.ts); the file is then truncated to the disk's size, so
 *   what was never written stays a hole in the file system.
 *
 * A fixed VHD being a raw disk with a footer, vhd.ts reuses this module's zero scan (`scanZeroExtents`)
 * and writes its data the same way (`ImageFileWriter.writeNonZero`); qcow2.ts opens raw
 * backing files with `openRawImage` (without the zero scan). What every format shares (range checks,
 * checked input pieces, the atomic write) is in image-file.ts.
 */
import { FerryError } from '../errors.js';
import type { DiskExtent, DiskImageFormatModule, DiskImageInput, DiskImageReader, DiskImageWriteOptions, DiskImageWriter } from './disk-image.js';
import { openRawDisk, type DiskSource } from './disk-source.js';
import { type DataRange, fileDataRanges } from './file-data-map.js';
import { checkReadRange, checkedPieces, ExtentMerger, writeImageFileAtomically } from './image-file.js';
import { isZero } from './image-writer.js';

const MiB = 1024 * 1024;

/** The granularity at which `scanZeroExtents` looks for zeros: ranges start and end on multiples of it. */
export const ZERO_SCAN_GRANULARITY = MiB;

/**
 * Maps [start, end) of `source` (default: the whole disk) by reading it: each ZERO_SCAN_GRANULARITY-aligned
 * range (clipped to [start, end)) that holds only zeros is `zero`, every other one `data`. Yields extents in
 * ascending order, adjacent, with neighbours of one kind merged. Reads `source` once, a MiB at a time.
 *
 * With `fileData` (the data ranges of the file whose bytes are the disk's from offset 0, from
 * file-data-map.ts), only those ranges are read: the file's holes are `zero` without a read.
 */
export async function* scanZeroExtents(
  source: Pick<DiskSource, 'read' | 'size'>,
  start = 0,
  end = source.size,
  fileData: readonly DataRange[] | null = null,
): AsyncGenerator<DiskExtent> {
  const buffer = Buffer.alloc(ZERO_SCAN_GRANULARITY);
  const merger = new ExtentMerger();
  const scan = async function* (from: number, to: number): AsyncGenerator<DiskExtent> {
    for (let offset = from; offset < to; ) {
      const next = Math.min(to, (Math.floor(offset / ZERO_SCAN_GRANULARITY) + 1) * ZERO_SCAN_GRANULARITY);
      const length = next - offset;
      await source.read(buffer, length, offset);
      yield* merger.add(offset, length, isZero(buffer, 0, length) ? 'zero' : 'data');
      offset = next;
    }
  };
  if (fileData === null) yield* scan(start, end);
  else {
    let position = start;
    for (let rangeIndex = firstRangeEndingAfter(fileData, start); rangeIndex < fileData.length && position < end; rangeIndex++) {
      const range = fileData[rangeIndex]!;
      const dataStart = Math.max(position, range.offset);
      const dataEnd = Math.min(end, range.offset + range.length);
      if (dataStart >= end) break;
      yield* merger.add(position, dataStart - position, 'zero');
      yield* scan(dataStart, dataEnd);
      position = dataEnd;
    }
    yield* merger.add(position, end - position, 'zero');
  }
  yield* merger.finish();
}

/** The index of the first of `ranges` (ascending, non-overlapping) that ends after `offset`; ranges.length if none. */
function firstRangeEndingAfter(ranges: readonly DataRange[], offset: number): number {
  let low = 0;
  let high = ranges.length;
  while (low < high) {
    const middle = (low + high) >>> 1;
    const range = ranges[middle]!;
    if (range.offset + range.length <= offset) low = middle + 1;
    else high = middle;
  }
  return low;
}

/** A raw file or block device read as an image: the disk source, range-checked, plus a zero map. */
class RawImageReader implements DiskImageReader {
  readonly format = 'raw' as const;
  readonly subformat = 'raw';
  private closed = false;

  constructor(
    private readonly source: DiskSource,
    private readonly scanZeros: boolean,
  ) {}

  get path(): string {
    return this.source.path;
  }

  get size(): number {
    return this.source.size;
  }

  async read(buffer: Buffer, length: number, offset: number): Promise<void> {
    checkReadRange(this.path, this.size, buffer, length, offset);
    await this.source.read(buffer, length, offset);
  }

  async *extents(): AsyncIterable<DiskExtent> {
    if (this.scanZeros) yield* scanZeroExtents(this, 0, this.size, await fileDataRanges(this.path, this.size));
    else if (this.size > 0) yield { offset: 0, length: this.size, kind: 'data' };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.source.close();
  }
}

/**
 * Opens a raw image file or a block device for reading as format 'raw', subformat 'raw'. Its size is the
 * file's (or device's) size; `extents()` reports the file's holes as zero and reads the rest to find
 * its 1 MiB-aligned zero ranges, unless
 * `options.scanZeros` is false: then the whole disk is one `data` extent and nothing is read to map it
 * (what qcow2.ts opens a raw backing file with: its child's extents need not read the backing file).
 * Throws FerryError 'disk-unreadable' when the path is missing, unreadable or neither a file nor a
 * block device.
 */
export async function openRawImage(imagePath: string, options: { scanZeros?: boolean } = {}): Promise<DiskImageReader> {
  return new RawImageReader(await openRawDisk(imagePath), options.scanZeros ?? true);
}

/**
 * Raw has no signature: any file is a raw disk. Returns false always, so the registry (formats.ts) opens
 * a file as raw only when no other format recognises it.
 */
export function sniffRaw(_head: Buffer, _fileSize: number): boolean {
  return false;
}

/**
 * Writes `input` as a sparse raw image at `imagePath` (atomically, see `writeImageFileAtomically`): the
 * non-zero bytes of each piece at their offsets, then the file set to exactly `input.size` bytes, so
 * holes stay holes. The only subformat is 'raw'; any other is refused with 'invalid-request'. Resolves
 * with the file's size (which is `input.size`; its allocated size is smaller where the disk is zero).
 */
export async function writeRawImage(imagePath: string, input: DiskImageInput, options: DiskImageWriteOptions = {}): Promise<number> {
  if (options.subformat !== undefined && options.subformat !== 'raw') {
    throw new FerryError('invalid-request', `raw images have no subformat '${options.subformat}'`);
  }
  return writeImageFileAtomically(imagePath, options.signal, async (handle, writer) => {
    for await (const piece of checkedPieces(imagePath, input, options)) await writer.writeNonZero(piece.offset, piece.data);
    await writer.flush();
    await handle.truncate(input.size);
  });
}

/** The raw writer: subformat 'raw' only (see `writeRawImage`). */
export const rawImageWriter: DiskImageWriter = { format: 'raw', subformats: ['raw'], write: writeRawImage };

/** The raw format: never sniffed (it is the registry's fallback), opened by `openRawImage`, written by `writeRawImage`. */
export const rawImageFormat: DiskImageFormatModule = { format: 'raw', sniff: sniffRaw, open: openRawImage, writer: rawImageWriter };
