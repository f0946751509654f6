/**
 * Raw disk images: a file (or a block device) whose bytes are the virtual disk, byte for byte. There is
 * no specification beyond that; what this module adds to `openRawDisk` (disk-source.ts) is what the
 * image interface in disk-image.ts asks of every format:
 * - reading: `extents()` reports where the disk is zero. A raw file carries no allocation map Node can
 *   query (no SEEK_HOLE/SEEK_DATA in node:fs), so the reader reads the disk and reports each
 *   1 MiB-aligned range that holds only zeros as `zero`, the rest as `data`;
 * - writing: a sparse raw file. Only non-zero bytes are written (in 4 KiB-aligned runs); the file is then
 *   truncated to the disk's size, so what was never written stays a hole in the file system.
 *
 * It also holds the two helpers every writer in src/disks shares the shape of and the VHD writer reuses:
 * the atomic temp-file-then-rename write (`writeImageFileAtomically`) and the zero-skipping positional
 * write (`writeNonZeroRuns`), plus the zero scan (`scanZeroExtents`) a fixed VHD, being a raw disk with
 * a footer, also uses.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { FerryError } from '../errors.js';
import { isAllZero } from '../store/chunking.js';
import { fsyncDirectory, writeAllAt } from '../util/durable-fs.js';
import type { DiskExtent, DiskImageFormatModule, DiskImageInput, DiskImageReader, DiskImageWriteOptions, DiskImageWriter } from './disk-image.js';
import { openRawDisk, type DiskSource } from './disk-source.js';

const MiB = 1024 * 1024;

/** The granularity at which `scanZeroExtents` looks for zeros: ranges start and end on multiples of it. */
export const ZERO_SCAN_GRANULARITY = MiB;

/** The granularity at which writers skip zeros: a file system's block, so skipped runs stay holes. */
const WRITE_ZERO_GRANULARITY = 4096;

/**
 * Maps [start, end) of `source` (default: the whole disk) by reading it: each ZERO_SCAN_GRANULARITY-aligned
 * range (clipped to [start, end)) that holds only zeros is `zero`, every other one `data`. Yields extents in
 * ascending order, adjacent, with neighbours of one kind merged. Reads `source` once, a MiB at a time.
 */
export async function* scanZeroExtents(source: Pick<DiskSource, 'read' | 'size'>, start = 0, end = source.size): AsyncGenerator<DiskExtent> {
  const buffer = Buffer.alloc(ZERO_SCAN_GRANULARITY);
  let pending: DiskExtent | null = null;
  for (let offset = start; offset < end; ) {
    const next = Math.min(end, (Math.floor(offset / ZERO_SCAN_GRANULARITY) + 1) * ZERO_SCAN_GRANULARITY);
    const length = next - offset;
    await source.read(buffer, length, offset);
    const kind = isAllZero(buffer.subarray(0, length)) ? 'zero' : 'data';
    if (pending && pending.kind === kind) pending.length += length;
    else {
      if (pending) yield pending;
      pending = { offset, length, kind };
    }
    offset = next;
  }
  if (pending) yield pending;
}

/**
 * Throws FerryError 'invalid-request' unless [offset, offset + length) is a range of a disk of `size`
 * bytes that fits in `buffer`; `what` names the disk in the message.
 */
export function checkReadRange(what: string, size: number, buffer: Buffer, length: number, offset: number): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > size) {
    throw new FerryError('invalid-request', `disk image ${what}: cannot read ${length} bytes at ${offset}: the disk is ${size} bytes`, { details: { path: what } });
  }
  if (length > buffer.length) {
    throw new FerryError('invalid-request', `disk image ${what}: cannot read ${length} bytes into a ${buffer.length}-byte buffer`, { details: { path: what } });
  }
}

/** A raw file or block device read as an image: the disk source, range-checked, plus a zero map. */
class RawImageReader implements DiskImageReader {
  readonly format = 'raw' as const;
  readonly subformat = 'raw';
  private closed = false;

  constructor(private readonly source: DiskSource) {}

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

  extents(): AsyncIterable<DiskExtent> {
    return scanZeroExtents(this);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.source.close();
  }
}

/**
 * Opens a raw image file or a block device for reading as format 'raw', subformat 'raw'. Its size is the
 * file's (or device's) size; `extents()` reads the disk to find its 1 MiB-aligned zero ranges. Throws
 * FerryError 'disk-unreadable' when the path is missing, unreadable or neither a file nor a block device.
 */
export async function openRawImage(imagePath: string): Promise<DiskImageReader> {
  return new RawImageReader(await openRawDisk(imagePath));
}

/**
 * Raw has no signature: any file is a raw disk. Returns false always, so the registry (formats.ts) opens
 * a file as raw only when no other format recognises it.
 */
export function sniffRaw(_head: Buffer, _fileSize: number): boolean {
  return false;
}

/** Throws the signal's reason (an Error) or a FerryError when `signal` has been aborted. */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw signal.reason instanceof Error ? signal.reason : new FerryError('conflict', 'the disk image write was aborted');
}

/**
 * Creates `imagePath` atomically: `fill` writes the image into a new temporary file in the same
 * directory, which is then fsynced, renamed to `imagePath` (replacing what was there) and the directory
 * fsynced. On any failure or abort (checked once `fill` returns) the temporary file is removed and
 * `imagePath` is left as it was. FerryErrors and the signal's reason propagate as they are; other
 * failures become FerryError 'io-error' naming the path. Resolves with the image's size in bytes.
 */
export async function writeImageFileAtomically(imagePath: string, signal: AbortSignal | undefined, fill: (handle: fs.FileHandle) => Promise<void>): Promise<number> {
  throwIfAborted(signal);
  const directory = path.dirname(imagePath);
  const temporaryPath = path.join(directory, `.${path.basename(imagePath)}.${randomBytes(6).toString('hex')}.tmp`);
  let handle: fs.FileHandle;
  try {
    handle = await fs.open(temporaryPath, 'wx', 0o644);
  } catch (error) {
    throw writeFailure(imagePath, error);
  }
  let closed = false;
  let renamed = false;
  try {
    await fill(handle);
    throwIfAborted(signal);
    await handle.sync();
    closed = true;
    await handle.close();
    await fs.rename(temporaryPath, imagePath);
    renamed = true;
    await fsyncDirectory(directory);
    return (await fs.stat(imagePath)).size;
  } catch (error) {
    if (!closed) await handle.close().catch(() => undefined);
    if (!renamed) await fs.rm(temporaryPath, { force: true }).catch(() => undefined);
    if (error instanceof FerryError || (signal?.aborted && error === signal.reason)) throw error;
    throw writeFailure(imagePath, error);
  }
}

function writeFailure(imagePath: string, error: unknown): FerryError {
  const reason = (error as NodeJS.ErrnoException).code ?? (error as Error).message;
  return new FerryError('io-error', `disk image ${imagePath} cannot be written (${reason})`, { cause: error, details: { path: imagePath } });
}

/**
 * Writes the non-zero parts of `data` at `position` of `handle`, skipping every 4 KiB-aligned (relative
 * to the file) run that holds only zeros, so a file written over a hole keeps the hole there.
 */
export async function writeNonZeroRuns(handle: fs.FileHandle, data: Buffer, position: number): Promise<void> {
  let runStart = -1; // index in `data` where the current run of non-zero pieces starts
  for (let index = 0; index < data.length; ) {
    const next = Math.min(data.length, (Math.floor((position + index) / WRITE_ZERO_GRANULARITY) + 1) * WRITE_ZERO_GRANULARITY - position);
    const zero = isAllZero(data.subarray(index, next));
    if (zero && runStart >= 0) {
      await writeAllAt(handle, [data.subarray(runStart, index)], position + runStart);
      runStart = -1;
    } else if (!zero && runStart < 0) runStart = index;
    index = next;
  }
  if (runStart >= 0) await writeAllAt(handle, [data.subarray(runStart)], position + runStart);
}

/**
 * Checks an input's size and walks its pieces, checking each is within [0, size) and after the previous
 * one (FerryError 'invalid-request' otherwise), checking `signal` before each, and reporting progress
 * after each. Yields the pieces unchanged.
 */
export async function* checkedPieces(imagePath: string, input: DiskImageInput, options: Pick<DiskImageWriteOptions, 'signal' | 'onProgress'>): AsyncGenerator<{ offset: number; data: Buffer }> {
  if (!Number.isSafeInteger(input.size) || input.size < 0) {
    throw new FerryError('invalid-request', `disk image ${imagePath}: invalid disk size ${input.size}`, { details: { path: imagePath } });
  }
  let next = 0;
  for await (const piece of input.pieces()) {
    throwIfAborted(options.signal);
    if (!Number.isSafeInteger(piece.offset) || piece.offset < next || piece.offset + piece.data.length > input.size) {
      throw new FerryError('invalid-request', `disk image ${imagePath}: a piece of ${piece.data.length} bytes at ${piece.offset} is out of order or past the disk's ${input.size} bytes`, { details: { path: imagePath } });
    }
    yield piece;
    next = piece.offset + piece.data.length;
    options.onProgress?.(next);
  }
  throwIfAborted(options.signal);
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
  return writeImageFileAtomically(imagePath, options.signal, async (handle) => {
    for await (const piece of checkedPieces(imagePath, input, options)) await writeNonZeroRuns(handle, piece.data, piece.offset);
    await handle.truncate(input.size);
    options.onProgress?.(input.size);
  });
}

/** The raw writer: subformat 'raw' only (see `writeRawImage`). */
export const rawImageWriter: DiskImageWriter = { format: 'raw', subformats: ['raw'], write: writeRawImage };

/** The raw format: never sniffed (it is the registry's fallback), opened by `openRawImage`, written by `writeRawImage`. */
export const rawImageFormat: DiskImageFormatModule = { format: 'raw', sniff: sniffRaw, open: openRawImage, writer: rawImageWriter };
