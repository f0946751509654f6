/**
 * The scheduler: on every tick, for each protected machine, queue a point when the policy's interval
 * has passed (waiting `retryDelayMs` after a failure), and expire points past retention.
 */
import type { CoreContext } from './context.js';
import type { Points } from './points.js';

/** Runs `tick` on an interval until stopped. */
export class Scheduler {
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;

  constructor(
    private readonly context: CoreContext,
    private readonly points: Points,
  ) {}

  start(): void {
    this.timer = setInterval(() => {
      if (!this.running) {
        this.running = this.tick()
          .catch((error: unknown) => this.context.log.error({ err: error }, 'scheduler tick failed'))
          .finally(() => (this.running = null));
      }
    }, this.context.options.schedulerTickMs);
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.running;
  }

  /** One pass over every protected machine. */
  async tick(): Promise<void> {
    const { db, now, options } = this.context;
    const machines = await db
      .selectFrom('machines')
      .innerJoin('policies', 'policies.id', 'machines.policy_id')
      .selectAll('machines')
      .select(['policies.interval_seconds', 'policies.retention_seconds'])
      .where('machines.state', 'in', ['protecting', 'protected'])
      .execute();
    for (const { interval_seconds, retention_seconds, ...machine } of machines) {
      const lastFailure = await db
        .selectFrom('jobs')
        .select('ended_at')
        .where('machine_id', '=', machine.id)
        .where('kind', 'in', ['initial-replication', 'point'])
        .where('state', '=', 'failed')
        .orderBy('ended_at', 'desc')
        .limit(1)
        .executeTakeFirst();
      const lastAttemptFailedRecently = lastFailure?.ended_at != null && now() - lastFailure.ended_at < options.retryDelayMs;
      const retryPending = machine.replication_error !== null && !lastAttemptFailedRecently;
      const due =
        machine.state === 'protecting' ||
        machine.last_point_at === null ||
        now() - machine.last_point_at >= interval_seconds * 1000 ||
        retryPending;
      if (due && !lastAttemptFailedRecently) await this.points.ensureReplicationJob(machine.id);
      await this.points.expire(machine, retention_seconds);
    }
  }
}
