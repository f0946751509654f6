/**
 * Converting a disk image from one format to another, locally (`ferry image convert`, and the
 * conversion benchmark): the source's reader maps its data, only data ranges are read, in large reads
 * (`READ_BYTES`, aligned to multiples of it) of which a few run ahead of the writer (`READS_AHEAD`: the
 * source is read while the target is written), each cut around its all-zero 64 KiB blocks, and the
 * target's writer streams the rest into the new image. A raw or fixed-VHD source is read with O_DIRECT
 * (see direct-io.ts), only where its file holds data (its holes, found with SEEK_DATA: file-data-map.ts).
 */
import { alignedBuffer, DirectReader } from './direct-io.js';
import type { DiskExtent, DiskImageInput, DiskImageReader } from './disk-image.js';
import { fileDataRanges } from './file-data-map.js';
import { openDiskImage, writerFor } from './formats.js';
import { nonZeroRuns } from './image-writer.js';

const MiB = 1024 * 1024;
/** Bytes read from the source at once. */
const READ_BYTES = 8 * MiB;
/** Reads started before the writer takes the data of the first of them (memory: this many times READ_BYTES). */
const READS_AHEAD = 3;
/** All-zero blocks of this size (aligned on the disk) are not given to the writer. */
const ZERO_CUT_BYTES = 64 * 1024;

/** A raw disk or a fixed VHD: no map of where the data is (its extents are found by reading it). */
function unmapped(reader: DiskImageReader): boolean {
  return reader.format === 'raw' || (reader.format === 'vhd' && reader.subformat === 'fixed');
}

/**
 * Where an unmapped disk's data may be: the file system's data ranges of its file (file-data-map.ts), or,
 * where those cannot be had, all of it (mapping its zeros by reading would read it all too).
 */
async function unmappedExtents(reader: DiskImageReader): Promise<DiskExtent[]> {
  const ranges = await fileDataRanges(reader.path, reader.size);
  if (ranges === null) return [{ offset: 0, length: reader.size, kind: 'data' }];
  return ranges.map((range) => ({ ...range, kind: 'data' }));
}

/** The ranges of `reader`'s disk to read: its `data` extents, cut at multiples of READ_BYTES. */
async function* dataRanges(reader: DiskImageReader): AsyncGenerator<{ offset: number; length: number }> {
  const extents = unmapped(reader) ? await unmappedExtents(reader) : reader.extents();
  for await (const extent of extents) {
    if (extent.kind !== 'data') continue;
    const end = extent.offset + extent.length;
    for (let offset = extent.offset; offset < end; ) {
      const next = Math.min(end, (Math.floor(offset / READ_BYTES) + 1) * READ_BYTES);
      yield { offset, length: next - offset };
      offset = next;
    }
  }
}

/**
 * The data of an open image as writer input: its `data` extents read in large pieces, READS_AHEAD of them
 * at once, all-zero 64 KiB blocks left out. The read buffers (READS_AHEAD + 1 of READ_BYTES) are reused
 * once the writer has moved past their pieces: fresh memory for every read would cost a page fault per
 * 4 KiB read. An unmapped disk (raw, fixed VHD: its bytes are the file's, from offset 0) is read around
 * the page cache (direct-io.ts), where its file holds data (all of it when the file system's map cannot
 * be had).
 */
export function readerInput(reader: DiskImageReader): DiskImageInput {
  return {
    size: reader.size,
    async *pieces() {
      const direct = unmapped(reader) ? await DirectReader.open(reader.path) : null;
      // Buffers are made as reads need them (at most READS_AHEAD + 1), page-aligned for direct reads.
      const spare: Buffer[] = [];
      const read = async (range: { offset: number; length: number }) => {
        const buffer = spare.pop() ?? (direct ? alignedBuffer(READ_BYTES) : Buffer.allocUnsafe(READ_BYTES));
        if (direct) await direct.read(buffer, range.length, range.offset);
        else await reader.read(buffer, range.length, range.offset);
        return { offset: range.offset, buffer, data: buffer.subarray(0, range.length) };
      };
      const ranges = dataRanges(reader);
      const ahead: ReturnType<typeof read>[] = [];
      let mapped = false;
      const readAhead = async (): Promise<void> => {
        while (!mapped && ahead.length < READS_AHEAD) {
          const next = await ranges.next();
          if (next.done) mapped = true;
          else {
            const reading = read(next.value);
            reading.catch(() => undefined); // awaited in order below; a failure must not go unhandled meanwhile
            ahead.push(reading);
          }
        }
      };
      try {
        await readAhead();
        while (ahead.length > 0) {
          const { offset, buffer, data } = await ahead.shift()!;
          await readAhead();
          for (const run of nonZeroRuns(data, offset, ZERO_CUT_BYTES)) yield { offset: offset + run.start, data: data.subarray(run.start, run.end) };
          spare.push(buffer); // the writer asked for the next piece: it is done with this buffer
        }
      } finally {
        // A writer that stopped early leaves reads in flight: let them end before the files are closed.
        await Promise.allSettled(ahead);
        await ranges.return(undefined);
        await direct?.close();
      }
    },
  };
}

/** What a conversion did. */
export interface ConversionResult {
  source: { format: string; subformat: string; size: number };
  target: { format: string; subformat: string; bytesOnDisk: number };
}

/**
 * Converts the image at `sourcePath` (format sniffed) to `targetSpec` ("vhd:fixed", "qcow2"...) at
 * `targetPath`, which appears complete or not at all. Errors as the reader's and the writer's.
 */
export async function convertImage(
  sourcePath: string,
  targetPath: string,
  targetSpec: string,
  options: { onProgress?: (doneBytes: number) => void; signal?: AbortSignal } = {},
): Promise<ConversionResult> {
  const { writer, subformat } = writerFor(targetSpec);
  const reader = await openDiskImage(sourcePath);
  try {
    const bytesOnDisk = await writer.write(targetPath, readerInput(reader), { subformat, ...options });
    return { source: { format: reader.format, subformat: reader.subformat, size: reader.size }, target: { format: writer.format, subformat, bytesOnDisk } };
  } finally {
    await reader.close();
  }
}
