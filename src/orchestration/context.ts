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

/**
 * Long-poll helper: waits until jobs change (`signalWork`), `signal` or the server's shutdown aborts, or
 * `maxMs` pass, whichever comes first; never throws. Callers re-check what they wait for afterwards, in a
 * loop bounded by their deadline. The listener and the timer are removed either way, so long polls leave
 * nothing behind.
 */
export async function waitForJobChange(context: CoreContext, maxMs: number, signal?: AbortSignal): Promise<void> {
  const wait = new AbortController();
  const timer = setTimeout(() => wait.abort(), Math.max(0, maxMs));
  const signals = [wait.signal, context.shutdown, ...(signal ? [signal] : [])];
  await once(context.signals, 'work', { signal: AbortSignal.any(signals) }).catch(() => undefined);
  clearTimeout(timer);
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
