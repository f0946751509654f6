/**
 * Lifecycles as explicit state machines: every state a machine, a job or a test failover can be in,
 * and every allowed transition, written once here. Code changes a state only through `nextState`,
 * which refuses anything not in the table with a message naming the state and what it allows.
 */
import { FerryError } from '../errors.js';

/** A table of state -> event -> next state. */
export type TransitionTable<State extends string, Event extends string> = Record<State, Partial<Record<Event, State>>>;

/**
 * State of a protected machine, the one table every DR and migration operation goes through:
 *
 *   unprotected --protect--> protecting --initial-point-committed--> protected <--pause/resume--> paused
 *   protected | paused --failover--> failing-over --failover-done--> failed-over --commit--> committed
 *                                    failing-over --failover-failed--> protected   (nothing was failed over)
 *   failed-over --change-point--> failing-over --change-point-failed--> failed-over (the old disks stay)
 *
 *   protected | paused --migrate--> migrating --migrate-done--> migrated --complete-migration--> migration-completed
 *                                   migrating --migrate-failed--> protected
 *   migration-completed --adopt--> unprotected   (an agent at the target site registers the machine)
 *
 *   committed --reprotect--> reprotecting --reprotect-done--> protected   (replicating the other way)
 *                            reprotecting --reprotect-failed--> committed
 *   protected | paused --failback--> failing-back --failback-done--> failed-back --commit--> committed
 *                                    failing-back --failback-failed--> protected
 *
 * `failover` is planned (the agent stops the workload and takes a final point first) or unplanned (from
 * what the store has); `change-point` rewrites the failed-over disks from another point before commit.
 * `migrate` is a planned failover that retires the source; completing it deletes the machine's points
 * (their space is reclaimed) and there is no failback. Reprotect and failback extend this table as they
 * are built.
 */
export type MachineState =
  | 'unprotected'
  | 'protecting'
  | 'protected'
  | 'paused'
  | 'failing-over'
  | 'failed-over'
  | 'committed'
  | 'migrating'
  | 'migrated'
  | 'migration-completed'
  | 'reprotecting'
  | 'failing-back'
  | 'failed-back';
export type MachineEvent =
  | 'protect'
  | 'initial-point-committed'
  | 'pause'
  | 'resume'
  | 'failover'
  | 'failover-done'
  | 'failover-failed'
  | 'change-point'
  | 'change-point-failed'
  | 'commit'
  | 'migrate'
  | 'migrate-done'
  | 'migrate-failed'
  | 'complete-migration'
  | 'adopt'
  | 'reprotect'
  | 'reprotect-done'
  | 'reprotect-failed'
  | 'failback'
  | 'failback-done'
  | 'failback-failed';

export const machineTransitions: TransitionTable<MachineState, MachineEvent> = {
  unprotected: { protect: 'protecting' },
  protecting: { 'initial-point-committed': 'protected' },
  protected: { pause: 'paused', failover: 'failing-over', migrate: 'migrating', failback: 'failing-back' },
  paused: { resume: 'protected', failover: 'failing-over', migrate: 'migrating', failback: 'failing-back' },
  'failing-over': { 'failover-done': 'failed-over', 'failover-failed': 'protected', 'change-point-failed': 'failed-over' },
  'failed-over': { 'change-point': 'failing-over', commit: 'committed' },
  committed: { reprotect: 'reprotecting' },
  reprotecting: { 'reprotect-done': 'protected', 'reprotect-failed': 'committed' },
  'failing-back': { 'failback-done': 'failed-back', 'failback-failed': 'protected' },
  'failed-back': { commit: 'committed' },
  migrating: { 'migrate-done': 'migrated', 'migrate-failed': 'protected' },
  migrated: { 'complete-migration': 'migration-completed' },
  'migration-completed': { adopt: 'unprotected' },
};

/** States in which the scheduler takes points of a machine. */
export const replicatingMachineStates: readonly MachineState[] = ['protecting', 'protected'];

/** Which way a machine replicates: from its source site to its recovery site, or back (after reprotect). */
export type ReplicationDirection = 'forward' | 'reverse';

/**
 * A reprotect (reprotect.ts): the first point of the new direction is replicated, then (reverse only) that
 * point is applied to the source site's disks, sending only the chunks that differ there.
 *
 *   replicating --point-committed--> applying --applied--> done        (reverse)
 *   replicating --finished--> done                                     (forward: nothing to apply)
 *   replicating | applying --fail--> failed
 */
export type ReprotectState = 'replicating' | 'applying' | 'done' | 'failed';
export type ReprotectEvent = 'point-committed' | 'applied' | 'finished' | 'fail';

export const reprotectTransitions: TransitionTable<ReprotectState, ReprotectEvent> = {
  replicating: { 'point-committed': 'applying', finished: 'done', fail: 'failed' },
  applying: { applied: 'done', fail: 'failed' },
  done: {},
  failed: {},
};

/** Jobs: queued until an executor claims them, then running until they end. */
export type JobState = 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled';
export type JobEvent = 'start' | 'succeed' | 'fail' | 'cancel';

export const jobTransitions: TransitionTable<JobState, JobEvent> = {
  queued: { start: 'running', cancel: 'cancelled', fail: 'failed' },
  running: { succeed: 'succeeded', fail: 'failed', cancel: 'cancelled' },
  succeeded: {},
  failed: {},
  cancelled: {},
};

/** States in which a job has not ended. */
export const activeJobStates: readonly JobState[] = ['queued', 'running'];

/** A test failover of one machine: its disks being written, ready to use, failed, or being removed. */
export type TestFailoverState = 'creating' | 'ready' | 'failed' | 'cleaning';
export type TestFailoverEvent = 'written' | 'fail' | 'cleanup';

export const testFailoverTransitions: TransitionTable<TestFailoverState, TestFailoverEvent> = {
  creating: { written: 'ready', fail: 'failed' },
  ready: { cleanup: 'cleaning' },
  failed: { cleanup: 'cleaning' },
  cleaning: { cleanup: 'cleaning' },
};

/**
 * The state `event` leads to from `state`, or a conflict error such as
 * "machine 'web-01' is unprotected; allowed there: protect".
 */
export function nextState<State extends string, Event extends string>(
  table: TransitionTable<State, Event>,
  subject: string,
  state: State,
  event: Event,
): State {
  const next = table[state]?.[event];
  if (next === undefined) {
    const allowed = Object.keys(table[state] ?? {});
    throw new FerryError('conflict', `${subject} is ${state}; cannot ${event} (allowed there: ${allowed.length ? allowed.join(', ') : 'nothing'})`, {
      details: { state, event, allowed },
    });
  }
  return next;
}

/** True when `event` is allowed from `state`. */
export function allows<State extends string, Event extends string>(table: TransitionTable<State, Event>, state: State, event: Event): boolean {
  return table[state]?.[event] !== undefined;
}

// --- Recovery plan runs ---------------------------------------------------------------------------
// (Kept apart from the machine table above: a plan run never changes a machine's state itself; the
// machine operations it starts do, through the machine table.)

/**
 * A run of a recovery plan (recovery-plans.ts). It starts `running` and works through its steps in order;
 * a manual step makes it `waiting` until `ferry plan resume`. It ends `succeeded` after its last step,
 * `failed` when a machine operation or an action (not marked continue-on-error) fails, or `cancelled`
 * by `ferry plan cancel` (at once while waiting, else at the next step boundary).
 *
 *   running --wait--> waiting --resume--> running
 *   running --succeed | fail | cancel--> succeeded | failed | cancelled;  waiting --cancel--> cancelled
 */
export type PlanRunState = 'running' | 'waiting' | 'succeeded' | 'failed' | 'cancelled';
export type PlanRunEvent = 'wait' | 'resume' | 'succeed' | 'fail' | 'cancel';

export const planRunTransitions: TransitionTable<PlanRunState, PlanRunEvent> = {
  running: { wait: 'waiting', succeed: 'succeeded', fail: 'failed', cancel: 'cancelled' },
  waiting: { resume: 'running', cancel: 'cancelled' },
  succeeded: {},
  failed: {},
  cancelled: {},
};

/** States in which a plan run has not ended (a plan has at most one such run). */
export const activePlanRunStates: readonly PlanRunState[] = ['running', 'waiting'];

/**
 * One item of a plan run's step: a machine's operation, or an action. `starting` is recorded before the
 * operation is asked to start, so a crash in between is seen (and the start tried again) at restart.
 *
 *   starting --started--> running --ended-ok | ended-failed--> succeeded | failed
 *   starting --refused--> failed   (the operation would not start: its own error is kept)
 */
export type PlanItemState = 'starting' | 'running' | 'succeeded' | 'failed';
export type PlanItemEvent = 'started' | 'refused' | 'ended-ok' | 'ended-failed';

export const planItemTransitions: TransitionTable<PlanItemState, PlanItemEvent> = {
  starting: { started: 'running', refused: 'failed' },
  running: { 'ended-ok': 'succeeded', 'ended-failed': 'failed' },
  succeeded: {},
  failed: {},
};
