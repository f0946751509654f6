/**
 * The agent's compression pool: a few worker threads (compression-worker.ts) that zstd-compress the
 * chunks a cycle sends, so the bytes cross the network compressed and the work uses more than one core
 * while the event loop goes on reading and hashing the next window.
 *
 * A chunk that does not get smaller is sent raw. A pool whose worker fails (it cannot start, or a
 * worker dies) fails the calls waiting on it with a retryable internal error; the replication cycle
 * then fails and is retried like any other.
 */
import os from 'node:os';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { FerryError } from '../errors.js';
import type { CompressionRequest, CompressionResponse } from './compression-worker.js';

/** One chunk's bytes after the pool: a zstd frame, or null when it is sent raw. */
export type CompressedChunk = Buffer | null;

/** Worker threads for `level`-compressing chunks; `close()` when done. */
export class CompressionPool {
  private readonly workers: Worker[] = [];
  private readonly waiting = new Map<number, { resolve: (frames: CompressedChunk[]) => void; reject: (error: Error) => void }>();
  private nextId = 0;
  private nextWorker = 0;
  /** Set once a worker failed: the pool answers every later call with this error. */
  private broken: Error | null = null;

  /**
   * Starts `size` workers (default: one per core beyond the first, at least one, at most four) that
   * compress at zstd `level`.
   */
  constructor(
    readonly level: number,
    size = Math.min(4, Math.max(1, os.availableParallelism() - 1)),
  ) {
    // The worker sits next to this module: .js when built, .ts when run from source under tsx.
    const fromSource = import.meta.url.endsWith('.ts');
    const workerPath = fileURLToPath(new URL(`./compression-worker${fromSource ? '.ts' : '.js'}`, import.meta.url));
    for (let n = 0; n < size; n++) {
      // Run from source (tests under tsx), the worker registers tsx's loader before importing the
      // TypeScript file: loaders given to the parent with --import do not reach worker threads.
      const worker = fromSource
        ? new Worker(`import('tsx/esm/api').then(({ register }) => { register(); return import(${JSON.stringify(pathToFileURL(workerPath).href)}); });`, { eval: true })
        : new Worker(workerPath);
      worker.unref(); // an idle pool never keeps the agent alive
      worker.on('message', (response: CompressionResponse) => this.settle(response));
      worker.on('error', (error) => this.failAll(error));
      worker.on('exit', (code) => {
        if (code !== 0) this.failAll(new Error(`compression worker exited with code ${code}`));
      });
      this.workers.push(worker);
    }
  }

  /**
   * Compresses each chunk; resolves in input order with its zstd frame, or null for a chunk that is not
   * smaller compressed. The chunks are copied to the worker, so callers may reuse their buffers at once.
   */
  compress(chunks: readonly Uint8Array[]): Promise<CompressedChunk[]> {
    if (chunks.length === 0) return Promise.resolve([]);
    if (this.broken) return Promise.reject(poolFailure(this.broken));
    const id = this.nextId++;
    const data = new Uint8Array(Buffer.concat(chunks));
    const request: CompressionRequest = { id, data, lengths: chunks.map((chunk) => chunk.length), level: this.level };
    const worker = this.workers[this.nextWorker++ % this.workers.length]!;
    return new Promise<CompressedChunk[]>((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      worker.ref(); // busy: keep the process alive until the answer comes
      worker.postMessage(request, [data.buffer]);
    }).finally(() => {
      if (this.waiting.size === 0) for (const each of this.workers) each.unref();
    });
  }

  /** Stops the workers; calls still waiting fail. */
  async close(): Promise<void> {
    this.failAll(new Error('compression pool closed'));
    await Promise.all(this.workers.map((worker) => worker.terminate()));
  }

  private settle(response: CompressionResponse): void {
    const waiter = this.waiting.get(response.id);
    if (!waiter) return;
    this.waiting.delete(response.id);
    if ('error' in response) {
      waiter.reject(new FerryError('internal', `compressing chunks failed: ${response.error}`, { retryable: true }));
      return;
    }
    const data = Buffer.from(response.data.buffer, response.data.byteOffset, response.data.byteLength);
    let offset = 0;
    waiter.resolve(
      response.lengths.map((length) => {
        if (length < 0) return null;
        const frame = data.subarray(offset, offset + length);
        offset += length;
        return frame;
      }),
    );
  }

  private failAll(error: Error): void {
    this.broken ??= error;
    for (const [id, waiter] of this.waiting) {
      this.waiting.delete(id);
      waiter.reject(poolFailure(error));
    }
  }
}

function poolFailure(error: Error): FerryError {
  return new FerryError('internal', `chunk compression failed: ${error.message}`, { retryable: true, cause: error });
}
