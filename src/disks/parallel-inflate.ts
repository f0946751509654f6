/**
 * Reading many stored units of an image file at once, as a large read of a compressed image needs
 * them: the compressed clusters of a qcow2 image (and the plain clusters between them), the grains of a
 * streamOptimized VMDK. Instead of one read and one inflation on the event loop per unit:
 * - units lying near one another in the file are fetched with one large read (`GROUP_BYTES` at most),
 *   the next group read while the last one's units are decoded;
 * - compressed units are inflated in batches by a pool of worker threads (inflate-worker.ts), through
 *   reused shared buffers, a few batches at once, so the event loop only reads and copies bytes. A read
 *   of only a few units inflates them on the spot, as starting workers would cost more.
 * Memory: about two groups of stored bytes and `BATCHES_IN_FLIGHT` batches, whatever the number of units.
 *
 * zlib's own async API (libuv's thread pool) was measured first: its per-call stream machinery kept the
 * event loop about 80 % busy for 64 KiB units, which made the event loop the bottleneck.
 */
import os from 'node:os';
import zlib from 'node:zlib';
import { SharedBufferCache, siblingWorkerPath, WorkerPool } from '../util/worker-pool.js';
import type { InflateBatchRequest, InflateBatchResult } from './inflate-worker.js';

/** Where a unit's stored bytes lie in the file: `length` bytes from `position` (the format may use fewer of them). */
export interface StoredUnit {
  position: number;
  length: number;
}

/**
 * How a unit is compressed: a raw deflate stream (RFC 1951, qcow2), a zlib stream (RFC 1950, VMDK), or
 * either, told apart by the zlib header (VMware and qemu write zlib streams; some tools bare deflate).
 */
export type Compression = 'deflate' | 'zlib' | 'zlib-or-deflate';

/** A unit's compressed bytes, to be inflated to at most `maxLength` bytes. */
export interface CompressedBytes {
  compression: Compression;
  data: Buffer;
  maxLength: number;
}

/** What inflating a unit gave: its bytes, or why it failed (`tooLarge`: it inflates to more than `maxLength`). */
export type Inflated = { data: Buffer } | { failure: string; tooLarge: boolean };

/** Units whose stored bytes lie this close to each other are fetched with one read. */
const GAP_BYTES = 64 * 1024;
/** A group's read covers at most this many bytes (a single larger unit is read alone). */
const GROUP_BYTES = 4 * 1024 * 1024;
/** Inflated bytes per batch sent to a worker (a batch holds at least one unit). */
const BATCH_OUTPUT_BYTES = 2 * 1024 * 1024;
/** Below this many units, a read inflates on the event loop: a worker round trip would cost more. */
const POOL_MIN_UNITS = 4;

/** Inflates `compressed` now, on this thread: what the workers run for each unit. */
export function inflateNow(compressed: CompressedBytes): Inflated {
  const { data, maxLength } = compressed;
  const zlibWrapped = compressed.compression === 'zlib' || (compressed.compression === 'zlib-or-deflate' && data.length >= 2 && (data[0]! & 0x0f) === 8 && (data[0]! * 256 + data[1]!) % 31 === 0);
  try {
    return { data: zlibWrapped ? zlib.inflateSync(data, { maxOutputLength: maxLength }) : zlib.inflateRawSync(data, { maxOutputLength: maxLength }) };
  } catch (error) {
    return { failure: (error as Error).message, tooLarge: (error as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE' };
  }
}

/**
 * Fetches and decodes `units`. Contract:
 * - `read(target, position)` fills `target` exactly with the file's bytes from `position` (throwing the
 *   format's own error when the file ends first); it is called once per group of nearby units;
 * - `decode(unit, stored)` gets a view of the unit's `length` stored bytes (valid during the call only)
 *   and returns either the unit's bytes (a plain unit: `stored` itself, or anything the format decodes on
 *   the spot) or its `CompressedBytes` to inflate; `deliver(unit, inflated)` then places the result, a
 *   view valid during the call only (and turns a failure into the format's error). Units complete in
 *   any order;
 * - the first failure of `read`, `decode` or `deliver` (or of the worker pool) stops starting new work and
 *   rejects once nothing started is still running, with that failure as it is (so the format's error,
 *   naming the file and the unit, reaches the caller).
 */
export async function inflateUnits<U extends StoredUnit>(
  units: readonly U[],
  read: (target: Buffer, position: number) => Promise<void>,
  decode: (unit: U, stored: Buffer) => Buffer | CompressedBytes,
  deliver: (unit: U, inflated: Inflated) => void,
): Promise<void> {
  const groups = groupByPosition(units);
  const run = new InflationRun(units.length >= POOL_MIN_UNITS ? sharedInflatePool() : null, deliver);
  const fetch = (group: UnitGroup<U>): Promise<Buffer | null> => {
    const target = groupBuffers.take(group.end - group.position);
    return read(target, group.position).then(
      () => target,
      (error: unknown) => {
        groupBuffers.give(target);
        run.fail(error);
        return null;
      },
    );
  };
  let next = groups.length > 0 ? fetch(groups[0]!) : null;
  for (let index = 0; index < groups.length && !run.failed; index++) {
    const stored = await next!;
    next = index + 1 < groups.length && !run.failed ? fetch(groups[index + 1]!) : null;
    if (stored === null) break;
    const group = groups[index]!;
    for (const unit of group.units) {
      const at = unit.position - group.position;
      await run.add(unit, () => decode(unit, stored.subarray(at, at + unit.length)));
      if (run.failed) break;
    }
    groupBuffers.give(stored); // every unit of the group is delivered or copied into a batch
  }
  const last = await next;
  if (last) groupBuffers.give(last);
  await run.finish();
}

/** The units of one `inflateUnits` call on their way: batched, inflated, delivered; the first failure kept. */
class InflationRun<U> {
  private batch: InflateBatch<U> | null = null;
  private readonly inFlight = new Set<Promise<void>>();
  private failure: { error: unknown } | null = null;

  constructor(
    private readonly pool: InflatePool | null,
    private readonly deliver: (unit: U, inflated: Inflated) => void,
  ) {}

  get failed(): boolean {
    return this.failure !== null;
  }

  fail(error: unknown): void {
    this.failure ??= { error };
  }

  /** Decodes a unit: delivers what needs no inflating, copies the rest into a batch (sending full batches off). */
  async add(unit: U, decode: () => Buffer | CompressedBytes): Promise<void> {
    try {
      const decoded = decode();
      if (Buffer.isBuffer(decoded)) return this.deliver(unit, { data: decoded });
      if (!this.pool) return this.deliver(unit, inflateNow(decoded));
      if (this.batch && !this.batch.fits(decoded)) await this.send();
      this.batch ??= this.pool.newBatch(decoded.data.length);
      this.batch.add(unit, decoded);
    } catch (error) {
      this.fail(error);
    }
  }

  /** Sends what is batched, waits for everything in flight, and throws the first failure. */
  async finish(): Promise<void> {
    if (!this.failed) await this.send();
    this.batch?.release();
    this.batch = null;
    await Promise.all(this.inFlight);
    if (this.failure) throw this.failure.error;
  }

  private async send(): Promise<void> {
    const batch = this.batch;
    this.batch = null;
    if (!batch) return;
    while (this.inFlight.size >= this.pool!.batchesInFlight) await Promise.race(this.inFlight);
    if (this.failed) return batch.release();
    const sending: Promise<void> = this.pool!.inflate(batch, (unit, inflated) => {
      if (!this.failed) this.deliver(unit, inflated);
    }).then(
      () => {
        this.inFlight.delete(sending);
      },
      (error: unknown) => {
        this.inFlight.delete(sending);
        this.fail(error);
      },
    );
    this.inFlight.add(sending);
  }
}

/** Compressed units copied back to back into a shared input buffer, for one worker request. */
class InflateBatch<U> {
  readonly units: U[] = [];
  readonly request: InflateBatchRequest;
  /** The shared output, taken when the batch is sent. */
  output: Buffer | null = null;
  private inputBytes = 0;
  private outputBytes = 0;
  private released = false;

  constructor(
    private readonly buffers: SharedBufferCache,
    private readonly input: Buffer,
  ) {
    this.request = { input, at: [], lengths: [], compressions: [], maxLengths: [], output: null, outputAt: [] };
  }

  /** Whether `compressed` may join: an empty batch takes anything. */
  fits(compressed: CompressedBytes): boolean {
    if (this.units.length === 0) return true;
    return this.inputBytes + compressed.data.length <= this.input.length && this.outputBytes + compressed.maxLength <= BATCH_OUTPUT_BYTES;
  }

  add(unit: U, compressed: CompressedBytes): void {
    compressed.data.copy(this.input, this.inputBytes);
    this.units.push(unit);
    this.request.at.push(this.inputBytes);
    this.request.lengths.push(compressed.data.length);
    this.request.compressions.push(compressed.compression);
    this.request.maxLengths.push(compressed.maxLength);
    this.request.outputAt.push(this.outputBytes);
    this.inputBytes += compressed.data.length;
    this.outputBytes += compressed.maxLength;
  }

  /** Bytes the units inflate to at most. */
  get maxOutputBytes(): number {
    return this.outputBytes;
  }

  /** Gives the shared buffers back (the batch is not used any more); a second call does nothing. */
  release(): void {
    if (this.released) return;
    this.released = true;
    this.buffers.give(this.input);
    if (this.output) this.buffers.give(this.output);
    this.output = null;
  }
}

/** Worker threads inflating batches of units through reused shared buffers. */
class InflatePool {
  private readonly workers: WorkerPool<InflateBatchRequest, InflateBatchResult>;
  /** Shared buffers for batches' inputs and outputs, reused. */
  private readonly buffers = new SharedBufferCache(BATCH_OUTPUT_BYTES + 64 * 1024, 32);

  constructor(size: number) {
    this.workers = new WorkerPool(siblingWorkerPath(import.meta.url, 'inflate-worker'), size, 'disk image inflation');
  }

  /** Batches one `inflateUnits` call keeps in flight: enough to keep every worker busy. */
  get batchesInFlight(): number {
    return this.workers.size * 2;
  }

  /** A new batch whose input holds at least `firstUnitBytes`. */
  newBatch<U>(firstUnitBytes: number): InflateBatch<U> {
    return new InflateBatch<U>(this.buffers, this.buffers.take(firstUnitBytes));
  }

  /**
   * Inflates `batch` in a worker, then calls `each` for every unit in order with its outcome (data as a
   * view of the shared output, valid during the call); the batch's buffers are given back after.
   */
  async inflate<U>(batch: InflateBatch<U>, each: (unit: U, inflated: Inflated) => void): Promise<void> {
    try {
      const output = (batch.output = this.buffers.take(batch.maxOutputBytes));
      batch.request.output = output;
      const result = await this.workers.run(batch.request);
      batch.units.forEach((unit, index) => {
        const length = result.lengths[index]!;
        const at = batch.request.outputAt[index]!;
        each(unit, length < 0 ? { failure: result.failures[index] ?? 'unknown failure', tooLarge: result.tooLarge[index] ?? false } : { data: output.subarray(at, at + length) });
      });
    } finally {
      batch.release();
    }
  }
}

let pool: InflatePool | null = null;

/** The process's inflation pool, started on first use: one worker per core, at most four. Idle, it does not keep the process alive. */
function sharedInflatePool(): InflatePool {
  pool ??= new InflatePool(Math.min(4, Math.max(1, os.availableParallelism())));
  return pool;
}

/** Read buffers of groups (GROUP_BYTES), reused: fresh memory for every read would cost a page fault per 4 KiB. */
class GroupBuffers {
  private readonly spare: Buffer[] = [];

  take(length: number): Buffer {
    if (length > GROUP_BYTES) return Buffer.allocUnsafe(length);
    return (this.spare.pop() ?? Buffer.allocUnsafe(GROUP_BYTES)).subarray(0, length);
  }

  give(buffer: Buffer): void {
    if (buffer.buffer.byteLength === GROUP_BYTES && this.spare.length < 8) this.spare.push(Buffer.from(buffer.buffer, buffer.byteOffset, GROUP_BYTES));
  }
}

const groupBuffers = new GroupBuffers();

interface UnitGroup<U> {
  position: number;
  end: number;
  units: U[];
}

/** Units in file order, gathered into groups a read each (units may overlap: a length can be a bound). */
function groupByPosition<U extends StoredUnit>(units: readonly U[]): UnitGroup<U>[] {
  const sorted = [...units].sort((a, b) => a.position - b.position);
  const groups: UnitGroup<U>[] = [];
  for (const unit of sorted) {
    const end = unit.position + unit.length;
    const last = groups[groups.length - 1];
    if (last && unit.position <= last.end + GAP_BYTES && Math.max(last.end, end) - last.position <= GROUP_BYTES) {
      last.units.push(unit);
      last.end = Math.max(last.end, end);
    } else groups.push({ position: unit.position, end, units: [unit] });
  }
  return groups;
}
