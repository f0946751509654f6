/**
 * Runs server jobs (test failover and its cleanup, a recovery plan's script actions...) concurrently:
 * each claimed job in its own task, at most `concurrency` at once, and the jobs of one machine one at a
 * time in the order they were queued (the oldest unfinished job of a machine runs first; the next waits
 * for it to end). Jobs without a machine only share the bound. Running jobs side by side matters because
 * a recovery plan waits for several machines' jobs at once (a queue of one would make it serial).
 *
 * Jobs found running at start-up were interrupted by a crash or a stop and are run again: every handler
 * is idempotent. A handler is given a signal that aborts when the runner stops; a handler that then
 * gives up (a script killed on the way down) leaves its job running, to be run again after the restart.
 */
import { asFerryError } from '../errors.js';
import type { JobRow } from '../db/schema.js';
import type { CoreContext } from './context.js';
import type { Jobs } from './jobs.js';

/**
 * A handler for one kind of server job; returns the job's result. `signal` aborts when the server
 * stops: a handler that can stop early may, by throwing; its job then stays running and is run again.
 */
export type JobHandler = (job: JobRow, signal: AbortSignal) => Promise<Record<string, unknown>>;

/** How many server jobs run at once by default. */
export const DEFAULT_SERVER_JOB_CONCURRENCY = 4;

/** Pulls queued server jobs and runs their handlers, several at once. */
export class JobRunner {
  private stopped = false;
  private loop: Promise<void> | null = null;
  private readonly inFlight = new Map<string, { machineId: string | null; task: Promise<void> }>();
  private readonly stopping = new AbortController();
  private woken = false;
  private wake: (() => void) | null = null;
  private readonly onWork = () => this.notify();
  private readonly concurrency: number;

  constructor(
    private readonly context: CoreContext,
    private readonly jobs: Jobs,
    private readonly handlers: Record<string, JobHandler>,
    options: { concurrency?: number } = {},
  ) {
    this.concurrency = Math.max(1, options.concurrency ?? DEFAULT_SERVER_JOB_CONCURRENCY);
  }

  start(): void {
    this.context.signals.on('work', this.onWork);
    this.loop = this.run();
  }

  /** Stops claiming jobs, aborts the handlers' signal and waits for every running handler to return. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.stopping.abort();
    this.context.signals.off('work', this.onWork);
    this.notify();
    await this.loop;
  }

  /** Ids of the jobs whose handlers are running now (for tests and diagnostics). */
  running(): string[] {
    return [...this.inFlight.keys()];
  }

  private notify(): void {
    this.woken = true;
    this.wake?.();
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      try {
        this.claim(await this.jobs.pendingServerJobs());
      } catch (error) {
        this.context.log.error({ err: error }, 'job runner could not read its queue');
      }
      await this.idle();
    }
    await Promise.all([...this.inFlight.values()].map((entry) => entry.task));
  }

  /**
   * Starts what may start from `pending` (oldest first): a job not already running here, whose machine
   * has no job running here and no older unfinished job, while fewer than `concurrency` run.
   */
  private claim(pending: JobRow[]): void {
    const busyMachines = new Set([...this.inFlight.values()].map((entry) => entry.machineId).filter((id): id is string => id !== null));
    for (const job of pending) {
      if (this.stopped) return;
      if (this.inFlight.has(job.id)) continue;
      if (job.machine_id !== null) {
        if (busyMachines.has(job.machine_id)) continue; // an older job of this machine goes first
        busyMachines.add(job.machine_id);
      }
      if (this.inFlight.size >= this.concurrency) return;
      const task = this.execute(job).finally(() => {
        this.inFlight.delete(job.id);
        this.notify();
      });
      this.inFlight.set(job.id, { machineId: job.machine_id, task });
    }
  }

  /** Waits for a job change, a handler to end, or 5 s; returns at once if one happened meanwhile. */
  private async idle(): Promise<void> {
    if (!this.woken && !this.stopped) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 5000);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wake = null;
    }
    this.woken = false;
  }

  private async execute(job: JobRow): Promise<void> {
    try {
      const handler = this.handlers[job.kind];
      if (job.state === 'queued') await this.jobs.transition(job.id, 'start');
      if (!handler) {
        await this.jobs.transition(job.id, 'fail', { error: { code: 'internal', message: `no handler for job kind ${job.kind}`, retryable: false } });
        return;
      }
      try {
        const result = await handler(job, this.stopping.signal);
        await this.jobs.transition(job.id, 'succeed', { result });
      } catch (error) {
        if (this.stopping.signal.aborted) {
          this.context.log.warn({ err: error, jobId: job.id }, `job ${job.id} (${job.kind}) interrupted by the server stopping; it runs again after the restart`);
          return;
        }
        const failure = asFerryError(error);
        this.context.log.error({ err: error, jobId: job.id }, `job ${job.id} (${job.kind}) failed`);
        await this.jobs.transition(job.id, 'fail', { error: { code: failure.code, message: failure.message, retryable: failure.retryable } });
      }
    } catch (error) {
      // The job changed under us (cancelled while queued, say): nothing to run; the next pass re-reads.
      this.context.log.warn({ err: error, jobId: job.id }, `job ${job.id} (${job.kind}) could not be run`);
    }
  }
}
