/**
 * Runs server jobs (test failover and its cleanup) one at a time, in the order they were queued. Jobs
 * found running at start-up were interrupted by a crash and are run again: every handler is idempotent.
 */
import { asFerryError } from '../errors.js';
import type { JobRow } from '../db/schema.js';
import type { CoreContext } from './context.js';
import type { Jobs } from './jobs.js';

/** A handler for one kind of server job; returns the job's result. */
export type JobHandler = (job: JobRow) => Promise<Record<string, unknown>>;

/** Pulls queued server jobs and runs their handlers. */
export class JobRunner {
  private stopped = false;
  private loop: Promise<void> | null = null;
  private wake: (() => void) | null = null;
  private readonly onWork = () => this.wake?.();

  constructor(
    private readonly context: CoreContext,
    private readonly jobs: Jobs,
    private readonly handlers: Record<string, JobHandler>,
  ) {}

  start(): void {
    this.context.signals.on('work', this.onWork);
    this.loop = this.run();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.context.signals.off('work', this.onWork);
    this.wake?.();
    await this.loop;
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      const [job] = await this.jobs.pendingServerJobs();
      if (!job) {
        await new Promise<void>((resolve) => {
          this.wake = resolve;
          setTimeout(resolve, 5000);
        });
        continue;
      }
      await this.execute(job);
    }
  }

  private async execute(job: JobRow): Promise<void> {
    const handler = this.handlers[job.kind];
    if (job.state === 'queued') await this.jobs.transition(job.id, 'start');
    if (!handler) {
      await this.jobs.transition(job.id, 'fail', { error: { code: 'internal', message: `no handler for job kind ${job.kind}`, retryable: false } });
      return;
    }
    try {
      const result = await handler(job);
      await this.jobs.transition(job.id, 'succeed', { result });
    } catch (error) {
      const failure = asFerryError(error);
      this.context.log.error({ err: error, jobId: job.id }, `job ${job.id} (${job.kind}) failed`);
      await this.jobs.transition(job.id, 'fail', { error: { code: failure.code, message: failure.message, retryable: failure.retryable } });
    }
  }
}
