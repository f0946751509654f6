/**
 * Converting a disk image from one format to another, locally (`ferry image convert`, and the
 * conversion benchmark): the source's reader maps its data, only data ranges are read (in pieces of
 * `PIECE_BYTES`, all-zero pieces dropped), and the target's writer streams them into the new image. The
 * next piece is read while the writer takes the current one.
 */
import { isAllZero } from '../store/chunking.js';
import type { DiskImageInput, DiskImageReader } from './disk-image.js';
import { openDiskImage, writerFor } from './formats.js';

/** Bytes read from the source at once. */
const PIECE_BYTES = 1024 * 1024;

/** The data of an open image as writer input: its `data` extents in pieces, all-zero pieces left out. */
export function readerInput(reader: DiskImageReader): DiskImageInput {
  return {
    size: reader.size,
    async *pieces() {
      const ranges: { offset: number; length: number }[] = [];
      // A raw disk or a fixed VHD has no map: its extents are found by reading it, so read it once, whole.
      const unmapped = reader.format === 'raw' || (reader.format === 'vhd' && reader.subformat === 'fixed');
      const extents = unmapped ? [{ offset: 0, length: reader.size, kind: 'data' as const }] : reader.extents();
      for await (const extent of extents) {
        if (extent.kind !== 'data') continue;
        for (let offset = extent.offset; offset < extent.offset + extent.length; offset += PIECE_BYTES) {
          ranges.push({ offset, length: Math.min(PIECE_BYTES, extent.offset + extent.length - offset) });
        }
      }
      const read = async (range: { offset: number; length: number }) => {
        const data = Buffer.allocUnsafe(range.length);
        await reader.read(data, range.length, range.offset);
        return data;
      };
      let pending = ranges.length > 0 ? read(ranges[0]!) : null;
      try {
        for (let index = 0; index < ranges.length; index++) {
          const data = await pending!;
          pending = index + 1 < ranges.length ? read(ranges[index + 1]!) : null;
          if (!isAllZero(data)) yield { offset: ranges[index]!.offset, data };
        }
      } finally {
        pending?.catch(() => undefined); // a writer that stopped early leaves a read in flight
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
