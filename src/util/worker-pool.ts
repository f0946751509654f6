/**
 * A small pool of worker threads running one worker module, shared by the agent's compression pool
 * (agent/compression-pool.ts) and the store's chunk codec pool (store/chunk-codec-pool.ts): requests go
 * to the least busy worker and are answered by id; a worker that reports a failure fails only its
 * request, while a worker that dies fails every request waiting and every later one.
 *
 * Idle workers are unref'd, so a pool that nobody closed never keeps a process alive (a daemon's
 * shutdown, a test file's end), and a busy one is ref'd until its answers come.
 *
 * Run from source (the tests, under tsx), a worker must register tsx's loader itself before importing
 * its TypeScript module: loaders given to the parent with --import do not reach worker threads. Built
 * (dist/, what bin/ferry.js runs), the worker module is the .js next to the pool's module.
 */
import { fileURLToPath, pathToFileURL } from 'node:url';
import { type TransferListItem, Worker } from 'node:worker_threads';
import { type ErrorCode, FerryError } from '../errors.js';

/** What a worker answers: `{ id, result }`, or `{ id, error }` for a request it could not do. */
export type WorkerReply<R> = { id: number; result: R } | { id: number; error: WorkerFailure };

/** A failure as it crosses the thread boundary: a FerryError's code, message and details, or a plain message. */
export interface WorkerFailure {
  code?: ErrorCode;
  message: string;
  details?: Record<string, unknown>;
  retryable?: boolean;
}

/** Turns an error thrown in a worker into what it sends back (a FerryError keeps its code and details). */
export function toWorkerFailure(error: unknown): WorkerFailure {
  if (error instanceof FerryError) return { code: error.code, message: error.message, details: error.details, retryable: error.retryable };
  return { message: error instanceof Error ? error.message : String(error) };
}

/**
 * The module URL of a worker that sits next to `moduleUrl` (the calling module's `import.meta.url`)
 * under `baseName`: `.ts` when the caller runs from source, `.js` when built.
 */
export function siblingWorkerPath(moduleUrl: string, baseName: string): string {
  const fromSource = moduleUrl.endsWith('.ts');
  return fileURLToPath(new URL(`./${baseName}${fromSource ? '.ts' : '.js'}`, moduleUrl));
}

/** Worker threads running the module at `workerPath`; requests are `{ id, ...request }` messages. */
export class WorkerPool<Request extends object, Result> {
  private readonly workers: { worker: Worker; busy: number }[] = [];
  private readonly waiting = new Map<number, { resolve: (result: Result) => void; reject: (error: Error) => void; slot: { busy: number; worker: Worker } }>();
  private nextId = 0;
  /** Set once a worker died or the pool was closed: every later request fails with it. */
  private broken: Error | null = null;

  /**
   * Starts `size` workers (at least one) of the module at `workerPath`. `describe` names the pool in
   * errors ("chunk compression", "chunk codec"): a dead or closed pool fails with a retryable internal
   * error saying "<describe> failed".
   */
  constructor(
    workerPath: string,
    size: number,
    private readonly describe: string,
  ) {
    const fromSource = workerPath.endsWith('.ts');
    for (let n = 0; n < Math.max(1, size); n++) {
      const worker = fromSource
        ? new Worker(`import('tsx/esm/api').then(({ register }) => { register(); return import(${JSON.stringify(pathToFileURL(workerPath).href)}); });`, { eval: true })
        : new Worker(workerPath);
      const slot = { worker, busy: 0 };
      worker.on('message', (reply: WorkerReply<Result>) => this.settle(reply));
      worker.on('error', (error) => this.failAll(error));
      worker.on('exit', (code) => {
        if (code !== 0) this.failAll(new Error(`${describe} worker exited with code ${code}`));
      });
      // An idle pool never keeps the process alive. After the listeners: adding a 'message' listener
      // refs the worker's port again.
      worker.unref();
      this.workers.push(slot);
    }
  }

  /** Number of worker threads. */
  get size(): number {
    return this.workers.length;
  }

  /**
   * Sends `request` to the least busy worker, moving (not copying) the buffers in `transfer`, and
   * resolves with its result. A request the worker refuses rejects with a FerryError of the code it
   * threw (internal, retryable, for an error without one); a dead or closed pool rejects with a
   * retryable internal error.
   */
  run(request: Request, transfer: readonly TransferListItem[] = []): Promise<Result> {
    if (this.broken) return Promise.reject(this.poolFailure(this.broken));
    const id = this.nextId++;
    let slot = this.workers[0]!;
    for (const each of this.workers) if (each.busy < slot.busy) slot = each;
    return new Promise<Result>((resolve, reject) => {
      this.waiting.set(id, { resolve, reject, slot });
      if (slot.busy++ === 0) slot.worker.ref(); // busy: keep the process alive until the answer comes
      slot.worker.postMessage({ ...request, id }, transfer as TransferListItem[]);
    });
  }

  /** Stops the workers; requests still waiting fail. Safe to call twice. */
  async close(): Promise<void> {
    this.failAll(new Error(`${this.describe} pool closed`));
    await Promise.all(this.workers.map(({ worker }) => worker.terminate()));
  }

  private settle(reply: WorkerReply<Result>): void {
    const waiter = this.waiting.get(reply.id);
    if (!waiter) return;
    this.waiting.delete(reply.id);
    this.release(waiter.slot);
    if ('error' in reply) {
      const { code, message, details, retryable } = reply.error;
      waiter.reject(
        code
          ? new FerryError(code, message, { details, retryable })
          : new FerryError('internal', `${this.describe} failed: ${message}`, { retryable: true }),
      );
      return;
    }
    waiter.resolve(reply.result);
  }

  private release(slot: { busy: number; worker: Worker }): void {
    if (--slot.busy === 0) slot.worker.unref();
  }

  private failAll(error: Error): void {
    this.broken ??= error;
    for (const [id, waiter] of this.waiting) {
      this.waiting.delete(id);
      this.release(waiter.slot);
      waiter.reject(this.poolFailure(error));
    }
  }

  private poolFailure(error: Error): FerryError {
    return new FerryError('internal', `${this.describe} failed: ${error.message}`, { retryable: true, cause: error });
  }
}

/** True when `view` lies in a SharedArrayBuffer: a worker can read it in place, without a copy. */
export function isShared(view: Uint8Array): boolean {
  return typeof SharedArrayBuffer !== 'undefined' && view.buffer instanceof SharedArrayBuffer;
}

/** A Buffer over a new SharedArrayBuffer of `length` bytes (contents zero). */
export function sharedBuffer(length: number): Buffer {
  return Buffer.from(new SharedArrayBuffer(length));
}

/**
 * `parts` joined into one new buffer that owns its whole ArrayBuffer (never a slice of Node's shared
 * pool), so it can be moved to another thread; one copy, where `new Uint8Array(Buffer.concat(parts))`
 * would make two.
 */
export function joinForTransfer(parts: readonly Uint8Array[]): Uint8Array<ArrayBuffer> {
  const joined = new Uint8Array(parts.reduce((total, part) => total + part.length, 0));
  let offset = 0;
  for (const part of parts) {
    joined.set(part, offset);
    offset += part.length;
  }
  return joined;
}

/**
 * A few shared buffers of one size kept for reuse. A SharedArrayBuffer handed to a worker is freed only
 * once every thread that saw it has collected its garbage, and an idle worker seldom does: fresh shared
 * buffers per request pile up. Reusing a few bounds that memory.
 */
export class SharedBufferCache {
  private readonly free: Buffer[] = [];

  /** Keeps at most `kept` buffers of `bufferBytes` bytes, made by `allocate` (default: `sharedBuffer`). */
  constructor(
    readonly bufferBytes: number,
    private readonly kept: number,
    private readonly allocate: (length: number) => Buffer = sharedBuffer,
  ) {}

  /** A shared buffer of at least `length` bytes: a kept one when it fits, else a new one (of `bufferBytes` at least). */
  take(length: number): Buffer {
    if (length <= this.bufferBytes && this.free.length > 0) return this.free.pop()!;
    return this.allocate(Math.max(length, this.bufferBytes));
  }

  /** Gives a buffer from `take` back once nothing (no thread) uses it any more; kept when it is of the usual size and there is room. */
  give(buffer: Buffer): void {
    if (buffer.length === this.bufferBytes && this.free.length < this.kept) this.free.push(buffer);
  }

  /** Drops the kept buffers. */
  clear(): void {
    this.free.length = 0;
  }
}
