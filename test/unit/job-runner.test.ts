/**
 * The server job runner over a real SQLite database: jobs run side by side up to the bound, the jobs of
 * one machine one at a time in queue order, coordinated jobs (plan runs) are left alone, and a job cut
 * off by a stop is run again by the next runner. Also the shell script runner that script actions use.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { FerryCore } from '../../src/orchestration/core.js';
import { type JobHandler, JobRunner } from '../../src/orchestration/job-runner.js';
import { runShellScript } from '../../src/util/shell-script.js';
import { makeTempDir, tempDirFor } from './helpers.js';

async function coreWithMachines(t: TestContext): Promise<{ core: FerryCore; machineIds: Record<string, string> }> {
  const parent = await makeTempDir('ferry-runner-');
  const core = await FerryCore.create({ dataDir: path.join(parent, 'data'), log: pino({ level: 'silent' }) });
  t.after(async () => {
    await core.stop();
    await fs.rm(parent, { recursive: true, force: true });
  });
  const token = await core.tokens.create('agent');
  await core.machines.registerAgent(await core.tokens.authenticate(token.token), {
    agentName: 'agent-1',
    machines: ['m1', 'm2'].map((name) => ({ name, disks: [{ path: `/images/${name}.img`, sizeBytes: 1 << 20, error: null }] })),
  });
  const machineIds = Object.fromEntries(await Promise.all(['m1', 'm2'].map(async (name) => [name, (await core.machines.get(name)).id] as const)));
  return { core, machineIds };
}

/** A handler whose calls wait until the test releases them, recording the order of starts and ends. */
function gatedHandler() {
  const releases = new Map<string, () => void>();
  const log: string[] = [];
  const handler: JobHandler = async (job) => {
    log.push(`start ${job.id}`);
    await new Promise<void>((resolve) => releases.set(job.id, resolve));
    log.push(`end ${job.id}`);
    return { ok: true };
  };
  return { handler, log, release: (id: string) => releases.get(id)!(), started: () => [...releases.keys()] };
}

async function until(condition: () => boolean | Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    if (await condition()) return;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  throw new Error(`timed out waiting for ${what}`);
}

describe('server job runner', () => {
  test('runs jobs side by side up to the bound; one machine\'s jobs one at a time, in queue order', async (t) => {
    const { core, machineIds } = await coreWithMachines(t);
    const gate = gatedHandler();
    const create = (machine: string | null) => core.jobs.create({ kind: 'test-failover', machineId: machine ? machineIds[machine]! : null, agentId: null }).then((job) => job.id);
    const a = await create('m1');
    const b = await create('m1');
    const c = await create('m2');
    const d = await create(null);
    const e = await create(null);
    const plan = await core.jobs.create({ kind: 'plan', machineId: null, agentId: null }); // coordinated: not the runner's
    const runner = new JobRunner(core.context, core.jobs, { 'test-failover': gate.handler, plan: gate.handler }, { concurrency: 3 });
    runner.start();
    try {
      await until(() => gate.started().length === 3, 'three jobs to start');
      assert.deepEqual(gate.started().sort(), [a, c, d].sort(), 'the oldest job of m1, m2\'s job, and one machine-less job: the bound is 3');
      await new Promise((resolve) => setTimeout(resolve, 100));
      assert.equal(gate.started().length, 3, 'nothing more while the bound is reached');
      gate.release(a);
      await until(() => gate.started().includes(b), 'm1\'s next job after its first ended');
      assert.ok(gate.log.indexOf(`end ${a}`) < gate.log.indexOf(`start ${b}`), 'b starts only after a ended');
      assert.ok(!gate.started().includes(e), 'e waits: b took the free slot, being older');
      gate.release(c);
      await until(() => gate.started().includes(e), 'e once a slot is free');
      for (const id of [b, d, e]) gate.release(id);
      await until(async () => (await Promise.all([a, b, c, d, e].map((id) => core.jobs.get(id)))).every((job) => job.state === 'succeeded'), 'every job to succeed');
      assert.equal((await core.jobs.get(plan.id)).state, 'queued', 'a plan job is never claimed by the runner');
    } finally {
      for (const id of gate.started()) gate.release(id); // a failed assertion must not leave handlers hanging
      await runner.stop(); // before the core (and its database) closes
    }
  });

  test('a job cut off by a stop stays running and is run again by the next runner', async (t) => {
    const { core } = await coreWithMachines(t);
    let attempts = 0;
    const handler: JobHandler = (_job, signal) => {
      attempts++;
      if (attempts > 1) return Promise.resolve({ attempt: attempts });
      return new Promise((_resolve, reject) => signal.addEventListener('abort', () => reject(new Error('stopped')), { once: true }));
    };
    const job = await core.jobs.create({ kind: 'test-failover', machineId: null, agentId: null });
    const first = new JobRunner(core.context, core.jobs, { 'test-failover': handler });
    first.start();
    await until(() => attempts === 1, 'the first attempt');
    await first.stop();
    assert.equal((await core.jobs.get(job.id)).state, 'running', 'left running for the restart');
    const second = new JobRunner(core.context, core.jobs, { 'test-failover': handler });
    second.start();
    try {
      await until(async () => (await core.jobs.get(job.id)).state === 'succeeded', 'the job to be run again');
      assert.deepEqual((await core.jobs.view(job.id)).result, { attempt: 2 });
    } finally {
      await second.stop();
    }
  });
});

describe('shell scripts', () => {
  test('output is interleaved stdout and stderr, bounded to its tail; the exit code is reported', async () => {
    const outcome = await runShellScript('echo out; echo err >&2; exit 4', { timeoutSeconds: 10 });
    assert.deepEqual([outcome.exitCode, outcome.timedOut, outcome.output, outcome.droppedBytes], [4, false, 'out\nerr\n', 0]);
    const big = await runShellScript("head -c 200000 /dev/zero | tr '\\0' a; echo; echo last", { timeoutSeconds: 10, maxOutputBytes: 1000 });
    assert.equal(big.exitCode, 0);
    assert.equal(big.output.length, 1000);
    assert.ok(big.output.endsWith('a\nlast\n'));
    assert.equal(big.droppedBytes, 200000 + 1 + 5 - 1000);
  });

  test('at its timeout the whole process group is killed, background children included', async (t) => {
    const directory = await tempDirFor(t);
    const survivor = path.join(directory, 'survivor');
    const started = Date.now();
    const outcome = await runShellScript(`(sleep 2; touch '${survivor}') & sleep 30`, { timeoutSeconds: 1 });
    assert.equal(outcome.timedOut, true);
    assert.equal(outcome.signal, 'SIGKILL');
    assert.ok(Date.now() - started < 5000);
    await new Promise((resolve) => setTimeout(resolve, 2500));
    assert.equal(await fs.stat(survivor).catch(() => null), null, 'the background child was killed too');
  });

  test('an abort signal kills it at once and says so', async () => {
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 100);
    const outcome = await runShellScript('sleep 30', { timeoutSeconds: 60, signal: controller.signal });
    assert.equal(outcome.aborted, true);
    assert.equal(outcome.timedOut, false);
  });
});
