/**
 * The server's side of replication: protecting a machine, handing replication jobs to agents (a
 * long poll that doubles as the agent's heartbeat), and recording what agents report back.
 */
import { FerryError, notFound } from '../errors.js';
import type { JobRow, PointDiskRow } from '../db/schema.js';
import { encodeChunkBatch, FrameEncoding } from '../protocol/chunk-batch.js';
import type { ApplyCompleteRequest, JobFailRequest, JobProgressRequest, JobStartRequest, ProtectRequest } from '../protocol/requests.js';
import { compressChunk, DEFAULT_ZSTD_LEVEL } from '../store/chunk-object.js';
import type { AgentJob, JobView, MachineView } from '../protocol/views.js';
import { type CoreContext, listenForJobChange, parseJsonColumn } from './context.js';
import type { Events } from './events.js';
import type { Jobs } from './jobs.js';
import { type MachineState, machineTransitions, nextState } from './lifecycle.js';
import type { Machines } from './machines.js';
import type { Points } from './points.js';
import type { Policies } from './policies.js';
import type { Sites } from './sites.js';

/** Most chunk bytes one `chunks/read` request may ask for (the answer is held in memory whole). */
const MAX_READ_BYTES = 32 * 1024 * 1024;

/** Protection and the agent-facing half of replication. */
export class Replication {
  /** Chunk names of the points `apply-point` jobs are reading, by job (see `chunksOfPoint`). */
  private readonly pointChunks = new Map<string, Set<string>>();

  constructor(
    private readonly context: CoreContext,
    private readonly jobs: Jobs,
    private readonly machines: Machines,
    private readonly points: Points,
    private readonly sites: Sites,
    private readonly policies: Policies,
    private readonly events: Events,
  ) {}

  /** `ferry protect`: binds the machine to a site and policy and starts initial replication. */
  async protect(machineName: string, request: ProtectRequest): Promise<{ machine: MachineView; job: JobView }> {
    const machine = await this.machines.get(machineName);
    const site = await this.sites.get(request.site);
    const policy = await this.policies.get(request.policy);
    // State check, state change and the first job in one transaction: two concurrent protects cannot both pass.
    const job = await this.context.db.transaction().execute(async (transaction) => {
      const current = await transaction.selectFrom('machines').select('state').where('id', '=', machine.id).executeTakeFirstOrThrow();
      const state = nextState(machineTransitions, `machine '${machineName}'`, current.state as MachineState, 'protect');
      await transaction
        .updateTable('machines')
        .set({ state, site_id: site.id, policy_id: policy.id, replication_error: null, replication_error_code: null, updated_at: this.context.now() })
        .where('id', '=', machine.id)
        .execute();
      return this.points.ensureReplicationJob(machine.id, transaction);
    });
    await this.events.record({ machineId: machine.id, severity: 'info', code: 'protection-started', message: `${machineName}: protection to site '${site.name}' with policy '${policy.name}' started` });
    return { machine: await this.machines.view(machineName), job };
  }

  /**
   * The agent's replication jobs that have not ended, waiting up to `waitSeconds` for one to appear.
   * Jobs already running are handed out again, so an agent that restarted picks its work back up.
   */
  async work(agentId: string, waitSeconds: number, signal: AbortSignal): Promise<AgentJob[]> {
    const deadline = Date.now() + waitSeconds * 1000;
    for (;;) {
      // Wake on new work, the caller going away, or after a while (to re-check and refresh last-seen).
      const change = listenForJobChange(this.context, Math.min(deadline - Date.now(), 5000), signal);
      await this.machines.touchAgent(agentId);
      const pending = await this.jobs.pendingForAgent(agentId);
      if (pending.length > 0 || Date.now() >= deadline || signal.aborted || this.context.shutdown.aborted) {
        change.stop();
        return Promise.all(pending.map((job) => this.describeForAgent(job)));
      }
      await change.changed;
    }
  }

  /**
   * The agent starts (or, after its own restart, resumes) a job. When the agent reports that it
   * cannot replicate incrementally (`request.resync`) and the machine already has points, the job
   * is a resync: its reason is recorded on the job (the machine shows `resyncing` while it runs) and
   * a warning event once per job. A machine without points ignores the report: that is an initial
   * replication, which reads everything anyway.
   */
  async start(agentId: string, jobId: string, request: JobStartRequest = {}): Promise<JobView> {
    const job = await this.jobs.forAgent(jobId, agentId);
    if (job.state !== 'queued' && job.state !== 'running') throw new FerryError('conflict', `job ${jobId} is ${job.state}; it cannot be started`);
    if (request.resync) await this.recordResync(job, request.resync.reason);
    if (job.state === 'queued') await this.jobs.transition(jobId, 'start', { step: 'reading disks' });
    return this.jobs.view(jobId);
  }

  /** Marks `job` a resync if its machine has points; records the event once per job and reason. */
  private async recordResync(job: JobRow, reason: string): Promise<void> {
    if (job.resync_reason === reason) return; // the same cycle resumed after an agent restart
    const machine = await this.machines.getById(job.machine_id!);
    const hasPoint = await this.context.db.selectFrom('points').select('id').where('machine_id', '=', machine.id).limit(1).executeTakeFirst();
    if (!hasPoint) return;
    await this.context.db.updateTable('jobs').set({ resync_reason: reason, updated_at: this.context.now() }).where('id', '=', job.id).execute();
    await this.events.record({
      machineId: machine.id,
      severity: 'warning',
      code: 'resync-started',
      message: `${machine.name}: resynchronising (job ${job.id}): ${reason}`,
    });
  }

  async progress(agentId: string, jobId: string, progress: JobProgressRequest): Promise<void> {
    await this.jobs.forAgent(jobId, agentId);
    await this.jobs.progress(jobId, progress);
  }

  /**
   * The agent gave up on a job: the job fails. A replication job's error shows on the machine until a
   * point succeeds; an `apply-point` job's failure is its operation's to report (reprotect, failback).
   */
  async fail(agentId: string, jobId: string, failure: JobFailRequest): Promise<JobView> {
    const job = await this.jobs.forAgent(jobId, agentId);
    // Already ended: failed before (a retried report), or cancelled by an operator while the agent worked.
    if (job.state === 'failed' || job.state === 'cancelled' || job.state === 'succeeded') return this.jobs.view(jobId);
    await this.jobs.transition(jobId, 'fail', { error: failure });
    const machine = await this.machines.getById(job.machine_id!);
    if (job.kind === 'apply-point') {
      await this.events.record({ machineId: machine.id, severity: 'error', code: failure.code, message: `${machine.name}: writing a point to its source site's disks failed: ${failure.message}` });
      return this.jobs.view(jobId);
    }
    await this.machines.setReplicationError(machine.id, { code: failure.code, message: failure.message });
    await this.events.record({ machineId: machine.id, severity: 'error', code: failure.code, message: `${machine.name}: replication failed: ${failure.message}` });
    return this.jobs.view(jobId);
  }

  /**
   * `GET /agent/jobs/:id/disks/:position/index`: the encoded index of an `apply-point` job's point disk
   * at `position` (the agent compares its disk with it). Not found for a position the point lacks.
   */
  async applyIndex(agentId: string, jobId: string, position: number): Promise<Buffer> {
    const { pointDisks } = await this.applyJob(agentId, jobId);
    const pointDisk = pointDisks.find((disk) => disk.position === position);
    if (!pointDisk) throw notFound('point disk', `${position} of job ${jobId}`);
    return (await this.context.store.getIndex(pointDisk.index_hash)).encode();
  }

  /**
   * `POST /agent/jobs/:id/chunks/read`: the chunks an `apply-point` job lacks, as a chunk batch (frames in
   * the order asked, zstd-compressed when that is smaller). Only chunks of the job's point may be read:
   * forbidden otherwise, so an agent token cannot read other machines' data by guessing names.
   */
  async readChunks(agentId: string, jobId: string, hashes: readonly string[]): Promise<Buffer[]> {
    const job = await this.applyJob(agentId, jobId);
    if (job.row.state !== 'running') throw new FerryError('conflict', `job ${jobId} is ${job.row.state}; start it before reading chunks`);
    const allowed = await this.chunksOfPoint(jobId, job.pointDisks.map((disk) => disk.index_hash));
    const largestChunk = Math.max(...job.pointDisks.map((disk) => disk.chunk_size));
    if (hashes.length * largestChunk > MAX_READ_BYTES) {
      throw new FerryError('invalid-request', `ask for at most ${Math.floor(MAX_READ_BYTES / largestChunk)} chunks of ${largestChunk} bytes per request (${MAX_READ_BYTES} bytes)`);
    }
    const foreign = hashes.find((hash) => !allowed.has(hash));
    if (foreign) throw new FerryError('forbidden', `chunk ${foreign} is not part of point ${job.pointId}, which job ${jobId} applies`);
    const chunks = await this.context.store.getChunks(hashes);
    return encodeChunkBatch(
      chunks.map((data, position) => {
        const compressed = compressChunk(data, DEFAULT_ZSTD_LEVEL);
        return { hash: Buffer.from(hashes[position]!, 'hex'), payload: compressed ?? data, encoding: compressed ? FrameEncoding.Zstd : FrameEncoding.Raw };
      }),
    );
  }

  /** The agent reports an `apply-point` job done: it succeeds with what each disk took (bytes changed, bytes received). */
  async completeApply(agentId: string, jobId: string, report: ApplyCompleteRequest): Promise<JobView> {
    const job = await this.applyJob(agentId, jobId);
    this.pointChunks.delete(jobId);
    if (job.row.state === 'succeeded') return this.jobs.view(jobId); // a retried report
    if (job.row.state !== 'running') throw new FerryError('conflict', `job ${jobId} is ${job.row.state}; it cannot complete`);
    const sum = (field: 'changedBytes' | 'receivedBytes' | 'chunksWritten') => report.disks.reduce((total, disk) => total + disk[field], 0);
    await this.jobs.transition(jobId, 'succeed', {
      result: { pointId: job.pointId, disks: report.disks, changedBytes: sum('changedBytes'), receivedBytes: sum('receivedBytes'), chunksWritten: sum('chunksWritten') },
    });
    return this.jobs.view(jobId);
  }

  /** An `apply-point` job of this agent, with its point's disks. */
  private async applyJob(agentId: string, jobId: string): Promise<{ row: JobRow; pointId: string; pointDisks: PointDiskRow[] }> {
    const row = await this.jobs.forAgent(jobId, agentId);
    if (row.kind !== 'apply-point') throw new FerryError('invalid-request', `job ${jobId} is a ${row.kind} job, not an apply-point job`);
    const { pointId } = parseJsonColumn<{ pointId?: string }>(row.params, {});
    const pointDisks = pointId ? await this.context.db.selectFrom('point_disks').selectAll().where('point_id', '=', pointId).orderBy('position').execute() : [];
    if (!pointId || pointDisks.length === 0) throw new FerryError('not-found', `the point job ${jobId} applies no longer exists`);
    return { row, pointId, pointDisks };
  }

  /** The distinct chunk names of a job's point (kept while the job reads; one job's worth at a time per job). */
  private async chunksOfPoint(jobId: string, indexHashes: readonly string[]): Promise<Set<string>> {
    let chunks = this.pointChunks.get(jobId);
    if (!chunks) {
      chunks = new Set<string>();
      for (const indexHash of indexHashes) for (const hash of (await this.context.store.getIndex(indexHash)).distinctHashes()) chunks.add(hash);
      if (this.pointChunks.size >= 8) this.pointChunks.delete(this.pointChunks.keys().next().value!);
      this.pointChunks.set(jobId, chunks);
    }
    return chunks;
  }

  private async describeForAgent(job: JobRow): Promise<AgentJob> {
    const machine = await this.machines.getById(job.machine_id!);
    if (job.kind === 'apply-point') {
      const { pointId, targets } = JSON.parse(job.params) as { pointId: string; targets: { position: number; path: string }[] };
      const disks = await this.machines.disksOf(machine.id);
      const pointDisks = await this.context.db.selectFrom('point_disks').selectAll().where('point_id', '=', pointId).orderBy('position').execute();
      return {
        id: job.id,
        kind: 'apply-point',
        machine: { id: machine.id, name: machine.name },
        pointId,
        disks: pointDisks.map((pointDisk) => ({
          id: disks.find((disk) => disk.position === pointDisk.position)?.id ?? pointDisk.disk_id,
          position: pointDisk.position,
          path: targets.find((target) => target.position === pointDisk.position)?.path ?? disks.find((disk) => disk.position === pointDisk.position)!.path,
          sizeBytes: pointDisk.size_bytes,
          chunkSize: pointDisk.chunk_size,
        })),
      };
    }
    const source = await this.machines.replicationSource(machine);
    const parsed = JSON.parse(job.params) as { chunkSize?: number; consistency?: 'app' | 'crash'; shutdown?: boolean };
    const chunkSize = Number(parsed.chunkSize) || this.context.options.chunkSize;
    // In reverse the workload runs at the recovery site: a failback's final point stops it there. The
    // hooks are the source machine's commands: they are never run by the agent reading the recovery site
    // (the server's site agent would run them on the server's host), so reverse points carry no app label
    // from hooks, only what a snapshot or a stopped workload gives them.
    const reverse = machine.direction === 'reverse';
    const shutdown = reverse ? machine.recovery_shutdown_command : machine.shutdown_command;
    return {
      id: job.id,
      kind: 'replicate',
      machine: { id: machine.id, name: machine.name },
      disks: source.disks,
      hooks: reverse
        ? { prePoint: null, postPoint: null, timeoutSeconds: machine.hook_timeout_seconds }
        : { prePoint: machine.pre_point_command, postPoint: machine.post_point_command, timeoutSeconds: machine.hook_timeout_seconds },
      consistency: parsed.consistency ?? 'app',
      chunkSize,
      ...(parsed.shutdown ? { shutdown } : {}),
    };
  }
}
