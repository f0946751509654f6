/**
 * Reprotect and failback on a real FerryCore (SQLite, chunk store, files driver). The two agents'
 * parts (the machine's own agent at the source site, and an agent reading the failed-over disks at the
 * recovery site) are played here by calling the agent routes' core methods, as their requests would:
 * the whole round trip failover -> commit -> reprotect -> failback -> commit -> reprotect, the jobs each
 * step hands to which agent, the bytes reported, rollback of a failed step, and refused transitions.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { FerryCore } from '../../src/orchestration/core.js';
import { decodeChunkBatch } from '../../src/protocol/chunk-batch.js';
import type { AgentJob } from '../../src/protocol/views.js';
import { hashChunk } from '../../src/store/chunking.js';
import { DiskIndex } from '../../src/store/disk-index.js';
import { ferryError, makeTempDir } from './helpers.js';

const CHUNK = 65536;
const DISK_BYTES = 4 * CHUNK;
const signal = new AbortController().signal;

/** A core with machine 'vm' protected by 'source-agent', failed over (unplanned) and committed; 'dr-agent' can read the recovery site. */
async function committedFailover(t: TestContext) {
  const parent = await makeTempDir('ferry-reprotect-');
  const open = () => FerryCore.create({ dataDir: path.join(parent, 'data'), log: pino({ level: 'silent' }) });
  const cores = { current: await open() };
  const core = cores.current;
  t.after(async () => {
    await cores.current.stop();
    await fs.rm(parent, { recursive: true, force: true });
  });
  /** Stops the core as a crash would leave it (no step advanced) and opens a new one on the same data, started. */
  const restart = async () => {
    await cores.current.stop();
    cores.current = await open();
    cores.current.start();
    return cores.current;
  };
  const register = async (agentName: string, machines: { name: string; disks: { path: string; sizeBytes: number; error: null }[] }[]) => {
    const token = await core.tokens.create('agent');
    return (await core.machines.registerAgent(await core.tokens.authenticate(token.token), { agentName, machines })).agentId;
  };
  const sourceDisk = path.join(parent, 'source', 'vm.img');
  const sourceAgent = await register('source-agent', [{ name: 'vm', disks: [{ path: sourceDisk, sizeBytes: DISK_BYTES, error: null }] }]);
  const recoveryAgent = await register('dr-agent', []);
  const sitePath = path.join(parent, 'site');
  await core.sites.create({ name: 'dr', driver: 'files', path: sitePath });
  const [disk] = await core.machines.disksOf((await core.machines.get('vm')).id);

  /** Runs a replication job as `agentId` would: start, store the chunks the store lacks, commit. Returns the point id. */
  const runCycle = async (agentId: string, jobId: string, content: Buffer, consistency: 'app' | 'crash' = 'crash') => {
    await core.replication.start(agentId, jobId);
    const index = DiskIndex.empty(DISK_BYTES, CHUNK);
    let sentBytes = 0;
    for (let position = 0; position < index.chunkCount; position++) {
      const data = content.subarray(position * CHUNK, (position + 1) * CHUNK);
      const hash = hashChunk(data);
      if ((await core.storeGuard.missingChunks([hash.toString('hex')])).length > 0) {
        await core.storeGuard.putChunk(hash.toString('hex'), data);
        sentBytes += data.length;
      }
      index.setHash(position, hash);
    }
    const indexHash = await core.storeGuard.putIndex(index);
    const point = await core.points.commit(agentId, { jobId, takenAt: Date.now(), consistency, note: null, disks: [{ diskId: disk!.id, indexHash, changedBytes: sentBytes, sentBytes }] });
    return point.id;
  };
  /** The one job `agentId` is handed now. */
  const handedTo = async (agentId: string): Promise<AgentJob> => {
    const jobs = await core.replication.work(agentId, 0, signal);
    assert.equal(jobs.length, 1, `one job for the agent, got ${jobs.map((job) => job.kind).join(', ')}`);
    return jobs[0]!;
  };
  /**
   * Runs an apply-point job as the source agent would: start, read the index, fetch the chunks its disk
   * (`current`) lacks, write them, report. Returns the disk's new content.
   */
  const runApply = async (job: AgentJob, current: Buffer) => {
    assert.equal(job.kind, 'apply-point');
    if (job.kind !== 'apply-point') throw new Error('not an apply job');
    await core.replication.start(sourceAgent, job.id);
    const index = DiskIndex.decode(await core.replication.applyIndex(sourceAgent, job.id, 0), 'upload');
    const updated = Buffer.from(current);
    const differing: number[] = [];
    for (let position = 0; position < index.chunkCount; position++) {
      if (!hashChunk(current.subarray(position * CHUNK, (position + 1) * CHUNK)).equals(index.hashAt(position))) differing.push(position);
    }
    let receivedBytes = 0;
    if (differing.length > 0) {
      const hashes = [...new Set(differing.map((position) => index.hashAt(position).toString('hex')))];
      const body = Buffer.concat(await core.replication.readChunks(sourceAgent, job.id, hashes));
      receivedBytes = body.length;
      const chunks = new Map(decodeChunkBatch(body).map((frame) => [frame.hashHex, 'data' in frame ? frame.data! : null]));
      for (const position of differing) chunks.get(index.hashAt(position).toString('hex'))!.copy(updated, position * CHUNK);
    }
    await core.replication.completeApply(sourceAgent, job.id, { disks: [{ position: 0, changedBytes: differing.length * CHUNK, receivedBytes, chunksWritten: differing.length }] });
    await core.reprotections.advance();
    await core.failovers.advance();
    return updated;
  };

  const original = randomBytes(DISK_BYTES);
  const { job: initial } = await core.replication.protect('vm', { site: 'dr', policy: 'default' });
  await runCycle(sourceAgent, initial.id, original, 'app');
  const failover = await core.failovers.request('vm', 'unplanned', 'latest');
  await core.failovers.runWrite(await core.jobs.get(failover.job.id));
  await core.failovers.commit('vm');
  const failedOverDisk = (await core.machines.view('vm')).failover!.disks[0]!.path;
  return { core, parent, sitePath, sourceAgent, recoveryAgent, original, failedOverDisk, runCycle, handedTo, runApply, restart };
}

describe('reprotect and failback', () => {
  test('the round trip: reprotect sends only what changed at the recovery site, failback writes only what differs, reprotect turns back', async (t) => {
    const { core, sourceAgent, recoveryAgent, original, failedOverDisk, runCycle, handedTo, runApply } = await committedFailover(t);
    assert.deepEqual(await fs.readFile(failedOverDisk), original);

    // Reverse: the recovery agent reads the failed-over disk, where one chunk changed since the failover.
    const atRecovery = Buffer.from(original);
    randomBytes(CHUNK).copy(atRecovery, CHUNK);
    await core.machines.update('vm', { prePointCommand: 'fsfreeze -f /srv', postPointCommand: 'fsfreeze -u /srv' });
    const started = await core.reprotections.request('vm', { agent: 'dr-agent' });
    assert.equal(started.job.kind, 'reprotect');
    assert.equal(started.reprotect.direction, 'reverse');
    assert.equal((await core.machines.view('vm')).state, 'reprotecting');
    const first = await handedTo(recoveryAgent);
    assert.ok(first.kind === 'replicate');
    assert.equal(first.disks[0]!.path, failedOverDisk, 'the recovery agent reads the failed-over disk');
    assert.deepEqual([first.hooks.prePoint, first.hooks.postPoint], [null, null], "the source machine's hooks never run at the recovery site");
    assert.equal((await core.jobs.view(first.id)).parentId, started.job.id);
    const reversePoint = await runCycle(recoveryAgent, first.id, atRecovery, 'app');
    await core.reprotections.advance();

    // Then the source agent makes its disk equal to that point; the source disk also took a stray write.
    const atSource = Buffer.from(original);
    randomBytes(CHUNK).copy(atSource, 3 * CHUNK);
    const apply = await handedTo(sourceAgent);
    assert.ok(apply.kind === 'apply-point');
    assert.equal(apply.pointId, reversePoint);
    assert.equal(apply.disks[0]!.sizeBytes, DISK_BYTES);
    const afterReprotect = await runApply(apply, atSource);
    assert.deepEqual(afterReprotect, atRecovery, 'the source disk equals the recovered one');

    let view = await core.machines.view('vm');
    assert.equal(view.state, 'protected');
    assert.equal(view.direction, 'reverse');
    assert.equal(view.recoveryAgent?.name, 'dr-agent');
    assert.equal(view.disks[0]!.recoveryPath, failedOverDisk);
    assert.equal(view.reprotect?.state, 'done');
    assert.equal(view.reprotect?.result?.pointSentBytes, CHUNK, 'only the chunk changed at the recovery site was sent');
    assert.equal(view.reprotect?.result?.appliedChangedBytes, 2 * CHUNK, 'the source disk took the two chunks that differed');
    const reprotectJob = await core.jobs.view(started.job.id);
    assert.equal(reprotectJob.state, 'succeeded');

    // Replication now runs in reverse, read by the recovery agent; a forward failover is refused.
    const cycle = await core.points.request('vm');
    assert.equal((await core.jobs.get(cycle.id)).agent_id, recoveryAgent);
    await runCycle(recoveryAgent, cycle.id, atRecovery);
    await assert.rejects(core.failovers.request('vm', 'unplanned', 'latest'), ferryError('conflict', ['replicates in reverse', 'ferry failback vm']));
    await assert.rejects(core.failovers.request('vm', 'failback', 'latest'), ferryError('invalid-request', ['stops its workload first at the recovery site', '--recovery-shutdown']));

    // Failback: the recovery agent stops the workload and takes a final point; the source agent writes it.
    await core.machines.update('vm', { recoveryShutdownCommand: 'systemctl stop app' });
    const failback = await core.failovers.request('vm', 'failback', 'latest');
    assert.equal(failback.job.kind, 'failback');
    assert.equal((await core.machines.view('vm')).state, 'failing-back');
    const finalJob = await handedTo(recoveryAgent);
    assert.ok(finalJob.kind === 'replicate');
    assert.equal(finalJob.shutdown, 'systemctl stop app', 'the recovery shutdown command stops the workload there');
    const last = Buffer.from(atRecovery);
    randomBytes(CHUNK).copy(last, 2 * CHUNK);
    const finalPoint = await runCycle(recoveryAgent, finalJob.id, last, 'app');
    await core.failovers.advance();
    const write = await handedTo(sourceAgent);
    assert.ok(write.kind === 'apply-point');
    assert.equal(write.pointId, finalPoint);
    const afterFailback = await runApply(write, afterReprotect);
    assert.deepEqual(afterFailback, last);
    view = await core.machines.view('vm');
    assert.equal(view.state, 'failed-back');
    assert.equal(view.failover?.kind, 'failback');
    assert.equal(view.failover?.pointId, finalPoint);
    const failbackJob = await core.jobs.view(failback.job.id);
    assert.equal(failbackJob.state, 'succeeded');
    assert.equal((failbackJob.result as { changedBytes: number }).changedBytes, CHUNK, 'only the chunk changed since the reprotect was written');
    await core.failovers.commit('vm');
    assert.equal((await core.machines.view('vm')).state, 'committed');

    // Reprotect again: forward, read by the source agent from its own disk; the store has every chunk.
    await assert.rejects(core.reprotections.request('vm', { agent: 'dr-agent' }), ferryError('invalid-request', ['--agent and --disk-path apply only']));
    const back = await core.reprotections.request('vm');
    assert.equal(back.reprotect.direction, 'forward');
    const forward = await handedTo(sourceAgent);
    assert.ok(forward.kind === 'replicate');
    assert.equal(forward.disks[0]!.path, view.disks[0]!.path);
    await runCycle(sourceAgent, forward.id, afterFailback, 'app');
    await core.reprotections.advance();
    view = await core.machines.view('vm');
    assert.equal(view.state, 'protected');
    assert.equal(view.direction, 'forward');
    assert.equal(view.reprotect?.result?.pointSentBytes, 0, 'nothing to send: the store holds the failback point');
    assert.equal(view.failover, null, 'the round trip is over');
    assert.equal(view.recoveryAgent, null);
    assert.equal(view.disks[0]!.recoveryPath, null);
    await assert.rejects(fs.stat(failedOverDisk), { code: 'ENOENT' }, 'the stale failed-over disks are removed');
    const codes = (await core.events.list({ limit: 50 })).map((event) => event.code);
    for (const code of ['reprotect-started', 'reprotect-done', 'failback-started', 'failback-ready', 'failback-committed']) assert.ok(codes.includes(code), `event ${code}`);
  });

  test('--disk-path writes a source disk to a new location, which becomes the disk', async (t) => {
    const { core, parent, sourceAgent, recoveryAgent, original, runCycle, handedTo, runApply } = await committedFailover(t);
    const moved = path.join(parent, 'elsewhere', 'vm-new.img');
    await assert.rejects(core.reprotections.request('vm', { agent: 'dr-agent', diskPaths: [{ position: 3, path: moved }] }), ferryError('invalid-request', ['has no disk 3']));
    await core.reprotections.request('vm', { agent: 'dr-agent', diskPaths: [{ position: 0, path: moved }] });
    await runCycle(recoveryAgent, (await handedTo(recoveryAgent)).id, original);
    await core.reprotections.advance();
    const apply = await handedTo(sourceAgent);
    assert.ok(apply.kind === 'apply-point');
    assert.equal(apply.disks[0]!.path, moved);
    await runApply(apply, Buffer.alloc(DISK_BYTES));
    assert.equal((await core.machines.view('vm')).disks[0]!.path, moved);

    // The source agent restarting with its old configuration does not move the disk back silently.
    const agentToken = await core.context.db.selectFrom('agents').select('token_id').where('id', '=', sourceAgent).executeTakeFirstOrThrow();
    const record = (await core.reprotections.view((await core.machines.get('vm')).id))!;
    assert.equal(record.targets[0]!.path, moved);
    await core.machines.registerAgent({ tokenId: agentToken.token_id, role: 'agent' }, { agentName: 'source-agent', machines: [{ name: 'vm', disks: [{ path: path.join(parent, 'source', 'vm.img'), sizeBytes: DISK_BYTES, error: null }] }] });
    const view = await core.machines.view('vm');
    assert.equal(view.disks[0]!.path, moved);
    assert.match(view.replication.error?.message ?? '', /a reprotect moved it to .*vm-new\.img: restart the agent/);
  });

  test('a source disk cannot be written over a failed-over one', async (t) => {
    const { core, failedOverDisk } = await committedFailover(t);
    await assert.rejects(core.reprotections.request('vm', { agent: 'dr-agent', diskPaths: [{ position: 0, path: failedOverDisk }] }), ferryError('invalid-request', ['is a failed-over disk']));
    assert.equal((await core.machines.view('vm')).state, 'committed', 'nothing changed');
  });

  test('a failback whose write fails rolls back to protected in reverse, and says to restart the workload', async (t) => {
    const { core, sourceAgent, recoveryAgent, original, runCycle, handedTo, runApply } = await committedFailover(t);
    await core.reprotections.request('vm', { agent: 'dr-agent' });
    await runCycle(recoveryAgent, (await handedTo(recoveryAgent)).id, original);
    await core.reprotections.advance();
    await runApply(await handedTo(sourceAgent), original);
    await core.machines.update('vm', { recoveryShutdownCommand: 'true' });
    const failback = await core.failovers.request('vm', 'failback', 'latest');
    await runCycle(recoveryAgent, (await handedTo(recoveryAgent)).id, original, 'app');
    await core.failovers.advance();
    const write = await handedTo(sourceAgent);
    await core.replication.start(sourceAgent, write.id);
    await assert.rejects(
      core.points.commit(sourceAgent, { jobId: write.id, takenAt: Date.now(), consistency: 'crash', note: null, disks: [] }),
      ferryError('invalid-request', ['apply-point job: only a replication job commits a point']),
    );
    await core.replication.fail(sourceAgent, write.id, { code: 'io-error', message: 'disk full', retryable: true });
    await core.failovers.advance();
    const view = await core.machines.view('vm');
    assert.equal(view.state, 'protected');
    assert.equal(view.direction, 'reverse');
    assert.equal(view.replication.error, null, 'a failed write home is not a replication error');
    const operation = await core.jobs.view(failback.job.id);
    assert.equal(operation.state, 'failed');
    assert.match(operation.error?.message ?? '', /disk full.*start it there again/);
  });

  test('a failed step rolls back to committed in the old direction; reprotect can run again', async (t) => {
    const { core, sourceAgent, recoveryAgent, original, runCycle, handedTo } = await committedFailover(t);
    await core.reprotections.request('vm', { agent: 'dr-agent' });
    await runCycle(recoveryAgent, (await handedTo(recoveryAgent)).id, original);
    await core.reprotections.advance();
    const apply = await handedTo(sourceAgent);
    await core.replication.start(sourceAgent, apply.id);
    await core.replication.fail(sourceAgent, apply.id, { code: 'io-error', message: 'disk full', retryable: true });
    await core.reprotections.advance();
    const view = await core.machines.view('vm');
    assert.equal(view.state, 'committed');
    assert.equal(view.direction, 'forward');
    assert.equal(view.reprotect?.state, 'failed');
    assert.match(view.reprotect?.error ?? '', /writing the source site's disks failed \(disk full\)/);
    assert.equal((await core.jobs.view(view.reprotect!.jobId)).state, 'failed');
    const again = await core.reprotections.request('vm', { agent: 'dr-agent' });
    assert.equal(again.reprotect.state, 'replicating');
  });

  test('a restart between steps resumes the reprotect where it stopped', async (t) => {
    const { core, recoveryAgent, sourceAgent, original, runCycle, handedTo, restart } = await committedFailover(t);
    const started = await core.reprotections.request('vm', { agent: 'dr-agent' });
    await runCycle(recoveryAgent, (await handedTo(recoveryAgent)).id, original); // the first point, not yet advanced
    assert.equal((await core.machines.view('vm')).reprotect?.state, 'replicating');
    const restarted = await restart();
    const deadline = Date.now() + 10_000;
    while ((await restarted.machines.view('vm')).reprotect?.state !== 'applying' && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal((await restarted.machines.view('vm')).reprotect?.state, 'applying', 'the start-up pass queued the apply step');
    const [apply] = await restarted.replication.work(sourceAgent, 0, signal);
    assert.equal(apply?.kind, 'apply-point');
    assert.equal((await restarted.jobs.view(apply!.id)).parentId, started.job.id);
  });

  test('an apply job reads only its own point\'s chunks, and only while running', async (t) => {
    const { core, sourceAgent, recoveryAgent, original, runCycle, handedTo } = await committedFailover(t);
    await core.reprotections.request('vm', { agent: 'dr-agent' });
    await runCycle(recoveryAgent, (await handedTo(recoveryAgent)).id, original);
    await core.reprotections.advance();
    const apply = await handedTo(sourceAgent);
    const own = hashChunk(original.subarray(0, CHUNK)).toString('hex');
    await assert.rejects(core.replication.readChunks(sourceAgent, apply.id, [own]), ferryError('conflict', ['start it before reading']));
    await core.replication.start(sourceAgent, apply.id);
    await assert.rejects(core.replication.readChunks(sourceAgent, apply.id, ['ab'.repeat(32)]), ferryError('forbidden', ['not part of point']));
    await assert.rejects(core.replication.readChunks(recoveryAgent, apply.id, [own]), ferryError('forbidden'), 'another agent cannot read it');
    const [frame] = decodeChunkBatch(Buffer.concat(await core.replication.readChunks(sourceAgent, apply.id, [own])));
    assert.ok(frame && 'data' in frame && frame.data!.equals(original.subarray(0, CHUNK)));
  });

  test('refused transitions name the state and what it allows', async (t) => {
    const { core } = await committedFailover(t);
    const token = await core.tokens.create('agent');
    await core.machines.registerAgent(await core.tokens.authenticate(token.token), { agentName: 'other', machines: [{ name: 'bare', disks: [{ path: '/x', sizeBytes: 4096, error: null }] }] });
    await assert.rejects(core.failovers.request('bare', 'failback', 'latest'), ferryError('conflict', ["machine 'bare' is unprotected", 'cannot failback', 'allowed there: protect']));
    await assert.rejects(core.reprotections.request('bare'), ferryError('conflict', ["machine 'bare' is unprotected", 'cannot reprotect']));
    await assert.rejects(core.reprotections.request('vm'), ferryError('conflict', ["site agent ('ferry-site-agent') has not registered", '--agent']), 'without the server, name the agent');
    await assert.rejects(core.reprotections.request('vm', { agent: 'nobody' }), ferryError('not-found'));
    const squatter = await core.tokens.create('agent');
    await assert.rejects(
      core.machines.registerAgent(await core.tokens.authenticate(squatter.token), { agentName: 'ferry-site-agent', machines: [] }),
      ferryError('forbidden', ['reserved']),
      "no other agent can pose as the server's site agent",
    );
    await assert.rejects(core.failovers.request('vm', 'failback', 'latest'), ferryError('conflict', ["machine 'vm' is committed", 'cannot failback', 'allowed there: reprotect']));
    await core.reprotections.request('vm', { agent: 'dr-agent' });
    await assert.rejects(core.reprotections.request('vm', { agent: 'dr-agent' }), ferryError('conflict', ['is reprotecting', 'cannot reprotect']));
    await assert.rejects(core.failovers.commit('vm'), ferryError('conflict', ['is reprotecting', 'cannot commit']));
  });
});
