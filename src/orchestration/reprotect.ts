/**
 * Reprotect: turn a machine's replication around once a failover (or a failback) is committed.
 *
 * After a failover the machine runs at the recovery site on the failed-over disks. `ferry reprotect`
 * replicates it from there back to the source site (direction `reverse`):
 *   1. an agent that reads the failed-over disks (by default the server's own site agent, site-agent.ts)
 *      takes the first point of the reverse direction; the store already holds almost every chunk (the
 *      disks were written from it), so only what changed at the recovery site is sent;
 *   2. the machine's own agent applies that point to the source site's disks (an `apply-point` job): it
 *      hashes what is there and fetches only the chunks that differ; `--disk-path N=PATH` writes a disk
 *      to a new location instead;
 *   3. the machine is `protected` again, replicating in reverse on its policy's schedule, and can fail back.
 * After a failback is committed, `ferry reprotect` restores the original direction (`forward`): the
 * machine's agent takes the first forward point (again only what differs from the store is sent), then
 * the failed-over disks at the recovery site, now out of date, are removed.
 *
 * The record (one `reprotections` row per machine) moves through `reprotectTransitions` (lifecycle.ts);
 * the machine through `reprotect` -> `reprotect-done` | `reprotect-failed`. The whole operation is one
 * job (kind `reprotect`) with a child job per step. Every step is driven by `advance`, on every job
 * change and at start-up, so a crash is resumed where it stopped; a failed step rolls the machine back
 * to `committed` in its previous direction, where reprotect can simply be run again.
 */
import path from 'node:path';
import { FerryError, notFound } from '../errors.js';
import type { FilesDriver } from '../compute/files-driver.js';
import type { ReprotectionRow } from '../db/schema.js';
import type { ReprotectRequest } from '../protocol/requests.js';
import type { FailoverDiskView, JobView, ReprotectView } from '../protocol/views.js';
import { FollowingPass } from '../util/coalescing-pass.js';
import { type CoreContext, parseJsonColumn, signalWork } from './context.js';
import type { Events } from './events.js';
import { type Jobs, jobView } from './jobs.js';
import {
  type MachineState,
  machineTransitions,
  nextState,
  type ReplicationDirection,
  type ReprotectEvent,
  type ReprotectState,
  reprotectTransitions,
} from './lifecycle.js';
import type { Machines } from './machines.js';

/**
 * Name the server's own site agent registers under (site-agent.ts in src/server): the agent a reverse
 * reprotect reads the failed-over disks with when none is named.
 */
export const SITE_AGENT_NAME = 'ferry-site-agent';

/** Where a disk is written at the source site by the apply step. */
interface Target {
  position: number;
  path: string;
}

/** Starts reprotects and carries them through their steps. */
export class Reprotections {
  private readonly follower: FollowingPass;

  constructor(
    private readonly context: CoreContext,
    private readonly jobs: Jobs,
    private readonly machines: Machines,
    private readonly events: Events,
    private readonly driver: FilesDriver,
  ) {
    this.follower = new FollowingPass(context.signals, 'work', () => this.advanceAll(), (error) => context.log.error({ err: error }, 'reprotect advance failed'));
  }

  /** Follows job changes and resumes what a stop or crash interrupted. */
  start(): void {
    this.follower.start();
  }

  async stop(): Promise<void> {
    await this.follower.stop();
  }

  /**
   * `ferry reprotect MACHINE`: refused with conflict unless the machine is `committed` (naming its state
   * and what it allows). Reverse (after a failover): `agent` names the agent that reads the failed-over
   * disks (default: the server's site agent); `diskPaths` sends disks to new locations at the source
   * site. Forward (after a failback): neither applies. Answers the job that carries the whole reprotect.
   */
  async request(machineName: string, request: ReprotectRequest = {}): Promise<{ job: JobView; reprotect: ReprotectView }> {
    const machine = await this.machines.get(machineName);
    const subject = `machine '${machineName}'`;
    nextState(machineTransitions, subject, machine.state as MachineState, 'reprotect'); // refuse early, with the table's message
    const direction: ReplicationDirection = machine.direction === 'reverse' ? 'forward' : 'reverse';
    const disks = await this.machines.disksOf(machine.id);
    let readerId: string;
    let recoveryDisks: FailoverDiskView[] = [];
    let targets: Target[] = [];
    if (direction === 'reverse') {
      const failover = await this.context.db.selectFrom('failovers').selectAll().where('machine_id', '=', machine.id).executeTakeFirst();
      recoveryDisks = parseJsonColumn<FailoverDiskView[]>(failover?.disks ?? '[]', []);
      if (!failover || failover.state !== 'committed' || recoveryDisks.length !== disks.length) {
        throw new FerryError('conflict', `${subject} has no committed failover with its ${disks.length} disk(s) at the recovery site to replicate from`);
      }
      readerId = request.agent ? (await this.agentNamed(request.agent)).id : await this.defaultReader();
      targets = disks.map((disk) => ({ position: disk.position, path: disk.path }));
      for (const override of request.diskPaths ?? []) {
        const target = targets.find((each) => each.position === override.position);
        if (!target) throw new FerryError('invalid-request', `${subject} has no disk ${override.position} (it has ${disks.length})`);
        if (!path.isAbsolute(override.path)) throw new FerryError('invalid-request', `disk path '${override.path}' must be absolute`);
        target.path = override.path;
      }
      // Two disks written into one file, or a source disk written over a recovered one, would lose data.
      const paths = targets.map((target) => path.resolve(target.path));
      const twice = paths.find((each, position) => paths.indexOf(each) !== position);
      if (twice) throw new FerryError('invalid-request', `two disks of '${machineName}' would be written to ${twice}: give each disk its own path`);
      const recovered = paths.find((each) => recoveryDisks.some((disk) => path.resolve(disk.path) === each));
      if (recovered) throw new FerryError('invalid-request', `${recovered} is a failed-over disk at the recovery site: a source disk cannot be written over it`);
    } else {
      if (request.agent || request.diskPaths?.length) {
        throw new FerryError('invalid-request', `${subject} goes back to replicating forward, read by its own agent from its source disks: --agent and --disk-path apply only when reprotecting from the recovery site`);
      }
      readerId = machine.agent_id;
    }

    const operationJob = await this.context.db.transaction().execute(async (db) => {
      const current = await db.selectFrom('machines').select(['state', 'direction']).where('id', '=', machine.id).executeTakeFirstOrThrow();
      const state = nextState(machineTransitions, subject, current.state as MachineState, 'reprotect');
      if (current.direction !== machine.direction) throw new FerryError('conflict', `${subject} changed direction meanwhile; try again`);
      const now = this.context.now();
      await db
        .updateTable('machines')
        .set({ state, direction, ...(direction === 'reverse' ? { recovery_agent_id: readerId } : {}), replication_error: null, replication_error_code: null, updated_at: now })
        .where('id', '=', machine.id)
        .execute();
      if (direction === 'reverse') {
        for (const disk of recoveryDisks) await db.updateTable('disks').set({ recovery_path: disk.path }).where('machine_id', '=', machine.id).where('position', '=', disk.position).execute();
      }
      const operation = await this.jobs.create({ kind: 'reprotect', machineId: machine.id, agentId: null, params: { machine: machineName, direction, targets } }, db);
      await this.jobs.transition(operation.id, 'start', { step: `first ${direction} point` }, db);
      const first = await this.jobs.create(
        { kind: 'initial-replication', machineId: machine.id, agentId: readerId, params: { chunkSize: this.context.options.chunkSize, consistency: 'app' }, parentId: operation.id },
        db,
      );
      await db.deleteFrom('reprotections').where('machine_id', '=', machine.id).execute();
      await db
        .insertInto('reprotections')
        .values({
          machine_id: machine.id,
          direction,
          state: 'replicating',
          agent_id: readerId,
          target_agent_id: direction === 'reverse' ? machine.agent_id : null,
          operation_job_id: operation.id,
          job_id: first.id,
          point_id: null,
          targets: JSON.stringify(targets),
          result: null,
          error: null,
          created_at: now,
          updated_at: now,
        })
        .execute();
      return this.jobs.get(operation.id, db);
    });
    signalWork(this.context);
    await this.events.record({
      machineId: machine.id,
      severity: 'info',
      code: 'reprotect-started',
      message:
        direction === 'reverse'
          ? `${machineName}: reprotect started: replicating from the recovery site back to the source site's disks (job ${operationJob.id})`
          : `${machineName}: reprotect started: replicating from the source site to the recovery site again (job ${operationJob.id})`,
    });
    return { job: jobView(operationJob, machineName), reprotect: (await this.view(machine.id))! };
  }

  /** The machine's last reprotect as the API shows it, or null when it has none. */
  async view(machineId: string): Promise<ReprotectView | null> {
    const row = await this.context.db.selectFrom('reprotections').selectAll().where('machine_id', '=', machineId).executeTakeFirst();
    return row ? reprotectView(row) : null;
  }

  /** Moves every reprotect waiting on a step's job forward; one pass at a time. */
  advance(): Promise<void> {
    return this.follower.run();
  }

  private async advanceAll(): Promise<void> {
    const rows = await this.context.db.selectFrom('reprotections').selectAll().where('state', 'in', ['replicating', 'applying']).execute();
    for (const row of rows) {
      // One reprotect that cannot move (a bug, a row edited by hand) must not hold up the others.
      await this.advanceOne(row).catch((error: unknown) => this.context.log.error({ err: error, machineId: row.machine_id }, 'reprotect could not advance'));
    }
  }

  private async advanceOne(row: ReprotectionRow): Promise<void> {
    const step = await this.jobs.get(row.job_id);
    if (step.state === 'queued' || step.state === 'running') return;
    if (step.state !== 'succeeded') {
      const what = row.state === 'replicating' ? `the first ${row.direction} point` : "writing the source site's disks";
      await this.fail(row, `${what} failed (${step.error_message ?? step.state})`);
      return;
    }
    const result = parseJsonColumn<Record<string, unknown>>(step.result, {});
    if (row.state === 'replicating') {
      const pointId = typeof result.pointId === 'string' ? result.pointId : null;
      if (!pointId) return this.fail(row, `job ${step.id} succeeded without naming its point`);
      const sentBytes = await this.sentBytesOf(pointId);
      if (row.direction === 'forward') return this.finish(row, pointId, { pointSentBytes: sentBytes });
      await this.context.db.transaction().execute(async (db) => {
        const current = await db.selectFrom('reprotections').select('state').where('machine_id', '=', row.machine_id).executeTakeFirst();
        if (current?.state !== 'replicating') return;
        const apply = await this.jobs.create(
          { kind: 'apply-point', machineId: row.machine_id, agentId: row.target_agent_id, params: { pointId, targets: parseJsonColumn<Target[]>(row.targets, []) }, parentId: row.operation_job_id },
          db,
        );
        await db
          .updateTable('reprotections')
          .set({ state: this.next(row, 'point-committed'), job_id: apply.id, point_id: pointId, result: JSON.stringify({ pointSentBytes: sentBytes }), updated_at: this.context.now() })
          .where('machine_id', '=', row.machine_id)
          .execute();
        await db.updateTable('jobs').set({ step: "writing what differs to the source site's disks", updated_at: this.context.now() }).where('id', '=', row.operation_job_id).execute();
      });
      signalWork(this.context);
      return;
    }
    const earlier = parseJsonColumn<{ pointSentBytes?: number }>(row.result, {});
    await this.finish(row, row.point_id!, {
      pointSentBytes: earlier.pointSentBytes ?? 0,
      appliedChangedBytes: Number(result.changedBytes ?? 0),
      appliedReceivedBytes: Number(result.receivedBytes ?? 0),
    });
  }

  /** The last step succeeded: the machine is protected in the new direction. */
  private async finish(row: ReprotectionRow, pointId: string, outcome: { pointSentBytes: number; appliedChangedBytes?: number; appliedReceivedBytes?: number }): Promise<void> {
    const machine = await this.machines.getById(row.machine_id);
    const targets = parseJsonColumn<Target[]>(row.targets, []);
    const staleRecoveryDisks = row.direction === 'forward' ? (await this.machines.disksOf(machine.id)).map((disk) => disk.recovery_path).filter((each): each is string => each !== null) : [];
    // Removed before the record forgets where they are: a crash in between removes them again at restart.
    const removed = staleRecoveryDisks.length > 0 ? await this.removeRecoveryDisks(machine.name, machine.site_id, staleRecoveryDisks) : '';
    const finished = await this.context.db.transaction().execute(async (db) => {
      const current = await db.selectFrom('reprotections').select('state').where('machine_id', '=', row.machine_id).executeTakeFirst();
      if (current?.state !== row.state) return false;
      const state = nextState(machineTransitions, `machine '${machine.name}'`, machine.state as MachineState, 'reprotect-done');
      const now = this.context.now();
      await db.updateTable('machines').set({ state, updated_at: now, ...(row.direction === 'forward' ? { recovery_agent_id: null } : {}) }).where('id', '=', machine.id).execute();
      if (row.direction === 'reverse') {
        // The source site's disks now live where the apply step wrote them (a new location with --disk-path).
        for (const target of targets) await db.updateTable('disks').set({ path: target.path }).where('machine_id', '=', machine.id).where('position', '=', target.position).execute();
      } else {
        await db.updateTable('disks').set({ recovery_path: null }).where('machine_id', '=', machine.id).execute();
        await db.deleteFrom('failovers').where('machine_id', '=', machine.id).execute(); // the round trip is history now (events keep it)
      }
      await db
        .updateTable('reprotections')
        .set({ state: this.next(row, row.direction === 'forward' ? 'finished' : 'applied'), point_id: pointId, result: JSON.stringify(outcome), updated_at: now })
        .where('machine_id', '=', machine.id)
        .execute();
      const operation = await this.jobs.get(row.operation_job_id, db);
      if (operation.state === 'running' || operation.state === 'queued') {
        await this.jobs.transition(operation.id, 'succeed', { result: { machine: machine.name, direction: row.direction, pointId, ...outcome } }, db);
      }
      return true;
    });
    if (!finished) return;
    await this.events.record({
      machineId: machine.id,
      severity: 'info',
      code: 'reprotect-done',
      message:
        row.direction === 'reverse'
          ? `${machine.name}: reprotected from the recovery site: first reverse point ${pointId} sent ${outcome.pointSentBytes} bytes; the source site's disks took ${outcome.appliedChangedBytes ?? 0} changed bytes (${outcome.appliedReceivedBytes ?? 0} sent); \`ferry failback ${machine.name}\` brings it home`
          : `${machine.name}: protected to its recovery site again: first forward point ${pointId} sent ${outcome.pointSentBytes} bytes${removed}`,
    });
  }

  /** A step failed: the machine goes back to `committed` in the direction it had, ready for another reprotect. */
  private async fail(row: ReprotectionRow, reason: string): Promise<void> {
    const machine = await this.machines.getById(row.machine_id);
    const previous: ReplicationDirection = row.direction === 'reverse' ? 'forward' : 'reverse';
    const failed = await this.context.db.transaction().execute(async (db) => {
      const current = await db.selectFrom('reprotections').select('state').where('machine_id', '=', row.machine_id).executeTakeFirst();
      if (current?.state !== row.state) return false;
      const state = nextState(machineTransitions, `machine '${machine.name}'`, machine.state as MachineState, 'reprotect-failed');
      const now = this.context.now();
      await db.updateTable('machines').set({ state, direction: previous, updated_at: now }).where('id', '=', machine.id).execute();
      await db.updateTable('reprotections').set({ state: this.next(row, 'fail'), error: reason, updated_at: now }).where('machine_id', '=', machine.id).execute();
      const operation = await this.jobs.get(row.operation_job_id, db);
      if (operation.state === 'running' || operation.state === 'queued') {
        await this.jobs.transition(operation.id, 'fail', { error: { code: 'conflict', message: reason, retryable: true } }, db);
      }
      return true;
    });
    if (!failed) return;
    await this.events.record({
      machineId: machine.id,
      severity: 'error',
      code: 'reprotect-failed',
      message: `${machine.name}: reprotect failed, the machine is committed as before: ${reason}; fix the cause and run \`ferry reprotect ${machine.name}\` again`,
    });
  }

  private next(row: ReprotectionRow, event: ReprotectEvent): ReprotectState {
    return nextState(reprotectTransitions, `reprotect of ${row.machine_id}`, row.state as ReprotectState, event);
  }

  private async sentBytesOf(pointId: string): Promise<number> {
    const disks = await this.context.db.selectFrom('point_disks').select('sent_bytes').where('point_id', '=', pointId).execute();
    return disks.reduce((total, disk) => total + disk.sent_bytes, 0);
  }

  /**
   * Removes the failed-over disks the machine no longer runs on (written by the files driver under
   * SITE/<machine>/failover/<point>/); paths elsewhere are left alone and named.
   */
  private async removeRecoveryDisks(machineName: string, siteId: string | null, paths: readonly string[]): Promise<string> {
    const site = siteId ? await this.context.db.selectFrom('sites').select('path').where('id', '=', siteId).executeTakeFirst() : undefined;
    const generations = new Set<string>();
    const leftAlone: string[] = [];
    for (const diskPath of paths) {
      const directory = path.dirname(diskPath);
      const failoverDirectory = site ? path.join(site.path, machineName, 'failover') : null;
      if (failoverDirectory && path.dirname(directory) === failoverDirectory) generations.add(path.basename(directory));
      else leftAlone.push(diskPath);
    }
    try {
      for (const generation of generations) await this.driver.remove({ sitePath: site!.path, machineName, purpose: 'failover', generation });
    } catch (error) {
      return `; the old failed-over disks could not be removed (${(error as Error).message})`;
    }
    return `${generations.size > 0 ? '; the failed-over disks at the recovery site were removed' : ''}${leftAlone.length > 0 ? `; left in place: ${leftAlone.join(', ')}` : ''}`;
  }

  private async agentNamed(name: string): Promise<{ id: string }> {
    const agent = await this.context.db.selectFrom('agents').select('id').where('name', '=', name).executeTakeFirst();
    if (!agent) throw notFound('agent', name);
    return agent;
  }

  private async defaultReader(): Promise<string> {
    const agent = await this.context.db.selectFrom('agents').select('id').where('name', '=', SITE_AGENT_NAME).executeTakeFirst();
    if (!agent) {
      throw new FerryError('conflict', `the server's site agent ('${SITE_AGENT_NAME}') has not registered (it starts with \`ferry server\`); name an agent that can read the failed-over disks with --agent`, { retryable: true });
    }
    return agent.id;
  }
}

/** A reprotect row as the API shows it. */
export function reprotectView(row: ReprotectionRow): ReprotectView {
  return {
    direction: row.direction as ReprotectView['direction'],
    state: row.state,
    jobId: row.operation_job_id,
    stepJobId: row.job_id,
    pointId: row.point_id,
    targets: parseJsonColumn(row.targets, []),
    result: parseJsonColumn(row.result, null),
    error: row.error,
    createdAt: new Date(row.created_at).toISOString(),
  };
}
