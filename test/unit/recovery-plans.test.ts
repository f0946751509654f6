/**
 * The recovery plan engine over a real SQLite database: groups in order, machines of a group in
 * parallel, actions around groups (scripts run by a real job runner, manual steps), failures stopping
 * the run unless continue-on-error, resume, cancel, refusals, and picking a run up after a restart.
 * Machine operations are fakes registered in the engine's own registry: each starts a job that no
 * executor claims, which the test ends when it wants, so the order of events is the test's to decide.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { planFromOptions } from '../../src/cli/plans.js';
import { FerryError } from '../../src/errors.js';
import { FerryCore } from '../../src/orchestration/core.js';
import { JobRunner } from '../../src/orchestration/job-runner.js';
import { jobView } from '../../src/orchestration/jobs.js';
import { nextState, planItemTransitions, planRunTransitions } from '../../src/orchestration/lifecycle.js';
import { MachineOperations } from '../../src/orchestration/machine-operations.js';
import { planSteps, RecoveryPlans, stepName } from '../../src/orchestration/recovery-plans.js';
import { createPlanRequest, type CreatePlanRequest, parseActionSpec, type PlanRunView } from '../../src/protocol/plans.js';
import { ferryError, makeTempDir, tempDirFor } from './helpers.js';

const machines = ['web-01', 'app-01', 'db-01'];

const cleanups = new WeakMap<TestContext, (() => Promise<unknown>)[]>();

/** Runs `cleanup` when `t` ends, last registered first (stop the engine, then close the core, then remove files). */
function defer(t: TestContext, cleanup: () => Promise<unknown>): void {
  let stack = cleanups.get(t);
  if (!stack) {
    const created: (() => Promise<unknown>)[] = [];
    stack = created;
    cleanups.set(t, created);
    t.after(async () => {
      for (const step of created.reverse()) await step();
    });
  }
  stack.push(cleanup);
}

/** A fake machine operation: which machines it started, and their jobs, for the test to end. */
interface FakeOperation {
  started: { machine: string; jobId: string }[];
  /** When set, starting on this machine is refused with this error. */
  refuse: Map<string, FerryError>;
}

interface Harness {
  core: FerryCore;
  plans: RecoveryPlans;
  operations: MachineOperations;
  testFailover: FakeOperation;
  dataDir: string;
  /** Stops the engine and the runner and closes the database (a server stopping). */
  shutDown(): Promise<void>;
}

/**
 * A core over `dataDir` (fresh if not given) with three registered machines, an engine with a fake
 * 'test-failover' operation, and a job runner for script actions; all stopped when `t` ends.
 */
async function harness(t: TestContext, dataDir?: string): Promise<Harness> {
  let directory = dataDir;
  if (!directory) {
    const parent = await makeTempDir('ferry-plans-');
    defer(t, () => fs.rm(parent, { recursive: true, force: true }));
    directory = path.join(parent, 'data');
  }
  const core = await FerryCore.create({ dataDir: directory, log: pino({ level: 'silent' }) });
  if ((await core.machines.list()).length === 0) {
    const token = await core.tokens.create('agent');
    const principal = await core.tokens.authenticate(token.token);
    await core.machines.registerAgent(principal, {
      agentName: 'agent-1',
      machines: machines.map((name) => ({ name, disks: [{ path: `/images/${name}.img`, sizeBytes: 1 << 20, error: null }] })),
    });
  }
  const operations = new MachineOperations();
  const testFailover: FakeOperation = { started: [], refuse: new Map() };
  operations.register('test-failover', async (machineName) => {
    const refusal = testFailover.refuse.get(machineName);
    if (refusal) throw refusal;
    const machine = await core.machines.get(machineName);
    // An agent job of an agent that never polls: nothing runs it but the test.
    const job = await core.jobs.create({ kind: 'point', machineId: machine.id, agentId: machine.agent_id });
    testFailover.started.push({ machine: machineName, jobId: job.id });
    return jobView(job, machineName);
  });
  const plans = new RecoveryPlans(core.context, core.jobs, core.events, operations);
  const runner = new JobRunner(core.context, core.jobs, { 'plan-script': (job, signal) => plans.runScript(job, signal) });
  plans.start();
  runner.start();
  let stopped = false;
  const shutDown = async () => {
    if (stopped) return;
    stopped = true;
    await plans.stop();
    await runner.stop();
    await core.stop();
  };
  defer(t, shutDown);
  return { core, plans, operations, testFailover, dataDir: directory, shutDown };
}

/** Ends a fake operation's job as its executor would. */
async function endJob(core: FerryCore, jobId: string, outcome: 'succeed' | 'fail'): Promise<void> {
  await core.jobs.transition(jobId, 'start');
  if (outcome === 'succeed') await core.jobs.transition(jobId, 'succeed', { result: { ok: true } });
  else await core.jobs.transition(jobId, 'fail', { error: { code: 'corrupt-data', message: 'the disk could not be written', retryable: false } });
}

/** Polls `condition` every 20 ms for up to 10 s. */
async function until(condition: () => Promise<boolean> | boolean, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    if (await condition()) return;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  throw new Error(`timed out waiting for ${what}`);
}

async function lastRun(plans: RecoveryPlans, name: string): Promise<PlanRunView> {
  const run = (await plans.view(name)).lastRun;
  assert.ok(run, `plan ${name} has a run`);
  return run;
}

async function runEnded(plans: RecoveryPlans, name: string): Promise<PlanRunView> {
  await until(async () => !['running', 'waiting'].includes((await lastRun(plans, name)).state), `the run of ${name} to end`);
  return lastRun(plans, name);
}

function plan(request: unknown): CreatePlanRequest {
  return createPlanRequest.parse(request);
}

describe('recovery plan definitions', () => {
  test('plan runs: running waits and resumes, ends or is cancelled; a waiting run can only resume or be cancelled', () => {
    assert.equal(nextState(planRunTransitions, 'run', 'running', 'wait'), 'waiting');
    assert.equal(nextState(planRunTransitions, 'run', 'waiting', 'resume'), 'running');
    assert.equal(nextState(planRunTransitions, 'run', 'waiting', 'cancel'), 'cancelled');
    for (const [event, state] of [['succeed', 'succeeded'], ['fail', 'failed'], ['cancel', 'cancelled']] as const) {
      assert.equal(nextState(planRunTransitions, 'run', 'running', event), state);
    }
    assert.throws(() => nextState(planRunTransitions, "the run of plan 'p'", 'waiting', 'succeed'), ferryError('conflict', ["the run of plan 'p' is waiting", 'allowed there: resume, cancel']));
    assert.throws(() => nextState(planRunTransitions, 'run', 'failed', 'resume'), ferryError('conflict', ['allowed there: nothing']));
    assert.equal(nextState(planItemTransitions, 'item', 'starting', 'refused'), 'failed');
    assert.throws(() => nextState(planItemTransitions, 'item', 'succeeded', 'ended-failed'), ferryError('conflict'));
  });

  test('steps are each group\'s before actions, then its machines, then its after actions, in order', () => {
    const steps = planSteps(
      plan({
        name: 'p',
        groups: [
          { machines: ['web-01', 'app-01'], after: [{ kind: 'script', command: './check.sh', timeoutSeconds: 60 }] },
          { machines: ['db-01'], before: [{ kind: 'manual', instruction: 'Check the database' }, { kind: 'script', command: 'true' }] },
        ],
      }).groups,
    );
    assert.deepEqual(
      steps.map((step) => stepName(step, 'test-failover')),
      [
        'group 1: test-failover of web-01, app-01',
        'group 1 after, action 1: script `./check.sh` (timeout 60s)',
        'group 2 before, action 1: manual: Check the database',
        'group 2 before, action 2: script `true` (timeout 300s)',
        'group 2: test-failover of db-01',
      ],
    );
    assert.deepEqual(steps.map((step) => step.index), [0, 1, 2, 3, 4]);
  });

  test('the --before/--after syntax: scripts with a timeout, continue-on-error, manual steps; colons stay in the command', () => {
    assert.deepEqual(parseActionSpec('2:script:60:./stop-app.sh --mode=a:b', '--before'), {
      group: 2,
      action: { kind: 'script', command: './stop-app.sh --mode=a:b', timeoutSeconds: 60, continueOnError: false },
    });
    assert.deepEqual(parseActionSpec('1:script-continue:5m:./notify.sh', '--after').action, { kind: 'script', command: './notify.sh', timeoutSeconds: 300, continueOnError: true });
    assert.equal((parseActionSpec('1:script::true', '--after').action as { timeoutSeconds: number }).timeoutSeconds, 300, 'an empty timeout is the default');
    assert.deepEqual(parseActionSpec('3:manual:Check DNS: both names', '--before'), { group: 3, action: { kind: 'manual', instruction: 'Check DNS: both names' } });
    assert.throws(() => parseActionSpec('x:script:60:true', '--before'), ferryError('invalid-request', ["--before 'x:script:60:true'", 'GROUP must be a group number']));
    assert.throws(() => parseActionSpec('1:shell:60:true', '--before'), ferryError('invalid-request', ["unknown action kind 'shell'"]));
    assert.throws(() => parseActionSpec('1:script:soon:true', '--after'), ferryError('invalid-request', ["timeout 'soon'"]));
    assert.throws(() => parseActionSpec('1:script:60', '--after'), ferryError('invalid-request', ['needs a timeout and a command']));
    assert.throws(() => parseActionSpec('1:manual:', '--after'), ferryError('invalid-request', ['needs an instruction']));
  });

  test('a machine in two groups, an empty group and an unknown action field are refused by the schema', () => {
    const twice = createPlanRequest.safeParse({ name: 'p', groups: [{ machines: ['web-01'] }, { machines: ['db-01', 'web-01'] }] });
    assert.ok(!twice.success);
    assert.deepEqual(twice.error.issues[0]!.path, ['groups', 1, 'machines', 1]);
    assert.match(twice.error.issues[0]!.message, /already in group 1/);
    assert.ok(!createPlanRequest.safeParse({ name: 'p', groups: [{ machines: [] }] }).success);
    assert.ok(!createPlanRequest.safeParse({ name: 'p', groups: [{ machines: ['a'], before: [{ kind: 'script', command: 'x', retries: 2 }] }] }).success);
  });

  test('ferry plan create: flags build the groups and their actions; --file is validated like the API body', async (t) => {
    const fromFlags = await planFromOptions('shop', {
      group: ['web-01, web-02', 'db-01'],
      before: ['2:manual:Check the web tier', '2:script:1m:./prepare-db.sh'],
      after: ['1:script-continue::./smoke.sh'],
      description: 'web, then db',
    });
    assert.deepEqual(fromFlags, {
      name: 'shop',
      description: 'web, then db',
      groups: [
        { machines: ['web-01', 'web-02'], before: [], after: [{ kind: 'script', command: './smoke.sh', timeoutSeconds: 300, continueOnError: true }] },
        { machines: ['db-01'], before: [{ kind: 'manual', instruction: 'Check the web tier' }, { kind: 'script', command: './prepare-db.sh', timeoutSeconds: 60, continueOnError: false }], after: [] },
      ],
    });
    const none = { group: [], before: [], after: [] };
    await assert.rejects(planFromOptions('shop', none), ferryError('invalid-request', ['at least one --group']));
    await assert.rejects(planFromOptions('shop', { ...none, group: ['web-01'], after: ['3:manual:x'] }), ferryError('invalid-request', ["names group 3, but there is 1 --group"]));

    const directory = await tempDirFor(t);
    const file = path.join(directory, 'shop.json');
    await fs.writeFile(file, JSON.stringify({ description: 'from a file', groups: [{ machines: ['db-01'], after: [{ kind: 'manual', instruction: 'Check' }] }] }));
    const fromFile = await planFromOptions('shop', { ...none, file });
    assert.deepEqual(fromFile.groups, [{ machines: ['db-01'], before: [], after: [{ kind: 'manual', instruction: 'Check' }] }]);
    assert.equal(fromFile.description, 'from a file');
    await assert.rejects(planFromOptions('shop', { ...none, file, group: ['web-01'] }), ferryError('invalid-request', ['leave out --group']));
    await fs.writeFile(file, JSON.stringify({ name: 'other', groups: [{ machines: ['db-01'] }] }));
    await assert.rejects(planFromOptions('shop', { ...none, file }), ferryError('invalid-request', ["names plan 'other', not 'shop'"]));
    await fs.writeFile(file, JSON.stringify({ groups: [{ machines: ['db-01'], before: [{ kind: 'script', command: 'x', timeoutSeconds: 0 }] }] }));
    await assert.rejects(planFromOptions('shop', { ...none, file }), ferryError('invalid-request', [`invalid plan in ${file}: field 'groups.0.before.0.timeoutSeconds'`]));
    await fs.writeFile(file, '{ not json');
    await assert.rejects(planFromOptions('shop', { ...none, file }), ferryError('invalid-request', ['is not JSON']));
  });

  test('create, show, list and delete; an unknown machine is refused naming it and its group; names are unique', async (t) => {
    const { plans } = await harness(t);
    await assert.rejects(
      plans.create(plan({ name: 'dr', groups: [{ machines: ['web-01'] }, { machines: ['db-01', 'nosuch'] }] })),
      ferryError('not-found', ["plan 'dr'", "'nosuch' (group 2)", 'ferry machine list']),
    );
    assert.deepEqual(await plans.list(), [], 'nothing was stored');
    const created = await plans.create(plan({ name: 'dr', description: 'the whole app', groups: [{ machines: ['db-01'] }, { machines: ['web-01', 'app-01'] }] }));
    assert.equal(created.name, 'dr');
    assert.equal(created.description, 'the whole app');
    assert.deepEqual(created.groups.map((group) => group.machines), [['db-01'], ['web-01', 'app-01']]);
    assert.equal(created.lastRun, null);
    await assert.rejects(plans.create(plan({ name: 'dr', groups: [{ machines: ['web-01'] }] })), ferryError('conflict', ["plan 'dr' already exists"]));
    assert.deepEqual((await plans.list()).map((each) => each.name), ['dr']);
    assert.deepEqual(await plans.delete('dr'), { plan: 'dr', deleted: true });
    await assert.rejects(plans.view('dr'), ferryError('not-found', ["plan 'dr' not found"]));
    await assert.rejects(plans.delete('dr'), ferryError('not-found'));
  });
});

describe('recovery plan runs', () => {
  test('groups run in order, the machines of a group in parallel; script output is kept; the job shows steps and children', async (t) => {
    const { core, plans, testFailover } = await harness(t);
    await plans.create(
      plan({
        name: 'app',
        groups: [
          { machines: ['web-01', 'app-01'], after: [{ kind: 'script', command: 'echo "group $FERRY_GROUP of $FERRY_PLAN: $FERRY_MACHINES"; echo warn >&2' }] },
          { machines: ['db-01'] },
        ],
      }),
    );
    const { run, job } = await plans.run('app', { operation: 'test-failover' });
    assert.equal(job.kind, 'plan');
    assert.equal(job.state, 'running');
    assert.equal(run.totalSteps, 3);

    // Both machines of group 1 start before either has ended; group 2 waits for both.
    await until(() => testFailover.started.length === 2, 'both machines of group 1 to start');
    assert.deepEqual(testFailover.started.map((each) => each.machine), ['web-01', 'app-01']);
    await endJob(core, testFailover.started[1]!.jobId, 'succeed');
    await plans.advance();
    assert.equal(testFailover.started.length, 2, 'group 2 does not start while web-01 is still running');
    assert.equal((await lastRun(plans, 'app')).steps[0]!.state, 'running');
    await endJob(core, testFailover.started[0]!.jobId, 'succeed');

    // Then the after-script runs (a real process), then group 2.
    await until(() => testFailover.started.length === 3, 'group 2 to start');
    assert.equal(testFailover.started[2]!.machine, 'db-01');
    await endJob(core, testFailover.started[2]!.jobId, 'succeed');
    const ended = await runEnded(plans, 'app');
    assert.equal(ended.state, 'succeeded', ended.error ?? '');
    assert.deepEqual(ended.steps.map((step) => step.state), ['succeeded', 'succeeded', 'succeeded']);

    const planJob = await core.jobs.view(run.jobId);
    assert.equal(planJob.state, 'succeeded');
    assert.deepEqual(planJob.result, { plan: 'app', operation: 'test-failover', steps: 3, machines: ['web-01', 'app-01', 'db-01'], failedContinued: [] });
    assert.deepEqual(planJob.steps?.map((step) => step.name), ['group 1: test-failover of web-01, app-01', 'group 1 after, action 1: script `echo "group $FERRY_GROUP of $FERRY_PLAN: $FERRY_MACHINES"; echo warn >&2` (timeout 300s)', 'group 2: test-failover of db-01']);
    assert.deepEqual(
      planJob.children?.map((child) => [child.kind, child.machine, child.state, child.parentId]),
      [
        ['point', 'web-01', 'succeeded', run.jobId],
        ['point', 'app-01', 'succeeded', run.jobId],
        ['plan-script', null, 'succeeded', run.jobId],
        ['point', 'db-01', 'succeeded', run.jobId],
      ],
    );
    const script = planJob.children![2]!;
    assert.equal(script.result?.exitCode, 0);
    assert.equal(script.result?.output, 'group 1 of app: web-01,app-01\nwarn\n');
  });

  test('a failing script stops the run, naming the step and the script; later steps never start; its output is kept', async (t) => {
    const { core, plans, testFailover } = await harness(t);
    await plans.create(
      plan({
        name: 'app',
        groups: [{ machines: ['web-01'] }, { machines: ['db-01'], before: [{ kind: 'script', command: 'echo starting; echo "disk full" >&2; exit 3' }] }, { machines: ['app-01'] }],
      }),
    );
    const { run } = await plans.run('app', { operation: 'test-failover' });
    await until(() => testFailover.started.length === 1, 'group 1');
    await endJob(core, testFailover.started[0]!.jobId, 'succeed');
    const ended = await runEnded(plans, 'app');
    assert.equal(ended.state, 'failed');
    assert.deepEqual(testFailover.started.map((each) => each.machine), ['web-01'], 'db-01 and app-01 were never started');
    assert.deepEqual(ended.steps.map((step) => step.state), ['succeeded', 'failed', 'skipped', 'skipped']);
    const planJob = await core.jobs.view(run.jobId);
    assert.equal(planJob.state, 'failed');
    assert.equal(planJob.error?.code, 'hook-failed');
    assert.match(planJob.error!.message, /^plan 'app' stopped at step 2 of 4 \(group 2 before, action 1: script `echo starting; echo "disk full" >&2; exit 3` \(timeout 300s\)\): script `.*` exited with code 3: starting \| disk full$/);
    const script = planJob.children!.find((child) => child.kind === 'plan-script')!;
    assert.equal(script.state, 'failed');
    assert.equal(script.result?.exitCode, 3);
    assert.equal(script.result?.output, 'starting\ndisk full\n');
    const event = (await core.events.list({ limit: 10 })).find((each) => each.code === 'plan-run-failed');
    assert.ok(event?.message.includes('exited with code 3'), JSON.stringify(event));
  });

  test('a failing script marked continue-on-error does not stop the run; a script past its timeout is killed', async (t) => {
    const { core, plans, testFailover } = await harness(t);
    await plans.create(
      plan({
        name: 'app',
        groups: [
          { machines: ['web-01'], after: [{ kind: 'script', command: 'sleep 30', timeoutSeconds: 1, continueOnError: true }, { kind: 'script', command: 'exit 1', continueOnError: true }] },
          { machines: ['db-01'] },
        ],
      }),
    );
    const { run } = await plans.run('app', { operation: 'test-failover' });
    await until(() => testFailover.started.length === 1, 'group 1');
    const started = Date.now();
    await endJob(core, testFailover.started[0]!.jobId, 'succeed');
    await until(() => testFailover.started.length === 2, 'group 2, after both failing scripts');
    assert.ok(Date.now() - started < 8000, 'the sleeping script was killed at its 1 s timeout');
    await endJob(core, testFailover.started[1]!.jobId, 'succeed');
    const ended = await runEnded(plans, 'app');
    assert.equal(ended.state, 'succeeded', ended.error ?? '');
    assert.deepEqual(ended.steps.map((step) => step.state), ['succeeded', 'failed-continued', 'failed-continued', 'succeeded']);
    const planJob = await core.jobs.view(run.jobId);
    assert.deepEqual(planJob.result?.failedContinued, [2, 3]);
    const scripts = planJob.children!.filter((child) => child.kind === 'plan-script');
    assert.match(scripts[0]!.error!.message, /timed out after 1s/);
    assert.equal(scripts[0]!.result?.timedOut, true);
    assert.match(scripts[1]!.error!.message, /exited with code 1/);
    assert.equal((await core.events.list({ limit: 20 })).filter((each) => each.code === 'plan-action-failed').length, 2);
  });

  test('a manual step makes the run wait until resume; delete is refused meanwhile; resume when not waiting is refused', async (t) => {
    const { core, plans, testFailover } = await harness(t);
    await plans.create(plan({ name: 'app', groups: [{ machines: ['web-01'] }, { machines: ['db-01'], before: [{ kind: 'manual', instruction: 'Check that web-01 answers' }] }] }));
    const { run } = await plans.run('app', { operation: 'test-failover' });
    await assert.rejects(plans.resume('app'), ferryError('conflict', ['is running at step 1', 'not waiting at a manual step']));
    await until(() => testFailover.started.length === 1, 'group 1');
    await endJob(core, testFailover.started[0]!.jobId, 'succeed');
    await until(async () => (await lastRun(plans, 'app')).state === 'waiting', 'the manual step');
    const waiting = await lastRun(plans, 'app');
    assert.equal(waiting.currentStep, 2);
    assert.equal(waiting.waitingFor, 'Check that web-01 answers');
    assert.equal(waiting.steps[1]!.state, 'waiting');
    const planJob = await core.jobs.view(run.jobId);
    assert.equal(planJob.state, 'running');
    assert.match(planJob.step!, /waiting at step 2 of 3: Check that web-01 answers \(then run `ferry plan resume app`\)/);
    assert.equal(planJob.children?.at(-1)?.kind, 'plan-manual');
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.equal(testFailover.started.length, 1, 'group 2 waits');

    await assert.rejects(plans.delete('app'), ferryError('conflict', ["plan 'app' has a run in progress", 'waiting at step 2', 'ferry plan resume app']));
    await assert.rejects(plans.run('app', { operation: 'test-failover' }), ferryError('conflict', ['already has a run in progress']));
    await assert.rejects(core.jobs.cancel(run.jobId), ferryError('conflict', ['ferry plan cancel app']));

    const resumed = await plans.resume('app');
    assert.equal(resumed.state, 'running');
    await until(() => testFailover.started.length === 2, 'group 2 after resume');
    await endJob(core, testFailover.started[1]!.jobId, 'succeed');
    const ended = await runEnded(plans, 'app');
    assert.equal(ended.state, 'succeeded');
    assert.equal((await core.jobs.view(run.jobId)).children?.find((child) => child.kind === 'plan-manual')?.state, 'succeeded');
    await assert.rejects(plans.resume('app'), ferryError('conflict', ['no run in progress']));
    await plans.delete('app');
  });

  test('a machine operation that fails, or refuses to start, stops the run naming the machine and why', async (t) => {
    const { core, plans, testFailover } = await harness(t);
    await plans.create(plan({ name: 'app', groups: [{ machines: ['web-01', 'app-01'] }, { machines: ['db-01'] }] }));
    testFailover.refuse.set('app-01', new FerryError('conflict', "machine 'app-01' already has a test failover (ready)"));
    const { run } = await plans.run('app', { operation: 'test-failover' });
    await until(() => testFailover.started.length === 1, 'web-01 to start');
    // The group's other machine goes on to its end before the run stops: jobs are never left halfway.
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.equal((await lastRun(plans, 'app')).state, 'running');
    await endJob(core, testFailover.started[0]!.jobId, 'fail');
    const ended = await runEnded(plans, 'app');
    assert.equal(ended.state, 'failed');
    const planJob = await core.jobs.view(run.jobId);
    assert.equal(planJob.error?.code, 'corrupt-data');
    assert.equal(
      planJob.error?.message,
      "plan 'app' stopped at step 1 of 2 (group 1: test-failover of web-01, app-01): web-01: the disk could not be written; app-01: machine 'app-01' already has a test failover (ready)",
    );
    assert.deepEqual(
      ended.steps[0]!.items.map((item) => [item.machine, item.state, item.jobId === null]),
      [
        ['web-01', 'failed', false],
        ['app-01', 'failed', true],
      ],
    );
    assert.equal(ended.steps[1]!.state, 'skipped');
  });

  test('an unknown operation, or one not available yet, is refused before anything starts', async (t) => {
    const { plans } = await harness(t);
    await plans.create(plan({ name: 'app', groups: [{ machines: ['web-01'] }] }));
    await assert.rejects(plans.run('app', { operation: 'failback' }), ferryError('invalid-request', ["operation 'failback' is not available yet (available: test-failover)"]));
    await assert.rejects(plans.run('app', { operation: 'teleport' }), ferryError('invalid-request', ["unknown operation 'teleport'", 'test-failover, cleanup, planned-failover']));
    await assert.rejects(plans.run('nosuch', { operation: 'test-failover' }), ferryError('not-found', ["plan 'nosuch'"]));
    assert.equal((await plans.view('app')).lastRun, null);
    assert.deepEqual(
      plans.operationsView().filter((operation) => operation.available),
      [{ name: 'test-failover', available: true }],
    );
  });

  test('cancel: a waiting run ends at once; a running one stops after the step in flight', async (t) => {
    const { core, plans, testFailover } = await harness(t);
    await plans.create(plan({ name: 'wait', groups: [{ machines: ['web-01'], before: [{ kind: 'manual', instruction: 'Go?' }] }] }));
    const waitingRun = await plans.run('wait', { operation: 'test-failover' });
    await until(async () => (await lastRun(plans, 'wait')).state === 'waiting', 'the manual step');
    const cancelled = await plans.cancel('wait');
    assert.equal(cancelled.state, 'cancelled');
    const waitingJob = await core.jobs.view(waitingRun.job.id);
    assert.equal(waitingJob.state, 'cancelled');
    assert.equal(waitingJob.children?.[0]?.state, 'cancelled');
    assert.equal(testFailover.started.length, 0);
    await assert.rejects(plans.cancel('wait'), ferryError('conflict', ['no run in progress']));

    await plans.create(plan({ name: 'two', groups: [{ machines: ['app-01'] }, { machines: ['db-01'] }] }));
    const running = await plans.run('two', { operation: 'test-failover' });
    await until(() => testFailover.started.length === 1, 'group 1');
    const requested = await plans.cancel('two');
    assert.equal(requested.state, 'running');
    assert.equal(requested.cancelRequested, true);
    await endJob(core, testFailover.started[0]!.jobId, 'succeed');
    const ended = await runEnded(plans, 'two');
    assert.equal(ended.state, 'cancelled');
    assert.deepEqual(ended.steps.map((step) => step.state), ['succeeded', 'skipped']);
    assert.equal(testFailover.started.length, 1, 'group 2 never started');
    assert.match((await core.jobs.view(running.job.id)).error!.message, /cancelled by an operator before step 2 of 2/);
  });

  test('after a restart, a waiting run still waits and resumes; a script cut off by the stop runs again', async (t) => {
    const first = await harness(t);
    const marker = path.join(first.dataDir, 'script-ran-once');
    await first.plans.create(
      plan({
        name: 'app',
        groups: [
          { machines: ['web-01'], before: [{ kind: 'manual', instruction: 'Go?' }] },
          { machines: ['db-01'], before: [{ kind: 'script', command: `if [ -e '${marker}' ]; then echo second attempt; else touch '${marker}'; sleep 60; fi` }] },
        ],
      }),
    );
    const { run } = await first.plans.run('app', { operation: 'test-failover' });
    await until(async () => (await lastRun(first.plans, 'app')).state === 'waiting', 'the manual step');
    await first.shutDown();

    const second = await harness(t, first.dataDir);
    assert.equal((await lastRun(second.plans, 'app')).state, 'waiting', 'still waiting after the restart');
    await second.plans.resume('app');
    await until(() => second.testFailover.started.length === 1, 'group 1');
    await endJob(second.core, second.testFailover.started[0]!.jobId, 'succeed');
    await until(async () => {
      const children = (await second.core.jobs.view(run.jobId)).children ?? [];
      return children.some((child) => child.kind === 'plan-script' && child.state === 'running') && (await fs.stat(marker).catch(() => null)) !== null;
    }, 'the script to start');
    const stopping = Date.now();
    await second.shutDown(); // kills the script; its job stays running
    assert.ok(Date.now() - stopping < 5000, 'stopping does not wait for the script');
    const third = await harness(t, first.dataDir);
    await until(() => third.testFailover.started.length === 1, 'group 2, after the script ran again');
    assert.equal(third.testFailover.started[0]!.machine, 'db-01');
    await endJob(third.core, third.testFailover.started[0]!.jobId, 'succeed');
    const ended = await runEnded(third.plans, 'app');
    assert.equal(ended.state, 'succeeded', ended.error ?? '');
    const script = (await third.core.jobs.view(run.jobId)).children!.find((child) => child.kind === 'plan-script')!;
    assert.equal(script.state, 'succeeded');
    assert.equal(script.result?.output, 'second attempt\n');
  });
});
