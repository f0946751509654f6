/**
 * Jobs: every long-running operation (initial replication, a point, a test failover, its cleanup) is a
 * job with state, progress, result and error. Agent jobs are handed to the machine's agent; server
 * jobs are run by the server's job runner. State changes go through the lifecycle table.
 */
import { FerryError, notFound } from '../errors.js';
import type { JobRow } from '../db/schema.js';
import type { JobView } from '../protocol/views.js';
import { newId } from '../util/ids.js';
import { isoOrNull } from '../util/time.js';
import { type CoreContext, parseJsonColumn, signalWork } from './context.js';
import type { Events } from './events.js';
import { activeJobStates, type JobEvent, type JobState, jobTransitions, nextState } from './lifecycle.js';

/** Kinds of job, and who runs each. */
export type JobKind = 'initial-replication' | 'point' | 'final-point' | 'test-failover' | 'test-failover-cleanup' | 'failover' | 'commit';

/**
 * Replication jobs: the kinds an agent runs (reading the source disks); the rest run on the server.
 * A `final-point` is a planned failover's last cycle: the agent stops the workload first.
 */
export const replicationJobKinds: readonly JobKind[] = ['initial-replication', 'point', 'final-point'];

/** True for jobs an agent executes. */
export function isAgentJob(kind: string): boolean {
  return (replicationJobKinds as readonly string[]).includes(kind);
}

/** Renders a job row for the API. */
export function jobView(row: JobRow, machineName: string | null): JobView {
  const percent = row.total_bytes > 0 ? Math.min(100, Math.floor((row.done_bytes / row.total_bytes) * 1000) / 10) : row.state === 'succeeded' ? 100 : 0;
  return {
    id: row.id,
    kind: row.kind,
    machine: machineName,
    state: row.state,
    step: row.step,
    progress: { doneBytes: row.done_bytes, totalBytes: row.total_bytes, percent: row.state === 'succeeded' ? 100 : percent },
    params: parseJsonColumn(row.params, {}),
    result: parseJsonColumn(row.result, null),
    error: row.error_code ? { code: row.error_code, message: row.error_message ?? '', retryable: row.retryable === 1 } : null,
    createdAt: new Date(row.created_at).toISOString(),
    startedAt: isoOrNull(row.started_at),
    endedAt: isoOrNull(row.ended_at),
    resyncReason: row.resync_reason,
  };
}

/** Creates jobs, changes their state and lists them. */
export class Jobs {
  constructor(
    private readonly context: CoreContext,
    private readonly events: Events,
  ) {}

  /**
   * `ferry job cancel`: ends a job where that is safe. A queued job of any kind never started, so it
   * just ends. A running replication job ends at once: its agent's commit is then refused (only a
   * running job can commit a point), so it never makes a point, and what it uploaded is garbage the
   * collector removes. A running server job (a test failover being written, or cleaned up) is not
   * stopped halfway: conflict, wait for it to end (then clean up). An ended job: conflict. Records an
   * event. The scheduler queues the machine's next point as usual; `ferry pause` stops replication.
   */
  async cancel(id: string): Promise<JobView> {
    const row = await this.get(id);
    if (row.state === 'running' && !isAgentJob(row.kind)) {
      throw new FerryError('conflict', `job ${id} (${row.kind}) is running on the server and cannot be stopped halfway; wait for it to end`, {
        details: { state: row.state, kind: row.kind },
      });
    }
    await this.transition(id, 'cancel', { error: { code: 'cancelled', message: 'cancelled by an operator', retryable: false }, step: 'cancelled' });
    const view = await this.view(id);
    await this.events.record({
      machineId: row.machine_id,
      severity: 'warning',
      code: 'job-cancelled',
      message: `job ${id} (${row.kind}${view.machine ? ` of ${view.machine}` : ''}) cancelled while ${row.state}`,
    });
    return view;
  }

  /** Queues a job. `db` lets callers create it inside their own transaction. */
  async create(
    job: { kind: JobKind; machineId: string | null; agentId: string | null; params?: Record<string, unknown> },
    db = this.context.db,
  ): Promise<JobRow> {
    const now = this.context.now();
    const row: JobRow = {
      id: newId('job'),
      kind: job.kind,
      machine_id: job.machineId,
      agent_id: job.agentId,
      state: 'queued',
      step: 'queued',
      done_bytes: 0,
      total_bytes: 0,
      params: JSON.stringify(job.params ?? {}),
      result: null,
      error_code: null,
      error_message: null,
      retryable: 0,
      created_at: now,
      started_at: null,
      ended_at: null,
      updated_at: now,
      resync_reason: null,
    };
    await db.insertInto('jobs').values(row).execute();
    signalWork(this.context);
    return row;
  }

  /** The job with `id`; throws not-found. */
  async get(id: string, db = this.context.db): Promise<JobRow> {
    const row = await db.selectFrom('jobs').selectAll().where('id', '=', id).executeTakeFirst();
    if (!row) throw notFound('job', id);
    return row;
  }

  async view(id: string): Promise<JobView> {
    const row = await this.get(id);
    return jobView(row, await this.machineName(row.machine_id));
  }

  /** Newest first, optionally one machine's or only unfinished ones. */
  async list(options: { machineId?: string; activeOnly?: boolean; limit: number }): Promise<JobView[]> {
    let query = this.context.db
      .selectFrom('jobs')
      .leftJoin('machines', 'machines.id', 'jobs.machine_id')
      .selectAll('jobs')
      .select('machines.name as machine_name')
      .orderBy('jobs.created_at', 'desc')
      .orderBy('jobs.id')
      .limit(options.limit);
    if (options.machineId) query = query.where('jobs.machine_id', '=', options.machineId);
    if (options.activeOnly) query = query.where('jobs.state', 'in', activeJobStates);
    const rows = await query.execute();
    return rows.map(({ machine_name, ...row }) => jobView(row, machine_name ?? null));
  }

  /** The unfinished job of `kinds` for a machine, if any. */
  async activeFor(machineId: string, kinds: readonly JobKind[], db = this.context.db): Promise<JobRow | undefined> {
    return db
      .selectFrom('jobs')
      .selectAll()
      .where('machine_id', '=', machineId)
      .where('kind', 'in', kinds)
      .where('state', 'in', activeJobStates)
      .orderBy('created_at')
      .executeTakeFirst();
  }

  /**
   * Applies a lifecycle event to a job and stores the consequences (timestamps, result, error).
   * Throws conflict when the job's state does not allow the event.
   */
  async transition(
    id: string,
    event: JobEvent,
    outcome: { result?: Record<string, unknown>; error?: { code: string; message: string; retryable: boolean }; step?: string } = {},
    db = this.context.db,
  ): Promise<JobRow> {
    const row = await this.get(id, db);
    const state = nextState(jobTransitions, `job ${id}`, row.state as JobState, event);
    const now = this.context.now();
    const ended = state === 'succeeded' || state === 'failed' || state === 'cancelled';
    await db
      .updateTable('jobs')
      .set({
        state,
        updated_at: now,
        ...(event === 'start' ? { started_at: now, step: outcome.step ?? 'running' } : {}),
        ...(ended ? { ended_at: now, step: outcome.step ?? state } : {}),
        ...(state === 'succeeded' ? { done_bytes: Math.max(row.done_bytes, row.total_bytes) } : {}),
        ...(outcome.result ? { result: JSON.stringify(outcome.result) } : {}),
        ...(outcome.error ? { error_code: outcome.error.code, error_message: outcome.error.message, retryable: outcome.error.retryable ? 1 : 0 } : {}),
      })
      .where('id', '=', id)
      .execute();
    signalWork(this.context);
    return this.get(id, db);
  }

  /** Records progress of a running job. Ignored for jobs that have ended (a late report after a retry). */
  async progress(id: string, progress: { doneBytes: number; totalBytes: number; step?: string }): Promise<void> {
    await this.context.db
      .updateTable('jobs')
      .set({ done_bytes: progress.doneBytes, total_bytes: progress.totalBytes, updated_at: this.context.now(), ...(progress.step ? { step: progress.step } : {}) })
      .where('id', '=', id)
      .where('state', 'in', activeJobStates)
      .execute();
  }

  /** Checks that an agent may act on a job: it exists, is an agent job, and is this agent's. */
  async forAgent(id: string, agentId: string): Promise<JobRow> {
    const row = await this.get(id);
    if (!isAgentJob(row.kind) || row.agent_id !== agentId) {
      throw new FerryError('forbidden', `job ${id} is not assigned to this agent`);
    }
    return row;
  }

  /** Unfinished agent jobs of one agent, oldest first: handed out again after an agent restart. */
  async pendingForAgent(agentId: string): Promise<JobRow[]> {
    return this.context.db
      .selectFrom('jobs')
      .selectAll()
      .where('agent_id', '=', agentId)
      .where('kind', 'in', replicationJobKinds)
      .where('state', 'in', activeJobStates)
      .orderBy('created_at')
      .execute();
  }

  /** Unfinished server jobs, oldest first (the job runner's queue; running ones are resumed after a restart). */
  async pendingServerJobs(): Promise<JobRow[]> {
    return this.context.db
      .selectFrom('jobs')
      .selectAll()
      .where('kind', 'not in', replicationJobKinds)
      .where('state', 'in', activeJobStates)
      .orderBy('created_at')
      .execute();
  }

  private async machineName(machineId: string | null): Promise<string | null> {
    if (!machineId) return null;
    const row = await this.context.db.selectFrom('machines').select('name').where('id', '=', machineId).executeTakeFirst();
    return row?.name ?? null;
  }
}
