/**
 * Failover (not test): bring a protected machine up at its recovery site from a recovery point, change
 * that point before committing, and commit. The machine's state changes only through the table in
 * lifecycle.ts; this module's own record (one `failovers` row per machine) says how far the operation is:
 *
 *   planned:   final-point -> writing -> ready -> committed
 *   unplanned:                writing -> ready -> committed
 *   change-point (from ready): writing -> ready   (on failure: back to ready, the old disks untouched)
 *   migration: final-point -> writing -> ready -> completed   (a planned failover that retires the source)
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
 *
 * Migration is the same planned failover under other machine states (migrating, migrated): completing it
 * (`ferry migrate complete`) deletes the machine's points, has garbage collection reclaim their space,
 * and leaves the machine at the target site for an agent there to adopt; there is no failback.
 */
import { FerryError } from '../errors.js';
import type { FilesDriver } from '../compute/files-driver.js';
import type { FailoverRow, JobRow, MachineRow } from '../db/schema.js';
import type { FailoverDiskView, FailoverView, JobView } from '../protocol/views.js';
import { FollowingPass } from '../util/coalescing-pass.js';
import { type CoreContext, parseJsonColumn, signalWork } from './context.js';
import type { Events } from './events.js';
import type { Db } from '../db/database.js';
import { type Jobs, jobView, type OperationJobKind, replicationJobKinds } from './jobs.js';
import { activeJobStates, type MachineEvent, type MachineState, machineTransitions, nextState } from './lifecycle.js';
import type { Machines } from './machines.js';
import type { Points } from './points.js';

/** The machine events of one kind of operation: failover, or migration. */
const flows = {
  failover: { start: 'failover', inProgress: 'failing-over', done: 'failover-done', failed: 'failover-failed' },
  migration: { start: 'migrate', inProgress: 'migrating', done: 'migrate-done', failed: 'migrate-failed' },
  failback: { start: 'failback', inProgress: 'failing-back', done: 'failback-done', failed: 'failback-failed' },
} as const satisfies Record<string, { start: MachineEvent; inProgress: MachineState; done: MachineEvent; failed: MachineEvent }>;

function flowOf(kind: string) {
  return kind === 'migration' ? flows.migration : kind === 'failback' ? flows.failback : flows.failover;
}

/** What each operation that stops the workload first is called, and the job kind that carries it. */
const stoppingOperations = {
  planned: { noun: 'planned failover', job: 'planned-failover' },
  migrate: { noun: 'migration', job: 'migrate' },
  failback: { noun: 'failback', job: 'failback' },
} as const satisfies Record<string, { noun: string; job: OperationJobKind }>;

/**
 * Frees the space of deleted points (a garbage collection without grace); returns the bytes freed and how
 * many unreferenced objects it had to keep because they were written moments ago.
 */
export type Reclaim = () => Promise<{ bytes: number; keptRecent: number }>;

/** What a failover request answers at once: the job to follow and the failover as it stands. */
export interface FailoverStarted {
  job: JobView;
  failover: FailoverView;
}

/** Requests, performs and commits failovers. */
export class Failovers {
  private readonly follower: FollowingPass;

  constructor(
    private readonly context: CoreContext,
    private readonly jobs: Jobs,
    private readonly machines: Machines,
    private readonly points: Points,
    private readonly events: Events,
    private readonly driver: FilesDriver,
    private readonly reclaim: Reclaim,
  ) {
    this.follower = new FollowingPass(context.signals, 'work', () => this.advanceAll(), (error) => context.log.error({ err: error }, 'failover advance failed'));
  }

  /** Follows job changes (a planned failover's final point ending) and resumes what a crash interrupted. */
  start(): void {
    this.follower.start();
  }

  async stop(): Promise<void> {
    await this.follower.stop();
  }

  /**
   * `ferry failover MACHINE --planned | --unplanned [--point P] | --change-point --point P`, and
   * `ferry migrate MACHINE` (mode `migrate`). Refused with conflict (naming the state and what it allows)
   * when the machine's state does not allow it; planned failover and migration stop the workload first,
   * so they need a shutdown command (`ferry machine set M --shutdown CMD`).
   */
  async request(machineName: string, mode: 'planned' | 'unplanned' | 'change-point' | 'migrate' | 'failback', pointSelector: string): Promise<FailoverStarted> {
    const machine = await this.machines.get(machineName);
    const subject = `machine '${machineName}'`;
    if (mode === 'change-point') return this.changePoint(machine, pointSelector);
    const flow = mode === 'migrate' ? flows.migration : mode === 'failback' ? flows.failback : flows.failover;
    const kind = mode === 'migrate' ? 'migration' : mode;
    const operation = mode === 'unplanned' ? null : stoppingOperations[mode];
    nextState(machineTransitions, subject, machine.state as MachineState, flow.start); // refuse early, with the table's message
    // Which way replication runs decides which way the machine may move (see lifecycle.ts).
    if (mode === 'failback' && machine.direction !== 'reverse') {
      throw new FerryError('conflict', `${subject} replicates forward, to its recovery site: it runs at its source site already, so there is nothing to fail back (fail over first; after a failover, \`ferry reprotect ${machineName}\` replicates it back)`);
    }
    if (mode !== 'failback' && machine.direction === 'reverse') {
      throw new FerryError('conflict', `${subject} replicates in reverse, from its recovery site back to its source site: \`ferry failback ${machineName}\` brings it home`);
    }
    const shutdownCommand = mode === 'failback' ? machine.recovery_shutdown_command : machine.shutdown_command;
    if (operation && !shutdownCommand) {
      const option = mode === 'failback' ? '--recovery-shutdown' : '--shutdown';
      throw new FerryError(
        'invalid-request',
        `a ${operation.noun} of '${machineName}' stops its workload first${mode === 'failback' ? ' at the recovery site' : ''}, and the machine has no shutdown command there: set one with \`ferry machine set ${machineName} ${option} CMD\`${mode === 'planned' ? ', or fail over --unplanned' : ''}`,
      );
    }
    const point = mode === 'unplanned' ? await this.points.resolve(machine, pointSelector) : null;
    // A failback writes the source site's disks through the machine's own agent, not a site directory.
    const sitePath = mode === 'failback' ? '' : (await this.context.db.selectFrom('sites').select('path').where('id', '=', machine.site_id!).executeTakeFirstOrThrow()).path;
    const job = await this.context.db.transaction().execute(async (db) => {
      const current = await db.selectFrom('machines').select('state').where('id', '=', machine.id).executeTakeFirstOrThrow();
      const state = nextState(machineTransitions, subject, current.state as MachineState, flow.start);
      await db.updateTable('machines').set({ state, updated_at: this.context.now() }).where('id', '=', machine.id).execute();
      // No cycle that started before the failover may commit after it: cancel them (their commit is refused).
      const active = await db.selectFrom('jobs').select('id').where('machine_id', '=', machine.id).where('kind', 'in', replicationJobKinds).where('state', 'in', activeJobStates).execute();
      for (const each of active) await this.jobs.transition(each.id, 'cancel', { error: { code: 'cancelled', message: 'cancelled by a failover', retryable: false } }, db);
      // An operation that stops the workload runs as one job with a child per step (final point, then write).
      const operationJob = operation ? await this.jobs.create({ kind: operation.job, machineId: machine.id, agentId: null, params: { machine: machineName } }, db) : null;
      if (operationJob) await this.jobs.transition(operationJob.id, 'start', { step: 'stopping the workload, taking a final point' }, db);
      const source = await this.machines.replicationSource(machine, db);
      const created = operationJob
        ? await this.jobs.create(
            { kind: 'final-point', machineId: machine.id, agentId: source.agentId, params: { chunkSize: this.context.options.chunkSize, consistency: 'app', shutdown: true }, parentId: operationJob.id },
            db,
          )
        : await this.jobs.create({ kind: 'failover', machineId: machine.id, agentId: null, params: { pointId: point!.id } }, db);
      const now = this.context.now();
      // A failback replaces the record of the failover it undoes (its events keep the history).
      await db.deleteFrom('failovers').where('machine_id', '=', machine.id).execute();
      await db
        .insertInto('failovers')
        .values({
          machine_id: machine.id,
          kind,
          state: operationJob ? 'final-point' : 'writing',
          point_id: null,
          final_job_id: operationJob ? created.id : null,
          job_id: created.id,
          site_path: sitePath,
          disks: '[]',
          error: null,
          created_at: now,
          updated_at: now,
          committed_at: null,
          operation_job_id: operationJob?.id ?? null,
        })
        .execute();
      return operationJob ? this.jobs.get(operationJob.id, db) : created;
    });
    signalWork(this.context);
    await this.events.record({
      machineId: machine.id,
      severity: 'warning',
      code: mode === 'migrate' ? 'migration-started' : mode === 'failback' ? 'failback-started' : 'failover-started',
      message: operation
        ? `${machineName}: ${operation.noun} started: the ${mode === 'failback' ? 'recovery site\'s agent' : 'agent'} stops the workload and takes a final point (job ${job.id})`
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
    const noun = failover.kind === 'failback' ? 'failback' : 'failover';
    await this.events.record({
      machineId: machine.id,
      severity: 'info',
      code: `${noun}-committed`,
      message: `${machineName}: ${noun} to ${failover.pointId} committed; \`ferry reprotect ${machineName}\` replicates it ${noun === 'failback' ? 'to its recovery site again' : 'back to its source site'}`,
    });
    return { job: jobView(job, machine.name), failover };
  }

  /**
   * `ferry migrate complete MACHINE`: queues the end of a migration (a `complete-migration` server job,
   * `runComplete`). Refused unless the machine is `migrated`.
   */
  async completeMigration(machineName: string): Promise<JobView> {
    const machine = await this.machines.get(machineName);
    nextState(machineTransitions, `machine '${machineName}'`, machine.state as MachineState, 'complete-migration');
    const job = await this.jobs.create({ kind: 'complete-migration', machineId: machine.id, agentId: null, params: {} });
    signalWork(this.context);
    return jobView(job, machine.name);
  }

  /**
   * Server job `complete-migration`: the machine's points are deleted and its disks become the migrated
   * ones at the target site (in one transaction, with the move to `migration-completed`), then a garbage
   * collection without grace reclaims their space. The machine's agent no longer serves it: an agent at
   * the target site that registers it adopts it (`unprotected` there, ready to be protected to another
   * site). Idempotent.
   */
  async runComplete(job: JobRow): Promise<Record<string, unknown>> {
    const machine = await this.machines.getById(job.machine_id!);
    const deletedPoints = await this.context.db.transaction().execute(async (db) => {
      const current = await db.selectFrom('machines').select('state').where('id', '=', machine.id).executeTakeFirstOrThrow();
      if (current.state !== 'migrated') return 0; // a re-run after a crash that had already completed
      const state = nextState(machineTransitions, `machine '${machine.name}'`, 'migrated', 'complete-migration');
      const failover = await db.selectFrom('failovers').selectAll().where('machine_id', '=', machine.id).executeTakeFirstOrThrow();
      for (const disk of parseJsonColumn<FailoverDiskView[]>(failover.disks, [])) {
        await db.updateTable('disks').set({ path: disk.path, size_bytes: disk.sizeBytes, error: null }).where('machine_id', '=', machine.id).where('position', '=', disk.position).execute();
      }
      const points = await db.selectFrom('points').select('id').where('machine_id', '=', machine.id).execute();
      if (points.length > 0) await db.deleteFrom('point_disks').where('point_id', 'in', points.map((point) => point.id)).execute();
      await db.deleteFrom('points').where('machine_id', '=', machine.id).execute();
      const now = this.context.now();
      await db.updateTable('failovers').set({ state: 'completed', point_id: null, committed_at: now, updated_at: now }).where('machine_id', '=', machine.id).execute();
      await db.updateTable('machines').set({ state, policy_id: null, last_point_at: null, last_app_point_at: null, replication_error: null, replication_error_code: null, updated_at: now }).where('id', '=', machine.id).execute();
      return points.length;
    });
    let reclaimedBytes: number | null = null;
    let reclaimNote: string | null = null;
    try {
      const reclaimed = await this.reclaim();
      reclaimedBytes = reclaimed.bytes;
      // Objects written in the last seconds are kept by every collection (a margin for coarse timestamps).
      if (reclaimed.keptRecent > 0) reclaimNote = `${reclaimed.keptRecent} object(s) written moments ago are kept for now; the next garbage collection reclaims them`;
    } catch (error) {
      reclaimNote = `space not reclaimed yet (${(error as Error).message}); the next garbage collection reclaims it`;
    }
    await this.events.record({
      machineId: machine.id,
      severity: 'info',
      code: 'migration-completed',
      message: `${machine.name}: migration completed: ${deletedPoints} point(s) deleted, ${reclaimedBytes === null ? reclaimNote : `${reclaimedBytes} bytes reclaimed${reclaimNote ? ` (${reclaimNote})` : ''}`}; an agent at the target site can now adopt it`,
    });
    return { machine: machine.name, deletedPoints, reclaimedBytes, note: reclaimNote };
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
    const flow = flowOf(row.kind);
    const previous = parseJsonColumn<FailoverDiskView[]>(row.disks, []);
    const site = machine.site_id ? await this.context.db.selectFrom('sites').select('disk_format').where('id', '=', machine.site_id).executeTakeFirst() : undefined;
    const instance = { sitePath: row.site_path, machineName: machine.name, purpose: 'failover' as const, generation: pointId, diskFormat: site?.disk_format ?? 'raw' };
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
        if (current.state !== flow.inProgress) return; // a re-run after a crash that had already finished
        const state = nextState(machineTransitions, `machine '${machine.name}'`, flow.inProgress, flow.done);
        await db.updateTable('machines').set({ state, updated_at: this.context.now() }).where('id', '=', machine.id).execute();
        await db.updateTable('failovers').set({ state: 'ready', point_id: pointId, disks: JSON.stringify(planned), error: null, updated_at: this.context.now() }).where('machine_id', '=', machine.id).execute();
        await this.endOperation(row, { result: { machine: machine.name, pointId, disks: planned } }, db);
      });
      const replaced = previous.length > 0 && row.point_id !== null && row.point_id !== pointId ? row.point_id : null;
      if (replaced) await this.driver.remove({ ...instance, generation: replaced });
      await this.events.record({
        machineId: machine.id,
        severity: 'warning',
        code: row.kind === 'migration' ? 'migration-ready' : 'failover-ready',
        message:
          row.kind === 'migration'
            ? `${machine.name}: migrated to ${pointId}; disks at ${row.site_path}; \`ferry migrate complete ${machine.name}\` removes its replication and points`
            : `${machine.name}: failed over to ${pointId}${replaced ? ` (was ${replaced})` : ''}; disks at ${row.site_path}; \`ferry commit ${machine.name}\` makes it final`,
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
  advance(): Promise<void> {
    return this.follower.run();
  }

  private async advanceAll(): Promise<void> {
    const waiting = await this.context.db.selectFrom('failovers').selectAll().where('state', '=', 'final-point').execute();
    for (const row of waiting) await this.advancePlanned(row);
    // A failback's write is an agent's job (the source site's disks): follow it here.
    const applying = await this.context.db.selectFrom('failovers').selectAll().where('state', '=', 'writing').where('kind', '=', 'failback').execute();
    for (const row of applying) await this.advanceFailbackWrite(row);
  }

  /**
   * A failback's `apply-point` job ended: succeeded, the machine is failed back on its source site's
   * disks (the operation job succeeds with the bytes it took); failed or cancelled, it rolls back to
   * protected (reverse), and the source disks may be partly written: failing back again rewrites them.
   */
  private async advanceFailbackWrite(row: FailoverRow): Promise<void> {
    const applyJob = await this.jobs.get(row.job_id);
    if (applyJob.state === 'queued' || applyJob.state === 'running') return;
    const machine = await this.machines.getById(row.machine_id);
    if (applyJob.state !== 'succeeded') {
      await this.rollBack(
        machine,
        row,
        `writing the source site's disks failed (${applyJob.error_message ?? applyJob.state}); they may be partly written, and the next failback rewrites what differs. The recovery shutdown command has stopped the workload at the recovery site: start it there again, or fix the cause and fail back again`,
      );
      return;
    }
    const { pointId } = JSON.parse(applyJob.params) as { pointId: string };
    const applied = parseJsonColumn<{ changedBytes?: number; receivedBytes?: number }>(applyJob.result, {});
    const disks = await this.machines.disksOf(machine.id);
    const pointDisks = await this.context.db.selectFrom('point_disks').select(['position', 'size_bytes']).where('point_id', '=', pointId).execute();
    const written: FailoverDiskView[] = disks.map((disk) => ({ position: disk.position, path: disk.path, sizeBytes: pointDisks.find((pointDisk) => pointDisk.position === disk.position)?.size_bytes ?? disk.size_bytes ?? 0 }));
    const done = await this.context.db.transaction().execute(async (db) => {
      const current = await db.selectFrom('machines').select('state').where('id', '=', machine.id).executeTakeFirstOrThrow();
      if (current.state !== flows.failback.inProgress) return false;
      const state = nextState(machineTransitions, `machine '${machine.name}'`, flows.failback.inProgress, flows.failback.done);
      await db.updateTable('machines').set({ state, updated_at: this.context.now() }).where('id', '=', machine.id).execute();
      await db.updateTable('failovers').set({ state: 'ready', point_id: pointId, disks: JSON.stringify(written), error: null, updated_at: this.context.now() }).where('machine_id', '=', machine.id).execute();
      await this.endOperation(row, { result: { machine: machine.name, pointId, disks: written, changedBytes: applied.changedBytes ?? 0, receivedBytes: applied.receivedBytes ?? 0 } }, db);
      return true;
    });
    if (!done) return;
    await this.events.record({
      machineId: machine.id,
      severity: 'warning',
      code: 'failback-ready',
      message: `${machine.name}: failed back to ${pointId} on its source site's disks (${applied.changedBytes ?? 0} bytes differed, ${applied.receivedBytes ?? 0} sent); \`ferry commit ${machine.name}\` makes it final`,
    });
  }

  /** Ends the job carrying a multi-step operation (if the failover has one and it has not ended). */
  private async endOperation(row: FailoverRow, outcome: { result?: Record<string, unknown>; error?: { code: string; message: string; retryable: boolean } }, db: Db): Promise<void> {
    if (!row.operation_job_id) return;
    const job = await this.jobs.get(row.operation_job_id, db);
    if (job.state !== 'running' && job.state !== 'queued') return;
    await this.jobs.transition(job.id, outcome.error ? 'fail' : 'succeed', outcome, db);
  }


  private async advancePlanned(row: FailoverRow): Promise<void> {
    const finalJob = await this.jobs.get(row.final_job_id!);
    if (finalJob.state === 'queued' || finalJob.state === 'running') return;
    const machine = await this.machines.getById(row.machine_id);
    if (finalJob.state !== 'succeeded') {
      const why = finalJob.error_message ?? finalJob.state;
      await this.rollBack(
        machine,
        row,
        row.kind === 'failback'
          ? `the final point failed (${why}); the recovery shutdown command may have stopped the workload at the recovery site: start it there again`
          : `the final point failed (${why}); the shutdown command may have stopped the workload: start it again, or fail over --unplanned`,
      );
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
      const parentId = row.operation_job_id;
      // A failback writes the source site's disks through the machine's own agent (only what differs).
      const job =
        row.kind === 'failback'
          ? await this.jobs.create(
              {
                kind: 'apply-point',
                machineId: row.machine_id,
                agentId: machine.agent_id,
                params: { pointId, targets: (await this.machines.disksOf(machine.id, db)).map((disk) => ({ position: disk.position, path: disk.path })) },
                parentId,
              },
              db,
            )
          : await this.jobs.create({ kind: 'failover', machineId: row.machine_id, agentId: null, params: { pointId }, parentId }, db);
      if (parentId) await db.updateTable('jobs').set({ step: row.kind === 'failback' ? "writing the source site's disks" : 'writing the disks', updated_at: this.context.now() }).where('id', '=', parentId).execute();
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
    const flow = flowOf(row.kind);
    await this.context.db.transaction().execute(async (db) => {
      const current = await db.selectFrom('machines').select('state').where('id', '=', machine.id).executeTakeFirstOrThrow();
      if (current.state !== flow.inProgress) return;
      const state = nextState(machineTransitions, `machine '${machine.name}'`, flow.inProgress, firstFailover ? flow.failed : 'change-point-failed');
      await db.updateTable('machines').set({ state, updated_at: this.context.now() }).where('id', '=', machine.id).execute();
      if (firstFailover) await db.deleteFrom('failovers').where('machine_id', '=', machine.id).execute();
      else await db.updateTable('failovers').set({ state: 'ready', error: reason, updated_at: this.context.now() }).where('machine_id', '=', machine.id).execute();
      await this.endOperation(row, { error: { code: 'conflict', message: reason, retryable: true } }, db);
    });
    await this.events.record({
      machineId: machine.id,
      severity: 'error',
      code: 'failover-failed',
      message: `${machine.name}: ${row.kind === 'migration' || row.kind === 'failback' ? row.kind : `${row.kind} failover`} ${firstFailover ? 'failed, the machine is protected again' : 'change of point failed, the failed-over disks are unchanged'}: ${reason}`,
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
