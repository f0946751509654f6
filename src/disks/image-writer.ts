/**
 * Writing image files at I/O speed: what every format's writer (raw, VHD, VHDX, VMDK, qcow2, and the
 * OVA around a VMDK) uses for its data instead of one awaited `pwrite` per cluster or run.
 *
 * - `ImageFileWriter` takes positional writes and gathers those that continue one another into one
 *   large `pwrite` (up to `writeBytes`, 8 MiB by default), keeping a few of them in flight at once while
 *   the caller prepares the next data; it can skip all-zero 4 KiB blocks so they stay holes in the file
 *   (as qemu-img does). It gathers into a few buffers of its own, reused, so the caller's buffers are
 *   free again at once (see `DiskImageInput`: an input may reuse its buffers).
 * - `isZero` and `nonZeroRuns` find zeros by comparing against a zero buffer (memcmp), never byte loops.
 * - `wholeBlocks` turns a writer's input pieces into the disk's fixed-size blocks (clusters, grains,
 *   VHD(X) blocks) that hold data, without copying when a piece covers a whole block.
 *
 * `writeImageFileAtomically` (image-file.ts) gives each writer an `ImageFileWriter` and flushes it before
 * the one fsync, so data and the metadata written after it are durable before the image is renamed into
 * place.
 */
import type { promises as fs } from 'node:fs';
import { writeAllAt } from '../util/durable-fs.js';
import { alignedBuffer, DIRECT_ALIGNMENT, type DirectWriter } from './direct-io.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** What writers skip as a hole: a file system block. */
export const ZERO_BLOCK_BYTES = 4 * KiB;

const zeros = Buffer.alloc(64 * KiB);

/** True when data[start, end) holds only zero bytes (compared against a zero buffer: memcmp speed, no allocation). */
export function isZero(data: Uint8Array, start = 0, end = data.length): boolean {
  for (let at = start; at < end; at += zeros.length) {
    const stop = Math.min(end, at + zeros.length);
    if (zeros.compare(data, at, stop, 0, stop - at) !== 0) return false;
  }
  return true;
}

/**
 * The runs of `data` (which lies at `position` of a disk or file) that hold data, as [start, end) indexes
 * into `data`: `data` is cut at multiples of `granularity` counted from the start of the disk, every piece
 * that is all zero is left out, and adjacent pieces that are not are merged. Ascending.
 */
export function* nonZeroRuns(data: Uint8Array, position: number, granularity: number): Generator<{ start: number; end: number }> {
  let runStart = -1;
  for (let index = 0; index < data.length; ) {
    const next = Math.min(data.length, (Math.floor((position + index) / granularity) + 1) * granularity - position);
    const zero = isZero(data, index, next);
    if (zero && runStart >= 0) {
      yield { start: runStart, end: index };
      runStart = -1;
    } else if (!zero && runStart < 0) runStart = index;
    index = next;
  }
  if (runStart >= 0) yield { start: runStart, end: data.length };
}

/**
 * The blocks of `blockBytes` bytes (block i covers [i * blockBytes, (i + 1) * blockBytes) of the disk)
 * that hold data, from ascending, non-overlapping `pieces` (what no piece covers is zero), in ascending
 * order. Each block's buffer is `blockBytes` long: a view of the piece when one piece covers the whole
 * block (valid as long as the piece is: until the next block is asked for), else a new buffer the pieces
 * are copied into (zeros elsewhere, and past the disk's end). All-zero blocks are left out.
 */
export async function* wholeBlocks(pieces: AsyncIterable<{ offset: number; data: Buffer }>, blockBytes: number): AsyncGenerator<{ index: number; data: Buffer }> {
  let assembling: { index: number; data: Buffer } | null = null; // a block that pieces fill in part
  for await (const { offset, data } of pieces) {
    let done = 0;
    while (done < data.length) {
      const position = offset + done;
      const index = Math.floor(position / blockBytes);
      const within = position - index * blockBytes;
      const count = Math.min(blockBytes - within, data.length - done);
      if (assembling && assembling.index !== index) {
        yield assembling;
        assembling = null;
      }
      if (!isZero(data, done, done + count)) {
        if (count === blockBytes) yield { index, data: data.subarray(done, done + count) };
        else {
          assembling ??= { index, data: Buffer.alloc(blockBytes) };
          data.copy(assembling.data, within, done, done + count);
        }
      }
      done += count;
    }
  }
  if (assembling) yield assembling;
}

/** Options of an `ImageFileWriter`. */
export interface ImageFileWriterOptions {
  /** Adjacent writes are gathered up to this many bytes (a multiple of 4 KiB) before one `pwrite`. Default 8 MiB. */
  writeBytes?: number;
  /** At most this many `pwrite`s run at once; `write` waits for one to end beyond. Default 4. */
  writesInFlight?: number;
  /**
   * The same file as a `DirectWriter` (direct-io.ts), or null: the whole 4 KiB blocks of gathered writes
   * at multiples of 4 KiB go around the page cache; the rest, and all without one, through `handle`.
   */
  direct?: DirectWriter | null;
}

/**
 * Positional writes to one open file, coalesced and pipelined. Contract:
 * - `write(position, data)` copies `data` (the caller may reuse it once `write` resolves) into one of
 *   the writer's buffers and queues it at `position`: it is on its way to the file by the time `flush()`
 *   resolves, not necessarily before `write` resolves. Writes continuing one another (each at the end of
 *   the previous one) share a buffer, written with one system call; queued writes must not overlap each
 *   other (their order on disk is not guaranteed).
 * - `writeNonZero` queues only the runs of `data` that are not all zero at 4 KiB granularity (relative to
 *   the file), so writing over a hole keeps zeros a hole.
 * - Memory: up to `writesInFlight + 1` buffers of `writeBytes`, page-aligned (for O_DIRECT), each made
 *   when no made one is free (so the first write waits for one buffer's page faults, not all of them)
 *   and reused (fresh memory for every write would cost a page fault per 4 KiB written).
 * - With a `direct` writer, aligned writes bypass the page cache (see direct-io.ts); a file system that
 *   turns them down (EINVAL) gets every later write through the ordinary handle.
 * - A failed write fails the next `write`, `writeNonZero` or `flush` with the system error as it is (the
 *   caller names the file: see writeImageFileAtomically); `settle()` waits for everything in flight to end
 *   without throwing, for error paths that close the file.
 */
export class ImageFileWriter {
  private readonly writeBytes: number;
  private readonly writesInFlight: number;
  private readonly direct: DirectWriter | null;
  /** The buffer being filled: its bytes go to [position, position + filled) of the file. */
  private gathering: { position: number; buffer: Buffer; filled: number } | null = null;
  /** Buffers made and not in use. */
  private readonly spare: Buffer[] = [];
  private readonly inFlight = new Set<Promise<void>>();
  private failure: { error: unknown } | null = null;

  constructor(
    private readonly handle: fs.FileHandle,
    options: ImageFileWriterOptions = {},
  ) {
    this.writeBytes = Math.ceil((options.writeBytes ?? 8 * MiB) / DIRECT_ALIGNMENT) * DIRECT_ALIGNMENT;
    this.writesInFlight = Math.max(1, options.writesInFlight ?? 4);
    this.direct = options.direct ?? null;
  }

  /** Copies `data` and queues it at `position` (see the class's contract). */
  async write(position: number, data: Uint8Array): Promise<void> {
    this.throwIfFailed();
    for (let done = 0; done < data.length; ) {
      const at = position + done;
      let gathering = this.gathering;
      if (!gathering || gathering.position + gathering.filled !== at || gathering.filled === gathering.buffer.length) {
        await this.submit();
        gathering = this.gathering = { position: at, buffer: this.takeBuffer(), filled: 0 };
      }
      const count = Math.min(data.length - done, gathering.buffer.length - gathering.filled);
      gathering.buffer.set(data.subarray(done, done + count), gathering.filled);
      gathering.filled += count;
      done += count;
    }
  }

  /** Queues the 4 KiB-aligned runs of `data` that are not all zero; all-zero blocks are skipped (holes). */
  async writeNonZero(position: number, data: Buffer): Promise<void> {
    for (const run of nonZeroRuns(data, position, ZERO_BLOCK_BYTES)) await this.write(position + run.start, data.subarray(run.start, run.end));
  }

  /** Writes everything queued and waits for it; throws the first write failure. */
  async flush(): Promise<void> {
    await this.submit();
    await Promise.all(this.inFlight);
    this.throwIfFailed();
  }

  /** Waits for the writes in flight to end, failed or not; what is only gathered is dropped. Never throws. */
  async settle(): Promise<void> {
    this.gathering = null;
    await Promise.all(this.inFlight);
  }

  /**
   * A spare buffer, else a new one. Called only once `submit` has returned, when at most
   * `writesInFlight` buffers are in flight and none is gathering: a new one is made only while fewer
   * than writesInFlight + 1 exist.
   */
  private takeBuffer(): Buffer {
    return this.spare.pop() ?? alignedBuffer(this.writeBytes);
  }

  /** Starts writing what is gathered once fewer than `writesInFlight` writes run (the buffer is spare again once written). */
  private async submit(): Promise<void> {
    const gathering = this.gathering;
    if (!gathering) return;
    this.gathering = null;
    if (gathering.filled === 0) {
      this.spare.push(gathering.buffer);
      return;
    }
    while (this.inFlight.size >= this.writesInFlight) await Promise.race(this.inFlight);
    const write: Promise<void> = this.writeOut(gathering.buffer.subarray(0, gathering.filled), gathering.position)
      .catch((error: unknown) => {
        this.failure ??= { error };
      })
      .finally(() => {
        // Done with the buffer either way: a buffer is always spare, in flight or being filled.
        this.inFlight.delete(write);
        this.spare.push(gathering.buffer);
      });
    this.inFlight.add(write);
  }

  /** Writes `bytes` at `position`: through the DirectWriter when there is one (direct when aligned), else through the page cache. */
  private async writeOut(bytes: Buffer, position: number): Promise<void> {
    if (this.direct) await this.direct.write(bytes, position);
    else await writeAllAt(this.handle, [bytes], position);
  }

  private throwIfFailed(): void {
    if (this.failure) throw this.failure.error;
  }
}
