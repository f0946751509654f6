/**
 * `GET /api/v1/stream` (admin): live updates for the portal as a `text/event-stream`. Browsers read it
 * with fetch() (EventSource cannot send the Authorization header). Events, each `data` one JSON line:
 *
 *   event: job       JobView      a job appeared or changed (state, step, progress); also its last state
 *   event: machine   MachineView  a machine changed; every machine on connect and every `machineRefreshMs`
 *   event: event     EventView    an event was recorded since the stream opened (alerts among them)
 *   : heartbeat                   a comment every `heartbeatMs`, so proxies and the client see it alive
 *
 * What changed is found by polling: at once when the core signals 'work' (a job was queued or changed
 * state), and every `pollMs` besides (agents' progress reports do not signal). The stream ends when the
 * client goes away, when the server begins to stop (the core's shutdown signal), or when Fastify closes.
 */
import type { FastifyInstance } from 'fastify';
import type { FerryCore } from '../../orchestration/core.js';
import type { JobView, MachineView } from '../../protocol/views.js';

/** Timing of the stream; tests may shorten it. */
export interface StreamOptions {
  /** How often jobs, machines and events are checked without a 'work' signal. */
  pollMs: number;
  /** How often a heartbeat comment is sent. */
  heartbeatMs: number;
  /** How often every machine is sent even if unchanged (its RPO grows while nothing else changes). */
  machineRefreshMs: number;
}

/** Defaults: check every 2 s, heartbeat every 15 s, every machine every 10 s. */
export const DEFAULT_STREAM_OPTIONS: StreamOptions = { pollMs: 2_000, heartbeatMs: 15_000, machineRefreshMs: 10_000 };

/** Recent jobs checked on each poll besides the active ones, so a job that just ended is sent once more. */
const RECENT_JOBS = 25;
/** Newest events checked on each poll. */
const RECENT_EVENTS = 20;
/** A 'work' signal is followed by a check this soon, so bursts of signals make one check. */
const SIGNAL_DEBOUNCE_MS = 150;

/** Registers the stream route; open streams end when `app` closes. */
export function streamRoutes(app: FastifyInstance, core: FerryCore, options: Partial<StreamOptions> = {}): void {
  const timing = { ...DEFAULT_STREAM_OPTIONS, ...options };
  const open = new Set<() => void>();
  app.addHook('preClose', (done) => {
    for (const end of [...open]) end();
    done();
  });

  app.get('/api/v1/stream', async (request, reply) => {
    reply.hijack();
    const raw = reply.raw;
    raw.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache, no-transform',
      connection: 'keep-alive',
      'x-accel-buffering': 'no', // a reverse proxy must not buffer the stream
    });
    raw.write(': ferry stream\n\n');

    const sentJobs = new Map<string, string>();
    const sentMachines = new Map<string, string>();
    let activeJobIds = new Set<string>();
    let lastEventId: number | null = null;
    let lastMachineRefresh = 0;
    let ended = false;
    let checking = false;
    let checkAgain = false;
    let pending: NodeJS.Timeout | null = null;

    const send = (event: string, data: unknown) => {
      if (!ended) raw.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
    };

    const check = async () => {
      if (ended) return;
      if (checking) {
        checkAgain = true;
        return;
      }
      checking = true;
      try {
        do {
          checkAgain = false;
          await checkJobs();
          await checkMachines();
          await checkEvents();
        } while (checkAgain && !ended);
      } catch (error) {
        // The database closes as the server stops; otherwise a failed check is retried at the next poll.
        if (!core.context.shutdown.aborted) request.log.warn({ err: error }, 'stream check failed');
      } finally {
        checking = false;
      }
    };

    const checkJobs = async () => {
      const active = await core.jobs.list({ activeOnly: true, limit: 1000 });
      const recent = await core.jobs.list({ limit: RECENT_JOBS });
      const seen = new Map<string, JobView>();
      for (const job of [...recent, ...active]) seen.set(job.id, job);
      // A job active last time and in neither list now ended among many others: fetch its last state.
      for (const id of activeJobIds) if (!seen.has(id)) seen.set(id, await core.jobs.view(id));
      activeJobIds = new Set(active.map((job) => job.id));
      for (const job of seen.values()) {
        const fingerprint = JSON.stringify(job);
        if (sentJobs.get(job.id) === fingerprint) continue;
        sentJobs.set(job.id, fingerprint);
        send('job', job);
      }
    };

    const checkMachines = async () => {
      const machines = await core.machines.list();
      const refresh = core.context.now() - lastMachineRefresh >= timing.machineRefreshMs;
      if (refresh) lastMachineRefresh = core.context.now();
      for (const machine of machines) {
        const fingerprint = machineFingerprint(machine);
        if (!refresh && sentMachines.get(machine.name) === fingerprint) continue;
        sentMachines.set(machine.name, fingerprint);
        send('machine', machine);
      }
    };

    const checkEvents = async () => {
      const events = await core.events.list({ limit: RECENT_EVENTS, alertsOnly: false });
      const newest = events[0]?.id ?? 0;
      // The first check only notes where the stream starts: the portal loads older events itself.
      if (lastEventId !== null) for (const event of [...events].reverse()) if (event.id > lastEventId) send('event', event);
      lastEventId = Math.max(lastEventId ?? 0, newest);
    };

    const onWork = () => {
      if (pending || ended) return;
      pending = setTimeout(() => {
        pending = null;
        void check();
      }, SIGNAL_DEBOUNCE_MS);
    };
    const poll = setInterval(() => void check(), timing.pollMs);
    const heartbeat = setInterval(() => {
      if (!ended) raw.write(': heartbeat\n\n');
    }, timing.heartbeatMs);

    const end = () => {
      if (ended) return;
      ended = true;
      open.delete(end);
      clearInterval(poll);
      clearInterval(heartbeat);
      if (pending) clearTimeout(pending);
      core.context.signals.off('work', onWork);
      core.context.shutdown.removeEventListener('abort', end);
      raw.end();
    };
    open.add(end);
    core.context.signals.on('work', onWork);
    core.context.shutdown.addEventListener('abort', end, { once: true });
    // The response's 'close' is the connection's end (the request's fires once its body is read).
    raw.once('close', end);
    if (core.context.shutdown.aborted) return end();
    await check();
  });
}

/** A machine's view without what changes every second by itself (RPO, last seen, ETA). */
function machineFingerprint(machine: MachineView): string {
  return JSON.stringify({
    ...machine,
    rpoSeconds: null,
    agent: { ...machine.agent, lastSeenAt: null },
    recoveryAgent: machine.recoveryAgent ? { ...machine.recoveryAgent, lastSeenAt: null } : null,
    replication: { ...machine.replication, etaSeconds: null },
  });
}
