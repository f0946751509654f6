/**
 * The store's chunk codec pool: worker threads (chunk-codec-worker.ts) that decode stored chunks for a
 * restore and check and encode uploaded chunks for storing, so the server's event loop only moves bytes
 * between the network, the disk and the workers, and a restore or an upload uses every core.
 *
 * One pool serves the whole process (`sharedChunkCodecPool`), created on first use. Its idle workers do
 * not keep the process alive, so a server or a test that never closes it still exits; tests that want
 * their own pool construct one and close it.
 */
import os from 'node:os';
import { alignedSharedBuffer } from '../disks/direct-io.js';
import { FerryError } from '../errors.js';
import { isShared, SharedBufferCache, siblingWorkerPath, WorkerPool } from '../util/worker-pool.js';
import type { ChunkCodecRequest, ChunkCodecResult, IngestRequest } from './chunk-codec-worker.js';
import type { IngestInput } from './chunk-checks.js';
import { ChunkCodec, MAX_OBJECT_OVERHEAD, type ObjectCodec, plainObjectHeader, zstdFrameContentSize } from './chunk-object.js';

/** Size of an ingest staging buffer: an agent's usual batch (a window of 128 chunks, or a gathered 8 MiB) fits. */
const STAGING_BYTES = 8 * 1024 * 1024 + 64 * 1024;
/**
 * Upload batches the chunk store (`ChunkStore.putChunks`) stores at once in this process; the others
 * wait their turn. Each holds some of this pool's shared buffers until its pack is written (see
 * STAGING_KEPT), and the pool keeps three per batch. With more batches at once the extra buffers were
 * made fresh and dropped, 8 MiB each, freed only once every thread had collected: 40 fresh buffers in an
 * initial replication and a minute of churn. Three keep the workers and the disk busy: one batch's pack
 * is being fsynced while others are encoded.
 */
export const BATCHES_IN_FLIGHT = 3;
/**
 * Staging buffers kept for reuse. A batch being stored holds two (the upload's body, read into one by
 * server/binary-body.ts, and its encoded objects until their pack is written), a delta upload four (also
 * its delta bases, and its payloads staged for the workers, since those do not all lie in the body); the
 * store stores BATCHES_IN_FLIGHT batches at once (chunk-store.ts). Delta batches under churn therefore
 * make a few extra buffers and drop them; keeping four per batch instead raised the server's floor more
 * than that saved (docs/benchmarks.md). A restore (restore.ts) borrows two per window in flight, eight in
 * all, from the same ones.
 */
const STAGING_KEPT = 3 * BATCHES_IN_FLIGHT;

/** One stored chunk object for `ChunkCodecPool.decode`: where it lies, what it must be, where it goes. */
export interface ObjectToDecode {
  /** Offset of the object in the `objects` buffer, and its length. */
  at: number;
  objectLength: number;
  /** The backend key it is stored under (errors name it; an encrypted object is bound to it). */
  objectKey: string;
  /** The chunk's name: the decoded bytes must hash to it. */
  hashHex: string;
  /** The chunk's length: the decoded bytes must be exactly this long. */
  chunkLength: number;
  /** Where the decoded bytes go in the output buffer. */
  outputAt: number;
}

/** Worker threads decoding and encoding chunks; see the module comment. */
export class ChunkCodecPool {
  private readonly pool: WorkerPool<ChunkCodecRequest, ChunkCodecResult>;
  /**
   * Shared buffers for a batch's worth of chunks (8 MiB and a little), page-aligned (a restore writes
   * from them with O_DIRECT), reused: ingest stages payloads in them and gets the encoded objects back
   * in them, and the store reads delta bases, and their stored objects, into them, as a restore does its
   * windows (`takeShared`). A buffer a failed request used is dropped, not reused: a worker
   * of a broken pool may still be writing into it.
   */
  private readonly sharedBuffers = new SharedBufferCache(STAGING_BYTES, STAGING_KEPT, alignedSharedBuffer);

  /** Starts `size` workers: by default one per core, at least two, at most four. */
  constructor(size = Math.min(4, Math.max(2, os.availableParallelism()))) {
    this.pool = new WorkerPool(siblingWorkerPath(import.meta.url, 'chunk-codec-worker'), size, 'chunk codec');
  }

  /** Number of worker threads. */
  get size(): number {
    return this.pool.size;
  }

  /**
   * A shared buffer of at least `length` bytes to decode into, reused between calls when of the usual
   * size (8 MiB and a little); give it back with `giveShared` once nothing reads it any more.
   */
  takeShared(length: number): Buffer {
    return this.sharedBuffers.take(length);
  }

  /** Size of the reused buffers `takeShared` hands out. */
  get sharedBufferBytes(): number {
    return this.sharedBuffers.bufferBytes;
  }

  /** Returns a buffer from `takeShared`. */
  giveShared(buffer: Buffer): void {
    this.sharedBuffers.give(buffer);
  }

  /**
   * Decodes the stored objects `chunks` describe (lying in `objects`) under `codec`, checks each against
   * its name and length, and writes each at its `outputAt` in `output`, which must be a view of a
   * SharedArrayBuffer (the worker writes it in place). `objects` is moved to the worker when it owns its
   * whole ArrayBuffer (the caller must not use it afterwards), else copied. Throws corrupt-data for the
   * first chunk that fails (nothing is said about the others), internal (retryable) when the pool is
   * closed or broken.
   */
  async decode(objects: Buffer, chunks: readonly ObjectToDecode[], output: Uint8Array, codec: ObjectCodec): Promise<void> {
    if (chunks.length === 0) return;
    if (!isShared(output)) throw new FerryError('internal', 'the chunk codec pool decodes into shared memory only');
    const { view, transfer } = movable(objects);
    await this.pool.run(
      {
        kind: 'decode',
        objects: view,
        at: chunks.map((chunk) => chunk.at),
        objectLengths: chunks.map((chunk) => chunk.objectLength),
        objectKeys: chunks.map((chunk) => chunk.objectKey),
        hashHexes: chunks.map((chunk) => chunk.hashHex),
        chunkLengths: chunks.map((chunk) => chunk.chunkLength),
        outputAt: chunks.map((chunk) => chunk.outputAt),
        output,
        dataKey: codec.dataKey,
      },
      transfer,
    );
  }

  /**
   * The stored objects for uploaded chunks, in input order, each as parts to write one after another
   * (`ingestChunkParts`: inflated when compressed, checked against their names, not all zeros, encoded
   * under `codec`; an object that is a plain header and the payload as uploaded refers to the payload,
   * uncopied), computed in the workers. The payloads go to them through a reused shared buffer, and the
   * objects come back in another, which the objects view: call `release` once nothing reads them any
   * more (their pack is written). Throws the error of the first chunk refused (invalid-request,
   * chunk-hash-mismatch), internal (retryable) when the pool is closed or broken; nothing to release then.
   */
  async ingest(chunks: readonly IngestInput[], codec: ObjectCodec): Promise<{ objects: Uint8Array[][]; release: () => void }> {
    if (chunks.length === 0) return { objects: [], release: () => undefined };
    // Payloads go to the workers, and objects come back, through reused shared buffers, not through
    // buffers made per batch and moved: a moved buffer dies in the receiving thread's heap, freed only
    // when that thread next collects, and an incremental cycle's thousands of rebuilt chunks piled up
    // that way by the hundred megabytes.
    // Payloads that all lie in one shared buffer (an upload read into one, see server/binary-body.ts)
    // go as they lie; others are first copied into a staging buffer.
    const source = chunks[0]!.payload.buffer;
    const inPlace = source instanceof SharedArrayBuffer && chunks.every((chunk) => chunk.payload.buffer === source);
    const total = chunks.reduce((sum, chunk) => sum + chunk.payload.length, 0);
    const staging = inPlace ? null : this.sharedBuffers.take(total);
    const at: number[] = [];
    let offset = 0;
    for (const chunk of chunks) {
      at.push(inPlace ? chunk.payload.byteOffset : offset);
      if (staging) staging.set(chunk.payload, offset);
      offset += chunk.payload.length;
    }
    const payloads = staging ? staging.subarray(0, total) : new Uint8Array(source);
    // Each chunk's object gets a region of the output as large as it can be (`objectBound`), so each
    // slice writes into a region of its own.
    const regionAt = [0];
    for (const chunk of chunks) regionAt.push(regionAt.at(-1)! + objectBound(chunk));
    const output = this.sharedBuffers.take(regionAt.at(-1)!);
    // A batch is cut into one slice per worker (slices of at least INGEST_SLICE_MIN_BYTES), so one
    // batch uses every core: a batch's latency is what holds an agent's next upload back.
    const slices = sliceBatch(chunks.map((chunk) => chunk.payload.length), this.size);
    // Every slice is waited for, even after one fails: none may still write into `output` once it is
    // given back (another batch's objects would be overwritten).
    const settled = await Promise.allSettled(
      slices.map(({ first, end }) => {
        const slice = chunks.slice(first, end);
        return this.pool.run({
          kind: 'ingest',
          payloads,
          at: at.slice(first, end),
          payloadLengths: slice.map((chunk) => chunk.payload.length),
          hashHexes: slice.map((chunk) => chunk.hashHex),
          objectKeys: slice.map((chunk) => chunk.objectKey),
          compressed: slice.map((chunk) => chunk.compressed),
          rebuiltFrom: slice.map((chunk) => chunk.rebuiltFrom ?? null),
          compressionLevel: codec.compressionLevel,
          dataKey: codec.dataKey,
          output: output.subarray(regionAt[first], regionAt[end]),
        } satisfies IngestRequest);
      }),
    );
    const failed = settled.find((result) => result.status === 'rejected');
    // After a failure both buffers are dropped: a pool that broke (a worker died, or it was closed)
    // fails every request at once, while the workers still alive may be writing into them.
    if (failed) throw failed.reason;
    if (staging) this.sharedBuffers.give(staging);
    const results = settled.map((result) => (result as PromiseFulfilledResult<ChunkCodecResult>).value);
    const objects: Uint8Array[][] = [];
    slices.forEach(({ first }, slice) => {
      const result = results[slice]!;
      if (result.kind !== 'ingest') throw new FerryError('internal', 'chunk codec worker answered an ingest with a decode');
      let objectAt = regionAt[first]!;
      result.objectLengths.forEach((length, offset) => {
        const plain = result.asUploaded[offset]!;
        if (plain === ChunkCodec.None || plain === ChunkCodec.Zstd) {
          objects.push([plainObjectHeader(plain), chunks[first + offset]!.payload]);
          return;
        }
        objects.push([output.subarray(objectAt, objectAt + length)]);
        objectAt += length;
      });
    });
    // Given back once however often `release` is called: given twice, two batches would share it.
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      this.sharedBuffers.give(output);
    };
    return { objects, release };
  }

  /** Stops the workers; calls still waiting fail. */
  close(): Promise<void> {
    this.sharedBuffers.clear();
    return this.pool.close();
  }

}

let shared: ChunkCodecPool | null = null;

/** The process's chunk codec pool, started on first use; idle, it keeps nothing alive. */
export function sharedChunkCodecPool(): ChunkCodecPool {
  shared ??= new ChunkCodecPool();
  return shared;
}

/** Closes the process's chunk codec pool if one was started; the next use starts a new one. */
export async function closeSharedChunkCodecPool(): Promise<void> {
  const pool = shared;
  shared = null;
  await pool?.close();
}

/**
 * The most bytes an upload's stored object can take: its payload, or the chunk a zstd frame inflates to
 * when that is larger (a store that does not compress keeps the inflated chunk), plus the object's
 * header, nonce and tag. A frame whose header cannot be read is refused by the worker before anything
 * is written for it.
 */
function objectBound(chunk: IngestInput): number {
  let content = chunk.payload.length;
  if (chunk.compressed) {
    try {
      content = Math.max(content, zstdFrameContentSize(chunk.payload, 'uploaded chunk'));
    } catch {
      // refused by the worker, with the message the event loop would give
    }
  }
  return content + MAX_OBJECT_OVERHEAD;
}

/** Smallest slice of a batch worth a worker of its own (a message costs about what 1 MiB of work does). */
const INGEST_SLICE_MIN_BYTES = 1024 * 1024;

/**
 * Cuts a batch of chunks (their lengths, in order) into at most `workers` runs of consecutive chunks of
 * about equal bytes, none under INGEST_SLICE_MIN_BYTES unless the batch is: `[first, end)` positions.
 */
export function sliceBatch(lengths: readonly number[], workers: number): { first: number; end: number }[] {
  const total = lengths.reduce((sum, length) => sum + length, 0);
  const count = Math.max(1, Math.min(workers, Math.floor(total / INGEST_SLICE_MIN_BYTES), lengths.length));
  const slices: { first: number; end: number }[] = [];
  let first = 0;
  let bytes = 0;
  for (let position = 0; position < lengths.length; position++) {
    bytes += lengths[position]!;
    // Close a slice once it reaches its share of the bytes, leaving at least one chunk for each slice after it.
    if (slices.length < count - 1 && bytes >= (total * (slices.length + 1)) / count && lengths.length - position - 1 >= count - slices.length - 1) {
      slices.push({ first, end: position + 1 });
      first = position + 1;
    }
  }
  slices.push({ first, end: lengths.length });
  return slices;
}

/** A view to send `buffer` as: itself, moved, when it owns its whole ArrayBuffer; else a copy, moved. */
function movable(buffer: Buffer): { view: Uint8Array; transfer: ArrayBuffer[] } {
  if (isShared(buffer)) return { view: buffer, transfer: [] };
  if (buffer.byteOffset === 0 && buffer.byteLength === buffer.buffer.byteLength) {
    return { view: new Uint8Array(buffer.buffer as ArrayBuffer, 0, buffer.byteLength), transfer: [buffer.buffer as ArrayBuffer] };
  }
  const copy = new Uint8Array(buffer);
  return { view: copy, transfer: [copy.buffer] };
}
