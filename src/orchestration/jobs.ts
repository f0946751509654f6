/**
 * Jobs: every long-running operation (initial replication, a point, a test failover, its cleanup, a
 * recovery plan run) is a job with state, progress, result and error. Agent jobs are handed to the
 * machine's agent; server jobs are run by the server's job runner; coordinated jobs (a plan run and its
 * manual steps) are driven by their own module. A job may name the job that started it (`parentId`).
 * State changes go through the lifecycle table.
 */
import { FerryError, notFound } from '../errors.js';
import { withoutFsync } from '../db/database.js';
import type { JobRow } from '../db/schema.js';
import type { JobStepView, JobView } from '../protocol/views.js';
import { newId } from '../util/ids.js';
import { isoOrNull } from '../util/time.js';
import { type CoreContext, listenForJobChange, parseJsonColumn, signalWork } from './context.js';
import type { Events } from './events.js';
import { activeJobStates, type JobEvent, type JobState, jobTransitions, nextState } from './lifecycle.js';

/** Kinds of job, and who runs each. */
export type JobKind =
  | 'initial-replication'
  | 'point'
  | 'final-point'
  | 'apply-point'
  | 'test-failover'
  | 'test-failover-cleanup'
  | 'failover'
  | 'commit'
  | 'complete-migration'
  | 'export'
  | OperationJobKind
  | PlanJobKind;

/**
 * Jobs that carry a machine operation made of several steps, each its own child job: a planned failover
 * (final point, then writing the disks), a migration (the same), a failback (final point at the recovery
 * site, then applying it to the source disks) and a reprotect (first point of the new direction, then,
 * reverse only, applying it). Their module starts and ends them; they end when the operation does.
 */
export type OperationJobKind = 'planned-failover' | 'migrate' | 'failback' | 'reprotect';
export const operationJobKinds: readonly JobKind[] = ['planned-failover', 'migrate', 'failback', 'reprotect'];

/**
 * Jobs of recovery plans (recovery-plans.ts): `plan` is a whole run, `plan-script` a script action (a
 * server job the runner executes), `plan-manual` a manual step (running until `ferry plan resume`).
 */
export type PlanJobKind = 'plan' | 'plan-script' | 'plan-manual';

/**
 * Jobs no executor claims: their own module starts and ends them (a plan run, and its manual steps,
 * which only wait). The server's job runner leaves them alone.
 */
export const coordinatedJobKinds: readonly JobKind[] = ['plan', 'plan-manual', ...operationJobKinds];

/**
 * Replication jobs: the kinds an agent runs (reading the source disks); the rest run on the server.
 * A `final-point` is a planned failover's last cycle: the agent stops the workload first.
 */
export const replicationJobKinds: readonly JobKind[] = ['initial-replication', 'point', 'final-point'];

/**
 * Jobs an agent executes: replication, and `apply-point` (the agent makes its disks equal to a point,
 * fetching only the chunks that differ: reprotect and failback write the source site's disks this way).
 */
export const agentJobKinds: readonly JobKind[] = [...replicationJobKinds, 'apply-point'];

/** True for jobs an agent executes. */
export function isAgentJob(kind: string): boolean {
  return (agentJobKinds as readonly string[]).includes(kind);
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
    parentId: row.parent_id,
  };
}

/** Describes the steps of a job that runs others (see `Jobs.describeSteps`); null when it has none. */
export type JobStepDescriber = (job: JobRow) => Promise<JobStepView[] | null>;

/** Creates jobs, changes their state and lists them. */
export class Jobs {
  private readonly stepDescribers = new Map<string, JobStepDescriber>();

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
    if ((operationJobKinds as readonly string[]).includes(row.kind) && (row.state === 'running' || row.state === 'queued')) {
      throw new FerryError('conflict', `job ${id} (${row.kind}) carries a machine operation step by step; cancel its current step's job (\`ferry jobs\` lists it under this one), and the operation rolls back`, {
        details: { state: row.state, kind: row.kind },
      });
    }
    if ((coordinatedJobKinds as readonly string[]).includes(row.kind) && row.state === 'running') {
      const { plan } = parseJsonColumn<{ plan?: string }>(row.params, {});
      throw new FerryError('conflict', `job ${id} (${row.kind}) belongs to a run of recovery plan '${plan ?? '?'}': cancel the run with \`ferry plan cancel ${plan ?? 'PLAN'}\``, {
        details: { state: row.state, kind: row.kind },
      });
    }
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

  /** Queues a job, optionally as the child of `parentId`. `db` lets callers create it inside their own transaction. */
  async create(
    job: { kind: JobKind; machineId: string | null; agentId: string | null; params?: Record<string, unknown>; parentId?: string | null },
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
      parent_id: job.parentId ?? null,
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

  /** One job in detail: with the jobs it started (`children`) and, for a job that runs others, its `steps`. */
  async view(id: string): Promise<JobView> {
    const row = await this.get(id);
    const children = await this.context.db
      .selectFrom('jobs')
      .leftJoin('machines', 'machines.id', 'jobs.machine_id')
      .selectAll('jobs')
      .select('machines.name as machine_name')
      .where('jobs.parent_id', '=', id)
      .orderBy('jobs.created_at')
      .orderBy('jobs.id')
      .execute();
    const steps = (await this.stepDescribers.get(row.kind)?.(row)) ?? null;
    return {
      ...jobView(row, await this.machineName(row.machine_id)),
      ...(steps ? { steps } : {}),
      children: children.map(({ machine_name, ...child }) => jobView(child, machine_name ?? null)),
    };
  }

  /**
   * `view` once the job has ended (succeeded, failed, cancelled), or as it is after `waitSeconds` if it
   * has not, or at once when `signal` or the server's shutdown aborts: a long poll, so a client waiting
   * for a job hears of its end when it happens instead of at its next poll. Throws not-found.
   */
  async viewWhenEnded(id: string, waitSeconds: number, signal?: AbortSignal): Promise<JobView> {
    const deadline = Date.now() + waitSeconds * 1000; // real time, not the core's clock (tests may hold that still)
    for (;;) {
      const change = listenForJobChange(this.context, deadline - Date.now(), signal); // before looking: an end in between is not missed
      const row = await this.get(id).catch((error: unknown) => {
        change.stop();
        throw error;
      });
      if (!activeJobStates.includes(row.state as JobState) || Date.now() >= deadline || signal?.aborted || this.context.shutdown.aborted) {
        change.stop();
        return this.view(id);
      }
      await change.changed;
    }
  }

  /** Lets the module that drives jobs of `kind` describe their steps in `view` (recovery plans do). */
  describeSteps(kind: JobKind, describer: JobStepDescriber): void {
    this.stepDescribers.set(kind, describer);
  }

  /**
   * Stores a result on a job that has not ended, before it ends: a failing job's output (a plan's script
   * action) is kept even though the job fails. The job's end may still replace it.
   */
  async setResult(id: string, result: Record<string, unknown>): Promise<void> {
    await this.context.db
      .updateTable('jobs')
      .set({ result: JSON.stringify(result), updated_at: this.context.now() })
      .where('id', '=', id)
      .where('state', 'in', activeJobStates)
      .execute();
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

  /**
   * Records progress of a running job, without waiting for an fsync (`withoutFsync`: after a power loss
   * a job may show older progress). Ignored for jobs that have ended (a late report after a retry).
   */
  async progress(id: string, progress: { doneBytes: number; totalBytes: number; step?: string }): Promise<void> {
    await withoutFsync(this.context.db, (db) =>
      db
        .updateTable('jobs')
        .set({ done_bytes: progress.doneBytes, total_bytes: progress.totalBytes, updated_at: this.context.now(), ...(progress.step ? { step: progress.step } : {}) })
        .where('id', '=', id)
        .where('state', 'in', activeJobStates)
        .execute(),
    );
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
      .where('kind', 'in', agentJobKinds)
      .where('state', 'in', activeJobStates)
      .orderBy('created_at')
      .execute();
  }

  /**
   * Unfinished server jobs, oldest first (the job runner's queue; running ones are resumed after a
   * restart). Coordinated jobs (plan runs, manual steps) are not in it.
   */
  async pendingServerJobs(): Promise<JobRow[]> {
    return this.context.db
      .selectFrom('jobs')
      .selectAll()
      .where('kind', 'not in', [...agentJobKinds, ...coordinatedJobKinds])
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
