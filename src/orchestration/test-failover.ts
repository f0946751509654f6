/**
 * Test failover: the disks of a chosen point are written at the recovery site for the operator to
 * check, in isolation, while replication of the machine goes on; cleanup removes them. Both run as
 * server jobs; the test failover's own lifecycle (creating -> ready -> cleaning) is in lifecycle.ts.
 */
import { FerryError } from '../errors.js';
import type { FilesDriver } from '../compute/files-driver.js';
import type { JobRow } from '../db/schema.js';
import type { FailoverDiskView, JobView } from '../protocol/views.js';
import type { CoreContext } from './context.js';
import type { Events } from './events.js';
import { type Jobs, jobView } from './jobs.js';
import { nextState, type TestFailoverState, testFailoverTransitions } from './lifecycle.js';
import type { Machines } from './machines.js';
import type { Points } from './points.js';

/** What `ferry failover --test` answers straight away: the job, and the files it is writing. */
export interface TestFailoverStarted {
  job: JobView;
  pointId: string;
  disks: FailoverDiskView[];
}

/** Starts, performs and cleans up test failovers. */
export class TestFailovers {
  constructor(
    private readonly context: CoreContext,
    private readonly jobs: Jobs,
    private readonly machines: Machines,
    private readonly points: Points,
    private readonly events: Events,
    private readonly driver: FilesDriver,
  ) {}

  /** Queues a test failover of `machineName` to `pointSelector` ("latest" or an id). */
  async start(machineName: string, pointSelector: string): Promise<TestFailoverStarted> {
    const machine = await this.machines.get(machineName);
    if (machine.state !== 'protected' && machine.state !== 'paused') {
      throw new FerryError('conflict', `machine '${machineName}' is ${machine.state}; test failover needs a protected machine`);
    }
    const existing = await this.context.db.selectFrom('test_failovers').select('state').where('machine_id', '=', machine.id).executeTakeFirst();
    if (existing) {
      throw new FerryError('conflict', `machine '${machineName}' already has a test failover (${existing.state}); run \`ferry failover cleanup ${machineName}\` first`);
    }
    const point = await this.points.resolve(machine, pointSelector);
    const site = await this.context.db.selectFrom('sites').selectAll().where('id', '=', machine.site_id!).executeTakeFirstOrThrow();
    const pointDisks = await this.context.db.selectFrom('point_disks').selectAll().where('point_id', '=', point.id).orderBy('position').execute();
    const disks = this.driver.plan(
      { sitePath: site.path, machineName: machine.name, purpose: 'test', diskFormat: site.disk_format },
      pointDisks.map((disk) => ({ position: disk.position, sizeBytes: disk.size_bytes })),
    );
    const job = await this.context.db.transaction().execute(async (db) => {
      const created = await this.jobs.create({ kind: 'test-failover', machineId: machine.id, agentId: null, params: { pointId: point.id, sitePath: site.path, diskFormat: site.disk_format } }, db);
      await db
        .insertInto('test_failovers')
        .values({ machine_id: machine.id, state: 'creating', point_id: point.id, job_id: created.id, disks: JSON.stringify(disks), created_at: this.context.now() })
        .execute();
      return created;
    });
    return { job: jobView(job, machine.name), pointId: point.id, disks };
  }

  /** Queues removal of the machine's test failover. */
  async cleanup(machineName: string): Promise<JobView> {
    const machine = await this.machines.get(machineName);
    const testFailover = await this.context.db.selectFrom('test_failovers').selectAll().where('machine_id', '=', machine.id).executeTakeFirst();
    if (!testFailover) throw new FerryError('conflict', `machine '${machineName}' has no test failover to clean up`);
    if (testFailover.state === 'creating') {
      throw new FerryError('conflict', `the test failover of '${machineName}' is still being written (job ${testFailover.job_id}); clean up when it has finished`);
    }
    const state = nextState(testFailoverTransitions, `test failover of '${machineName}'`, testFailover.state as TestFailoverState, 'cleanup');
    const site = await this.context.db.selectFrom('sites').select('path').where('id', '=', machine.site_id!).executeTakeFirstOrThrow();
    const job = await this.context.db.transaction().execute(async (db) => {
      const created = await this.jobs.create({ kind: 'test-failover-cleanup', machineId: machine.id, agentId: null, params: { sitePath: site.path } }, db);
      await db.updateTable('test_failovers').set({ state, job_id: created.id }).where('machine_id', '=', machine.id).execute();
      return created;
    });
    return jobView(job, machine.name);
  }

  /**
   * Cleanup as a recovery plan runs it on each machine: like `cleanup`, except that a machine with no
   * test failover is not an error (the plan's test failover may have stopped before reaching it, or it
   * was cleaned up by hand): its job ends at once with `removed: false`.
   */
  async cleanupForPlan(machineName: string): Promise<JobView> {
    const machine = await this.machines.get(machineName);
    const existing = await this.context.db.selectFrom('test_failovers').select('state').where('machine_id', '=', machine.id).executeTakeFirst();
    if (existing) return this.cleanup(machineName);
    const job = await this.context.db.transaction().execute(async (db) => {
      const created = await this.jobs.create({ kind: 'test-failover-cleanup', machineId: machine.id, agentId: null, params: {} }, db);
      await this.jobs.transition(created.id, 'start', { step: 'no test failover to remove' }, db);
      return this.jobs.transition(created.id, 'succeed', { result: { machine: machine.name, removed: false } }, db);
    });
    return jobView(job, machine.name);
  }

  /** Server job: writes the point's disks at the site. Safe to run again after a crash. */
  async runCreate(job: JobRow): Promise<Record<string, unknown>> {
    const machine = await this.machines.getById(job.machine_id!);
    const testFailover = await this.context.db.selectFrom('test_failovers').selectAll().where('machine_id', '=', machine.id).executeTakeFirstOrThrow();
    const planned = JSON.parse(testFailover.disks) as FailoverDiskView[];
    const pointDisks = await this.context.db.selectFrom('point_disks').selectAll().where('point_id', '=', testFailover.point_id).orderBy('position').execute();
    const totalBytes = pointDisks.reduce((total, disk) => total + disk.size_bytes, 0);
    const { sitePath, diskFormat } = JSON.parse(job.params) as { sitePath: string; diskFormat?: string };
    const instance = { sitePath, machineName: machine.name, purpose: 'test' as const, diskFormat };
    try {
      const disks = [];
      for (const pointDisk of pointDisks) {
        const index = await this.context.store.getIndex(pointDisk.index_hash);
        disks.push({ planned: planned.find((disk) => disk.position === pointDisk.position)!, index });
      }
      let lastReport = 0;
      await this.driver.materialize(instance, this.context.store, disks, (doneBytes) => {
        if (Date.now() - lastReport > 200) {
          lastReport = Date.now();
          void this.jobs.progress(job.id, { doneBytes, totalBytes, step: 'writing disks' });
        }
      });
      await this.setState(machine.id, 'written');  // a re-run after a crash finds it already ready
      await this.events.record({ machineId: machine.id, severity: 'info', code: 'test-failover-ready', message: `${machine.name}: test failover to ${testFailover.point_id} ready at ${instance.sitePath}` });
      return { machine: machine.name, pointId: testFailover.point_id, disks: planned };
    } catch (error) {
      await this.setState(machine.id, 'fail');
      throw error;
    }
  }

  /** Server job: removes the test failover's files and its record. */
  async runCleanup(job: JobRow): Promise<Record<string, unknown>> {
    const machine = await this.machines.getById(job.machine_id!);
    const { sitePath } = JSON.parse(job.params) as { sitePath: string };
    await this.driver.remove({ sitePath, machineName: machine.name, purpose: 'test' });
    await this.context.db.deleteFrom('test_failovers').where('machine_id', '=', machine.id).execute();
    await this.events.record({ machineId: machine.id, severity: 'info', code: 'test-failover-cleaned', message: `${machine.name}: test failover cleaned up` });
    return { machine: machine.name, removed: true };
  }

  /** Moves a test failover out of 'creating'; a no-op when a previous run of the same job already did. */
  private async setState(machineId: string, event: 'written' | 'fail'): Promise<void> {
    const row = await this.context.db.selectFrom('test_failovers').select('state').where('machine_id', '=', machineId).executeTakeFirstOrThrow();
    if (row.state !== 'creating') return;
    const state = nextState(testFailoverTransitions, 'test failover', row.state as TestFailoverState, event);
    await this.context.db.updateTable('test_failovers').set({ state }).where('machine_id', '=', machineId).execute();
  }
}
