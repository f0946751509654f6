/**
 * Failover on a real FerryCore (SQLite, chunk store, files driver): unplanned failover to an older point,
 * change of point, commit; planned failover through its final point (the agent's part played here by
 * calling the agent routes' core methods, as an agent's requests would); rollback when the final point
 * fails; and every refused transition naming the state and what it allows.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { FerryCore } from '../../src/orchestration/core.js';
import { hashChunk } from '../../src/store/chunking.js';
import { DiskIndex } from '../../src/store/disk-index.js';
import { ferryError, makeTempDir } from './helpers.js';

const CHUNK = 65536;
const DISK_BYTES = 4 * CHUNK;

/** A core with machine 'vm' (one disk) protected to site 'dr', and a helper to commit points of given content. */
async function protectedMachine(t: TestContext) {
  const parent = await makeTempDir('ferry-failover-');
  const dataDir = path.join(parent, 'data');
  const core = await FerryCore.create({ dataDir, log: pino({ level: 'silent' }) });
  t.after(async () => {
    await core.stop();
    await fs.rm(parent, { recursive: true, force: true });
  });
  const token = await core.tokens.create('agent');
  const { agentId } = await core.machines.registerAgent(await core.tokens.authenticate(token.token), {
    agentName: 'agent-1',
    machines: [{ name: 'vm', disks: [{ path: '/dev/null-disk', sizeBytes: DISK_BYTES, error: null }] }],
  });
  const sitePath = path.join(parent, 'site');
  await core.sites.create({ name: 'dr', driver: 'files', path: sitePath });
  const [disk] = await core.machines.disksOf((await core.machines.get('vm')).id);

  /** Runs a replication job as the agent would: start, store the disk's chunks, commit. Returns the point id. */
  const runCycle = async (jobId: string, content: Buffer, consistency: 'app' | 'crash' | 'inconsistent' = 'crash') => {
    await core.replication.start(agentId, jobId);
    const index = DiskIndex.empty(DISK_BYTES, CHUNK);
    for (let position = 0; position < index.chunkCount; position++) {
      const data = content.subarray(position * CHUNK, (position + 1) * CHUNK);
      const hash = hashChunk(data);
      await core.storeGuard.putChunk(hash.toString('hex'), data);
      index.setHash(position, hash);
    }
    const indexHash = await core.storeGuard.putIndex(index);
    const point = await core.points.commit(agentId, { jobId, takenAt: Date.now(), consistency, note: null, disks: [{ diskId: disk!.id, indexHash, changedBytes: DISK_BYTES, sentBytes: DISK_BYTES }] });
    return point.id;
  };
  const first = randomBytes(DISK_BYTES);
  const { job: initial } = await core.replication.protect('vm', { site: 'dr', policy: 'default' });
  const firstPoint = await runCycle(initial.id, first, 'app');
  /** Runs the server job of the machine's failover, as the job runner would. */
  const runFailoverJob = async () => {
    const view = await core.machines.view('vm');
    return core.failovers.runWrite(await core.jobs.get(view.failover!.jobId));
  };
  const failedOverDisk = async () => fs.readFile((await core.machines.view('vm')).failover!.disks[0]!.path);
  return { core, agentId, sitePath, runCycle, runFailoverJob, failedOverDisk, first, firstPoint };
}

describe('failover', () => {
  test('unplanned to an older point, change of point, commit: the disks are each point byte for byte', async (t) => {
    const { core, runCycle, runFailoverJob, failedOverDisk, first, firstPoint, sitePath } = await protectedMachine(t);
    const second = randomBytes(DISK_BYTES);
    const secondPoint = await runCycle((await core.points.request('vm')).id, second);
    const pending = await core.points.request('vm'); // a cycle in progress when the failover starts

    const started = await core.failovers.request('vm', 'unplanned', firstPoint);
    assert.equal(started.job.kind, 'failover');
    assert.equal((await core.machines.view('vm')).state, 'failing-over');
    assert.equal((await core.jobs.view(pending.id)).state, 'cancelled', 'a cycle started before the failover can no longer commit');
    await runFailoverJob();
    let view = await core.machines.view('vm');
    assert.equal(view.state, 'failed-over');
    assert.equal(view.failover?.state, 'ready');
    assert.equal(view.failover?.pointId, firstPoint);
    assert.ok(view.failover!.disks[0]!.path.startsWith(path.join(sitePath, 'vm', 'failover', firstPoint)));
    assert.deepEqual(await failedOverDisk(), first);
    assert.equal(view.health.level, 'healthy', `a failed-over machine is not unhealthy: ${view.health.reasons.join('; ')}`);
    assert.equal(view.rpoSeconds, null, 'no RPO while failed over');

    await core.failovers.request('vm', 'change-point', 'latest');
    assert.equal((await core.machines.view('vm')).state, 'failing-over');
    await runFailoverJob();
    view = await core.machines.view('vm');
    assert.equal(view.state, 'failed-over');
    assert.equal(view.failover?.pointId, secondPoint);
    assert.deepEqual(await failedOverDisk(), second);
    await assert.rejects(fs.stat(path.join(sitePath, 'vm', 'failover', firstPoint)), 'the disks of the point replaced are removed');

    const committed = await core.failovers.commit('vm');
    assert.equal(committed.job.state, 'succeeded');
    assert.equal((await core.machines.view('vm')).state, 'committed');
    assert.ok(committed.failover.committedAt);
    await assert.rejects(core.failovers.request('vm', 'change-point', firstPoint), ferryError('conflict', ["machine 'vm' is committed", 'cannot change-point']));
    const codes = (await core.events.list({ limit: 20 })).map((event) => event.code);
    for (const code of ['failover-started', 'failover-ready', 'failover-change-point', 'failover-committed']) assert.ok(codes.includes(code), `event ${code} recorded`);
  });

  test('planned: the final point (shutdown, then a last cycle) is the point failed over to', async (t) => {
    const { core, agentId, runCycle, runFailoverJob, failedOverDisk } = await protectedMachine(t);
    await assert.rejects(core.failovers.request('vm', 'planned', 'latest'), ferryError('invalid-request', ['shutdown command', 'ferry machine set vm --shutdown']));
    await core.machines.update('vm', { shutdownCommand: 'systemctl stop app' });

    const started = await core.failovers.request('vm', 'planned', 'latest');
    assert.equal(started.job.kind, 'planned-failover', 'one job carries the whole operation');
    assert.equal(started.job.state, 'running');
    assert.equal(started.failover.state, 'final-point');
    const finalJob = await core.jobs.view(started.failover.jobId);
    assert.equal(finalJob.kind, 'final-point');
    assert.equal(finalJob.parentId, started.job.id);
    const [handed] = await core.replication.work(agentId, 0, new AbortController().signal);
    assert.equal(handed?.id, finalJob.id);
    assert.ok(handed?.kind === 'replicate');
    assert.equal(handed.shutdown, 'systemctl stop app', 'the agent is told to stop the workload first');
    assert.equal(handed.consistency, 'app');

    const last = randomBytes(DISK_BYTES); // what the disk holds once the workload stopped
    const finalPoint = await runCycle(finalJob.id, last, 'app');
    await core.failovers.advance();
    const view = await core.machines.view('vm');
    assert.equal(view.failover?.state, 'writing');
    assert.equal((await core.jobs.view(view.failover!.jobId)).kind, 'failover');
    await runFailoverJob();
    const after = await core.machines.view('vm');
    assert.equal(after.state, 'failed-over');
    assert.equal(after.failover?.pointId, finalPoint);
    assert.deepEqual(await failedOverDisk(), last);
    const operation = await core.jobs.view(started.job.id);
    assert.equal(operation.state, 'succeeded', 'the operation job ends with the failover');
    assert.equal((operation.result as { pointId: string }).pointId, finalPoint);
  });

  test('planned: a final point that fails rolls the machine back to protected, and says why', async (t) => {
    const { core, agentId } = await protectedMachine(t);
    await core.machines.update('vm', { shutdownCommand: 'false' });
    const started = await core.failovers.request('vm', 'planned', 'latest');
    await core.replication.start(agentId, started.failover.jobId);
    await core.replication.fail(agentId, started.failover.jobId, { code: 'hook-failed', message: 'shutdown command exited with 1', retryable: false });
    await core.failovers.advance();
    assert.equal((await core.jobs.view(started.job.id)).state, 'failed', 'the operation job fails with its step');
    const view = await core.machines.view('vm');
    assert.equal(view.state, 'protected');
    assert.equal(view.failover, null);
    const event = (await core.events.list({ limit: 10 })).find((each) => each.code === 'failover-failed');
    assert.ok(event && /final point failed .*shutdown command exited with 1/.test(event.message), JSON.stringify(event));
  });

  test('refused transitions name the state and what it allows', async (t) => {
    const { core } = await protectedMachine(t);
    await assert.rejects(core.failovers.commit('vm'), ferryError('conflict', ["machine 'vm' is protected", 'cannot commit', 'allowed there: pause, failover, migrate']));
    await assert.rejects(core.failovers.request('vm', 'change-point', 'latest'), ferryError('conflict', ['is protected', 'cannot change-point']));
    const token = await core.tokens.create('agent');
    await core.machines.registerAgent(await core.tokens.authenticate(token.token), { agentName: 'agent-2', machines: [{ name: 'bare', disks: [{ path: '/x', sizeBytes: 4096, error: null }] }] });
    await assert.rejects(core.failovers.request('bare', 'unplanned', 'latest'), ferryError('conflict', ["machine 'bare' is unprotected", 'cannot failover', 'allowed there: protect']));
    await core.failovers.request('vm', 'unplanned', 'latest');
    await assert.rejects(core.failovers.request('vm', 'unplanned', 'latest'), ferryError('conflict', ['is failing-over', 'cannot failover']));
    await assert.rejects(core.points.request('vm'), ferryError('conflict'), 'no new points while failing over');
  });

  test('points are chosen by latest, latest-app, id or time', async (t) => {
    const { core, runCycle, firstPoint } = await protectedMachine(t);
    const before = new Date().toISOString();
    await new Promise((resolve) => setTimeout(resolve, 20));
    const crashPoint = await runCycle((await core.points.request('vm')).id, randomBytes(DISK_BYTES), 'crash');
    const machine = await core.machines.get('vm');
    assert.equal((await core.points.resolve(machine, 'latest')).id, crashPoint);
    assert.equal((await core.points.resolve(machine, 'latest-app')).id, firstPoint);
    assert.equal((await core.points.resolve(machine, before)).id, firstPoint);
    await assert.rejects(core.points.resolve(machine, '2000-01-01T00:00:00Z'), ferryError('conflict', ['no recovery point taken at or before 2000-01-01']));
    await assert.rejects(core.points.resolve(machine, '2026-13-45T99:00:00Z'), ferryError('invalid-request', ['not a valid time']));
    await assert.rejects(core.points.resolve(machine, 'pt-nope'), ferryError('not-found'));
  });
});
