/**
 * The scheduler and retention, driven through the real core (SQLite, chunk store) with the one thing
 * that cannot be waited for in a test replaced: the clock (CoreContext.now).
 */
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { FerryCore } from '../../src/orchestration/core.js';
import { Scheduler } from '../../src/orchestration/scheduler.js';
import { hashChunk } from '../../src/store/chunking.js';
import { DiskIndex } from '../../src/store/disk-index.js';

const MINUTE = 60_000;

async function setUp(t: test.TestContext) {
  const dataDir = await fs.mkdtemp(path.join(os.tmpdir(), 'ferry-scheduler-'));
  let clock = Date.parse('2026-01-01T00:00:00Z');
  const core = await FerryCore.create({ dataDir, options: { retryDelayMs: 30_000 } });
  core.context.now = () => clock;
  t.after(async () => {
    await core.stop();
    await fs.rm(dataDir, { recursive: true, force: true });
  });
  const token = await core.tokens.create('agent');
  const principal = await core.tokens.authenticate(token.token);
  const { agentId } = await core.machines.registerAgent(principal, { agentName: 'a1', machines: [{ name: 'vm', disks: [{ path: '/dev/null', sizeBytes: 65536, error: null }] }] });
  await core.sites.create({ name: 'dr', driver: 'files', path: path.join(dataDir, 'site') });
  await core.policies.create({ name: 'hourly', intervalSeconds: 3600, retentionSeconds: 6 * 3600 });
  const scheduler = new Scheduler(core.context, core.points, core.machines, core.events);
  const activeJobs = async () =>
    (await core.jobs.list({ activeOnly: true, limit: 10 })).filter((job) => job.machine === 'vm' && ['initial-replication', 'point'].includes(job.kind));

  /** Completes the machine's active job as an agent would, with one chunk of `fill` bytes. */
  const commitActiveJob = async (fill: number) => {
    const [job] = await activeJobs();
    assert.ok(job, 'a job is active');
    await core.replication.start(agentId, job.id);
    const data = Buffer.alloc(65536, fill);
    await core.context.store.putChunk(hashChunk(data).toString('hex'), data);
    const index = DiskIndex.empty(65536, 65536);
    index.setHash(0, hashChunk(data));
    const indexHash = await core.context.store.putIndex(index);
    const disk = (await core.machines.disksOf((await core.machines.get('vm')).id))[0]!;
    return core.points.commit(agentId, { jobId: job.id, takenAt: clock, consistency: 'app', note: null, disks: [{ diskId: disk.id, indexHash, changedBytes: 65536, sentBytes: 65536 }] });
  };
  // Time passes as if the agent kept polling, so "agent not seen" does not colour these checks.
  const advance = async (ms: number) => {
    clock += ms;
    await core.machines.touchAgent(agentId);
  };
  return { core, scheduler, agentId, activeJobs, commitActiveJob, advance };
}

test('points come due on the policy interval; after a failure the scheduler waits before retrying', async (t) => {
  const { core, scheduler, agentId, activeJobs, commitActiveJob, advance } = await setUp(t);
  await core.replication.protect('vm', { site: 'dr', policy: 'hourly' });
  assert.equal((await activeJobs())[0]?.kind, 'initial-replication');
  await scheduler.tick();
  assert.equal((await activeJobs()).length, 1, 'never two replication jobs at once');
  await commitActiveJob(1);
  assert.equal((await core.machines.view('vm')).state, 'protected');

  await advance(30 * MINUTE);
  await scheduler.tick();
  assert.equal((await activeJobs()).length, 0, 'not due yet');
  assert.equal((await core.machines.view('vm')).rpoSeconds, 1800);

  await advance(31 * MINUTE);
  await scheduler.tick();
  const [due] = await activeJobs();
  assert.equal(due?.kind, 'point');
  assert.equal((await core.machines.view('vm')).health.level, 'healthy', 'RPO 61m is under the 2h threshold');

  await core.replication.start(agentId, due.id);
  await core.replication.fail(agentId, due.id, { code: 'disk-unreadable', message: 'disk /dev/null cannot be read (EIO)', retryable: true });
  const failed = await core.machines.view('vm');
  assert.equal(failed.replication.state, 'error');
  assert.equal(failed.health.level, 'critical');
  await advance(10_000);
  await scheduler.tick();
  assert.equal((await activeJobs()).length, 0, 'waits the retry delay after a failure');
  await advance(25_000);
  await scheduler.tick();
  assert.equal((await activeJobs()).length, 1, 'retries once the delay has passed');
  await commitActiveJob(2);
  assert.equal((await core.machines.view('vm')).replication.state, 'idle', 'a successful point clears the error');

  await advance(3 * 3600_000);
  const late = await core.machines.view('vm');
  assert.equal(late.health.level, 'warning');
  assert.match(late.health.reasons.join(), /RPO \d+s is over the policy's threshold of 7200s/);
});

test('retention removes points past it, but keeps the newest and any point a test failover uses', async (t) => {
  const { core, scheduler, activeJobs, commitActiveJob, advance } = await setUp(t);
  await core.replication.protect('vm', { site: 'dr', policy: 'hourly' });
  const first = await commitActiveJob(1);
  const taken = [first.id];
  for (let n = 2; n <= 4; n++) {
    await advance(2 * 3600_000);
    await core.points.request('vm');
    taken.push((await commitActiveJob(n)).id);
  }
  // Points at 0h, 2h, 4h, 6h; now is 6h. Retention is 6h: nothing has expired yet.
  await core.points.expire(await core.machines.get('vm'), { retentionSeconds: 6 * 3600, keepAllSeconds: 6 * 3600, hourlySeconds: 6 * 3600, appRetentionSeconds: 0 });
  assert.equal((await core.points.list('vm', 100)).length, 4);

  await core.testFailovers.start('vm', taken[1]!); // holds the 2h point
  await advance(5 * 3600_000); // now 11h: 0h, 2h and 4h are past retention
  await scheduler.tick();
  const kept = (await core.points.list('vm', 100)).map((point) => point.id);
  assert.deepEqual(kept.sort(), [taken[1]!, taken[3]!].sort(), 'newest kept, test-failover point kept, others removed');
  assert.ok((await core.events.list({ limit: 20 })).some((event) => event.code === 'points-expired'));
  assert.equal((await activeJobs()).length, 1, 'and a point was due');
});

test('a test failover job run again after a crash finds its work done and succeeds', async (t) => {
  const { core, commitActiveJob } = await setUp(t);
  await core.replication.protect('vm', { site: 'dr', policy: 'hourly' });
  const point = await commitActiveJob(3);
  const started = await core.testFailovers.start('vm', 'latest');
  const job = await core.jobs.get(started.job.id);
  const first = await core.testFailovers.runCreate(job);
  const again = await core.testFailovers.runCreate(job); // as the job runner does after a restart
  assert.deepEqual(again, first);
  assert.equal((await core.machines.view('vm')).testFailover?.state, 'ready');
  const written = await fs.readFile(started.disks[0]!.path);
  assert.ok(written.equals(Buffer.alloc(65536, 3)), `restored ${point.id} as it was`);
});

test('stopping the core ends agent long polls at once', async (t) => {
  const { core, agentId } = await setUp(t);
  const started = Date.now();
  const poll = core.replication.work(agentId, 30, new AbortController().signal);
  setTimeout(() => core.beginShutdown(), 100);
  assert.deepEqual(await poll, []);
  assert.ok(Date.now() - started < 2000, `long poll ended after ${Date.now() - started} ms`);
});

test('pause stops new points (scheduled or asked for) and keeps the old ones; resume starts them again', async (t) => {
  const { core, scheduler, activeJobs, commitActiveJob, advance } = await setUp(t);
  await core.replication.protect('vm', { site: 'dr', policy: 'hourly' });
  await commitActiveJob(1);
  const paused = await core.machines.setPaused('vm', true);
  assert.equal(paused.state, 'paused');
  assert.equal(paused.replication.state, 'paused');
  assert.equal(paused.health.level, 'warning');
  await assert.rejects(core.points.request('vm'), /paused; run `ferry resume vm` first/);
  await assert.rejects(core.machines.setPaused('vm', true), /is paused; cannot pause \(allowed there: resume, failover, migrate, failback\)/);
  await advance(2 * 3600_000);
  await scheduler.tick();
  assert.equal((await activeJobs()).length, 0, 'nothing scheduled while paused');
  assert.equal((await core.points.list('vm', 10)).length, 1, 'points are kept');
  await core.machines.setPaused('vm', false);
  await scheduler.tick();
  assert.equal((await activeJobs()).length, 1, 'overdue point scheduled on resume');
});

test('health changes are recorded as alert events, once per change', async (t) => {
  const { core, scheduler, agentId, activeJobs, commitActiveJob } = await setUp(t);
  await core.replication.protect('vm', { site: 'dr', policy: 'hourly' });
  await commitActiveJob(1);
  await scheduler.recordHealthChanges();
  await core.points.request('vm');
  const [job] = await activeJobs();
  await core.replication.start(agentId, job!.id);
  await core.replication.fail(agentId, job!.id, { code: 'disk-unreadable', message: 'disk gone', retryable: true });
  await scheduler.recordHealthChanges();
  await scheduler.recordHealthChanges();
  const alerts = await core.events.list({ limit: 50, alertsOnly: true });
  const healthAlerts = alerts.filter((event) => event.code === 'health-changed');
  assert.equal(healthAlerts.length, 1, 'one alert for one change');
  assert.match(healthAlerts[0]!.message, /vm: health healthy -> critical: replication failing: disk gone/);
  assert.ok(alerts.every((event) => event.severity !== 'info'));
});

test('ETA follows the pace so far', async () => {
  const { estimateSeconds } = await import('../../src/orchestration/machines.js');
  assert.equal(estimateSeconds({ started_at: 0, done_bytes: 25, total_bytes: 100 }, 10_000), 30);
  assert.equal(estimateSeconds({ started_at: 0, done_bytes: 0, total_bytes: 100 }, 10_000), null);
  assert.equal(estimateSeconds({ started_at: null, done_bytes: 5, total_bytes: 100 }, 10_000), null);
});
