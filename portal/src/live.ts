/**
 * What the portal knows about the server right now: machines, recent jobs and events, kept current by
 * the server's event stream (GET /api/v1/stream, see src/server/routes/stream.ts). Pages read it with
 * `useLive()`; nothing polls. The stream is read with fetch() because EventSource cannot send the
 * Authorization header; after a break it reconnects (reloading what it may have missed).
 */
import { useSyncExternalStore } from 'react';
import type { EventView, JobView, MachineView } from '../../src/protocol/views.js';
import { api, ApiError, reportUnauthorized } from './api.js';

/** Whether updates are arriving. */
export type LiveStatus = 'connecting' | 'live' | 'reconnecting';

/** One consistent view of the live state; a new object whenever anything in it changes. */
export interface LiveState {
  status: LiveStatus;
  /** False until the first load answered. */
  loaded: boolean;
  /** Why the last load failed, for a person; null when it worked. */
  loadError: string | null;
  /** By name. */
  machines: MachineView[];
  /** Newest first, at most MAX_JOBS. */
  jobs: JobView[];
  /** Newest first, at most MAX_EVENTS. */
  events: EventView[];
}

const MAX_JOBS = 500;
const MAX_EVENTS = 200;
/** The server sends a heartbeat every 15 s: a silence this long means the connection is gone. */
const SILENCE_LIMIT_MS = 45_000;

const byName = (a: MachineView, b: MachineView) => a.name.localeCompare(b.name);
const newestFirst = (a: JobView, b: JobView) => b.createdAt.localeCompare(a.createdAt) || a.id.localeCompare(b.id);

/** The live state and the connection that feeds it; one per signed-in session. */
export class LiveStore {
  private state: LiveState = { status: 'connecting', loaded: false, loadError: null, machines: [], jobs: [], events: [] };
  private readonly listeners = new Set<() => void>();
  private readonly stopped = new AbortController();

  constructor(private readonly token: string) {}

  /** For useSyncExternalStore. */
  readonly subscribe = (listener: () => void): (() => void) => {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  };

  /** For useSyncExternalStore. */
  readonly snapshot = (): LiveState => this.state;

  /** Loads everything and keeps reading the stream until `stop()`. */
  start(): void {
    void this.run();
  }

  /** Closes the stream for good (sign-out). */
  stop(): void {
    this.stopped.abort();
  }

  /** Loads machines, jobs and events again (after an action, so the page shows its effect at once). */
  async reload(): Promise<void> {
    try {
      const [machines, jobs, events] = await Promise.all([
        api<{ machines: MachineView[] }>('GET', '/machines', undefined, this.token),
        api<{ jobs: JobView[] }>('GET', `/jobs?limit=${MAX_JOBS}`, undefined, this.token),
        api<{ events: EventView[] }>('GET', `/events?limit=${MAX_EVENTS}`, undefined, this.token),
      ]);
      this.set({ loaded: true, loadError: null, machines: machines.machines.sort(byName), jobs: jobs.jobs, events: events.events });
    } catch (error) {
      this.set({ loaded: true, loadError: (error as Error).message });
    }
  }

  private set(changes: Partial<LiveState>): void {
    this.state = { ...this.state, ...changes };
    for (const listener of this.listeners) listener();
  }

  private async run(): Promise<void> {
    let failures = 0;
    while (!this.stopped.signal.aborted) {
      await this.reload();
      try {
        await this.read(() => {
          failures = 0;
          this.set({ status: 'live' });
        });
      } catch (error) {
        if (error instanceof ApiError && error.status === 401) {
          reportUnauthorized(error);
          return;
        }
      }
      if (this.stopped.signal.aborted) return;
      failures++;
      this.set({ status: 'reconnecting' });
      await delay(Math.min(1000 * 2 ** (failures - 1), 10_000), this.stopped.signal);
    }
  }

  /** Reads the stream until it ends; `onOpen` once the server accepted it. */
  private async read(onOpen: () => void): Promise<void> {
    const connection = new AbortController();
    const stop = () => connection.abort();
    this.stopped.signal.addEventListener('abort', stop);
    let watchdog = setTimeout(stop, SILENCE_LIMIT_MS);
    try {
      const response = await fetch('/api/v1/stream', {
        headers: { authorization: `Bearer ${this.token}`, accept: 'text/event-stream' },
        signal: connection.signal,
      });
      if (!response.ok || !response.body) {
        const body = (await response.json().catch(() => null)) as { error?: { code?: string; message?: string } } | null;
        throw new ApiError(response.status, body?.error?.code ?? 'internal', body?.error?.message ?? `stream answered ${response.status}`, true);
      }
      onOpen();
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        clearTimeout(watchdog);
        watchdog = setTimeout(stop, SILENCE_LIMIT_MS);
        buffer += value.replace(/\r\n?/g, '\n');
        let end: number;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          this.dispatch(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
    } finally {
      clearTimeout(watchdog);
      this.stopped.signal.removeEventListener('abort', stop);
    }
  }

  /** Applies one event block ("event: job\ndata: {...}"); comments (heartbeats) are ignored. */
  private dispatch(block: string): void {
    let event = 'message';
    const data: string[] = [];
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
      if (field === 'event') event = value;
      else if (field === 'data') data.push(value);
    }
    if (data.length === 0) return;
    const payload = JSON.parse(data.join('\n')) as unknown;
    if (event === 'job') this.upsertJob(payload as JobView);
    else if (event === 'machine') this.upsertMachine(payload as MachineView);
    else if (event === 'event') this.addEvent(payload as EventView);
  }

  private upsertJob(job: JobView): void {
    const jobs = this.state.jobs.filter((known) => known.id !== job.id);
    jobs.push(job);
    this.set({ jobs: jobs.sort(newestFirst).slice(0, MAX_JOBS) });
  }

  private upsertMachine(machine: MachineView): void {
    const machines = this.state.machines.filter((known) => known.name !== machine.name);
    machines.push(machine);
    this.set({ machines: machines.sort(byName) });
  }

  private addEvent(event: EventView): void {
    if (this.state.events.some((known) => known.id === event.id)) return;
    this.set({ events: [event, ...this.state.events].sort((a, b) => b.id - a.id).slice(0, MAX_EVENTS) });
  }
}

function delay(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => {
      clearTimeout(timer);
      resolve();
    }, { once: true });
  });
}

/** The live state of `store`, re-rendering the caller whenever it changes. */
export function useLiveState(store: LiveStore): LiveState {
  return useSyncExternalStore(store.subscribe, store.snapshot);
}
