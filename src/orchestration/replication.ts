/**
 * The server's side of replication: protecting a machine, handing replication jobs to agents (a
 * long poll that doubles as the agent's heartbeat), and recording what agents report back.
 */
import { once } from 'node:events';
import { FerryError } from '../errors.js';
import type { JobRow } from '../db/schema.js';
import type { JobFailRequest, JobProgressRequest, JobStartRequest, ProtectRequest } from '../protocol/requests.js';
import type { AgentJob, JobView, MachineView } from '../protocol/views.js';
import type { CoreContext } from './context.js';
import type { Events } from './events.js';
import type { Jobs } from './jobs.js';
import { type MachineState, machineTransitions, nextState } from './lifecycle.js';
import type { Machines } from './machines.js';
import type { Points } from './points.js';
import type { Policies } from './policies.js';
import type { Sites } from './sites.js';

/** Protection and the agent-facing half of replication. */
export class Replication {
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
    signal = AbortSignal.any([signal, this.context.shutdown]);
    for (;;) {
      await this.machines.touchAgent(agentId);
      const pending = await this.jobs.pendingForAgent(agentId);
      if (pending.length > 0 || Date.now() >= deadline || signal.aborted) {
        return Promise.all(pending.map((job) => this.describeForAgent(job.id, job.machine_id!, job.params)));
      }
      // Wake on new work, the caller going away, or after a while (to re-check and refresh last-seen);
      // the listener and the timer are removed either way, so long polls leave nothing behind.
      const wait = new AbortController();
      const timer = setTimeout(() => wait.abort(), Math.min(deadline - Date.now(), 5000));
      await once(this.context.signals, 'work', { signal: AbortSignal.any([signal, wait.signal]) }).catch(() => undefined);
      clearTimeout(timer);
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

  /** The agent gave up on a job: the job fails and the machine shows the error until a point succeeds. */
  async fail(agentId: string, jobId: string, failure: JobFailRequest): Promise<JobView> {
    const job = await this.jobs.forAgent(jobId, agentId);
    // Already ended: failed before (a retried report), or cancelled by an operator while the agent worked.
    if (job.state === 'failed' || job.state === 'cancelled' || job.state === 'succeeded') return this.jobs.view(jobId);
    await this.jobs.transition(jobId, 'fail', { error: failure });
    const machine = await this.machines.getById(job.machine_id!);
    await this.machines.setReplicationError(machine.id, { code: failure.code, message: failure.message });
    await this.events.record({ machineId: machine.id, severity: 'error', code: failure.code, message: `${machine.name}: replication failed: ${failure.message}` });
    return this.jobs.view(jobId);
  }

  private async describeForAgent(jobId: string, machineId: string, params: string): Promise<AgentJob> {
    const machine = await this.machines.getById(machineId);
    const disks = await this.machines.disksOf(machineId);
    const parsed = JSON.parse(params) as { chunkSize?: number; consistency?: 'app' | 'crash'; shutdown?: boolean };
    const chunkSize = Number(parsed.chunkSize) || this.context.options.chunkSize;
    return {
      id: jobId,
      kind: 'replicate',
      machine: { id: machine.id, name: machine.name },
      disks: disks.map((disk) => ({ id: disk.id, position: disk.position, path: disk.path })),
      hooks: { prePoint: machine.pre_point_command, postPoint: machine.post_point_command, timeoutSeconds: machine.hook_timeout_seconds },
      consistency: parsed.consistency ?? 'app',
      chunkSize,
      ...(parsed.shutdown ? { shutdown: machine.shutdown_command } : {}),
    };
  }
}
