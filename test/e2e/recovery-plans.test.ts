/**
 * Recovery plans end to end, through the CLI with a real server and agent and three machines whose
 * disks are ext4 images: a plan of three groups runs test failover group by group (its scripts check
 * the order on the site's files); a manual step waits across a server restart until `ferry plan resume`;
 * a failing script marked continue-on-error does not stop the run and one that is not does; `ferry job
 * show` gives the steps and child jobs; cleanup on the plan removes every test failover. Refusals say why.
 */
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import type { PlanOperationView, PlanRunView, PlanView } from '../../src/protocol/plans.js';
import type { JobView, MachineView } from '../../src/protocol/views.js';
import { connectAgent, ext4Disk, ferry, ferryJson, freePort, startServer, tempDir } from './harness.js';

const machines = ['web-01', 'app-01', 'db-01'];

test('a plan of three groups: test failover in group order, manual step across a restart, failing scripts, cleanup', async (t) => {
  const root = await tempDir(t);
  const disks: Record<string, string[]> = {};
  for (const name of machines) disks[name] = [await ext4Disk(root, name, 8, { 'etc/hostname': `${name}\n` })];
  const dataDir = path.join(root, 'server');
  const port = await freePort();
  let server = await startServer(t, dataDir, { port });
  await connectAgent(t, server, root, disks);
  const site = path.join(root, 'site');
  await ferryJson(server, ['site', 'add', 'dr', '--path', site]);
  await Promise.all(machines.map((name) => ferryJson(server, ['protect', name, '--site', 'dr', '--wait'])));
  const disk0 = (machine: string) => path.join(site, machine, 'test-failover', 'disk0.raw');

  // Refused definitions: an unknown machine, an action for a group that does not exist.
  const unknown = await ferry(server, ['plan', 'create', 'bad', '--group', 'web-01', '--group', 'db-01,nosuch', '--json']);
  assert.equal(unknown.code, 3, unknown.stderr);
  assert.equal(unknown.json().error.code, 'not-found');
  assert.match(unknown.stderr, /^ferry: plan 'bad' names a machine Ferry does not know: 'nosuch' \(group 2\); see `ferry machine list`\n$/);
  const noGroup = await ferry(server, ['plan', 'create', 'bad', '--group', 'web-01', '--after', '2:script:10:true']);
  assert.equal(noGroup.code, 2);
  assert.match(noGroup.stderr, /--after '2:script:10:true' names group 2, but there is 1 --group/);

  // group 1: web-01, then a script that checks web-01's disk is written and app-01's is not yet;
  // group 2: a manual step, app-01, then a failing smoke test marked continue-on-error;
  // group 3: a script that fails (when failing over) before db-01.
  const checkOrder = `if [ "$FERRY_OPERATION" = test-failover ]; then test -e ${disk0('web-01')} && test ! -e ${disk0('app-01')} || exit 9; fi; echo "group $FERRY_GROUP done: $FERRY_MACHINES"`;
  const created = await ferryJson<PlanView>(server, [
    'plan', 'create', 'dr', '--description', 'web, then app, then the database',
    '--group', 'web-01', '--group', 'app-01', '--group', 'db-01',
    '--after', `1:script:30:${checkOrder}`,
    '--before', '2:manual:Check that web-01 answers on the test network',
    '--after', '2:script-continue:30:echo smoke test failed >&2; exit 1',
    '--before', '3:script:30:if [ "$FERRY_OPERATION" = cleanup ]; then echo nothing to stop; else echo stopping the database failed >&2; exit 3; fi',
  ]);
  assert.deepEqual(created.groups.map((group) => [group.machines, group.before.length, group.after.length]), [[['web-01'], 0, 1], [['app-01'], 1, 1], [['db-01'], 1, 0]]);
  const shown = await ferry(server, ['plan', 'show', 'dr']);
  assert.equal(shown.code, 0, shown.stderr);
  assert.match(shown.stdout, /^  2\. app-01\n {7}before: manual: Check that web-01 answers on the test network\n {7}after: {2}script `echo smoke test failed >&2; exit 1` \(timeout 30s, continue on error\)$/m);
  const listed = await ferry(server, ['plan', 'list']);
  assert.match(listed.stdout, /^NAME\s+GROUPS\s+MACHINES\s+LAST RUN\ndr\s+3\s+3\s+-\n$/);

  // An operation this server cannot run yet is refused before anything starts.
  const { operations } = await ferryJson<{ operations: PlanOperationView[] }>(server, ['plan', 'operations']);
  assert.deepEqual(operations.filter((operation) => operation.available).map((operation) => operation.name).slice(0, 2), ['test-failover', 'cleanup']);
  const missing = operations.find((operation) => !operation.available);
  if (missing) {
    const refused = await ferry(server, ['plan', 'run', 'dr', missing.name]);
    assert.equal(refused.code, 2);
    assert.match(refused.stderr, new RegExp(`operation '${missing.name}' is not available yet \\(available: test-failover, cleanup`));
  }

  // Test failover: group 1 runs, then the run waits at the manual step.
  const waiting = await ferryJson<{ run: PlanRunView; job: JobView }>(server, ['plan', 'run', 'dr', 'test-failover', '--wait']);
  assert.equal(waiting.run.state, 'waiting', JSON.stringify(waiting.run));
  assert.equal(waiting.run.currentStep, 3);
  assert.equal(waiting.run.waitingFor, 'Check that web-01 answers on the test network');
  assert.match(waiting.job.step!, /waiting at step 3 of 7: Check that web-01 answers on the test network \(then run `ferry plan resume dr`\)/);
  const planJobId = waiting.run.jobId;
  assert.ok(await fs.stat(disk0('web-01')));
  assert.equal(await fs.stat(disk0('app-01')).catch(() => null), null, 'app-01 waits behind the manual step');

  const deleteRefused = await ferry(server, ['plan', 'delete', 'dr', '--json']);
  assert.equal(deleteRefused.code, 4);
  assert.match(deleteRefused.json().error.message, /plan 'dr' has a run in progress \(job job-\S+, waiting at step 3\); resume it \(`ferry plan resume dr`\) or cancel it/);
  const twice = await ferry(server, ['plan', 'run', 'dr', 'test-failover']);
  assert.equal(twice.code, 4);
  assert.match(twice.stderr, /already has a run in progress/);

  // The server restarts while the run waits; the run still waits, and resumes.
  await server.kill('SIGTERM');
  server = await startServer(t, dataDir, { port });
  const afterRestart = await ferryJson<PlanView>(server, ['plan', 'show', 'dr']);
  assert.equal(afterRestart.lastRun?.state, 'waiting');
  assert.equal(afterRestart.lastRun?.jobId, planJobId);

  // Resume: app-01 fails over, the continue-on-error smoke test fails and the run goes on, then the
  // group 3 script fails and stops the run before db-01.
  const resumed = await ferry(server, ['plan', 'resume', 'dr', '--wait', '--json']);
  assert.equal(resumed.code, 1, `a failed script (hook-failed) exits 1: ${resumed.stderr}`);
  assert.equal(resumed.json().error.code, 'hook-failed');
  assert.match(
    resumed.stderr,
    /^ferry: plan 'dr' failed: plan 'dr' stopped at step 6 of 7 \(group 3 before, action 1: script `.*` \(timeout 30s\)\): script `.*` exited with code 3: stopping the database failed\n$/,
  );
  assert.ok(await fs.stat(disk0('app-01')));
  assert.equal(await fs.stat(path.join(site, 'db-01')).catch(() => null), null, 'db-01 was never failed over');

  const job = await ferryJson<JobView>(server, ['job', 'show', planJobId]);
  assert.equal(job.kind, 'plan');
  assert.equal(job.state, 'failed');
  assert.deepEqual(job.steps?.map((step) => step.state), ['succeeded', 'succeeded', 'succeeded', 'succeeded', 'failed-continued', 'failed', 'skipped']);
  assert.deepEqual(
    job.children?.map((child) => [child.kind, child.machine, child.state]),
    [
      ['test-failover', 'web-01', 'succeeded'],
      ['plan-script', null, 'succeeded'],
      ['plan-manual', null, 'succeeded'],
      ['test-failover', 'app-01', 'succeeded'],
      ['plan-script', null, 'failed'],
      ['plan-script', null, 'failed'],
    ],
  );
  const [webJob, orderCheck, , appJob, smoke, stopDb] = job.children!;
  assert.ok(Date.parse(webJob!.endedAt!) <= Date.parse(appJob!.createdAt), 'app-01 started after web-01 ended');
  assert.equal(orderCheck!.result?.output, 'group 1 done: web-01\n', 'the script saw web-01 failed over and app-01 not yet');
  assert.equal(smoke!.result?.output, 'smoke test failed\n');
  assert.equal(stopDb!.result?.exitCode, 3);
  const human = await ferry(server, ['job', 'show', planJobId]);
  assert.match(human.stdout, /steps:\nSTEP\s+STATE\s+WHAT\s+JOBS\n1\s+succeeded\s+group 1: test-failover of web-01\s+web-01=job-/);
  assert.match(human.stdout, /child jobs:\nJOB\s+KIND\s+MACHINE/);

  // Cleanup on the plan (the manual step waits again): every test failover is removed; db-01 had none.
  const cleanupWaiting = await ferryJson<{ run: PlanRunView }>(server, ['plan', 'run', 'dr', 'cleanup', '--wait']);
  assert.equal(cleanupWaiting.run.state, 'waiting');
  const cleaned = await ferryJson<PlanRunView>(server, ['plan', 'resume', 'dr', '--wait']);
  assert.equal(cleaned.state, 'succeeded', JSON.stringify(cleaned));
  assert.deepEqual(cleaned.steps.map((step) => step.state), ['succeeded', 'succeeded', 'succeeded', 'succeeded', 'failed-continued', 'succeeded', 'succeeded']);
  const cleanupJob = await ferryJson<JobView>(server, ['job', 'show', cleaned.jobId]);
  const dbCleanup = cleanupJob.children!.find((child) => child.machine === 'db-01')!;
  assert.deepEqual([dbCleanup.kind, dbCleanup.state, dbCleanup.result?.removed], ['test-failover-cleanup', 'succeeded', false]);
  for (const name of machines) {
    assert.equal((await ferryJson<MachineView>(server, ['status', name])).testFailover, null, `${name} has no test failover`);
    assert.equal(await fs.stat(disk0(name)).catch(() => null), null);
  }

  // A plan whose first group runs two machines in parallel, through to the end, then cleaned up.
  await ferryJson(server, ['plan', 'create', 'all', '--group', 'web-01,app-01', '--group', 'db-01']);
  const all = await ferryJson<{ run: PlanRunView; job: JobView }>(server, ['plan', 'run', 'all', 'test-failover', '--point', 'latest', '--wait']);
  assert.equal(all.run.state, 'succeeded');
  assert.equal(all.job.state, 'succeeded');
  const allJob = await ferryJson<JobView>(server, ['job', 'show', all.run.jobId]);
  const [first, second, third] = allJob.children!;
  assert.deepEqual([first!.machine, second!.machine, third!.machine], ['web-01', 'app-01', 'db-01']);
  assert.ok(Date.parse(third!.createdAt) >= Math.max(Date.parse(first!.endedAt!), Date.parse(second!.endedAt!)), 'group 2 started after group 1 ended');
  for (const name of machines) assert.ok(await fs.stat(disk0(name)), `${name} is failed over`);
  const allCleaned = await ferryJson<{ run: PlanRunView }>(server, ['plan', 'run', 'all', 'cleanup', '--wait']);
  assert.equal(allCleaned.run.state, 'succeeded');
  for (const name of machines) assert.equal(await fs.stat(path.join(site, name, 'test-failover')).catch(() => null), null, `${name}'s test failover is removed`);

  assert.deepEqual(await ferryJson(server, ['plan', 'delete', 'all']), { plan: 'all', deleted: true });
  assert.deepEqual((await ferryJson<{ plans: PlanView[] }>(server, ['plan', 'list'])).plans.map((each) => each.name), ['dr']);
});

test('a whole DR round trip on a plan: planned failover, commit, reprotect, failback, commit, reprotect', { timeout: 240_000 }, async (t) => {
  const root = await tempDir(t);
  const names = ['web-02', 'db-02'];
  const disks: Record<string, string[]> = {};
  for (const name of names) disks[name] = [await ext4Disk(root, name, 8, { 'etc/hostname': `${name}\n` })];
  const server = await startServer(t, path.join(root, 'server'));
  await connectAgent(t, server, root, disks);
  await ferryJson(server, ['site', 'add', 'dr', '--path', path.join(root, 'site')]);
  for (const name of names) {
    await ferryJson(server, ['protect', name, '--site', 'dr', '--wait']);
    await ferryJson(server, ['machine', 'set', name, '--shutdown', 'true', '--recovery-shutdown', 'true']);
  }
  await ferryJson(server, ['plan', 'create', 'trip', '--group', 'db-02', '--group', 'web-02']);
  const { operations } = await ferryJson<{ operations: PlanOperationView[] }>(server, ['plan', 'operations']);
  assert.deepEqual(operations.filter((operation) => !operation.available), [], 'every operation is available');

  const states = async () => Promise.all(names.map(async (name) => (await ferryJson<MachineView>(server, ['status', name])).state));
  const directions = async () => Promise.all(names.map(async (name) => (await ferryJson<MachineView>(server, ['status', name])).direction));
  for (const [operation, expected, direction] of [
    ['planned-failover', 'failed-over', 'forward'],
    ['commit', 'committed', 'forward'],
    ['reprotect', 'protected', 'reverse'],
    ['failback', 'failed-back', 'reverse'],
    ['commit', 'committed', 'reverse'],
    ['reprotect', 'protected', 'forward'],
  ] as const) {
    const ran = await ferryJson<{ run: PlanRunView; job: JobView }>(server, ['plan', 'run', 'trip', operation, '--wait']);
    assert.equal(ran.run.state, 'succeeded', `${operation}: ${ran.run.error}`);
    // One child job per machine, each the operation's own job, ended when the operation did.
    const children = ran.run.steps.flatMap((step) => step.items ?? []);
    assert.equal(children.length, 2);
    for (const child of children) assert.equal((await ferryJson<JobView>(server, ['job', 'show', child.jobId!])).parentId, ran.run.jobId);
    assert.deepEqual(await states(), [expected, expected], `after ${operation}`);
    assert.deepEqual(await directions(), [direction, direction], `direction after ${operation}`);
  }
  for (const name of names) assert.ok((await ferryJson<MachineView>(server, ['status', name])).failover === null, 'the round trip is over');
});
