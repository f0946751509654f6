/**
 * Applying a recovery point to a machine's own disks (reprotect and failback): the agent makes each disk
 * equal to the point's disk, reading the disk it has, comparing every chunk with the point's index and
 * fetching from the server only the chunks that differ. A disk that already matches costs one read and
 * no transfer; zero chunks are written as zeros without being fetched.
 *
 * `applyDiskImage` is the core, over one file or block device and an injected chunk fetcher; it checks
 * every fetched chunk's SHA-256 against its name before writing it, so whatever the fetcher, nothing
 * unverified reaches the disk. `applyPointJob` runs an `apply-point` job: the point's indexes and chunks
 * come from the server (/agent/jobs/:id/...), progress goes back to it, and the agent forgets what it
 * remembered of each disk, which no longer describes it.
 */
import { constants as fsConstants, promises as fs } from 'node:fs';
import path from 'node:path';
import { type ApiClient, withRetry } from '../client/api-client.js';
import { FerryError } from '../errors.js';
import { decodeChunkBatch } from '../protocol/chunk-batch.js';
import type { ApplyCompleteRequest } from '../protocol/requests.js';
import type { ApplyPointJob, JobView } from '../protocol/views.js';
import { hashChunk, isAllZero } from '../store/chunking.js';
import { DiskIndex } from '../store/disk-index.js';
import { probeDiskSize } from '../disks/disk-source.js';
import { sniffDiskFormat } from '../disks/formats.js';
import { ensureDirectory, fsyncDirectory, writeAllAt } from '../util/durable-fs.js';
import type { Logger } from '../util/logger.js';
import type { AgentState } from './agent-state.js';

/** Chunks compared per window (4 MiB at 64 KiB chunks), within WINDOW_MAX_BYTES. */
const WINDOW_CHUNKS = 64;
/** Most bytes a window may span, so memory stays bounded whatever the chunk size (one chunk at least). */
const WINDOW_MAX_BYTES = 16 * 1024 * 1024;
/** Windows being fetched and written while the next is read and compared: keeps disk and network busy at once. */
const WINDOWS_IN_FLIGHT = 2;
/** Most chunk bytes one fetch asks for (the server's answer holds them all at once). */
const FETCH_MAX_BYTES = 32 * 1024 * 1024;
/** Most hashes one fetch may name (the server's limit for /agent/jobs/:id/chunks/read). */
const FETCH_MAX_CHUNKS = 1024;
/** How long one request may keep failing (server restarting, network down) before the job gives up; as replicator.ts. */
const REQUEST_DEADLINE_MS = 10 * 60_000;
/** A chunk read carries up to FETCH_MAX_BYTES: give slow links longer than the client's default. */
const CHUNK_READ_TIMEOUT_MS = 180_000;
/** Progress is reported at most this often. */
const PROGRESS_INTERVAL_MS = 250;

/** One fetched chunk: its bytes, and what it cost on the wire (its framed length: raw or compressed). */
export interface FetchedChunk {
  data: Buffer;
  wireBytes: number;
}

/**
 * Fetches chunks by name (lowercase hex SHA-256, distinct, none the zero hash, at most 1024): resolves
 * to one entry per name, in the order asked. The bytes need not be verified by the fetcher:
 * `applyDiskImage` checks every chunk's hash and length before writing it.
 */
export type FetchChunks = (hashHexes: string[]) => Promise<FetchedChunk[]>;

/** What `applyDiskImage` needs: the target, what it must become, and where the missing chunks come from. */
export interface ApplyDiskImageOptions {
  /** A regular file (created with its parent directory if missing) or a block device. */
  path: string;
  /** The point's disk: its size, chunk size and the hash of every chunk. */
  index: DiskIndex;
  fetchChunks: FetchChunks;
  /** Called after each window with the bytes of the disk compared (and written where they differed) so far. */
  onProgress?: (doneBytes: number) => void;
  /** Stops the work between windows; the promise then rejects with the signal's reason. */
  signal?: AbortSignal;
}

/** What applying a point to one disk did. */
export interface DiskApplyResult {
  /** Bytes of the chunks that differed and were written (zero chunks written as zeros included). */
  changedBytes: number;
  /** Chunk payload bytes received from the fetcher, as framed on the wire (raw or compressed). */
  receivedBytes: number;
  /** Chunks written (fetched or zeroed). */
  chunksWritten: number;
  /** Chunks compared: every chunk of the index. */
  chunksCompared: number;
}

/** A window of the disk read and compared, and what must be written in it. */
interface WindowPlan {
  first: number;
  offset: number;
  /** The window's bytes: read from the target, then patched with what is to be written. */
  buffer: Buffer;
  /** The whole allocation `buffer` is a view of, reused for a later window. */
  allocation: Buffer;
  /** Positions (absolute) whose chunk differs, ascending. */
  differing: number[];
  /** Distinct non-zero hashes to fetch, as hex, and the positions each fills. */
  wanted: Map<string, number[]>;
}

/**
 * Makes the file or block device at `path` equal to the disk `index` describes, writing only the chunks
 * that differ: zero chunks as zeros, the others fetched with `fetchChunks` (each distinct hash once
 * per window) and written only once their SHA-256 matches the index. A regular file is created (mode
 * 0600, with its parent directory) if missing and set to the index's size; a block device must be at
 * least that large (only its first `diskSize` bytes are written). The target is fdatasync'd once at the
 * end, before the result is returned. Memory stays bounded (a few windows of at most 16 MiB).
 *
 * Throws FerryError: invalid-request for a block device smaller than the disk or a target that is
 * neither a regular file nor a block device; chunk-hash-mismatch (not retryable) for a fetched chunk
 * whose bytes do not hash to its name, corrupt-data for one of the wrong length or a fetch answering
 * the wrong number of chunks (nothing of such a chunk is written); io-error for a failed open, read,
 * write or sync. On any failure the target holds a mix of old and new chunks: apply it again.
 */
export async function applyDiskImage(options: ApplyDiskImageOptions): Promise<DiskApplyResult> {
  const { index, signal } = options;
  const target = options.path;
  signal?.throwIfAborted();
  const { handle, created } = await openTarget(target);
  try {
    await fitTarget(handle, target, index.diskSize);
    const result = await compareAndWrite(handle, options);
    await ioStep(target, 'sync', () => handle.datasync());
    // A new file's directory entry must survive a crash as well as its data.
    if (created) await ioStep(target, 'sync the directory of', () => fsyncDirectory(path.dirname(target)));
    return result;
  } finally {
    await handle.close();
  }
}

/** Opens the target read-write, creating it (and its directory) when missing. */
async function openTarget(target: string): Promise<{ handle: fs.FileHandle; created: boolean }> {
  try {
    return { handle: await fs.open(target, fsConstants.O_RDWR), created: false };
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw ioFailure(target, 'open', error);
  }
  try {
    await ensureDirectory(path.dirname(target));
    return { handle: await fs.open(target, fsConstants.O_RDWR | fsConstants.O_CREAT, 0o600), created: true };
  } catch (error) {
    throw ioFailure(target, 'create', error);
  }
}

/** Gives a regular file exactly `diskSize` bytes; checks that a block device holds at least that many. */
async function fitTarget(handle: fs.FileHandle, target: string, diskSize: number): Promise<void> {
  const stat = await ioStep(target, 'stat', () => handle.stat());
  if (stat.isBlockDevice()) {
    const deviceSize = await probeDiskSize(target);
    if (deviceSize < diskSize) {
      throw new FerryError('invalid-request', `block device ${target} holds ${deviceSize} bytes, fewer than the ${diskSize} bytes of the point's disk: give it a device at least that large`, {
        details: { path: target, deviceBytes: deviceSize, diskBytes: diskSize },
      });
    }
    return;
  }
  if (!stat.isFile()) {
    throw new FerryError('invalid-request', `${target} is neither a regular file nor a block device: a point's disk cannot be written to it`, { details: { path: target } });
  }
  // Writing the virtual disk's bytes into a VMDK, VHD(X) or qcow2 file would destroy the image.
  const format = stat.size > 0 ? await sniffDiskFormat(target) : 'raw';
  if (format !== 'raw') {
    throw new FerryError('invalid-request', `${target} is a ${format} image: a point is written back only to raw disks and devices; reprotect with --disk-path to a raw file instead`, { details: { path: target, format } });
  }
  if (stat.size !== diskSize) await ioStep(target, 'resize', () => handle.truncate(diskSize));
}

/** The comparing and writing itself: reads window after window, overlapping each window's fetch and write with the next window's read. */
async function compareAndWrite(handle: fs.FileHandle, options: ApplyDiskImageOptions): Promise<DiskApplyResult> {
  const { index, signal } = options;
  const target = options.path;
  const result: DiskApplyResult = { changedBytes: 0, receivedBytes: 0, chunksWritten: 0, chunksCompared: 0 };
  const windowChunks = Math.max(1, Math.min(WINDOW_CHUNKS, Math.floor(WINDOW_MAX_BYTES / index.chunkSize)));
  const windowBytes = windowChunks * index.chunkSize;
  const fetchMaxChunks = Math.max(1, Math.min(FETCH_MAX_CHUNKS, Math.floor(FETCH_MAX_BYTES / index.chunkSize)));
  const freeBuffers: Buffer[] = [];
  const inFlight: { done: Promise<void>; plan: WindowPlan }[] = [];
  const settle = async () => {
    const { done, plan } = inFlight.shift()!;
    await done;
    freeBuffers.push(plan.allocation);
    options.onProgress?.(Math.min(index.diskSize, plan.offset + plan.buffer.length));
  };
  try {
    for (let first = 0; first < index.chunkCount; first += windowChunks) {
      signal?.throwIfAborted();
      const last = Math.min(first + windowChunks, index.chunkCount);
      const offset = first * index.chunkSize;
      const length = Math.min(index.diskSize - offset, (last - first) * index.chunkSize);
      const allocation = freeBuffers.pop() ?? Buffer.allocUnsafe(windowBytes);
      const buffer = allocation.subarray(0, length);
      const readLength = await readFully(handle, target, buffer, offset);
      const plan = compareWindow(index, first, last, offset, allocation, buffer, readLength);
      result.chunksCompared += last - first;
      const done = writeWindow(handle, plan, { index, target, fetchMaxChunks, fetchChunks: options.fetchChunks, signal, result });
      done.catch(() => undefined); // rethrown where it is awaited, in order
      inFlight.push({ done, plan });
      while (inFlight.length >= WINDOWS_IN_FLIGHT) await settle();
    }
    while (inFlight.length > 0) await settle();
  } finally {
    // Never leave a write running on a handle about to be closed.
    await Promise.allSettled(inFlight.map((window) => window.done));
  }
  return result;
}

/**
 * Compares chunks [first, last) as read into `buffer` with the index. A chunk not read whole (the target
 * ended early) differs whatever it held, so it is written in full.
 */
function compareWindow(index: DiskIndex, first: number, last: number, offset: number, allocation: Buffer, buffer: Buffer, readLength: number): WindowPlan {
  const plan: WindowPlan = { first, offset, buffer, allocation, differing: [], wanted: new Map() };
  for (let position = first; position < last; position++) {
    const start = (position - first) * index.chunkSize;
    const length = index.lengthAt(position);
    const readWhole = start + length <= readLength;
    const local = buffer.subarray(start, start + length);
    if (index.isZeroAt(position)) {
      if (!readWhole || !isAllZero(local)) plan.differing.push(position);
      continue;
    }
    const expected = index.hashAt(position);
    if (readWhole && hashChunk(local).equals(expected)) continue;
    plan.differing.push(position);
    const hex = expected.toString('hex');
    const positions = plan.wanted.get(hex);
    if (positions) positions.push(position);
    else plan.wanted.set(hex, [position]);
  }
  return plan;
}

/**
 * Fetches a window's differing chunks, verifies each, puts them (and zeros) into the window's buffer
 * where they belong, and writes each run of adjacent differing chunks with one positional write.
 */
async function writeWindow(
  handle: fs.FileHandle,
  plan: WindowPlan,
  context: {
    index: DiskIndex;
    target: string;
    fetchMaxChunks: number;
    fetchChunks: FetchChunks;
    signal?: AbortSignal;
    result: DiskApplyResult;
  },
): Promise<void> {
  const { index, target, result } = context;
  if (plan.differing.length === 0) return;
  const place = (position: number, data: Buffer) => data.copy(plan.buffer, (position - plan.first) * index.chunkSize);
  const hashes = [...plan.wanted.keys()];
  for (let start = 0; start < hashes.length; start += context.fetchMaxChunks) {
    const asked = hashes.slice(start, start + context.fetchMaxChunks);
    const fetched = await context.fetchChunks(asked);
    context.signal?.throwIfAborted();
    if (fetched.length !== asked.length) {
      throw new FerryError('corrupt-data', `asked for ${asked.length} chunk(s) of ${target} and received ${fetched.length}: nothing of them written`);
    }
    asked.forEach((hex, at) => {
      const { data, wireBytes } = fetched[at]!;
      result.receivedBytes += wireBytes;
      const positions = plan.wanted.get(hex)!;
      // Verified before any byte of it is placed: an unverified chunk never reaches the disk.
      const actual = hashChunk(data).toString('hex');
      if (actual !== hex) {
        throw new FerryError('chunk-hash-mismatch', `chunk ${hex} fetched for ${target} (chunk ${positions[0]}) hashes to ${actual}: refused, not written`, {
          retryable: false,
          details: { path: target, chunk: hex, actual },
        });
      }
      for (const position of positions) {
        if (data.length !== index.lengthAt(position)) {
          throw new FerryError('corrupt-data', `chunk ${hex} fetched for ${target} is ${data.length} bytes, but chunk ${position} of the point's disk is ${index.lengthAt(position)}: not written`, {
            details: { path: target, chunk: hex },
          });
        }
        place(position, data);
      }
    });
  }
  for (const position of plan.differing) {
    const start = (position - plan.first) * index.chunkSize;
    if (index.isZeroAt(position)) plan.buffer.fill(0, start, start + index.lengthAt(position));
  }

  // Runs of adjacent differing chunks: one write each.
  let runStart = 0;
  for (let at = 1; at <= plan.differing.length; at++) {
    if (at < plan.differing.length && plan.differing[at] === plan.differing[at - 1]! + 1) continue;
    const firstPosition = plan.differing[runStart]!;
    const lastPosition = plan.differing[at - 1]!;
    const from = (firstPosition - plan.first) * index.chunkSize;
    const to = (lastPosition - plan.first) * index.chunkSize + index.lengthAt(lastPosition);
    await ioStep(target, 'write', () => writeAllAt(handle, [plan.buffer.subarray(from, to)], plan.offset + from));
    result.changedBytes += to - from;
    result.chunksWritten += at - runStart;
    runStart = at;
  }
}

/** Reads up to `buffer.length` bytes at `offset`; returns how many there were (fewer only where the target ends). */
async function readFully(handle: fs.FileHandle, target: string, buffer: Buffer, offset: number): Promise<number> {
  let filled = 0;
  while (filled < buffer.length) {
    const { bytesRead } = await ioStep(target, 'read', () => handle.read(buffer, filled, buffer.length - filled, offset + filled));
    if (bytesRead === 0) break;
    filled += bytesRead;
  }
  return filled;
}

/** Runs one file operation on the target, turning its failure into an io-error naming the target. */
async function ioStep<T>(target: string, action: string, operation: () => Promise<T>): Promise<T> {
  try {
    return await operation();
  } catch (error) {
    throw ioFailure(target, action, error);
  }
}

/** Errors a retry cannot fix (permissions, a read-only or full file system, a wrong kind of path) are not retryable. */
const PERMANENT_IO_CODES = new Set(['EACCES', 'EPERM', 'EROFS', 'EISDIR', 'ENOTDIR', 'ENOSPC', 'EDQUOT', 'EFBIG', 'EINVAL']);

function ioFailure(target: string, action: string, error: unknown): FerryError {
  if (error instanceof FerryError) return error;
  const code = (error as NodeJS.ErrnoException).code;
  return new FerryError('io-error', `cannot ${action} ${target} (${code ?? (error as Error).message})`, {
    cause: error,
    retryable: code === undefined || !PERMANENT_IO_CODES.has(code),
    details: { path: target },
  });
}

// --- the job ------------------------------------------------------------------------------------------

/** What an `apply-point` job needs from the agent. */
export interface ApplyPointDeps {
  client: ApiClient;
  state: AgentState;
  log: Logger;
  signal: AbortSignal;
}

/**
 * Runs an `apply-point` job to completion: starts it, then for each disk in order fetches the point's
 * index of it, checks it against the job's description, forgets what the agent remembered of the disk
 * and applies the point with `applyDiskImage` (chunks fetched from the server), reporting progress
 * (throttled) over all disks; finally reports each disk's counts to the server and returns the job's
 * view. Requests are retried as a replication cycle's are. Throws FerryError on failure (the caller
 * reports it); disks written before a failure stay written.
 */
export async function applyPointJob(job: ApplyPointJob, deps: ApplyPointDeps): Promise<JobView> {
  const call = <T>(operation: () => Promise<T>) =>
    withRetry(operation, { deadlineMs: REQUEST_DEADLINE_MS, signal: deps.signal, onRetry: (error) => deps.log.warn({ jobId: job.id }, `retrying: ${error.message}`) });
  await call(() => deps.client.post(`/agent/jobs/${job.id}/start`, {}));

  const totalBytes = job.disks.reduce((total, disk) => total + disk.sizeBytes, 0);
  const progress = new ThrottledProgress((doneBytes, step) => call(() => deps.client.post(`/agent/jobs/${job.id}/progress`, { doneBytes, totalBytes, step })));
  const fetchChunks = httpChunkFetcher(job.id, deps.client, call);
  const report: ApplyCompleteRequest['disks'] = [];
  let doneBefore = 0;
  for (const disk of [...job.disks].sort((a, b) => a.position - b.position)) {
    const encoded = await call(() => deps.client.getBinary(`/agent/jobs/${job.id}/disks/${disk.position}/index`));
    const index = DiskIndex.decode(encoded, 'upload');
    if (index.diskSize !== disk.sizeBytes || index.chunkSize !== disk.chunkSize) {
      throw new FerryError(
        'corrupt-data',
        `the server's index of disk ${disk.position} of point ${job.pointId} is ${index.diskSize} bytes in ${index.chunkSize}-byte chunks, the job says ${disk.sizeBytes} in ${disk.chunkSize}`,
      );
    }
    // Forgotten before the first write: after a crash mid-write, the remembered index (and the change
    // tracker's mark) would call rewritten chunks unchanged, and the next replication would skip them.
    await deps.state.forget(disk.id, `the disk was rewritten from point ${job.pointId}`);
    const step = `comparing and writing disk ${disk.position}`;
    progress.report(doneBefore, step);
    const started = Date.now();
    const applied = await applyDiskImage({
      path: disk.path,
      index,
      fetchChunks,
      signal: deps.signal,
      onProgress: (doneBytes) => progress.report(doneBefore + doneBytes, step),
    });
    deps.log.info(
      { jobId: job.id, disk: disk.position, path: disk.path, ...applied, ms: Date.now() - started },
      `disk ${disk.position} now equals point ${job.pointId} (${applied.chunksWritten} of ${applied.chunksCompared} chunks written)`,
    );
    report.push({ position: disk.position, changedBytes: applied.changedBytes, receivedBytes: applied.receivedBytes, chunksWritten: applied.chunksWritten });
    doneBefore += disk.sizeBytes;
  }
  progress.report(totalBytes, `wrote ${job.disks.length} disk(s)`);
  await progress.flush();
  const completion: ApplyCompleteRequest = { disks: report };
  return call(() => deps.client.post<JobView>(`/agent/jobs/${job.id}/complete`, completion));
}

/**
 * A `FetchChunks` over POST /agent/jobs/:id/chunks/read: checks that the answer is a chunk batch of
 * exactly the chunks asked for, in order, each raw or zstd (the hash itself is checked by
 * `applyDiskImage`). A malformed answer is corrupt-data, not retried.
 */
function httpChunkFetcher(jobId: string, client: ApiClient, call: <T>(operation: () => Promise<T>) => Promise<T>): FetchChunks {
  return async (hashHexes) => {
    const body = await call(() => client.postForBinary(`/agent/jobs/${jobId}/chunks/read`, { hashes: hashHexes }, CHUNK_READ_TIMEOUT_MS));
    let frames: ReturnType<typeof decodeChunkBatch>;
    try {
      frames = decodeChunkBatch(body);
    } catch (error) {
      throw new FerryError('corrupt-data', `the server's answer to a chunk read of job ${jobId} is not a valid chunk batch (${(error as Error).message})`, { cause: error });
    }
    if (frames.length !== hashHexes.length) {
      throw new FerryError('corrupt-data', `asked the server for ${hashHexes.length} chunk(s) of job ${jobId} and received ${frames.length}`);
    }
    return frames.map((frame, at) => {
      // A zstd frame is inflated when `data` is first read: a frame that does not inflate fails there.
      let data: Buffer | undefined;
      try {
        data = frame.data;
      } catch (error) {
        throw new FerryError('corrupt-data', `the server's answer to a chunk read of job ${jobId} holds a chunk that does not inflate (${(error as Error).message})`, { cause: error });
      }
      if (frame.hashHex !== hashHexes[at] || data === undefined) {
        throw new FerryError('corrupt-data', `the server answered chunk ${hashHexes[at]} of job ${jobId} with ${data === undefined ? 'a delta' : `chunk ${frame.hashHex}`}`);
      }
      return { data, wireBytes: frame.zstdFrame?.length ?? data.length };
    });
  };
}

/** Sends progress at most every PROGRESS_INTERVAL_MS, one report at a time; a failed report is dropped. */
class ThrottledProgress {
  private lastSent = 0;
  private pending: Promise<unknown> = Promise.resolve();
  private latest: { doneBytes: number; step: string } | null = null;

  constructor(private readonly send: (doneBytes: number, step: string) => Promise<unknown>) {}

  report(doneBytes: number, step: string): void {
    this.latest = { doneBytes, step };
    if (Date.now() - this.lastSent < PROGRESS_INTERVAL_MS) return;
    this.lastSent = Date.now();
    this.latest = null;
    this.pending = this.pending.then(() => this.send(doneBytes, step)).catch(() => undefined);
  }

  /** Sends the last report if it was held back, and waits for every report sent. */
  async flush(): Promise<void> {
    if (this.latest) {
      const { doneBytes, step } = this.latest;
      this.latest = null;
      this.pending = this.pending.then(() => this.send(doneBytes, step)).catch(() => undefined);
    }
    await this.pending;
  }
}
