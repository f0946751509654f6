/**
 * Recovery points: requested as replication jobs, committed by the agent once every index they name
 * is in the store, listed, chosen ("latest" or an id), and expired by the machine's policy.
 */
import { FerryError, notFound } from '../errors.js';
import type { Db } from '../db/database.js';
import type { MachineRow, PointRow } from '../db/schema.js';
import type { CommitPointRequest } from '../protocol/requests.js';
import type { JobView, PointView } from '../protocol/views.js';
import type { DiskIndex } from '../store/disk-index.js';
import { pointsToKeep, type RetentionRules } from './retention.js';
import { faultPoint } from '../util/fault-injection.js';
import { newId } from '../util/ids.js';
import type { CoreContext } from './context.js';
import type { Events } from './events.js';
import { type JobKind, Jobs, jobView, replicationJobKinds } from './jobs.js';
import { type MachineState, machineTransitions, nextState, replicatingMachineStates } from './lifecycle.js';
import type { Machines } from './machines.js';


/** Requests, commits, lists and expires recovery points. */
export class Points {
  constructor(
    private readonly context: CoreContext,
    private readonly jobs: Jobs,
    private readonly machines: Machines,
    private readonly events: Events,
  ) {}

  /**
   * Makes sure a replication job is queued or running for the machine and returns it: the existing one
   * if there is one (two requests never read the disks twice at once), else a new one. Check and
   * create happen in one transaction (`db`, or a new one), and a unique index backs it up.
   * `consistency` forces or skips the hooks; by default they run when the policy's app-consistent
   * interval has passed since the last app-consistent point.
   */
  async ensureReplicationJob(machineId: string, db: Db = this.context.db, consistency?: 'app' | 'crash'): Promise<JobView> {
    if (!db.isTransaction) return db.transaction().execute((transaction) => this.ensureReplicationJob(machineId, transaction, consistency));
    const machine = await db.selectFrom('machines').selectAll().where('id', '=', machineId).executeTakeFirstOrThrow();
    const existing = await this.jobs.activeFor(machine.id, replicationJobKinds, db);
    if (existing) return jobView(existing, machine.name);
    // Checked again here, in the transaction: the caller read the state earlier (the scheduler's list).
    if (!replicatingMachineStates.includes(machine.state as MachineState)) {
      throw new FerryError('conflict', `machine '${machine.name}' is ${machine.state}; points are taken only while it is protecting or protected`);
    }
    // A reprotect's first point is the initial replication of the new direction.
    const kind: JobKind = machine.state === 'protecting' || machine.state === 'reprotecting' ? 'initial-replication' : 'point';
    const policy = machine.policy_id
      ? await db.selectFrom('policies').select(['interval_seconds', 'app_interval_seconds']).where('id', '=', machine.policy_id).executeTakeFirst()
      : undefined;
    const everyPointIsApp = !policy || policy.app_interval_seconds <= policy.interval_seconds;
    const appDue = everyPointIsApp || machine.last_app_point_at === null || this.context.now() - machine.last_app_point_at >= policy.app_interval_seconds * 1000;
    const params = { chunkSize: this.context.options.chunkSize, consistency: consistency ?? (appDue ? 'app' : 'crash') };
    const source = await this.machines.replicationSource(machine, db);
    const created = await this.jobs.create({ kind, machineId: machine.id, agentId: source.agentId, params }, db);
    return jobView(created, machine.name);
  }

  /** `ferry points create`: a point now, for a machine that is being protected. */
  async request(machineName: string, consistency?: 'app' | 'crash'): Promise<JobView> {
    const machine = await this.machines.get(machineName);
    if (machine.state === 'unprotected') {
      throw new FerryError('conflict', `machine '${machineName}' is unprotected; run \`ferry protect ${machineName} --site SITE\` first`);
    }
    if (machine.state === 'paused') {
      throw new FerryError('conflict', `machine '${machineName}' is paused; run \`ferry resume ${machineName}\` first`);
    }
    if (!replicatingMachineStates.includes(machine.state as MachineState)) {
      throw new FerryError('conflict', `machine '${machineName}' is ${machine.state}; points are taken only while it is protecting or protected`);
    }
    return this.ensureReplicationJob(machine.id, this.context.db, consistency);
  }

  /**
   * Publishes a point for a replication job. Every disk of the machine must be named with an index the
   * store already holds (indexes are only accepted once their chunks are durable), so the point never
   * names missing data. Idempotent: committing the same job again returns the same point.
   */
  async commit(agentId: string, request: CommitPointRequest): Promise<PointView> {
    const job = await this.jobs.forAgent(request.jobId, agentId);
    if (!replicationJobKinds.includes(job.kind as JobKind)) throw new FerryError('invalid-request', `job ${job.id} is a ${job.kind} job: only a replication job commits a point`);
    const machine = await this.machines.getById(job.machine_id!);
    const already = await this.context.db.selectFrom('points').select('id').where('job_id', '=', job.id).executeTakeFirst();
    if (already) return this.view(already.id);
    if (job.state !== 'running') throw new FerryError('conflict', `job ${job.id} is ${job.state}; only a running job can commit a point`);

    const disks = await this.machines.disksOf(machine.id);
    const named = new Map(request.disks.map((disk) => [disk.diskId, disk]));
    if (named.size !== disks.length || disks.some((disk) => !named.has(disk.id))) {
      throw new FerryError('invalid-request', `a point of '${machine.name}' must name each of its ${disks.length} disk(s) exactly once`);
    }
    const pointDisks: { disk: (typeof disks)[number]; entry: CommitPointRequest['disks'][number]; index: DiskIndex }[] = [];
    for (const disk of disks) {
      const entry = named.get(disk.id)!;
      if (!(await this.context.store.hasIndex(entry.indexHash))) {
        throw new FerryError('chunk-missing', `index ${entry.indexHash} of disk ${disk.position} has not been uploaded`);
      }
      const index = await this.context.store.getIndex(entry.indexHash);
      pointDisks.push({ disk, entry, index });
    }

    const now = this.context.now();
    const takenAt = Math.min(request.takenAt, now);
    const pointId = newId('pt');
    await this.context.db.transaction().execute(async (db) => {
      await db
        .insertInto('points')
        .values({ id: pointId, machine_id: machine.id, job_id: job.id, taken_at: takenAt, created_at: now, consistency: request.consistency, note: request.note })
        .execute();
      for (const { disk, entry, index } of pointDisks) {
        await db
          .insertInto('point_disks')
          .values({
            point_id: pointId,
            disk_id: disk.id,
            position: disk.position,
            size_bytes: index.diskSize,
            chunk_size: index.chunkSize,
            index_hash: entry.indexHash,
            changed_bytes: entry.changedBytes,
            sent_bytes: entry.sentBytes,
          })
          .execute();
      }
      const state =
        machine.state === 'protecting' ? nextState(machineTransitions, `machine '${machine.name}'`, 'protecting', 'initial-point-committed') : (machine.state as MachineState);
      await db
        .updateTable('machines')
        .set({
          state,
          last_point_at: Math.max(takenAt, machine.last_point_at ?? 0),
          ...(request.consistency === 'app' ? { last_app_point_at: Math.max(takenAt, machine.last_app_point_at ?? 0) } : {}),
          replication_error: null,
          replication_error_code: null,
          updated_at: now,
        })
        .where('id', '=', machine.id)
        .execute();
      await this.jobs.transition(job.id, 'succeed', { result: { pointId, consistency: request.consistency } }, db);
      // Crash tests only (FERRY_FAULT=commit-point): die with every row written but not committed.
      faultPoint('commit-point');
    });
    const changedBytes = request.disks.reduce((total, disk) => total + disk.changedBytes, 0);
    const sentBytes = request.disks.reduce((total, disk) => total + disk.sentBytes, 0);
    await this.events.record({
      machineId: machine.id,
      severity: 'info',
      code: machine.state === 'protecting' ? 'initial-replication-done' : 'point-created',
      message: `${machine.name}: recovery point ${pointId} (${request.consistency}) committed${job.resync_reason !== null ? ' after a resync' : ''}, ${changedBytes} bytes changed, ${sentBytes} sent`,
    });
    return this.view(pointId);
  }

  /** The machine's points, newest first. */
  async list(machineName: string, limit: number): Promise<PointView[]> {
    const machine = await this.machines.get(machineName);
    const rows = await this.context.db.selectFrom('points').select('id').where('machine_id', '=', machine.id).orderBy('taken_at', 'desc').limit(limit).execute();
    return Promise.all(rows.map((row) => this.view(row.id)));
  }

  /** One point by id. */
  async view(pointId: string): Promise<PointView> {
    const point = await this.context.db
      .selectFrom('points')
      .innerJoin('machines', 'machines.id', 'points.machine_id')
      .selectAll('points')
      .select('machines.name as machine')
      .where('points.id', '=', pointId)
      .executeTakeFirst();
    if (!point) throw notFound('recovery point', pointId);
    const disks = await this.context.db.selectFrom('point_disks').selectAll().where('point_id', '=', pointId).orderBy('position').execute();
    return {
      id: point.id,
      machine: point.machine,
      takenAt: new Date(point.taken_at).toISOString(),
      createdAt: new Date(point.created_at).toISOString(),
      consistency: point.consistency,
      note: point.note,
      disks: disks.map((disk) => ({
        diskId: disk.disk_id,
        position: disk.position,
        sizeBytes: disk.size_bytes,
        chunkSize: disk.chunk_size,
        indexHash: disk.index_hash,
        changedBytes: disk.changed_bytes,
        sentBytes: disk.sent_bytes,
      })),
    };
  }

  /**
   * The machine's point named by `selector`: "latest", "latest-app" (newest app-consistent), a point id,
   * or an ISO 8601 time (the newest point taken at or before it). conflict when the machine has no such
   * point yet (latest, latest-app, a time before its first point); not-found for an unknown id.
   */
  async resolve(machine: MachineRow, selector: string): Promise<PointRow> {
    let query = this.context.db.selectFrom('points').selectAll().where('machine_id', '=', machine.id);
    const time = /^\d{4}-\d{2}-\d{2}T/.test(selector) ? Date.parse(selector) : Number.NaN;
    if (selector === 'latest') query = query.orderBy('taken_at', 'desc').limit(1);
    else if (selector === 'latest-app') query = query.where('consistency', '=', 'app').orderBy('taken_at', 'desc').limit(1);
    else if (!Number.isNaN(time)) query = query.where('taken_at', '<=', time).orderBy('taken_at', 'desc').limit(1);
    else if (/^\d{4}-\d{2}-\d{2}T/.test(selector)) throw new FerryError('invalid-request', `'${selector}' is not a valid time (ISO 8601, e.g. 2026-11-24T08:00:00Z)`);
    else query = query.where('id', '=', selector);
    const point = await query.executeTakeFirst();
    if (point) return point;
    if (selector === 'latest') throw new FerryError('conflict', `machine '${machine.name}' has no recovery point yet`);
    if (selector === 'latest-app') throw new FerryError('conflict', `machine '${machine.name}' has no app-consistent recovery point`);
    if (!Number.isNaN(time)) throw new FerryError('conflict', `machine '${machine.name}' has no recovery point taken at or before ${new Date(time).toISOString()}`);
    throw notFound(`recovery point of machine '${machine.name}'`, selector);
  }

  /**
   * Thins the machine's points by the policy's retention rules (`pointsToKeep`): every point recently,
   * then one per hour, then one per day, nothing past the retention; always the newest point and any
   * point a test failover is using. Returns how many were deleted. (Chunks nothing references any more
   * are reclaimed by the store's garbage collection, never here.)
   */
  async expire(machine: MachineRow, rules: RetentionRules): Promise<number> {
    const points = await this.context.db.selectFrom('points').select(['id', 'taken_at', 'consistency']).where('machine_id', '=', machine.id).execute();
    if (points.length === 0) return 0;
    const inUse = [
      ...(await this.context.db.selectFrom('test_failovers').select('point_id').where('machine_id', '=', machine.id).execute()),
      ...(await this.context.db.selectFrom('failovers').select('point_id').where('machine_id', '=', machine.id).where('point_id', 'is not', null).execute()),
    ];
    const keep = pointsToKeep(
      points.map((point) => ({ id: point.id, takenAt: point.taken_at, consistency: point.consistency })),
      rules,
      this.context.now(),
      new Set(inUse.flatMap((row) => (row.point_id === null ? [] : [row.point_id]))),
    );
    const doomed = points.filter((point) => !keep.has(point.id)).map((point) => point.id);
    let deleted = 0;
    for (let start = 0; start < doomed.length; start += 500) {
      const result = await this.context.db.deleteFrom('points').where('machine_id', '=', machine.id).where('id', 'in', doomed.slice(start, start + 500)).executeTakeFirst();
      deleted += Number(result.numDeletedRows);
    }
    if (deleted > 0) {
      await this.events.record({ machineId: machine.id, severity: 'info', code: 'points-expired', message: `${machine.name}: ${deleted} point(s) past retention removed` });
    }
    return deleted;
  }
}
