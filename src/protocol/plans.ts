/**
 * Recovery plans on the wire: the request schemas (zod; the server validates every request with them,
 * the CLI validates `--file` with them too), the views the API answers with, and the compact action
 * syntax of `ferry plan create --before/--after` (parsed here so the CLI and its tests share it).
 */
import { z } from 'zod';
import { FerryError } from '../errors.js';
import { parseDuration } from '../util/duration.js';
import { nameParam, pointSelector } from './requests.js';
import type { JobStepView } from './views.js';

const name = nameParam.shape.name;

/** Default time a script action may run before it is killed. */
export const DEFAULT_SCRIPT_TIMEOUT_SECONDS = 300;

/**
 * An action run before or after a group: a script the server runs with `/bin/sh -c` (killed after
 * `timeoutSeconds`; its output kept on its job; a failure stops the run unless `continueOnError`), or a
 * manual step, which makes the run wait until `ferry plan resume`.
 */
export const planAction = z.discriminatedUnion('kind', [
  z
    .object({
      kind: z.literal('script'),
      command: z.string().min(1).max(4096),
      timeoutSeconds: z.number().int().min(1).max(86400).default(DEFAULT_SCRIPT_TIMEOUT_SECONDS),
      continueOnError: z.boolean().default(false),
    })
    .strict(),
  z.object({ kind: z.literal('manual'), instruction: z.string().min(1).max(2000) }).strict(),
]);

/** A group: machines that run in parallel, with actions before and after (each list in order). */
export const planGroup = z
  .object({
    machines: z.array(name).min(1).max(100),
    before: z.array(planAction).max(20).default([]),
    after: z.array(planAction).max(20).default([]),
  })
  .strict();

/** `POST /plans`: a plan's whole definition. Groups run in order. A machine may appear in one group only. */
export const createPlanRequest = z
  .object({
    name,
    description: z.string().max(2000).default(''),
    groups: z.array(planGroup).min(1).max(50),
  })
  .strict()
  .superRefine((plan, context) => {
    const seen = new Map<string, number>();
    plan.groups.forEach((group, groupIndex) => {
      group.machines.forEach((machine, machineIndex) => {
        const first = seen.get(machine);
        if (first !== undefined) {
          context.addIssue({
            code: 'custom',
            path: ['groups', groupIndex, 'machines', machineIndex],
            message: `machine '${machine}' is already in group ${first + 1}: a machine may be in one group only`,
          });
        } else seen.set(machine, groupIndex);
      });
    });
  });

/** `POST /plans/{name}/runs`: run `operation` (a machine operation name) on every machine of the plan. */
export const runPlanRequest = z
  .object({
    operation: z.string().min(1).max(64),
    /** Recovery point for operations that take one (test and unplanned failover); default: their own. */
    point: pointSelector.optional(),
  })
  .strict();

export const listPlanRunsQuery = z.object({ limit: z.coerce.number().int().min(1).max(1000).default(20) });

export type PlanAction = z.infer<typeof planAction>;
export type PlanGroup = z.infer<typeof planGroup>;
export type CreatePlanRequest = z.infer<typeof createPlanRequest>;
export type RunPlanRequest = z.infer<typeof runPlanRequest>;

/** A recovery plan as the API shows it. */
export interface PlanView {
  id: string;
  name: string;
  description: string;
  groups: PlanGroup[];
  createdAt: string;
  updatedAt: string;
  /** The newest run, whatever its state; null before the first. */
  lastRun: PlanRunView | null;
}

/** One run of a plan: its operation, where it is, and every step with its child jobs. */
export interface PlanRunView {
  id: string;
  plan: string;
  operation: string;
  point: string | null;
  /** running, waiting (at a manual step), succeeded, failed, cancelled. */
  state: string;
  /** The run's job (kind `plan`); its children are the machines' and actions' jobs. */
  jobId: string;
  /** 1-based number of the step running or waiting now; null once the run has ended. */
  currentStep: number | null;
  totalSteps: number;
  /** While waiting: the manual step's instruction. */
  waitingFor: string | null;
  /** An operator asked to cancel; the run stops at the next step boundary. */
  cancelRequested: boolean;
  /** Why the run failed, naming the step and what failed. */
  error: string | null;
  createdAt: string;
  endedAt: string | null;
  steps: JobStepView[];
}

/** A machine operation a plan can run, and whether this server can run it yet. */
export interface PlanOperationView {
  name: string;
  available: boolean;
}

/**
 * Parses one `--before`/`--after` value of `ferry plan create`, `GROUP:KIND:...`:
 *
 *   2:script:60:./stop-app.sh            script, killed after 60 s (a duration: 60, 90s, 5m)
 *   2:script-continue:5m:./notify.sh     script whose failure does not stop the run (continue-on-error)
 *   2:manual:Check the database answers  manual step: the run waits for `ferry plan resume`
 *
 * The command or instruction is everything after its field, colons included. An empty timeout
 * (`2:script::./x.sh`) means the default, 300 s. Throws invalid-request naming `flag` and the problem.
 */
export function parseActionSpec(spec: string, flag: string): { group: number; action: PlanAction } {
  const fail = (why: string): never => {
    throw new FerryError('invalid-request', `${flag} '${spec}': ${why}; expected GROUP:script:TIMEOUT:COMMAND, GROUP:script-continue:TIMEOUT:COMMAND or GROUP:manual:INSTRUCTION`);
  };
  const [groupText, kind, ...rest] = spec.split(':');
  if (!groupText || !/^\d+$/.test(groupText) || Number(groupText) < 1) fail('GROUP must be a group number, 1 for the first --group');
  if (kind === 'manual') {
    const instruction = rest.join(':').trim();
    if (!instruction) fail('a manual step needs an instruction');
    return { group: Number(groupText), action: { kind: 'manual', instruction } };
  }
  if (kind !== 'script' && kind !== 'script-continue') return fail(`unknown action kind '${kind ?? ''}'`);
  if (rest.length < 2) fail('a script needs a timeout and a command');
  const [timeoutText, ...commandParts] = rest as [string, ...string[]];
  const command = commandParts.join(':').trim();
  if (!command) fail('a script needs a command');
  let timeoutSeconds = DEFAULT_SCRIPT_TIMEOUT_SECONDS;
  if (timeoutText.trim() !== '') {
    try {
      timeoutSeconds = parseDuration(timeoutText, 'timeout');
    } catch {
      fail(`timeout '${timeoutText}' is not a duration like 60, 90s or 5m`);
    }
    if (timeoutSeconds < 1) fail('the timeout must be at least 1 second');
  }
  return { group: Number(groupText), action: { kind: 'script', command, timeoutSeconds, continueOnError: kind === 'script-continue' } };
}

/** One line describing an action, e.g. "script `./stop.sh` (timeout 60s, continue on error)" or "manual: Check DNS". */
export function describeAction(action: PlanAction): string {
  if (action.kind === 'manual') return `manual: ${action.instruction}`;
  return `script \`${action.command}\` (timeout ${action.timeoutSeconds}s${action.continueOnError ? ', continue on error' : ''})`;
}
