/**
 * One replication cycle of one machine: run the pre-point hook, read every disk chunk by chunk, hash,
 * send only chunks the server lacks, publish each disk's index, run the post-point hook, commit the
 * point. A disk is read a window at a time, several windows in flight: while the next window is read,
 * the compression pool's workers name the chunks of the others (SHA-256, the all-zero check, block
 * fingerprints) and compress what is sent, in place in the windows' shared buffers, and the event loop
 * talks to the server. Windows where little changed have their changed chunks gathered into one upload
 * for many windows.
 *
 * A chunk that changed since the last point is sent as a delta when at most half of its 4 KiB blocks
 * changed: only those blocks, over the last point's chunk at the same position (its base), which the
 * server already holds. Which blocks changed is told by the block fingerprints kept from the last point
 * (block-fingerprints.ts), not by the old bytes, which the agent does not keep. If the server refuses
 * a batch of deltas (its base is gone, or a fingerprint collision hid a changed block so the rebuilt
 * chunk fails its hash), the batch is sent again with whole chunks.
 *
 * The consistency label is honest (see `labelConsistency`): `app` when the pre-point hook held the
 * machine quiet while its disks were captured, `crash` when a snapshot (snapshots.ts) captured every
 * disk at one instant, `inconsistent` when the disks were read while something may have been writing.
 */
import { type ApiClient, withRetry } from '../client/api-client.js';
import { FerryError } from '../errors.js';
import { encodeChunkBatch, encodeDeltaPayload, FRAME_OVERHEAD, FrameEncoding, MAX_BATCH_BYTES, MAX_BATCH_CHUNK_BYTES, type OutgoingFrame } from '../protocol/chunk-batch.js';
import type { Consistency, PointView, ReplicateJob } from '../protocol/views.js';
import { blockCountOf } from '../store/chunk-delta.js';
import { HASH_LENGTH, hashChunk, isAllZero, ZERO_HASH } from '../store/chunking.js';
import { DiskIndex } from '../store/disk-index.js';
import type { DiskSource } from '../disks/disk-source.js';
import { DIRECT_ALIGNMENT, openDirectRawDisk } from '../disks/direct-io.js';
import { openDiskImage, probeDiskImage, sniffDiskFormat } from '../disks/formats.js';
import type { Logger } from '../util/logger.js';
import { SharedBufferCache } from '../util/worker-pool.js';
import type { AgentState } from './agent-state.js';
import { BlockFingerprints } from './block-fingerprints.js';
import type { CompressionPool } from './compression-pool.js';
import { type TrackerMark, trackerFor } from './change-tracking.js';
import { runHook } from './hooks.js';
import type { RateLimiter } from './rate-limiter.js';
import { jobStartBody } from './resync.js';
import { type DiskSnapshot, snapshotDisks } from './snapshots.js';

/**
 * Chunks read, hashed and sent together (8 MiB at 64 KiB chunks): one upload batch each. Small enough
 * that the windows in flight, their frames and the server's copies of their batches stay well within
 * both processes' memory budget; large enough that a window's two requests cost little.
 */
const WINDOW_CHUNKS = 128;
/**
 * Windows in flight: one being read while the others are named, compressed and sent, so the disk, the
 * pool's workers and the network are busy at once.
 */
const WINDOWS_IN_FLIGHT = 4;
/** A window is sent on its own when at least 1/SPARSE_WINDOW_SHARE of its chunks are to be sent. */
const SPARSE_WINDOW_SHARE = 4;
/**
 * Changed chunks of sparse windows are gathered into batches of at most this many bytes (128 chunks): a
 * window's worth, so the server's batch buffers (its staging size, chunk-codec-pool.ts) serve both kinds
 * of upload.
 */
const GATHERED_BATCH_BYTES = 8 * 1024 * 1024;
/**
 * Gathered uploads under way at once (each holds its chunks' copies, and the server's batch memory).
 * Three, because what an incremental cycle waits for is the server rebuilding deltas from bases read
 * from scattered packs: latency, which more uploads in flight hide.
 */
const GATHERED_UPLOADS_IN_FLIGHT = 3;
/** How long one request may keep failing (server restarting, network down) before the cycle gives up. */
const REQUEST_DEADLINE_MS = 10 * 60_000;

/** What a cycle needs from the agent. */
export interface ReplicationDeps {
  client: ApiClient;
  state: AgentState;
  log: Logger;
  signal: AbortSignal;
  /** The agent's data directory (never frozen). */
  dataDir: string;
  /** Longest a file system may stay frozen for a snapshot. */
  maxFreezeSeconds: number;
  /** Limits the chunk bytes sent per second, when set. */
  rateLimiter?: RateLimiter;
  /** Compresses the chunks sent; without it chunks are sent raw. */
  compression?: CompressionPool;
}

/**
 * Slabs gathered chunks are copied into, kept between batches and cycles: one per gathered upload in
 * flight and one filling. Sized for 64 KiB chunks; a larger chunk size gets slabs of its own.
 */
const gatheredSlabs = new SharedBufferCache(GATHERED_BATCH_BYTES + WINDOW_CHUNKS * 64 * 1024, GATHERED_UPLOADS_IN_FLIGHT + 1);

/** Runs one replication job to a committed point. Throws FerryError on failure. */
export async function replicateMachine(job: ReplicateJob, deps: ReplicationDeps): Promise<PointView> {
  const call = <T>(operation: () => Promise<T>) =>
    withRetry(operation, { deadlineMs: REQUEST_DEADLINE_MS, signal: deps.signal, onRetry: (error) => deps.log.warn({ jobId: job.id }, `retrying: ${error.message}`) });
  const startBody = await jobStartBody(job, deps.state); // whether this cycle is a resync, and why
  await call(() => deps.client.post(`/agent/jobs/${job.id}/start`, startBody));

  // Fail fast, before any hook runs, if a disk cannot be read (or is a damaged image).
  const images = await Promise.all(job.disks.map((disk) => probeDiskImage(disk.path)));

  const hookEnv = { FERRY_MACHINE: job.machine.name, FERRY_JOB: job.id };
  const notes: string[] = [];
  // A planned failover's final point: the workload is stopped first, so every write it acknowledged is on
  // its disks. Its failure fails the job (and with it the failover, which rolls back).
  const stoppedByShutdown = Boolean(job.shutdown);
  if (job.shutdown) {
    await runHook(job.shutdown, { timeoutSeconds: job.hooks.timeoutSeconds, env: hookEnv, name: 'shutdown' });
  }
  const wantsHooks = !stoppedByShutdown && job.consistency === 'app' && Boolean(job.hooks.prePoint);
  let hookHeld = false; // the pre-point hook succeeded and the post-point hook has not run yet
  const runPostHook = async () => {
    if (!hookHeld) return;
    hookHeld = false;
    if (!job.hooks.postPoint) return;
    await runHook(job.hooks.postPoint, { timeoutSeconds: job.hooks.timeoutSeconds, env: hookEnv, name: 'post-point' }).catch((error: Error) => {
      notes.push(error.message);
      deps.log.warn({ jobId: job.id }, error.message);
    });
  };
  // A stopped workload holds the disks quiet just as a successful pre-point hook does.
  let hookSucceeded = stoppedByShutdown;
  if (stoppedByShutdown) notes.push('the workload was stopped by its shutdown command before the disks were captured');
  if (wantsHooks) {
    try {
      await runHook(job.hooks.prePoint!, { timeoutSeconds: job.hooks.timeoutSeconds, env: hookEnv, name: 'pre-point' });
      hookHeld = hookSucceeded = true;
    } catch (error) {
      notes.push((error as Error).message);
      deps.log.warn({ jobId: job.id }, (error as Error).message);
    }
  }

  const sources: DiskSource[] = [];
  let snapshot: DiskSnapshot | null = null;
  try {
    const trackers = await Promise.all(job.disks.map((disk) => trackerFor(disk.path)));
    const marks = await Promise.all(job.disks.map((disk, position) => trackers[position]!.mark(disk.path)));
    snapshot = await snapshotDisks(
      job.disks.map((disk) => disk.path),
      { jobId: job.id, maxFreezeSeconds: deps.maxFreezeSeconds, agentDataDir: deps.dataDir, log: deps.log, imagesSpanOneFile: images.every((image) => image.oneFile) },
    );
    // With a snapshot taken, the machine need not stay quiet while it is read.
    if (snapshot.method !== 'none') await runPostHook();
    if (snapshot.note) notes.push(snapshot.note);
    // Image files (VMDK, VHD, VHDX, qcow2) are read through their readers: the virtual disk, not the file.
    for (const readPath of snapshot.readPaths) sources.push(await openForOnePass(readPath));
    const totalBytes = sources.reduce((total, source) => total + source.size, 0);
    const progress = new ProgressReporter((doneBytes, step) =>
      call(() => deps.client.post(`/agent/jobs/${job.id}/progress`, { doneBytes, totalBytes, step })),
    );

    const takenAt = snapshot.takenAt;
    const indexes: {
      diskId: string;
      index: DiskIndex;
      fingerprints: BlockFingerprints | null;
      changedBytes: number;
      sentBytes: number;
      mark: TrackerMark | null;
    }[] = [];
    let doneBefore = 0;
    try {
      for (const [position, disk] of job.disks.entries()) {
        const source = sources[position]!;
        const previous = await deps.state.lastIndex(disk.id);
        const previousFingerprints = previous ? await deps.state.lastFingerprints(disk.id, previous) : null;
        // Asked after the capture, so "nothing changed" covers the instant the snapshot was taken.
        const unchanged =
          previous !== null &&
          previous.chunkSize === job.chunkSize &&
          previous.diskSize === source.size &&
          (await trackers[position]!.changedSince(disk.path, await deps.state.lastMark(disk.id))) === 'nothing';
        const { index, fingerprints, changedBytes, sentBytes } = unchanged
          ? { index: previous, fingerprints: previousFingerprints, changedBytes: 0, sentBytes: 0 }
          : await readDisk(source, job.chunkSize, previous, previousFingerprints, {
              call,
              client: deps.client,
              log: deps.log,
              rateLimiter: deps.rateLimiter,
              compression: deps.compression,
              signal: deps.signal,
              onProgress: (doneBytes) => progress.report(doneBefore + doneBytes, `reading disk ${disk.position}`),
            });
        if (unchanged) notes.push(`disk ${disk.position} unchanged since the last point (${trackers[position]!.name}): not read`);
        indexes.push({ diskId: disk.id, index, fingerprints, changedBytes, sentBytes, mark: marks[position] ?? null });
        doneBefore += source.size;
        progress.report(doneBefore, `read disk ${disk.position}`);
      }
    } finally {
      await runPostHook();
    }
    const consistency = labelConsistency(snapshot, hookSucceeded, notes);
    if (consistency === 'inconsistent' && !wantsHooks && snapshot.method === 'none') {
      notes.push('no pre-point hook and no snapshot: disks were read while they may have been changing');
    }

    await progress.flush();
    const committedDisks: { diskId: string; indexHash: string; changedBytes: number; sentBytes: number }[] = [];
    for (const entry of indexes) {
      const { indexHash } = await call(() => deps.client.postBinary<{ indexHash: string }>('/indexes', entry.index.encode())).catch(async (error: unknown) => {
        // The store lacks chunks this agent skipped as "unchanged since the last point" (a store that was
        // restored or lost data): forget what it remembered, so the retry sends everything the store lacks.
        if (error instanceof FerryError && error.code === 'chunk-missing') {
          for (const disk of job.disks) await deps.state.forget(disk.id);
          throw new FerryError('chunk-missing', `${error.message}; the next cycle sends them again`, { retryable: true });
        }
        throw error;
      });
      committedDisks.push({ diskId: entry.diskId, indexHash, changedBytes: entry.changedBytes, sentBytes: entry.sentBytes });
    }
    const point = await call(() =>
      deps.client.post<PointView>('/agent/points', { jobId: job.id, takenAt, consistency, note: notes.join('; ') || null, disks: committedDisks }),
    );
    for (const entry of indexes) await deps.state.saveIndex(entry.diskId, entry.index, entry.mark, entry.fingerprints);
    return point;
  } finally {
    for (const source of sources) await source.close();
    await snapshot?.release();
    await runPostHook();
  }
}

/**
 * The honest label of a point: `app` when the pre-point hook held the machine quiet over the instant
 * the disks were captured (the whole read, without a snapshot); `crash` when a snapshot captured every
 * disk at one instant and held to the end of the read; `inconsistent` otherwise.
 */
export function labelConsistency(snapshot: Pick<DiskSnapshot, 'method' | 'atOneInstant' | 'stillValid'>, hookSucceeded: boolean, notes: string[]): Consistency {
  if (snapshot.method === 'none') return hookSucceeded ? 'app' : 'inconsistent';
  if (snapshot.method === 'fsfreeze' && !snapshot.stillValid()) {
    notes.push('the file systems were thawed before the read ended (freeze bound reached): read partly live');
    return 'inconsistent';
  }
  if (hookSucceeded) return 'app'; // the hook held the machine quiet while every disk was captured
  return snapshot.atOneInstant && snapshot.stillValid() ? 'crash' : 'inconsistent';
}

interface ReadDeps {
  call: <T>(operation: () => Promise<T>) => Promise<T>;
  client: ApiClient;
  log: Logger;
  rateLimiter?: RateLimiter;
  compression?: CompressionPool;
  signal?: AbortSignal;
  onProgress: (doneBytes: number) => void;
}

/** A chunk that changed and may have to be sent: its name, its bytes, and how to send it as a delta. */
interface Candidate {
  hash: Buffer;
  data: Buffer;
  /** Set when the chunk may go as a delta: its base (the last point's chunk here) and the blocks that differ. */
  delta?: { base: Buffer; blockSize: number; changedBlocks: number[] };
}

/**
 * Opens a disk for a cycle's one pass over it: a raw disk (file or block device) read with O_DIRECT into
 * the page-aligned window buffers (direct-io.ts: what is read once is not copied through the page
 * cache), an image file through its format's reader (the virtual disk, not the file).
 */
async function openForOnePass(readPath: string): Promise<DiskSource> {
  const format = await sniffDiskFormat(readPath);
  return format === 'raw' ? openDirectRawDisk(readPath) : openDiskImage(readPath, format);
}

/**
 * Reads one disk into an index and its block fingerprints, uploading chunks the server does not have.
 * `previous` (the last committed index of this disk) lets unchanged chunks skip the server query;
 * `previousFingerprints` (saved with it) let changed chunks go as deltas over it. Fingerprints are
 * copied for unchanged chunks and computed for the others (all non-zero chunks when there are none).
 */
async function readDisk(
  source: DiskSource,
  chunkSize: number,
  previous: DiskIndex | null,
  previousFingerprints: BlockFingerprints | null,
  deps: ReadDeps,
): Promise<{ index: DiskIndex; fingerprints: BlockFingerprints | null; changedBytes: number; sentBytes: number }> {
  const index = DiskIndex.empty(source.size, chunkSize);
  const comparable = previous && previous.chunkSize === chunkSize ? previous : null;
  const fingerprints = BlockFingerprints.empty(source.size, chunkSize);
  // Deltas need the last point's fingerprints of a disk of the same size, cut the same way.
  const bases =
    comparable && fingerprints && previousFingerprints?.fits(index) && comparable.diskSize === source.size && previousFingerprints.blockSize === fingerprints.blockSize
      ? { index: comparable, fingerprints: previousFingerprints }
      : null;
  const sentThisCycle = new Set<string>();
  let changedBytes = 0;
  let sentBytes = 0;

  /** Names the chunks at [first, last) (their bytes in `buffer`), records them, and sends what changed. */
  const processWindow = async (first: number, last: number, buffer: Buffer): Promise<number> => {
    const lengths: number[] = [];
    for (let position = first; position < last; position++) lengths.push(index.lengthAt(position));
    const named = deps.compression
      ? await deps.compression.hashWindow(buffer, lengths, {
          blockSize: fingerprints?.blockSize ?? null,
          blocksPerChunk: fingerprints?.blocksPerChunk ?? 0,
          // A copy of the slice: posting a view would copy its whole ArrayBuffer (the whole index).
          previousHashes: bases ? new Uint8Array(bases.index.hashes.subarray(first * HASH_LENGTH, last * HASH_LENGTH)) : null,
        })
      : null;
    const candidates: Candidate[] = [];
    let start = 0;
    for (let position = first; position < last; position++) {
      const data = buffer.subarray(start, start + lengths[position - first]!);
      start += data.length;
      const hash = named ? named.hashes[position - first]! : isAllZero(data) ? ZERO_HASH : hashChunk(data);
      index.setHash(position, hash);
      // Without an earlier point, "changed" means "holds data": zero chunks cost nothing.
      const unchanged = comparable !== null && position < comparable.chunkCount ? comparable.hashAt(position).equals(hash) : hash === ZERO_HASH;
      if (fingerprints && hash !== ZERO_HASH) {
        // A zero chunk keeps its zero slots: it is never a base.
        const computed = named?.fingerprints[position - first];
        if (unchanged && bases) fingerprints.copyFrom(bases.fingerprints, position);
        else if (computed) fingerprints.crcs.set(computed, position * fingerprints.blocksPerChunk);
        else fingerprints.compute(position, data);
      }
      if (unchanged) continue;
      changedBytes += data.length;
      if (hash === ZERO_HASH) continue;
      const hex = hash.toString('hex');
      if (sentThisCycle.has(hex)) continue;
      sentThisCycle.add(hex);
      const candidate: Candidate = { hash, data };
      if (bases && fingerprints && !bases.index.isZeroAt(position)) {
        const changedBlocks = fingerprints.changedBlocks(bases.fingerprints, position, data.length);
        // No block found changed: a CRC collision hides the change, so the delta would be refused. More
        // than half changed: a delta saves too little over the whole (compressed) chunk.
        if (changedBlocks.length > 0 && changedBlocks.length * 2 <= blockCountOf(data.length, fingerprints.blockSize)) {
          candidate.delta = { base: Buffer.from(bases.index.hashAt(position)), blockSize: fingerprints.blockSize, changedBlocks };
        }
      }
      candidates.push(candidate);
    }
    if (candidates.length === 0) return 0;
    // A window where much changed is sent from its buffer. A few changed chunks (an incremental cycle's
    // usual window) are copied out and gathered with those of other windows: one query and one upload
    // (one pack, one fsync on the server) for many windows instead of one each.
    if (candidates.length >= (last - first) / SPARSE_WINDOW_SHARE) return uploadMissing(candidates, deps);
    // Copied (the window buffer is reused once this returns) into the gathered batch's slab: one
    // buffer reused from batch to batch, not a 64 KiB allocation per chunk that malloc would keep.
    // A batch that these would take past GATHERED_BATCH_BYTES goes first: the server stages a batch's
    // chunks in buffers of that size, reused, and one larger gets buffers made for it alone. Checked
    // again after each wait: other windows may have gathered into the next batch meanwhile.
    const candidateBytes = candidates.reduce((total, candidate) => total + candidate.data.length, 0);
    while (gatheredBytes > 0 && gatheredBytes + candidateBytes > GATHERED_BATCH_BYTES) await sendGathered();
    gatheredSlab ??= gatheredSlabs.take(gatheredSlabBytes);
    for (const candidate of candidates) {
      const copy = gatheredSlab.subarray(gatheredBytes, gatheredBytes + candidate.data.length);
      candidate.data.copy(copy);
      candidate.data = copy;
      gathered.push(candidate);
      gatheredBytes += copy.length;
    }
    if (gatheredBytes >= GATHERED_BATCH_BYTES) await sendGathered();
    return 0;
  };
  const gathered: Candidate[] = [];
  let gatheredBytes = 0;
  // A slab holds a gathered batch: up to GATHERED_BATCH_BYTES, or one window's changed chunks alone
  // where those are more (a sparse window's are under a quarter of a window), so they always fit.
  const gatheredSlabBytes = GATHERED_BATCH_BYTES + WINDOW_CHUNKS * chunkSize;
  let gatheredSlab: Buffer | null = null;
  // Gathered uploads run apart from the windows (their chunks are copies), so reading goes on while
  // one is sent; only when GATHERED_UPLOADS_IN_FLIGHT are under way does the next wait for the oldest.
  const gatheredUploads: Promise<number>[] = [];
  const sendGathered = async (): Promise<void> => {
    const batch = gathered.splice(0);
    const slab = gatheredSlab;
    gatheredBytes = 0;
    gatheredSlab = null;
    if (batch.length === 0) {
      if (slab) gatheredSlabs.give(slab);
      return;
    }
    while (gatheredUploads.length >= GATHERED_UPLOADS_IN_FLIGHT) {
      const sent = await gatheredUploads.shift()!; // awaited first: `sentBytes += await` would lose concurrent additions
      sentBytes += sent;
    }
    const upload = uploadMissing(batch, deps).finally(() => gatheredSlabs.give(slab!));
    upload.catch(() => undefined); // a failure is rethrown where the upload is awaited
    gatheredUploads.push(upload);
  };

  // Window buffers are allocated once and reused: a fresh 8 MiB buffer per window makes glibc's malloc
  // keep freed ones around (its mmap threshold grows), so memory would climb far past what is in use.
  // With a pool they are its shared buffers, kept between cycles, which its workers read in place.
  const freeBuffers: Buffer[] = [];
  // Whole multiples of DIRECT_ALIGNMENT: a raw disk's last window is read direct too, into the spare room.
  const windowBytes = Math.ceil(Math.min(WINDOW_CHUNKS * chunkSize, Math.max(source.size, 1)) / DIRECT_ALIGNMENT) * DIRECT_ALIGNMENT;
  const inFlight: Promise<number>[] = [];
  for (let first = 0; first < index.chunkCount; first += WINDOW_CHUNKS) {
    // Bounded memory: at most WINDOWS_IN_FLIGHT windows are held (each holds its buffer until its chunks
    // are sent), so at most that many buffers exist. A failed window fails the disk here, in order.
    while (inFlight.length >= WINDOWS_IN_FLIGHT) {
      const sent = await inFlight.shift()!;
      sentBytes += sent;
    }
    const last = Math.min(first + WINDOW_CHUNKS, index.chunkCount);
    const windowOffset = first * chunkSize;
    const windowLength = Math.min(source.size - windowOffset, (last - first) * chunkSize);
    const windowBuffer = freeBuffers.pop() ?? deps.compression?.takeWindow(windowBytes) ?? Buffer.allocUnsafe(windowBytes);
    const buffer = windowBuffer.subarray(0, windowLength);
    try {
      await source.read(windowBuffer, windowLength, windowOffset);
    } catch (error) {
      freeBuffers.push(windowBuffer);
      throw error;
    }
    // Reading the next window overlaps with naming, compressing and sending this one.
    const window = processWindow(first, last, buffer).finally(() => freeBuffers.push(windowBuffer));
    window.catch(() => undefined); // a failure is rethrown where the window is awaited, in order
    inFlight.push(window);
    deps.onProgress(windowOffset + windowLength);
  }
  for (const window of inFlight) {
    const sent = await window;
    sentBytes += sent;
  }
  await sendGathered();
  for (const upload of gatheredUploads.splice(0)) {
    const sent = await upload;
    sentBytes += sent;
  }
  // Every window is sent: the pool keeps the buffers for the next disk or cycle.
  for (const buffer of freeBuffers.splice(0)) deps.compression?.giveWindow(buffer);
  return { index, fingerprints, changedBytes, sentBytes };
}

/**
 * Asks which candidates the server lacks and sends those in batches: as deltas where the candidate
 * allows it, else whole; compressed when the agent has a compression pool and that is smaller. Returns
 * the payload bytes sent (compressed sizes for compressed chunks, delta payloads for deltas, and a
 * refused batch's bytes as well as its resend).
 */
async function uploadMissing(candidates: Candidate[], deps: ReadDeps): Promise<number> {
  const { missing } = await deps.call(() => deps.client.post<{ missing: string[] }>('/chunks/missing', { hashes: candidates.map((c) => c.hash.toString('hex')) }));
  const wanted = new Set(missing);
  const toSend = candidates.filter((candidate) => wanted.has(candidate.hash.toString('hex')));
  return sendChunks(toSend, await framesFor(toSend, true, deps), deps);
}

/** One frame per candidate, in order: a delta where `useDeltas` and the candidate allow, else the whole chunk. */
async function framesFor(candidates: readonly Candidate[], useDeltas: boolean, deps: ReadDeps): Promise<OutgoingFrame[]> {
  const payloads = candidates.map(({ data, delta }) =>
    useDeltas && delta ? encodeDeltaPayload(delta.base, delta.blockSize, data, delta.changedBlocks) : data,
  );
  const compressed = deps.compression ? await deps.compression.compress(payloads) : [];
  return candidates.map((candidate, position) => {
    const isDelta = useDeltas && candidate.delta !== undefined;
    const frame = compressed[position];
    if (frame) return { hash: candidate.hash, payload: frame, encoding: isDelta ? FrameEncoding.DeltaZstd : FrameEncoding.Zstd };
    return { hash: candidate.hash, payload: payloads[position]!, encoding: isDelta ? FrameEncoding.Delta : FrameEncoding.Raw };
  });
}

/**
 * Sends `frames` (one per candidate, in order) in batches of at most MAX_BATCH_BYTES of body and
 * MAX_BATCH_CHUNK_BYTES of chunks. A batch holding deltas that the server refuses because a base is
 * gone (delta-base-missing) or a rebuilt chunk does not hash to its name (chunk-hash-mismatch) is sent
 * again with whole chunks, never failing the cycle for it. Returns the payload bytes sent.
 */
async function sendChunks(candidates: readonly Candidate[], frames: readonly OutgoingFrame[], deps: ReadDeps): Promise<number> {
  let sentBytes = 0;
  let batch: number[] = []; // positions in `candidates` and `frames`
  let batchBytes = 0;
  let batchChunkBytes = 0;
  const send = async () => {
    const positions = batch;
    const bytes = batchBytes;
    batch = [];
    batchBytes = 0;
    batchChunkBytes = 0;
    if (positions.length === 0) return;
    const body = encodeChunkBatch(positions.map((position) => frames[position]!));
    const payloadBytes = positions.reduce((total, position) => total + frames[position]!.payload.length, 0);
    await deps.rateLimiter?.take(bytes, deps.signal);
    try {
      await deps.call(() => deps.client.postBinary('/chunks', body));
    } catch (error) {
      const hadDeltas = positions.some((position) => isDeltaEncoding(frames[position]!.encoding));
      if (!hadDeltas || !(error instanceof FerryError) || (error.code !== 'delta-base-missing' && error.code !== 'chunk-hash-mismatch')) throw error;
      sentBytes += payloadBytes; // refused, but it crossed the network
      deps.log.warn(`the server refused ${positions.length} chunk(s) sent as changed blocks (${error.message}); sending them whole`);
      const whole = positions.map((position) => candidates[position]!);
      sentBytes += await sendChunks(whole, await framesFor(whole, false, deps), deps);
      return;
    }
    sentBytes += payloadBytes;
  };
  for (const [position, frame] of frames.entries()) {
    const chunkLength = candidates[position]!.data.length;
    if (batchBytes + frame.payload.length + FRAME_OVERHEAD > MAX_BATCH_BYTES - 64 || batchChunkBytes + chunkLength > MAX_BATCH_CHUNK_BYTES) await send();
    batch.push(position);
    batchBytes += frame.payload.length + FRAME_OVERHEAD;
    batchChunkBytes += chunkLength;
  }
  await send();
  return sentBytes;
}

function isDeltaEncoding(encoding: OutgoingFrame['encoding']): boolean {
  return encoding === FrameEncoding.Delta || encoding === FrameEncoding.DeltaZstd;
}

/** Sends progress at most every 500 ms; reports never block reading for long. */
class ProgressReporter {
  private lastSent = 0;
  private pending: Promise<unknown> = Promise.resolve();
  private latest: { doneBytes: number; step: string } | null = null;

  constructor(private readonly send: (doneBytes: number, step: string) => Promise<unknown>) {}

  report(doneBytes: number, step: string): void {
    this.latest = { doneBytes, step };
    if (Date.now() - this.lastSent < 500) return;
    this.lastSent = Date.now();
    this.pending = this.pending.then(() => this.send(doneBytes, step)).catch(() => undefined);
  }

  async flush(): Promise<void> {
    if (this.latest) {
      const { doneBytes, step } = this.latest;
      this.pending = this.pending.then(() => this.send(doneBytes, step)).catch(() => undefined);
    }
    await this.pending;
  }
}

