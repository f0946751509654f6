/**
 * Failover (not test): bring a protected machine up at its recovery site from a recovery point, change
 * that point before committing, and commit. The machine's state changes only through the table in
 * lifecycle.ts; this module's own record (one `failovers` row per machine) says how far the operation is:
 *
 *   planned:   final-point -> writing -> ready -> committed
 *   unplanned:                writing -> ready -> committed
 *   change-point (from ready): writing -> ready   (on failure: back to ready, the old disks untouched)
 *
 * Planned failover loses nothing: the agent runs the machine's shutdown command (its workload stops, so
 * every write it acknowledged is on its disks), then takes a final point (a `final-point` job, run by the
 * agent like any cycle), and that point is failed over to. Unplanned failover uses what the store has
 * (`--point latest|latest-app|ID|TIME`): the source may be gone.
 *
 * Writing the disks is a server job (`failover`): each point's disks go to a directory of their own at
 * the site (SITE/<machine>/failover/<point id>/), so changing the point never damages the disks in use
 * until the new ones are complete. Every step is idempotent and driven by `advance`, which runs on every
 * job change and at start-up: a crash at any moment is resumed, or rolled back to `protected` when the
 * failover never completed.
 */
import { FerryError } from '../errors.js';
import type { FilesDriver } from '../compute/files-driver.js';
import type { FailoverRow, JobRow, MachineRow } from '../db/schema.js';
import type { FailoverDiskView, FailoverView, JobView } from '../protocol/views.js';
import { type CoreContext, parseJsonColumn, signalWork } from './context.js';
import type { Events } from './events.js';
import { type Jobs, jobView, replicationJobKinds } from './jobs.js';
import { activeJobStates, type MachineState, machineTransitions, nextState } from './lifecycle.js';
import type { Machines } from './machines.js';
import type { Points } from './points.js';

/** What a failover request answers at once: the job to follow and the failover as it stands. */
export interface FailoverStarted {
  job: JobView;
  failover: FailoverView;
}

/** Requests, performs and commits failovers. */
export class Failovers {
  private advancing: Promise<void> | null = null;
  private again = false;
  private readonly onWork = () => void this.advance().catch((error: unknown) => this.context.log.error({ err: error }, 'failover advance failed'));

  constructor(
    private readonly context: CoreContext,
    private readonly jobs: Jobs,
    private readonly machines: Machines,
    private readonly points: Points,
    private readonly events: Events,
    private readonly driver: FilesDriver,
  ) {}

  /** Follows job changes (a planned failover's final point ending) and resumes what a crash interrupted. */
  start(): void {
    this.context.signals.on('work', this.onWork);
    this.onWork();
  }

  async stop(): Promise<void> {
    this.context.signals.off('work', this.onWork);
    await this.advancing;
  }

  /**
   * `ferry failover MACHINE --planned | --unplanned [--point P] | --change-point --point P`. Refused with
   * conflict (naming the state and what it allows) when the machine's state does not allow it; planned
   * failover needs a shutdown command (`ferry machine set M --shutdown CMD`).
   */
  async request(machineName: string, mode: 'planned' | 'unplanned' | 'change-point', pointSelector: string): Promise<FailoverStarted> {
    const machine = await this.machines.get(machineName);
    const subject = `machine '${machineName}'`;
    if (mode === 'change-point') return this.changePoint(machine, pointSelector);
    nextState(machineTransitions, subject, machine.state as MachineState, 'failover'); // refuse early, with the table's message
    if (mode === 'planned' && !machine.shutdown_command) {
      throw new FerryError(
        'invalid-request',
        `a planned failover of '${machineName}' stops its workload first, and the machine has no shutdown command: set one with \`ferry machine set ${machineName} --shutdown CMD\`, or fail over --unplanned`,
      );
    }
    const point = mode === 'unplanned' ? await this.points.resolve(machine, pointSelector) : null;
    const site = await this.context.db.selectFrom('sites').select('path').where('id', '=', machine.site_id!).executeTakeFirstOrThrow();
    const job = await this.context.db.transaction().execute(async (db) => {
      const current = await db.selectFrom('machines').select('state').where('id', '=', machine.id).executeTakeFirstOrThrow();
      const state = nextState(machineTransitions, subject, current.state as MachineState, 'failover');
      await db.updateTable('machines').set({ state, updated_at: this.context.now() }).where('id', '=', machine.id).execute();
      // No cycle that started before the failover may commit after it: cancel them (their commit is refused).
      const active = await db.selectFrom('jobs').select('id').where('machine_id', '=', machine.id).where('kind', 'in', replicationJobKinds).where('state', 'in', activeJobStates).execute();
      for (const each of active) await this.jobs.transition(each.id, 'cancel', { error: { code: 'cancelled', message: 'cancelled by a failover', retryable: false } }, db);
      const created =
        mode === 'planned'
          ? await this.jobs.create({ kind: 'final-point', machineId: machine.id, agentId: machine.agent_id, params: { chunkSize: this.context.options.chunkSize, consistency: 'app', shutdown: true } }, db)
          : await this.jobs.create({ kind: 'failover', machineId: machine.id, agentId: null, params: { pointId: point!.id } }, db);
      const now = this.context.now();
      await db
        .insertInto('failovers')
        .values({
          machine_id: machine.id,
          kind: mode,
          state: mode === 'planned' ? 'final-point' : 'writing',
          point_id: null,
          final_job_id: mode === 'planned' ? created.id : null,
          job_id: created.id,
          site_path: site.path,
          disks: '[]',
          error: null,
          created_at: now,
          updated_at: now,
          committed_at: null,
        })
        .execute();
      return created;
    });
    signalWork(this.context);
    await this.events.record({
      machineId: machine.id,
      severity: 'warning',
      code: 'failover-started',
      message:
        mode === 'planned'
          ? `${machineName}: planned failover started: the agent stops the workload and takes a final point (job ${job.id})`
          : `${machineName}: unplanned failover to ${point!.id} started (job ${job.id})`,
    });
    return { job: jobView(job, machine.name), failover: (await this.view(machine.id))! };
  }

  /** `ferry commit MACHINE`: the failover becomes final. A job that ends at once. */
  async commit(machineName: string): Promise<{ job: JobView; failover: FailoverView }> {
    const machine = await this.machines.get(machineName);
    const job = await this.context.db.transaction().execute(async (db) => {
      const current = await db.selectFrom('machines').select('state').where('id', '=', machine.id).executeTakeFirstOrThrow();
      const state = nextState(machineTransitions, `machine '${machineName}'`, current.state as MachineState, 'commit');
      const now = this.context.now();
      await db.updateTable('machines').set({ state, updated_at: now }).where('id', '=', machine.id).execute();
      await db.updateTable('failovers').set({ state: 'committed', committed_at: now, updated_at: now }).where('machine_id', '=', machine.id).execute();
      const created = await this.jobs.create({ kind: 'commit', machineId: machine.id, agentId: null, params: {} }, db);
      await this.jobs.transition(created.id, 'start', { step: 'committing' }, db);
      return this.jobs.transition(created.id, 'succeed', { result: { machine: machineName } }, db);
    });
    const failover = (await this.view(machine.id))!;
    await this.events.record({ machineId: machine.id, severity: 'info', code: 'failover-committed', message: `${machineName}: failover to ${failover.pointId} committed` });
    return { job: jobView(job, machine.name), failover };
  }

  /** The machine's failover as the API shows it, or null when it has none. */
  async view(machineId: string): Promise<FailoverView | null> {
    const row = await this.context.db.selectFrom('failovers').selectAll().where('machine_id', '=', machineId).executeTakeFirst();
    return row ? failoverView(row) : null;
  }

  /**
   * Server job `failover`: writes the job's point's disks at the site, then makes them the failed-over
   * disks (`ready`) and removes the disks of the point they replace. Idempotent: run again after a crash.
   * On failure the machine goes back: to `protected` if nothing was failed over yet, else to
   * `failed-over` on the disks it had.
   */
  async runWrite(job: JobRow): Promise<Record<string, unknown>> {
    const machine = await this.machines.getById(job.machine_id!);
    const row = await this.context.db.selectFrom('failovers').selectAll().where('machine_id', '=', machine.id).executeTakeFirstOrThrow();
    const { pointId } = JSON.parse(job.params) as { pointId: string };
    const previous = parseJsonColumn<FailoverDiskView[]>(row.disks, []);
    const instance = { sitePath: row.site_path, machineName: machine.name, purpose: 'failover' as const, generation: pointId };
    try {
      const pointDisks = await this.context.db.selectFrom('point_disks').selectAll().where('point_id', '=', pointId).orderBy('position').execute();
      const planned = this.driver.plan(instance, pointDisks.map((disk) => ({ position: disk.position, sizeBytes: disk.size_bytes })));
      const totalBytes = pointDisks.reduce((total, disk) => total + disk.size_bytes, 0);
      const disks = [];
      for (const pointDisk of pointDisks) disks.push({ planned: planned.find((disk) => disk.position === pointDisk.position)!, index: await this.context.store.getIndex(pointDisk.index_hash) });
      let lastReport = 0;
      await this.driver.materialize(instance, this.context.store, disks, (doneBytes) => {
        if (Date.now() - lastReport > 200) {
          lastReport = Date.now();
          void this.jobs.progress(job.id, { doneBytes, totalBytes, step: 'writing disks' });
        }
      });
      await this.context.db.transaction().execute(async (db) => {
        const current = await db.selectFrom('machines').select('state').where('id', '=', machine.id).executeTakeFirstOrThrow();
        if (current.state !== 'failing-over') return; // a re-run after a crash that had already finished
        const state = nextState(machineTransitions, `machine '${machine.name}'`, 'failing-over', 'failover-done');
        await db.updateTable('machines').set({ state, updated_at: this.context.now() }).where('id', '=', machine.id).execute();
        await db.updateTable('failovers').set({ state: 'ready', point_id: pointId, disks: JSON.stringify(planned), error: null, updated_at: this.context.now() }).where('machine_id', '=', machine.id).execute();
      });
      const replaced = previous.length > 0 && row.point_id !== null && row.point_id !== pointId ? row.point_id : null;
      if (replaced) await this.driver.remove({ ...instance, generation: replaced });
      await this.events.record({
        machineId: machine.id,
        severity: 'warning',
        code: 'failover-ready',
        message: `${machine.name}: failed over to ${pointId}${replaced ? ` (was ${replaced})` : ''}; disks at ${row.site_path}; \`ferry commit ${machine.name}\` makes it final`,
      });
      return { machine: machine.name, pointId, disks: planned };
    } catch (error) {
      await this.rollBack(machine, row, `writing the disks of ${pointId} failed: ${(error as Error).message}`);
      if (previous.length === 0) await this.driver.remove(instance).catch(() => undefined);
      throw error;
    }
  }

  /**
   * Moves every failover waiting on something forward: a planned failover whose final point job ended
   * (succeeded: queue the write of its point; failed or cancelled: roll back). Runs on every job change
   * and at start-up; one pass at a time.
   */
  async advance(): Promise<void> {
    if (this.advancing) {
      this.again = true;
      return this.advancing;
    }
    this.advancing = (async () => {
      do {
        this.again = false;
        const waiting = await this.context.db.selectFrom('failovers').selectAll().where('state', '=', 'final-point').execute();
        for (const row of waiting) await this.advancePlanned(row);
      } while (this.again);
    })().finally(() => (this.advancing = null));
    return this.advancing;
  }

  private async advancePlanned(row: FailoverRow): Promise<void> {
    const finalJob = await this.jobs.get(row.final_job_id!);
    if (finalJob.state === 'queued' || finalJob.state === 'running') return;
    const machine = await this.machines.getById(row.machine_id);
    if (finalJob.state !== 'succeeded') {
      const why = finalJob.error_message ?? finalJob.state;
      await this.rollBack(machine, row, `the final point failed (${why}); the shutdown command may have stopped the workload: start it again, or fail over --unplanned`);
      return;
    }
    const { pointId } = parseJsonColumn<{ pointId?: string }>(finalJob.result, {});
    if (!pointId) {
      await this.rollBack(machine, row, `the final point job ${finalJob.id} succeeded without naming its point`);
      return;
    }
    await this.context.db.transaction().execute(async (db) => {
      const current = await db.selectFrom('failovers').select('state').where('machine_id', '=', row.machine_id).executeTakeFirst();
      if (current?.state !== 'final-point') return;
      const job = await this.jobs.create({ kind: 'failover', machineId: row.machine_id, agentId: null, params: { pointId } }, db);
      await db.updateTable('failovers').set({ state: 'writing', point_id: null, job_id: job.id, updated_at: this.context.now() }).where('machine_id', '=', row.machine_id).execute();
    });
    signalWork(this.context);
  }

  /** `--change-point`: rewrite the failed-over disks from another point (only before commit). */
  private async changePoint(machine: MachineRow, pointSelector: string): Promise<FailoverStarted> {
    const subject = `machine '${machine.name}'`;
    nextState(machineTransitions, subject, machine.state as MachineState, 'change-point');
    const point = await this.points.resolve(machine, pointSelector);
    const job = await this.context.db.transaction().execute(async (db) => {
      const current = await db.selectFrom('machines').select('state').where('id', '=', machine.id).executeTakeFirstOrThrow();
      const state = nextState(machineTransitions, subject, current.state as MachineState, 'change-point');
      await db.updateTable('machines').set({ state, updated_at: this.context.now() }).where('id', '=', machine.id).execute();
      const created = await this.jobs.create({ kind: 'failover', machineId: machine.id, agentId: null, params: { pointId: point.id } }, db);
      await db.updateTable('failovers').set({ state: 'writing', job_id: created.id, error: null, updated_at: this.context.now() }).where('machine_id', '=', machine.id).execute();
      return created;
    });
    signalWork(this.context);
    await this.events.record({ machineId: machine.id, severity: 'warning', code: 'failover-change-point', message: `${machine.name}: changing the failover point to ${point.id} (job ${job.id})` });
    return { job: jobView(job, machine.name), failover: (await this.view(machine.id))! };
  }

  /**
   * Undoes a failover that did not complete: before any disks were failed over, the machine goes back to
   * `protected` and the record is removed; after (a change of point), it stays `failed-over` on its disks.
   */
  private async rollBack(machine: MachineRow, row: FailoverRow, reason: string): Promise<void> {
    const firstFailover = parseJsonColumn<FailoverDiskView[]>(row.disks, []).length === 0;
    await this.context.db.transaction().execute(async (db) => {
      const current = await db.selectFrom('machines').select('state').where('id', '=', machine.id).executeTakeFirstOrThrow();
      if (current.state !== 'failing-over') return;
      const state = nextState(machineTransitions, `machine '${machine.name}'`, 'failing-over', firstFailover ? 'failover-failed' : 'change-point-failed');
      await db.updateTable('machines').set({ state, updated_at: this.context.now() }).where('id', '=', machine.id).execute();
      if (firstFailover) await db.deleteFrom('failovers').where('machine_id', '=', machine.id).execute();
      else await db.updateTable('failovers').set({ state: 'ready', error: reason, updated_at: this.context.now() }).where('machine_id', '=', machine.id).execute();
    });
    await this.events.record({
      machineId: machine.id,
      severity: 'error',
      code: 'failover-failed',
      message: `${machine.name}: ${row.kind} failover ${firstFailover ? 'failed, the machine is protected again' : 'change of point failed, the failed-over disks are unchanged'}: ${reason}`,
    });
  }
}

/** A failover row as the API shows it. */
export function failoverView(row: FailoverRow): FailoverView {
  return {
    kind: row.kind as FailoverView['kind'],
    state: row.state,
    pointId: row.point_id,
    jobId: row.job_id,
    disks: parseJsonColumn(row.disks, []),
    error: row.error,
    createdAt: new Date(row.created_at).toISOString(),
    committedAt: row.committed_at === null ? null : new Date(row.committed_at).toISOString(),
  };
}
