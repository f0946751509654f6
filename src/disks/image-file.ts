/**
 * What every disk image format module (raw-image.ts, vhd.ts, vhdx.ts, vmdk.ts, qcow2.ts; and ova.ts for
 * its archive) shares about the image file itself, so each module holds only its format:
 * - errors: `corruptImage` and `unreadableImage` ("disk image <path>: <problem>"), `ioErrorReason`;
 * - reading: `readExactly` / `readBytes` (exactly N bytes at an offset, 'corrupt-data' naming the file
 *   when it ends early) and `checkReadRange` (a reader's range check: 'invalid-request' past the end);
 * - extents: `ExtentMerger` (adjacent ranges of one kind merged, as `DiskImageReader.extents` promises);
 * - writing: `checkedPieces` (the input's pieces checked to ascend within the disk, the abort signal
 *   checked and progress reported between them), `throwIfAborted`, and `writeImageFileAtomically` (a
 *   temporary file in the target's directory written through an `ImageFileWriter` (image-writer.ts),
 *   fsynced, renamed, the directory fsynced; removed on failure).
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { FerryError } from '../errors.js';
import { fsyncDirectory } from '../util/durable-fs.js';
import type { DiskExtent, DiskImageInput, DiskImageWriteOptions } from './disk-image.js';
import { DirectWriter } from './direct-io.js';
import { ImageFileWriter } from './image-writer.js';

/** What an I/O error says went wrong, for messages: its errno code (ENOENT, EIO...), else its message. */
export function ioErrorReason(error: unknown): string {
  return (error as NodeJS.ErrnoException).code ?? (error as Error).message;
}

/** FerryError 'corrupt-data': "disk image <imagePath>: <problem>", with the path in its details. */
export function corruptImage(imagePath: string, problem: string, cause?: unknown): FerryError {
  return new FerryError('corrupt-data', `disk image ${imagePath}: ${problem}`, { details: { path: imagePath }, ...(cause === undefined ? {} : { cause }) });
}

/** FerryError 'disk-unreadable': "disk image <imagePath>: <problem>", with the path (and `details`) in its details. */
export function unreadableImage(imagePath: string, problem: string, cause?: unknown, details: Record<string, unknown> = {}): FerryError {
  return new FerryError('disk-unreadable', `disk image ${imagePath}: ${problem}`, { cause, details: { path: imagePath, ...details } });
}

/**
 * Reads exactly `length` bytes at `position` of the file into target[targetOffset, targetOffset + length).
 * Throws `unreadableImage` ("cannot be read (<reason>)") on an I/O error, and `corruptImage` with
 * `endsEarly(endsAt)` as the problem when the file ends first (`endsAt`: the file offset where it ended);
 * each format words that its own way (e.g. what structure the file ends inside).
 */
export async function readExactly(handle: fs.FileHandle, imagePath: string, target: Buffer, targetOffset: number, length: number, position: number, endsEarly: (endsAt: number) => string): Promise<void> {
  let filled = 0;
  while (filled < length) {
    let bytesRead: number;
    try {
      ({ bytesRead } = await handle.read(target, targetOffset + filled, length - filled, position + filled));
    } catch (error) {
      throw unreadableImage(imagePath, `cannot be read (${ioErrorReason(error)})`, error);
    }
    if (bytesRead === 0) throw corruptImage(imagePath, endsEarly(position + filled));
    filled += bytesRead;
  }
}

/** `readExactly` into a new buffer of `length` bytes, which it resolves with. */
export async function readBytes(handle: fs.FileHandle, imagePath: string, length: number, position: number, endsEarly: (endsAt: number) => string): Promise<Buffer> {
  const buffer = Buffer.alloc(length);
  await readExactly(handle, imagePath, buffer, 0, length, position, endsEarly);
  return buffer;
}

/**
 * A reader's check of `read(buffer, length, offset)`: throws FerryError 'invalid-request' unless
 * [offset, offset + length) is a range of a disk of `size` bytes that fits in `buffer`; `what` names the
 * disk in the message.
 */
export function checkReadRange(what: string, size: number, buffer: Buffer, length: number, offset: number): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > size) {
    throw new FerryError('invalid-request', `disk image ${what}: cannot read ${length} bytes at ${offset}: the disk is ${size} bytes`, { details: { path: what } });
  }
  if (length > buffer.length) {
    throw new FerryError('invalid-request', `disk image ${what}: cannot read ${length} bytes into a ${buffer.length}-byte buffer`, { details: { path: what } });
  }
}

/**
 * Merges ranges added in ascending order into extents: a range of the same kind that starts where the
 * pending one ends extends it; anything else yields the pending extent first. Empty ranges are ignored.
 */
export class ExtentMerger {
  private pending: DiskExtent | null = null;

  /** Adds [offset, offset + length) of `kind`; yields the extent this completes, if any. */
  *add(offset: number, length: number, kind: DiskExtent['kind']): Generator<DiskExtent> {
    if (length <= 0) return;
    if (this.pending && this.pending.kind === kind && this.pending.offset + this.pending.length === offset) {
      this.pending.length += length;
      return;
    }
    if (this.pending) yield this.pending;
    this.pending = { offset, length, kind };
  }

  /** Yields the pending extent, if any; the merger is then empty. */
  *finish(): Generator<DiskExtent> {
    if (this.pending) yield this.pending;
    this.pending = null;
  }
}

/** Throws the signal's reason (when an Error) or FerryError 'conflict' when `signal` has been aborted. */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw signal.reason instanceof Error ? signal.reason : new FerryError('conflict', 'the disk image write was aborted');
}

/**
 * What every writer does with its input: checks the input's size (FerryError 'invalid-request' unless a
 * safe integer ≥ 0) and walks its pieces, checking each is within [0, size) and after the previous one
 * ('invalid-request' otherwise, "disk image <what>: ... out of order or past ..."), checking `signal`
 * before each and once more after the last, and reporting progress (the end of each piece once the
 * caller has taken it, then `input.size` when the input is all consumed). Yields the pieces unchanged.
 */
export async function* checkedPieces(what: string, input: DiskImageInput, options: Pick<DiskImageWriteOptions, 'signal' | 'onProgress'>): AsyncGenerator<{ offset: number; data: Buffer }> {
  if (!Number.isSafeInteger(input.size) || input.size < 0) {
    throw new FerryError('invalid-request', `disk image ${what}: invalid disk size ${input.size}`, { details: { path: what } });
  }
  let next = 0;
  for await (const piece of input.pieces()) {
    throwIfAborted(options.signal);
    if (!Number.isSafeInteger(piece.offset) || piece.offset < next || piece.offset + piece.data.length > input.size) {
      throw new FerryError('invalid-request', `disk image ${what}: a piece of ${piece.data.length} bytes at ${piece.offset} is out of order or past the disk's ${input.size} bytes`, { details: { path: what } });
    }
    yield piece;
    next = piece.offset + piece.data.length;
    options.onProgress?.(next);
  }
  throwIfAborted(options.signal);
  options.onProgress?.(input.size);
}

/**
 * Creates `filePath` atomically: `fill` writes the file into a new temporary file in the same directory
 * (".<name>.<random>.tmp"), through the handle or the `ImageFileWriter` over it it is given (whose queued
 * writes are flushed once `fill` returns), which is then fsynced once (covering what went
 * around the page cache too: see direct-io.ts), renamed to `filePath` (replacing what was there) and
 * the directory fsynced. The signal is checked before anything is created and once `fill` returns. On
 * any failure or abort the temporary file is removed and `filePath` is left as it was. FerryErrors and
 * the signal's reason propagate as they are; other failures become FerryError 'io-error'
 * "<noun> <filePath> cannot be written (<reason>)" (`noun`: 'disk image', or e.g. 'OVA'). Resolves with
 * the file's size in bytes.
 */
export async function writeImageFileAtomically(filePath: string, signal: AbortSignal | undefined, fill: (handle: fs.FileHandle, writer: ImageFileWriter) => Promise<void>, noun = 'disk image'): Promise<number> {
  throwIfAborted(signal);
  const writeFailure = (error: unknown) => new FerryError('io-error', `${noun} ${filePath} cannot be written (${ioErrorReason(error)})`, { cause: error, details: { path: filePath } });
  const directory = path.dirname(filePath);
  const temporaryPath = path.join(directory, `.${path.basename(filePath)}.${randomBytes(6).toString('hex')}.tmp`);
  let handle: fs.FileHandle;
  try {
    handle = await fs.open(temporaryPath, 'wx', 0o644);
  } catch (error) {
    throw writeFailure(error);
  }
  const direct = await DirectWriter.open(handle, temporaryPath);
  const writer = new ImageFileWriter(handle, { direct });
  let closed = false;
  let renamed = false;
  try {
    await fill(handle, writer);
    await writer.flush();
    await direct.close();
    throwIfAborted(signal);
    await handle.sync();
    closed = true;
    await handle.close();
    await fs.rename(temporaryPath, filePath);
    renamed = true;
    await fsyncDirectory(directory);
    return (await fs.stat(filePath)).size;
  } catch (error) {
    await writer.settle(); // no write may still run when the file is closed and removed
    await direct.close().catch(() => undefined);
    if (!closed) await handle.close().catch(() => undefined);
    if (!renamed) await fs.rm(temporaryPath, { force: true }).catch(() => undefined);
    if (error instanceof FerryError || (signal?.aborted && error === signal.reason)) throw error;
    throw writeFailure(error);
  }
}
