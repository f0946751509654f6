/**
 * Recovery plans: named, ordered groups of machines with actions before and after each group (a script
 * the server runs, or a manual step an operator confirms), and their runs. A run applies one machine
 * operation (test failover, cleanup, failover...; see machine-operations.ts, the only way this module
 * touches machines) to every machine of the plan, group after group, as one job of kind `plan`:
 *
 *   for each group, in order:   before actions, in order  ->  every machine's operation, in parallel
 *                               (started through the registry; each is a job)  ->  after actions
 *
 * A run's steps are that flattened list. Each step's child jobs (machine operations, `plan-script`,
 * `plan-manual`) name the run's job as their parent and are recorded in `plan_run_items`. A step ends when
 * all its items have ended; a failed item stops the run (the plan job fails naming the step and what
 * failed) unless it is a script marked continue-on-error. A manual step makes the run `waiting` until
 * `resume`. The run's state changes only through the plan-run table in lifecycle.ts.
 *
 * Everything is in the database, and one function (`advance`) moves every running run as far as it can;
 * it runs on every job change and at start-up, so a restarted server picks each run up where it was:
 * items still starting are started again, running child jobs are followed (server jobs are re-run by the
 * job runner), a waiting run keeps waiting.
 */
import { FollowingPass } from '../util/coalescing-pass.js';
import { asFerryError, FerryError, notFound } from '../errors.js';
import type { JobRow, PlanRow, PlanRunItemRow, PlanRunRow } from '../db/schema.js';
import { type CreatePlanRequest, describeAction, type PlanAction, type PlanGroup, type PlanOperationView, type PlanRunView, type PlanView, type RunPlanRequest } from '../protocol/plans.js';
import type { JobStepView, JobView } from '../protocol/views.js';
import { newId } from '../util/ids.js';
import { describeScriptEnd, runShellScript } from '../util/shell-script.js';
import { isoOrNull } from '../util/time.js';
import { type CoreContext, parseJsonColumn, signalWork } from './context.js';
import type { Events } from './events.js';
import type { Jobs } from './jobs.js';
import { activePlanRunStates, nextState, type PlanItemEvent, type PlanItemState, planItemTransitions, type PlanRunEvent, type PlanRunState, planRunTransitions } from './lifecycle.js';
import { type MachineOperationName, machineOperationNames, type MachineOperations } from './machine-operations.js';

/** One step of a run, derived from the plan's groups: one action, or one group's machines. */
export type PlanStep =
  | { index: number; group: number; kind: 'action'; phase: 'before' | 'after'; number: number; action: PlanAction }
  | { index: number; group: number; kind: 'machines'; machines: string[] };

/** The steps of a plan in the order a run takes them (`index` is 0-based). */
export function planSteps(groups: readonly PlanGroup[]): PlanStep[] {
  const steps: PlanStep[] = [];
  groups.forEach((group, groupIndex) => {
    const actions = (phase: 'before' | 'after', list: readonly PlanAction[]) =>
      list.forEach((action, actionIndex) => steps.push({ index: steps.length, group: groupIndex + 1, kind: 'action', phase, number: actionIndex + 1, action }));
    actions('before', group.before);
    steps.push({ index: steps.length, group: groupIndex + 1, kind: 'machines', machines: [...group.machines] });
    actions('after', group.after);
  });
  return steps;
}

/** "group 2: test-failover of db-01, db-02" or "group 1 before, action 1: script `./stop.sh` (timeout 60s)". */
export function stepName(step: PlanStep, operation: string): string {
  if (step.kind === 'machines') return `group ${step.group}: ${operation} of ${step.machines.join(', ')}`;
  return `group ${step.group} ${step.phase}, action ${step.number}: ${describeAction(step.action)}`;
}

/** What a `plan-script` job's params hold. */
interface ScriptJobParams {
  plan: string;
  run: string;
  operation: string;
  step: number;
  group: number;
  phase: 'before' | 'after';
  machines: string[];
  command: string;
  timeoutSeconds: number;
}

const endedItemStates: readonly PlanItemState[] = ['succeeded', 'failed'];

/** Plans (create, show, list, delete) and their runs (run, resume, cancel), and the engine that drives runs. */
export class RecoveryPlans {
  private readonly follower: FollowingPass;

  constructor(
    private readonly context: CoreContext,
    private readonly jobs: Jobs,
    private readonly events: Events,
    private readonly operations: MachineOperations,
  ) {
    jobs.describeSteps('plan', (job) => this.stepsOfJob(job));
    this.follower = new FollowingPass(context.signals, 'work', () => this.advanceAll(), (error) => context.log.error({ err: error }, 'recovery plan advance failed'));
  }

  /** Follows job changes and resumes the runs a stop or crash interrupted. */
  start(): void {
    this.follower.start();
  }

  /** Stops following job changes and waits for a pass in progress; runs stay as they are, for the restart. */
  async stop(): Promise<void> {
    await this.follower.stop();
  }

  // --- plans ----------------------------------------------------------------------------------------

  /**
   * `ferry plan create`: stores a plan. Refused with not-found naming any machine Ferry does not know
   * (and its group), conflict when the name is taken. The request was validated by `createPlanRequest`.
   */
  async create(request: CreatePlanRequest): Promise<PlanView> {
    await this.checkMachines(request.name, request.groups);
    const now = this.context.now();
    const row: PlanRow = { id: newId('plan'), name: request.name, description: request.description, groups: JSON.stringify(request.groups), created_at: now, updated_at: now };
    await this.context.db.transaction().execute(async (db) => {
      const taken = await db.selectFrom('plans').select('id').where('name', '=', request.name).executeTakeFirst();
      if (taken) throw new FerryError('conflict', `plan '${request.name}' already exists; delete it first (\`ferry plan delete ${request.name}\`) to define it again`);
      await db.insertInto('plans').values(row).execute();
    });
    await this.events.record({ severity: 'info', code: 'plan-created', message: `plan '${request.name}' created: ${request.groups.length} group(s), ${request.groups.flatMap((group) => group.machines).length} machine(s)` });
    return this.view(request.name);
  }

  /** Every plan, by name, each with its newest run. */
  async list(): Promise<PlanView[]> {
    const rows = await this.context.db.selectFrom('plans').selectAll().orderBy('name').execute();
    return Promise.all(rows.map((row) => this.planView(row)));
  }

  /** One plan with its newest run; not-found naming it. */
  async view(name: string): Promise<PlanView> {
    return this.planView(await this.get(name));
  }

  /**
   * `ferry plan delete`: removes a plan and the record of its runs (their jobs stay in `ferry jobs`).
   * Refused with conflict while a run is in progress.
   */
  async delete(name: string): Promise<{ plan: string; deleted: true }> {
    await this.context.db.transaction().execute(async (db) => {
      const plan = await db.selectFrom('plans').selectAll().where('name', '=', name).executeTakeFirst();
      if (!plan) throw notFound('plan', name);
      const active = await db.selectFrom('plan_runs').selectAll().where('plan_id', '=', plan.id).where('state', 'in', activePlanRunStates).executeTakeFirst();
      if (active) {
        throw new FerryError(
          'conflict',
          `plan '${name}' has a run in progress (job ${active.job_id}, ${active.state} at step ${active.step_index + 1}); resume it (\`ferry plan resume ${name}\`) or cancel it (\`ferry plan cancel ${name}\`) first`,
          { details: { runId: active.id, jobId: active.job_id, state: active.state } },
        );
      }
      await db.deleteFrom('plans').where('id', '=', plan.id).execute();
    });
    await this.events.record({ severity: 'info', code: 'plan-deleted', message: `plan '${name}' deleted` });
    return { plan: name, deleted: true };
  }

  /** Every operation a plan may name, and whether this server has it yet. */
  operationsView(): PlanOperationView[] {
    const available = this.operations.available();
    return machineOperationNames.map((name) => ({ name, available: available.includes(name) }));
  }

  // --- runs -----------------------------------------------------------------------------------------

  /**
   * `ferry plan run PLAN OPERATION`: starts a run as one job of kind `plan`, running from its first
   * step at once. Refused with invalid-request for an unknown operation or one not available yet,
   * not-found for a machine that no longer exists, conflict while another run of the plan is active.
   */
  async run(planName: string, request: RunPlanRequest): Promise<{ run: PlanRunView; job: JobView }> {
    const plan = await this.get(planName);
    const operation = this.checkOperation(request.operation);
    const groups = parseJsonColumn<PlanGroup[]>(plan.groups, []);
    await this.checkMachines(plan.name, groups);
    const steps = planSteps(groups);
    const runId = newId('run');
    const jobId = await this.context.db.transaction().execute(async (db) => {
      const active = await db.selectFrom('plan_runs').selectAll().where('plan_id', '=', plan.id).where('state', 'in', activePlanRunStates).executeTakeFirst();
      if (active) {
        throw new FerryError('conflict', `plan '${plan.name}' already has a run in progress (job ${active.job_id}, ${active.operation}, ${active.state} at step ${active.step_index + 1} of ${steps.length})`, {
          details: { runId: active.id, jobId: active.job_id, state: active.state },
        });
      }
      const created = await this.jobs.create({ kind: 'plan', machineId: null, agentId: null, params: { plan: plan.name, run: runId, operation, point: request.point ?? null } }, db);
      await this.jobs.transition(created.id, 'start', { step: this.stepText(steps, 0, operation) }, db);
      const now = this.context.now();
      await db
        .insertInto('plan_runs')
        .values({
          id: runId,
          plan_id: plan.id,
          plan_name: plan.name,
          job_id: created.id,
          operation,
          point: request.point ?? null,
          groups: plan.groups,
          state: 'running',
          step_index: 0,
          cancel_requested: 0,
          error: null,
          created_at: now,
          updated_at: now,
          ended_at: null,
        })
        .execute();
      return created.id;
    });
    await this.events.record({ severity: 'info', code: 'plan-run-started', message: `plan '${plan.name}': ${operation} started (job ${jobId}, ${steps.length} steps)` });
    signalWork(this.context);
    return { run: await this.runView(await this.runRow(runId)), job: await this.jobs.view(jobId) };
  }

  /** The plan's runs, newest first. */
  async runs(planName: string, limit: number): Promise<PlanRunView[]> {
    const plan = await this.get(planName);
    const rows = await this.context.db.selectFrom('plan_runs').selectAll().where('plan_id', '=', plan.id).orderBy('created_at', 'desc').orderBy('id').limit(limit).execute();
    return Promise.all(rows.map((row) => this.runView(row)));
  }

  /**
   * `ferry plan resume PLAN`: the manual step the run waits at is done; the run goes on. Conflict when
   * the plan has no run waiting.
   */
  async resume(planName: string): Promise<PlanRunView> {
    const plan = await this.get(planName);
    const runId = await this.context.db.transaction().execute(async (db) => {
      const run = await db.selectFrom('plan_runs').selectAll().where('plan_id', '=', plan.id).where('state', 'in', activePlanRunStates).executeTakeFirst();
      if (!run) throw new FerryError('conflict', `plan '${plan.name}' has no run in progress, so nothing waits for resume`);
      if (run.state !== 'waiting') {
        throw new FerryError('conflict', `the run of plan '${plan.name}' (job ${run.job_id}) is ${run.state} at step ${run.step_index + 1}, not waiting at a manual step`, {
          details: { state: run.state },
        });
      }
      const state = nextState(planRunTransitions, `the run of plan '${plan.name}'`, run.state as PlanRunState, 'resume');
      const item = await db.selectFrom('plan_run_items').selectAll().where('run_id', '=', run.id).where('step_index', '=', run.step_index).executeTakeFirstOrThrow();
      if (item.job_id) await this.jobs.transition(item.job_id, 'succeed', { result: { resumedAt: new Date(this.context.now()).toISOString() }, step: 'resumed' }, db);
      await db.updateTable('plan_runs').set({ state, updated_at: this.context.now() }).where('id', '=', run.id).execute();
      await db.updateTable('jobs').set({ step: `resumed at step ${run.step_index + 1}`, updated_at: this.context.now() }).where('id', '=', run.job_id).execute();
      return run.id;
    });
    await this.events.record({ severity: 'info', code: 'plan-run-resumed', message: `plan '${plan.name}': resumed after a manual step` });
    signalWork(this.context);
    return this.runView(await this.runRow(runId));
  }

  /**
   * `ferry plan cancel PLAN`: a waiting run ends at once (cancelled); a running one stops at the next step
   * boundary, after the child jobs in flight have ended (they are never stopped halfway). Conflict when
   * no run is in progress.
   */
  async cancel(planName: string): Promise<PlanRunView> {
    const plan = await this.get(planName);
    const run = await this.context.db.selectFrom('plan_runs').selectAll().where('plan_id', '=', plan.id).where('state', 'in', activePlanRunStates).executeTakeFirst();
    if (!run) throw new FerryError('conflict', `plan '${plan.name}' has no run in progress to cancel`);
    // A resume may win the race for a waiting run: then it is running, and stops at the next boundary instead.
    const endedNow = run.state === 'waiting' && (await this.finish(run, 'cancel', { code: 'cancelled', message: `cancelled by an operator while waiting at step ${run.step_index + 1}` }, 'waiting'));
    if (!endedNow) {
      await this.context.db.updateTable('plan_runs').set({ cancel_requested: 1, updated_at: this.context.now() }).where('id', '=', run.id).execute();
      await this.context.db.updateTable('jobs').set({ step: `cancelling after step ${run.step_index + 1}`, updated_at: this.context.now() }).where('id', '=', run.job_id).execute();
      await this.events.record({ severity: 'warning', code: 'plan-run-cancelling', message: `plan '${plan.name}': cancel requested; the run stops after step ${run.step_index + 1}` });
      signalWork(this.context);
    }
    return this.runView(await this.runRow(run.id));
  }

  // --- the engine -----------------------------------------------------------------------------------

  /**
   * Moves every running run as far as it can go now: starts the next step's items, notes ended child
   * jobs, moves to the next step, ends the run. One pass at a time; a call during a pass asks for one more.
   */
  advance(): Promise<void> {
    return this.follower.run();
  }

  private async advanceAll(): Promise<void> {
    const runs = await this.context.db.selectFrom('plan_runs').selectAll().where('state', '=', 'running').orderBy('created_at').execute();
    for (const run of runs) {
      if (this.follower.stopping) return;
      try {
        await this.advanceRun(run);
      } catch (error) {
        // A bug or a database fault: end the run visibly rather than leave it stuck.
        this.context.log.error({ err: error, runId: run.id }, `plan run ${run.id} could not advance`);
        const failure = asFerryError(error);
        try {
          await this.finish(await this.runRow(run.id), 'fail', { code: failure.code, message: `plan '${run.plan_name}' stopped: ${failure.message}` });
        } catch (again) {
          this.context.log.error({ err: again, runId: run.id }, 'could not record the failure of a plan run');
        }
      }
    }
  }

  private async advanceRun(initial: PlanRunRow): Promise<void> {
    let run = initial;
    const steps = planSteps(parseJsonColumn<PlanGroup[]>(run.groups, []));
    for (;;) {
      const step = steps[run.step_index];
      if (!step) {
        await this.finish(run, 'succeed');
        return;
      }
      let items = await this.items(run.id, step.index);
      if (items.length === 0) {
        if (run.cancel_requested) {
          await this.finish(run, 'cancel', { code: 'cancelled', message: `cancelled by an operator before step ${step.index + 1} of ${steps.length}` });
          return;
        }
        await this.beginStep(run, step, steps);
        if (step.kind === 'action' && step.action.kind === 'manual') return; // waiting for resume
        items = await this.items(run.id, step.index);
      }
      items = await this.refreshItems(run, items);
      if (items.some((item) => !endedItemStates.includes(item.state as PlanItemState))) return; // wait for the next job change
      const failed = items.filter((item) => item.state === 'failed');
      const continues = step.kind === 'action' && step.action.kind === 'script' && step.action.continueOnError;
      const name = stepName(step, run.operation);
      if (failed.length > 0 && !continues) {
        const what = failed.map((item) => (item.machine ? `${item.machine}: ${item.error_message ?? 'failed'}` : (item.error_message ?? 'failed'))).join('; ');
        await this.finish(run, 'fail', { code: failed[0]!.error_code ?? 'internal', message: `plan '${run.plan_name}' stopped at step ${step.index + 1} of ${steps.length} (${name}): ${what}` });
        return;
      }
      if (failed.length > 0) {
        await this.events.record({ severity: 'warning', code: 'plan-action-failed', message: `plan '${run.plan_name}': step ${step.index + 1} (${name}) failed and is marked continue-on-error; the run goes on: ${failed[0]!.error_message ?? ''}` });
      }
      run = await this.moveOn(run, steps);
    }
  }

  /** Records the items of a step and, for actions, creates their jobs (a manual step also makes the run wait). */
  private async beginStep(run: PlanRunRow, step: PlanStep, steps: PlanStep[]): Promise<void> {
    const now = this.context.now();
    const base = { run_id: run.id, step_index: step.index, error_code: null, error_message: null, started_at: now, ended_at: null };
    if (step.kind === 'machines') {
      // 'starting' first: `refreshItems` starts them, and starts again whatever a crash left here.
      await this.context.db
        .insertInto('plan_run_items')
        .values(step.machines.map((machine, position) => ({ ...base, position, machine, job_id: null, state: 'starting' })))
        .execute();
      return;
    }
    const action = step.action;
    const group = parseJsonColumn<PlanGroup[]>(run.groups, [])[step.group - 1]!;
    if (action.kind === 'script') {
      const params: ScriptJobParams = {
        plan: run.plan_name,
        run: run.id,
        operation: run.operation,
        step: step.index + 1,
        group: step.group,
        phase: step.phase,
        machines: group.machines,
        command: action.command,
        timeoutSeconds: action.timeoutSeconds,
      };
      await this.context.db.transaction().execute(async (db) => {
        const job = await this.jobs.create({ kind: 'plan-script', machineId: null, agentId: null, parentId: run.job_id, params: { ...params } }, db);
        await db.insertInto('plan_run_items').values({ ...base, position: 0, machine: null, job_id: job.id, state: 'running' }).execute();
      });
      return;
    }
    const waiting = `waiting at step ${step.index + 1} of ${steps.length}: ${action.instruction} (then run \`ferry plan resume ${run.plan_name}\`)`;
    await this.context.db.transaction().execute(async (db) => {
      const job = await this.jobs.create(
        { kind: 'plan-manual', machineId: null, agentId: null, parentId: run.job_id, params: { plan: run.plan_name, run: run.id, step: step.index + 1, instruction: action.instruction } },
        db,
      );
      await this.jobs.transition(job.id, 'start', { step: `waiting: ${action.instruction}` }, db);
      await db.insertInto('plan_run_items').values({ ...base, position: 0, machine: null, job_id: job.id, state: 'running' }).execute();
      const state = nextState(planRunTransitions, `the run of plan '${run.plan_name}'`, run.state as PlanRunState, 'wait');
      await db.updateTable('plan_runs').set({ state, updated_at: this.context.now() }).where('id', '=', run.id).execute();
      await db.updateTable('jobs').set({ step: waiting, updated_at: this.context.now() }).where('id', '=', run.job_id).execute();
    });
    await this.events.record({ severity: 'warning', code: 'plan-run-waiting', message: `plan '${run.plan_name}': ${waiting}` });
  }

  /** Starts items still `starting` and notes items whose job has ended; returns the step's items as they now are. */
  private async refreshItems(run: PlanRunRow, items: PlanRunItemRow[]): Promise<PlanRunItemRow[]> {
    for (const item of items) {
      if (item.state === 'starting') await this.startItem(run, item);
      else if (item.state === 'running' && item.job_id) {
        const job = await this.jobs.get(item.job_id);
        if (job.state === 'succeeded') await this.setItem(item, 'ended-ok', null);
        else if (job.state === 'failed' || job.state === 'cancelled') {
          await this.setItem(item, 'ended-failed', { code: job.error_code ?? job.state, message: job.error_message ?? `job ${job.id} ${job.state}` });
        }
      }
    }
    return this.items(run.id, items[0]!.step_index);
  }

  /** Asks the registry to start the run's operation on one machine; a refusal fails the item with its error. */
  private async startItem(run: PlanRunRow, item: PlanRunItemRow): Promise<void> {
    let job: JobView;
    try {
      job = await this.operations.start(run.operation as MachineOperationName, item.machine!, run.point ? { point: run.point } : {});
    } catch (error) {
      const failure = asFerryError(error);
      await this.setItem(item, 'refused', { code: failure.code, message: failure.message });
      return;
    }
    await this.context.db.transaction().execute(async (db) => {
      await db.updateTable('jobs').set({ parent_id: run.job_id }).where('id', '=', job.id).where('parent_id', 'is', null).execute();
      const state = nextState(planItemTransitions, `item ${item.machine} of plan run ${run.id}`, item.state as PlanItemState, 'started');
      await db.updateTable('plan_run_items').set({ job_id: job.id, state }).where('run_id', '=', item.run_id).where('step_index', '=', item.step_index).where('position', '=', item.position).execute();
    });
    // A job that ended before it was linked (an immediate operation) is noted by the refresh that follows.
    signalWork(this.context);
  }

  private async setItem(item: PlanRunItemRow, event: PlanItemEvent, error: { code: string; message: string } | null): Promise<void> {
    const state = nextState(planItemTransitions, `item ${item.machine ?? 'action'} of plan run ${item.run_id}`, item.state as PlanItemState, event);
    await this.context.db
      .updateTable('plan_run_items')
      .set({ state, error_code: error?.code ?? null, error_message: error?.message ?? null, ended_at: this.context.now() })
      .where('run_id', '=', item.run_id)
      .where('step_index', '=', item.step_index)
      .where('position', '=', item.position)
      .execute();
  }

  /** The step has ended (well, or failed with continue-on-error): on to the next one. */
  private async moveOn(run: PlanRunRow, steps: PlanStep[]): Promise<PlanRunRow> {
    const next = run.step_index + 1;
    await this.context.db.transaction().execute(async (db) => {
      await db.updateTable('plan_runs').set({ step_index: next, updated_at: this.context.now() }).where('id', '=', run.id).where('step_index', '=', run.step_index).execute();
      if (next < steps.length) await db.updateTable('jobs').set({ step: this.stepText(steps, next, run.operation), updated_at: this.context.now() }).where('id', '=', run.job_id).execute();
    });
    return this.runRow(run.id);
  }

  /**
   * Ends a run and its job together, and says whether it did: a run that has already ended, or that is
   * no longer in `onlyFrom` when given, is left as it is.
   */
  private async finish(
    run: PlanRunRow,
    event: Extract<PlanRunEvent, 'succeed' | 'fail' | 'cancel'>,
    error?: { code: string; message: string },
    onlyFrom?: PlanRunState,
  ): Promise<boolean> {
    const steps = planSteps(parseJsonColumn<PlanGroup[]>(run.groups, []));
    const ended = await this.context.db.transaction().execute(async (db) => {
      const current = await db.selectFrom('plan_runs').selectAll().where('id', '=', run.id).executeTakeFirstOrThrow();
      if (!activePlanRunStates.includes(current.state as PlanRunState) || (onlyFrom !== undefined && current.state !== onlyFrom)) return false;
      const state = nextState(planRunTransitions, `the run of plan '${run.plan_name}'`, current.state as PlanRunState, event);
      const now = this.context.now();
      await db.updateTable('plan_runs').set({ state, error: error?.message ?? null, ended_at: now, updated_at: now }).where('id', '=', run.id).execute();
      if (event === 'cancel') {
        // A manual step being waited at ends with the run.
        const waiting = await db.selectFrom('plan_run_items').selectAll().where('run_id', '=', run.id).where('state', '=', 'running').execute();
        for (const item of waiting) {
          const job = item.job_id ? await this.jobs.get(item.job_id, db) : null;
          if (job?.kind !== 'plan-manual') continue;
          await this.jobs.transition(job.id, 'cancel', { error: { code: 'cancelled', message: error!.message, retryable: false } }, db);
          const itemState = nextState(planItemTransitions, 'manual step', item.state as PlanItemState, 'ended-failed');
          await db
            .updateTable('plan_run_items')
            .set({ state: itemState, error_code: 'cancelled', error_message: error!.message, ended_at: now })
            .where('run_id', '=', item.run_id)
            .where('step_index', '=', item.step_index)
            .where('position', '=', item.position)
            .execute();
        }
      }
      if (event === 'succeed') {
        const continued = await db.selectFrom('plan_run_items').select('step_index').where('run_id', '=', run.id).where('state', '=', 'failed').execute();
        const result = {
          plan: run.plan_name,
          operation: run.operation,
          steps: steps.length,
          machines: steps.flatMap((step) => (step.kind === 'machines' ? step.machines : [])),
          failedContinued: [...new Set(continued.map((item) => item.step_index + 1))],
        };
        await this.jobs.transition(run.job_id, 'succeed', { result, step: `all ${steps.length} steps done` }, db);
      } else {
        await this.jobs.transition(run.job_id, event, { error: { code: error!.code, message: error!.message, retryable: false }, step: event === 'fail' ? `failed at step ${current.step_index + 1}` : 'cancelled' }, db);
      }
      return true;
    });
    if (!ended) return false;
    const messages = {
      succeed: { severity: 'info' as const, code: 'plan-run-succeeded', message: `plan '${run.plan_name}': ${run.operation} done, ${steps.length} steps (job ${run.job_id})` },
      fail: { severity: 'error' as const, code: 'plan-run-failed', message: error?.message ?? '' },
      cancel: { severity: 'warning' as const, code: 'plan-run-cancelled', message: `plan '${run.plan_name}': ${error?.message ?? 'cancelled'}` },
    };
    await this.events.record(messages[event]);
    return true;
  }

  // --- script actions -------------------------------------------------------------------------------

  /**
   * Server job `plan-script`: runs the action's command with `/bin/sh -c` in the server's working
   * directory, with FERRY_PLAN, FERRY_PLAN_RUN, FERRY_OPERATION, FERRY_GROUP, FERRY_PHASE, FERRY_MACHINES
   * (the group's, comma-separated) and FERRY_JOB set. The result keeps the last 64 KiB of its output,
   * also when it fails (hook-failed: non-zero exit, killed at its timeout). Interrupted by a server stop,
   * it runs again from the start after the restart.
   */
  async runScript(job: JobRow, signal: AbortSignal): Promise<Record<string, unknown>> {
    const params = parseJsonColumn<ScriptJobParams | null>(job.params, null);
    if (!params?.command) throw new FerryError('internal', `job ${job.id} has no script to run`);
    // The runner hands over the row it found: already running means a restart interrupted an earlier attempt.
    const attempt = job.state === 'running' ? ' (again, after a server restart)' : '';
    await this.jobs.progress(job.id, { doneBytes: 0, totalBytes: 0, step: `running \`${params.command}\`${attempt}` });
    const outcome = await runShellScript(params.command, {
      timeoutSeconds: params.timeoutSeconds,
      signal,
      env: {
        FERRY_PLAN: params.plan,
        FERRY_PLAN_RUN: params.run,
        FERRY_OPERATION: params.operation,
        FERRY_GROUP: String(params.group),
        FERRY_PHASE: params.phase,
        FERRY_MACHINES: params.machines.join(','),
        FERRY_JOB: job.id,
      },
    });
    if (outcome.aborted) throw new FerryError('io-error', `script \`${params.command}\` stopped because the server is stopping`);
    const result = {
      command: params.command,
      exitCode: outcome.exitCode,
      signal: outcome.signal,
      timedOut: outcome.timedOut,
      durationMs: outcome.durationMs,
      output: outcome.output,
      outputDroppedBytes: outcome.droppedBytes,
    };
    if (outcome.exitCode === 0 && !outcome.timedOut) return result;
    await this.jobs.setResult(job.id, result);
    const tail = outcome.output.trim().split('\n').slice(-3).join(' | ').slice(-500);
    throw new FerryError('hook-failed', `script \`${params.command}\` ${describeScriptEnd(outcome, params.timeoutSeconds)}${tail ? `: ${tail}` : ''}`);
  }

  // --- views ----------------------------------------------------------------------------------------

  /** The steps of a `plan` job (for `ferry job show`); null when its run is gone (plan deleted). */
  async stepsOfJob(job: JobRow): Promise<JobStepView[] | null> {
    const run = await this.context.db.selectFrom('plan_runs').selectAll().where('job_id', '=', job.id).executeTakeFirst();
    return run ? this.stepsView(run) : null;
  }

  private async planView(row: PlanRow): Promise<PlanView> {
    const last = await this.context.db.selectFrom('plan_runs').selectAll().where('plan_id', '=', row.id).orderBy('created_at', 'desc').orderBy('id').executeTakeFirst();
    return {
      id: row.id,
      name: row.name,
      description: row.description,
      groups: parseJsonColumn<PlanGroup[]>(row.groups, []),
      createdAt: new Date(row.created_at).toISOString(),
      updatedAt: new Date(row.updated_at).toISOString(),
      lastRun: last ? await this.runView(last) : null,
    };
  }

  private async runView(run: PlanRunRow): Promise<PlanRunView> {
    const steps = planSteps(parseJsonColumn<PlanGroup[]>(run.groups, []));
    const active = activePlanRunStates.includes(run.state as PlanRunState);
    const current = steps[run.step_index];
    return {
      id: run.id,
      plan: run.plan_name,
      operation: run.operation,
      point: run.point,
      state: run.state,
      jobId: run.job_id,
      currentStep: active && current ? run.step_index + 1 : null,
      totalSteps: steps.length,
      waitingFor: run.state === 'waiting' && current?.kind === 'action' && current.action.kind === 'manual' ? current.action.instruction : null,
      cancelRequested: run.cancel_requested === 1,
      error: run.error,
      createdAt: new Date(run.created_at).toISOString(),
      endedAt: isoOrNull(run.ended_at),
      steps: await this.stepsView(run),
    };
  }

  private async stepsView(run: PlanRunRow): Promise<JobStepView[]> {
    const steps = planSteps(parseJsonColumn<PlanGroup[]>(run.groups, []));
    const items = await this.context.db.selectFrom('plan_run_items').selectAll().where('run_id', '=', run.id).orderBy('step_index').orderBy('position').execute();
    return steps.map((step) => {
      const mine = items.filter((item) => item.step_index === step.index);
      let state: string;
      if (step.index < run.step_index) state = mine.some((item) => item.state === 'failed') ? 'failed-continued' : 'succeeded';
      else if (step.index > run.step_index) state = activePlanRunStates.includes(run.state as PlanRunState) ? 'pending' : 'skipped';
      else if (run.state === 'running') state = mine.length > 0 ? 'running' : 'pending';
      else if (run.state === 'cancelled') state = mine.length > 0 ? 'cancelled' : 'skipped';
      else state = run.state === 'waiting' ? 'waiting' : run.state === 'failed' ? 'failed' : 'succeeded';
      const shown =
        mine.length > 0
          ? mine.map((item) => ({ machine: item.machine, jobId: item.job_id, state: item.state, error: item.error_message }))
          : step.kind === 'machines'
            ? step.machines.map((machine) => ({ machine, jobId: null, state: 'pending', error: null }))
            : [{ machine: null, jobId: null, state: 'pending', error: null }];
      return {
        number: step.index + 1,
        name: stepName(step, run.operation),
        state,
        items: shown,
        instruction: step.kind === 'action' && step.action.kind === 'manual' ? step.action.instruction : null,
      };
    });
  }

  // --- helpers --------------------------------------------------------------------------------------

  private async get(name: string): Promise<PlanRow> {
    const row = await this.context.db.selectFrom('plans').selectAll().where('name', '=', name).executeTakeFirst();
    if (!row) throw notFound('plan', name);
    return row;
  }

  private async runRow(id: string): Promise<PlanRunRow> {
    return this.context.db.selectFrom('plan_runs').selectAll().where('id', '=', id).executeTakeFirstOrThrow();
  }

  private async items(runId: string, stepIndex: number): Promise<PlanRunItemRow[]> {
    return this.context.db.selectFrom('plan_run_items').selectAll().where('run_id', '=', runId).where('step_index', '=', stepIndex).orderBy('position').execute();
  }

  private stepText(steps: PlanStep[], index: number, operation: string): string {
    const step = steps[index];
    return step ? `step ${index + 1} of ${steps.length}: ${stepName(step, operation)}` : 'finishing';
  }

  /** The operation's name if a plan may run it on this server; invalid-request naming what is possible otherwise. */
  private checkOperation(name: string): MachineOperationName {
    if (!(machineOperationNames as readonly string[]).includes(name)) {
      throw new FerryError('invalid-request', `unknown operation '${name}' (operations: ${machineOperationNames.join(', ')})`, { details: { field: 'operation' } });
    }
    const available = this.operations.available();
    if (!available.includes(name as MachineOperationName)) {
      throw new FerryError('invalid-request', `operation '${name}' is not available yet (available: ${available.join(', ') || 'none'})`, { details: { field: 'operation' } });
    }
    return name as MachineOperationName;
  }

  /** Not-found naming every machine of `groups` Ferry does not know, with its group. */
  private async checkMachines(planName: string, groups: readonly PlanGroup[]): Promise<void> {
    const names = groups.flatMap((group) => group.machines);
    const known = new Set((await this.context.db.selectFrom('machines').select('name').where('name', 'in', names).execute()).map((row) => row.name));
    const missing = groups.flatMap((group, index) => group.machines.filter((machine) => !known.has(machine)).map((machine) => `'${machine}' (group ${index + 1})`));
    if (missing.length > 0) {
      const first = names.find((machine) => !known.has(machine))!;
      throw new FerryError('not-found', `plan '${planName}' names ${missing.length === 1 ? 'a machine' : 'machines'} Ferry does not know: ${missing.join(', ')}; see \`ferry machine list\``, {
        details: { kind: 'machine', name: first },
      });
    }
  }
}
