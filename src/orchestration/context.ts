/**
 * What every core module works with: the database, the chunk store, a clock, a logger and a signal
 * that wakes whoever waits for new work (long-polling agents, the server's job runner).
 */
import { EventEmitter, once } from 'node:events';
import type { Db } from '../db/database.js';
import type { ChunkStore } from '../store/chunk-store.js';
import { DEFAULT_CHUNK_SIZE } from '../store/chunking.js';
import type { Logger } from '../util/logger.js';

/** Tunables of the control plane, compiled once with their defaults by `compileCoreOptions`. */
export interface CoreOptions {
  /** An agent not heard from for this long is shown offline and its machines critical. */
  agentOfflineAfterMs: number;
  /** After a failed replication, wait this long before the scheduler tries again. */
  retryDelayMs: number;
  /** How often the scheduler looks for due points and expired ones. */
  schedulerTickMs: number;
  /** Size of the chunks disks are cut into for new points. */
  chunkSize: number;
}

/** Fills in defaults for anything not given. */
export function compileCoreOptions(partial: Partial<CoreOptions> = {}): CoreOptions {
  return {
    agentOfflineAfterMs: partial.agentOfflineAfterMs ?? 60_000,
    retryDelayMs: partial.retryDelayMs ?? 30_000,
    schedulerTickMs: partial.schedulerTickMs ?? 1_000,
    chunkSize: partial.chunkSize ?? DEFAULT_CHUNK_SIZE,
  };
}

/** Shared by all core modules of one server. */
export interface CoreContext {
  db: Db;
  store: ChunkStore;
  log: Logger;
  options: CoreOptions;
  now(): number;
  /** Emits 'work' whenever a job is queued or changes, so waiters re-check at once. */
  signals: EventEmitter;
  /** Aborted when the server begins to stop: long polls and waits return at once. */
  shutdown: AbortSignal;
}

/** Tells waiters that jobs changed. */
export function signalWork(context: CoreContext): void {
  context.signals.emit('work');
}

/** A wait for jobs to change, already listening: `changed` settles on the change or when the wait ends. */
export interface JobChangeWait {
  /** Resolves (never rejects) when jobs change, the wait is stopped, its time is up, or it is aborted. */
  changed: Promise<void>;
  /** Ends the wait at once; `changed` resolves. */
  stop(): void;
}

/**
 * Long-poll helper: starts listening for jobs to change (`signalWork`) at once, for at most `maxMs`, or
 * until `signal` or the server's shutdown aborts. Start it before looking at what you wait for, then
 * await `changed` only if it is not there yet (or `stop()`): a change between the look and the wait is
 * not missed. The listeners and the timer are removed either way, so long polls leave nothing behind.
 */
export function listenForJobChange(context: CoreContext, maxMs: number, signal?: AbortSignal): JobChangeWait {
  const wait = new AbortController();
  const stop = () => wait.abort();
  const timer = setTimeout(stop, Math.max(0, maxMs));
  // Listeners rather than AbortSignal.any: on Node 20 a signal made by any() from a long-lived one (the
  // server's shutdown signal) stays referenced by it for good, so every poll would leak one.
  context.shutdown.addEventListener('abort', stop);
  signal?.addEventListener('abort', stop);
  if (context.shutdown.aborted || signal?.aborted) stop();
  const changed = once(context.signals, 'work', { signal: wait.signal })
    .then(
      () => undefined,
      () => undefined,
    )
    .finally(() => {
      clearTimeout(timer);
      context.shutdown.removeEventListener('abort', stop);
      signal?.removeEventListener('abort', stop);
    });
  return { changed, stop };
}

/** Parses a JSON column written by this code; a corrupt value becomes an empty object rather than a crash. */
export function parseJsonColumn<T>(text: string | null, fallback: T): T {
  if (text === null) return fallback;
  try {
    return JSON.parse(text) as T;
  } catch {
    return fallback;
  }
}
