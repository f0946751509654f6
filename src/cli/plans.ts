/**
 * `ferry plan create|show|list|delete|operations|run|resume|cancel|runs`: recovery plans. A plan is
 * defined with flags (`--group`, `--before`, `--after`) or a JSON file (`--file`, the API's body); both
 * are checked here with the API's own schema before anything is sent, and again by the server.
 */
import { readFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { FerryError } from '../errors.js';
import type { CreatePlanRequest, PlanAction, PlanGroup, PlanOperationView, PlanRunView, PlanView } from '../protocol/plans.js';
import type { JobView } from '../protocol/views.js';
import { sleep } from '../util/time.js';
import { CliContext } from './context.js';
import { formatAge, printFields, printTable } from './output.js';

const collect = (value: string, previous: string[]) => [...previous, value];

/**
 * The plan schemas (protocol/plans.ts), loaded only when a plan command needs them: zod takes about
 * 60 ms to load, which every other command (`ferry image convert` among them) would pay at start-up.
 */
const planProtocol = () => import('../protocol/plans.js');

/** The plan `ferry plan create` describes, validated like the server validates it (invalid-request naming the field). */
export async function planFromOptions(name: string, options: { file?: string; group: string[]; before: string[]; after: string[]; description?: string }): Promise<CreatePlanRequest> {
  const { createPlanRequest, parseActionSpec } = await planProtocol();
  let body: Record<string, unknown>;
  if (options.file) {
    if (options.group.length || options.before.length || options.after.length) {
      throw new FerryError('invalid-request', '--file holds the whole plan: leave out --group, --before and --after');
    }
    let text: string;
    try {
      text = await readFile(options.file, 'utf8');
    } catch (error) {
      throw new FerryError('invalid-request', `--file ${options.file}: cannot read it (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`);
    }
    try {
      body = JSON.parse(text) as Record<string, unknown>;
    } catch (error) {
      throw new FerryError('invalid-request', `--file ${options.file} is not JSON: ${(error as Error).message}`);
    }
    if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new FerryError('invalid-request', `--file ${options.file} must hold one JSON object: { "groups": [...] }`);
    if (body.name !== undefined && body.name !== name) throw new FerryError('invalid-request', `--file ${options.file} names plan '${String(body.name)}', not '${name}'`);
    body = { ...body, name, ...(options.description !== undefined ? { description: options.description } : {}) };
  } else {
    if (options.group.length === 0) throw new FerryError('invalid-request', 'a plan needs at least one --group (machines, comma-separated), or --file');
    const groups: PlanGroup[] = options.group.map((machines) => ({ machines: machines.split(',').map((machine) => machine.trim()).filter(Boolean), before: [], after: [] }));
    for (const [phase, specs] of [['before', options.before], ['after', options.after]] as const) {
      for (const spec of specs) {
        const { group, action } = parseActionSpec(spec, `--${phase}`);
        const target = groups[group - 1];
        if (!target) throw new FerryError('invalid-request', `--${phase} '${spec}' names group ${group}, but there ${groups.length === 1 ? 'is 1 --group' : `are ${groups.length} --group flags`}`);
        target[phase].push(action);
      }
    }
    body = { name, description: options.description ?? '', groups };
  }
  const parsed = createPlanRequest.safeParse(body);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const field = issue.path.length ? issue.path.join('.') : '(whole)';
    throw new FerryError('invalid-request', `invalid plan${options.file ? ` in ${options.file}` : ''}: field '${field}': ${issue.message}`, { details: { field } });
  }
  return parsed.data;
}

function printPlan(plan: PlanView, describeAction: (action: PlanAction) => string): void {
  printFields([
    ['plan', plan.name],
    ['description', plan.description || null],
    ['created', plan.createdAt],
    ['last run', plan.lastRun ? describeRun(plan.lastRun) : null],
  ]);
  console.log('groups:');
  plan.groups.forEach((group, index) => {
    console.log(`  ${index + 1}. ${group.machines.join(', ')}`);
    for (const action of group.before) console.log(`       before: ${describeAction(action)}`);
    for (const action of group.after) console.log(`       after:  ${describeAction(action)}`);
  });
  if (plan.lastRun) {
    console.log('last run steps:');
    printSteps(plan.lastRun);
  }
}

function describeRun(run: PlanRunView): string {
  const where = run.currentStep ? ` at step ${run.currentStep} of ${run.totalSteps}` : '';
  return `${run.operation} ${run.state}${where} (job ${run.jobId}, ${formatAge(run.createdAt)})${run.waitingFor ? `: waiting for: ${run.waitingFor}` : ''}${run.error ? `: ${run.error}` : ''}`;
}

function printSteps(run: PlanRunView): void {
  printTable(
    ['STEP', 'STATE', 'WHAT', 'JOBS'],
    run.steps.map((step) => [
      step.number,
      step.state,
      step.name,
      step.items.map((item) => `${item.machine ? `${item.machine}=` : ''}${item.jobId ?? item.state}${item.error ? ` (${item.error})` : ''}`).join(' '),
    ]),
  );
}

/**
 * Polls the plan until run `runId` ends or waits at a manual step. Resolves with the run (succeeded or
 * waiting); throws the plan job's error when it failed or was cancelled.
 */
async function waitForRun(cli: CliContext, planName: string, runId: string): Promise<PlanRunView> {
  const live = !cli.json && process.stderr.isTTY;
  let lastLine = '';
  for (;;) {
    const { runs } = await cli.client.get<{ runs: PlanRunView[] }>(`/plans/${encodeURIComponent(planName)}/runs`, { limit: 20 });
    const run = runs.find((each) => each.id === runId);
    if (!run) throw new FerryError('not-found', `run ${runId} of plan '${planName}' not found (was the plan deleted?)`);
    if (live) {
      const current = run.steps.find((step) => step.number === run.currentStep);
      const line = current ? `step ${current.number} of ${run.totalSteps}: ${current.name} (${current.state})` : run.state;
      if (line !== lastLine) process.stderr.write(`${line}\n`);
      lastLine = line;
    }
    if (run.state === 'succeeded' || run.state === 'waiting') return run;
    if (run.state === 'failed' || run.state === 'cancelled') {
      const job = await cli.client.get<JobView>(`/jobs/${run.jobId}`);
      const error = job.error ?? { code: 'internal', message: run.error ?? `run ${run.state}`, retryable: false };
      throw new FerryError(error.code as FerryError['code'], `plan '${planName}' ${run.state}: ${error.message}`, { details: { run } });
    }
    await sleep(250);
  }
}

function printRunOutcome(planName: string, run: PlanRunView): void {
  if (run.state === 'waiting') {
    console.log(`plan ${planName}: ${run.operation} waiting at step ${run.currentStep} of ${run.totalSteps}: ${run.waitingFor}`);
    console.log(`when done: ferry plan resume ${planName}`);
  } else if (run.state === 'running') {
    console.log(`plan ${planName}: ${run.operation} running (job ${run.jobId}); follow it with \`ferry plan show ${planName}\` or \`ferry job show ${run.jobId}\``);
  } else {
    console.log(`plan ${planName}: ${run.operation} ${run.state} (job ${run.jobId})`);
    printSteps(run);
  }
}

export function registerPlanCommands(program: Command): void {
  const plan = program.command('plan').description('recovery plans: groups of machines in order, with scripts and manual steps around each group');

  plan
    .command('create <name>')
    .description('define a recovery plan')
    .option('--group <machines>', 'machines of the next group, comma-separated; groups run in the order given, machines of a group in parallel', collect, [])
    .option('--before <spec>', 'an action before group GROUP: GROUP:script:TIMEOUT:COMMAND, GROUP:script-continue:TIMEOUT:COMMAND or GROUP:manual:INSTRUCTION (repeatable, run in order)', collect, [])
    .option('--after <spec>', 'an action after group GROUP, same forms as --before', collect, [])
    .option('--description <text>', 'what the plan is for')
    .option('--file <plan.json>', 'the whole plan as JSON: {"description": "...", "groups": [{"machines": [...], "before": [...], "after": [...]}]}')
    .action(async (name: string, options: { group: string[]; before: string[]; after: string[]; description?: string; file?: string }, command: Command) => {
      const cli = CliContext.of(command);
      const created = await cli.client.post<PlanView>('/plans', await planFromOptions(name, options));
      const { describeAction } = await planProtocol();
      cli.print(created, (view) => printPlan(view, describeAction));
    });

  plan
    .command('list')
    .description('recovery plans and their last run')
    .action(async (_options: unknown, command: Command) => {
      const cli = CliContext.of(command);
      const { plans } = await cli.client.get<{ plans: PlanView[] }>('/plans');
      cli.print({ plans }, () =>
        printTable(
          ['NAME', 'GROUPS', 'MACHINES', 'LAST RUN'],
          plans.map((each) => [each.name, each.groups.length, each.groups.reduce((total, group) => total + group.machines.length, 0), each.lastRun ? describeRun(each.lastRun) : null]),
          'no plans: define one with `ferry plan create NAME --group MACHINE,...`',
        ),
      );
    });

  plan
    .command('show <name>')
    .description('a plan, its groups and actions, and the steps of its last run')
    .action(async (name: string, _options: unknown, command: Command) => {
      const cli = CliContext.of(command);
      const { describeAction } = await planProtocol();
      cli.print(await cli.client.get<PlanView>(`/plans/${encodeURIComponent(name)}`), (view) => printPlan(view, describeAction));
    });

  plan
    .command('delete <name>')
    .description('delete a plan (refused while a run is in progress)')
    .action(async (name: string, _options: unknown, command: Command) => {
      const cli = CliContext.of(command);
      cli.print(await cli.client.delete<{ plan: string; deleted: true }>(`/plans/${encodeURIComponent(name)}`), () => console.log(`plan ${name} deleted`));
    });

  plan
    .command('operations')
    .description('the operations a plan can run, and which this server has')
    .action(async (_options: unknown, command: Command) => {
      const cli = CliContext.of(command);
      const { operations } = await cli.client.get<{ operations: PlanOperationView[] }>('/plan-operations');
      cli.print({ operations }, () => printTable(['OPERATION', 'AVAILABLE'], operations.map((each) => [each.name, each.available ? 'yes' : 'not yet'])));
    });

  plan
    .command('run <name> <operation>')
    .description('run OPERATION (test-failover, cleanup, ...: see `ferry plan operations`) on every machine of the plan, group by group, as one job')
    .option('--point <point>', 'recovery point for each machine, for operations that take one: latest, latest-app, a point id or a time')
    .option('--wait', 'wait until the run ends, or waits at a manual step')
    .action(async (name: string, operation: string, options: { point?: string; wait?: boolean }, command: Command) => {
      const cli = CliContext.of(command);
      const started = await cli.client.post<{ run: PlanRunView; job: JobView }>(`/plans/${encodeURIComponent(name)}/runs`, { operation, ...(options.point ? { point: options.point } : {}) });
      const run = options.wait ? await waitForRun(cli, name, started.run.id) : started.run;
      cli.print({ run, job: options.wait ? await cli.client.get<JobView>(`/jobs/${run.jobId}`) : started.job }, () => printRunOutcome(name, run));
    });

  plan
    .command('resume <name>')
    .description('the manual step the plan\'s run waits at is done: go on')
    .option('--wait', 'wait until the run ends, or waits at the next manual step')
    .action(async (name: string, options: { wait?: boolean }, command: Command) => {
      const cli = CliContext.of(command);
      const resumed = await cli.client.post<PlanRunView>(`/plans/${encodeURIComponent(name)}/resume`);
      const run = options.wait ? await waitForRun(cli, name, resumed.id) : resumed;
      cli.print(run, () => printRunOutcome(name, run));
    });

  plan
    .command('cancel <name>')
    .description('stop the plan\'s run: at once while it waits at a manual step, else after the step in progress')
    .action(async (name: string, _options: unknown, command: Command) => {
      const cli = CliContext.of(command);
      const run = await cli.client.post<PlanRunView>(`/plans/${encodeURIComponent(name)}/cancel`);
      cli.print(run, () => console.log(run.state === 'cancelled' ? `plan ${name}: run cancelled` : `plan ${name}: the run stops after step ${run.currentStep} of ${run.totalSteps}`));
    });

  plan
    .command('runs <name>')
    .description('the plan\'s runs, newest first')
    .option('--limit <n>', 'how many', '20')
    .action(async (name: string, options: { limit: string }, command: Command) => {
      const cli = CliContext.of(command);
      const { runs } = await cli.client.get<{ runs: PlanRunView[] }>(`/plans/${encodeURIComponent(name)}/runs`, { limit: options.limit });
      cli.print({ runs }, () =>
        printTable(
          ['JOB', 'OPERATION', 'STATE', 'STEP', 'STARTED', 'ERROR'],
          runs.map((run) => [run.jobId, run.operation, run.state, run.currentStep ? `${run.currentStep}/${run.totalSteps}` : null, formatAge(run.createdAt), run.error]),
          `plan ${name} has not run yet`,
        ),
      );
    });
}
