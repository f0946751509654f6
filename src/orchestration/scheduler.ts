/**
 * The scheduler: on every tick, for each protected machine, queue a point when the policy's interval
 * has passed (waiting `retryDelayMs` after a failure), and expire points past retention. It also
 * watches every machine's health and records each change as an alert event.
 */
import type { CoreContext } from './context.js';
import type { Events } from './events.js';
import { replicationJobKinds } from './jobs.js';
import type { Machines } from './machines.js';
import type { Points } from './points.js';
import { retentionRulesOf } from './policies.js';

/** Runs `tick` on an interval until stopped. */
export class Scheduler {
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;

  constructor(
    private readonly context: CoreContext,
    private readonly points: Points,
    private readonly machines: Machines,
    private readonly events: Events,
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
      .select(['policies.interval_seconds', 'policies.retention_seconds', 'policies.keep_all_seconds', 'policies.hourly_seconds', 'policies.app_retention_seconds'])
      .where('machines.state', 'in', ['protecting', 'protected'])
      .execute();
    for (const { interval_seconds, retention_seconds, keep_all_seconds, hourly_seconds, app_retention_seconds, ...machine } of machines) {
      const lastFailure = await db
        .selectFrom('jobs')
        .select('ended_at')
        .where('machine_id', '=', machine.id)
        .where('kind', 'in', replicationJobKinds)
        .where('state', '=', 'failed')
        .orderBy('ended_at', 'desc')
        .limit(1)
        .executeTakeFirst();
      const lastAttemptFailedRecently = lastFailure?.ended_at != null && now() - lastFailure.ended_at < options.retryDelayMs;
      // Due: still protecting, never a point, the interval has passed, or the last attempt failed
      // (then retried once the retry delay has passed).
      const due =
        machine.state === 'protecting' ||
        machine.last_point_at === null ||
        now() - machine.last_point_at >= interval_seconds * 1000 ||
        machine.replication_error !== null;
      // A machine that left the replicating states since the list was read (a failover) is refused: skip it.
      if (due && !lastAttemptFailedRecently) await this.points.ensureReplicationJob(machine.id).catch((error: unknown) => this.context.log.debug({ err: error, machine: machine.name }, 'no point queued'));
      await this.points.expire(machine, retentionRulesOf({ retention_seconds, keep_all_seconds, hourly_seconds, app_retention_seconds }));
    }
    await this.recordHealthChanges();
  }

  /** Records an alert event whenever a protected machine's health level changes. */
  async recordHealthChanges(): Promise<void> {
    const watched = await this.context.db.selectFrom('machines').select(['id', 'name', 'health_level']).where('state', '!=', 'unprotected').execute();
    for (const machine of watched) {
      const { health } = await this.machines.view(machine.name);
      if (health.level === machine.health_level) continue;
      await this.context.db.updateTable('machines').set({ health_level: health.level }).where('id', '=', machine.id).execute();
      await this.events.record({
        machineId: machine.id,
        severity: health.level === 'critical' ? 'error' : health.level === 'warning' ? 'warning' : 'info',
        code: 'health-changed',
        message: `${machine.name}: health ${machine.health_level} -> ${health.level}${health.reasons.length ? `: ${health.reasons.join('; ')}` : ''}`,
      });
    }
  }
}
