/**
 * Store maintenance through the real core (SQLite, chunk store on disk): what garbage collection keeps
 * while replication jobs are active, that it refuses to sweep on a partial mark, when it is due, and
 * that verify and stats see committed points. The agent's side is played by calling the same core
 * methods the agent routes call. Object ages are set on the pack files (utimes, then a catalog reload);
 * the clock is replaced only where a test needs hours to pass.
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
import { ageChunk, ferryError, flipChunkByte, makeTempDir } from './helpers.js';

const CHUNK = 65536;
const HOUR = 3600_000;

async function setUp(t: TestContext) {
  const dataDir = await makeTempDir('ferry-maintenance-');
  const core = await FerryCore.create({ dataDir, log: pino({ level: 'silent' }) });
  t.after(async () => {
    await core.stop();
    await fs.rm(dataDir, { recursive: true, force: true });
  });
  const principal = await core.tokens.authenticate((await core.tokens.create('agent')).token);
  const { agentId } = await core.machines.registerAgent(principal, {
    agentName: 'a1',
    machines: [{ name: 'vm', disks: [{ path: '/dev/null', sizeBytes: 4 * CHUNK, error: null }] }],
  });
  await core.sites.create({ name: 'dr', driver: 'files', path: path.join(dataDir, 'site') });
  const store = core.context.store;
  const fileOf = (key: string) => path.join(dataDir, 'store', ...key.split('/'));
  const newChunk = () => {
    const data = randomBytes(CHUNK);
    return { data, hash: hashChunk(data).toString('hex') };
  };
  /** A chunk already in the store, last written two hours ago and referenced by nothing. */
  const oldChunk = async () => {
    const chunk = newChunk();
    await store.putChunk(chunk.hash, chunk.data);
    await ageChunk(store, chunk.hash, Date.now() - 2 * HOUR); // its own pack: nothing else ages with it
    return chunk.hash;
  };
  /** The machine's active replication job, started as the agent starts it. */
  const startJob = async () => {
    const machine = await core.machines.get('vm');
    const job = machine.state === 'unprotected' ? (await core.replication.protect('vm', { site: 'dr', policy: 'default' })).job : await core.points.request('vm');
    await core.replication.start(agentId, job.id);
    return job;
  };
  /** Uploads the index of `hashes` and commits the job's point, as the agent routes do. */
  const commit = async (jobId: string, hashes: string[]) => {
    const index = DiskIndex.empty(4 * CHUNK, CHUNK);
    hashes.forEach((hash, position) => index.setHash(position, Buffer.from(hash, 'hex')));
    const indexHash = await core.storeGuard.putIndex(index);
    const disk = (await core.machines.disksOf((await core.machines.get('vm')).id))[0]!;
    return core.points.commit(agentId, { jobId, takenAt: core.context.now(), consistency: 'crash', note: null, disks: [{ diskId: disk.id, indexHash, changedBytes: 0, sentBytes: 0 }] });
  };
  return { core, store, fileOf, newChunk, oldChunk, startJob, commit };
}

describe('store garbage collection in the server', () => {
  test('while a job runs, even with no grace, what it uploaded or was told is present stays; old garbage goes', async (t) => {
    const { core, store, newChunk, oldChunk, startJob, commit } = await setUp(t);
    const garbage = await oldChunk();
    const known = await oldChunk(); // the job will be told this one is present
    const job = await startJob();
    const fresh = newChunk();
    assert.deepEqual(await core.storeGuard.missingChunks([known, fresh.hash]), [fresh.hash]);
    await core.storeGuard.putChunk(fresh.hash, fresh.data);

    const during = await core.storeMaintenance.collectGarbage({ graceSeconds: 0 });
    assert.equal(during.deleted.chunks, 1);
    assert.equal(await store.hasChunk(garbage), false);
    assert.equal(await store.hasChunk(known), true, 'a chunk the agent was told is present is kept');
    assert.equal(await store.hasChunk(fresh.hash), true, 'a chunk uploaded by the running job is kept');

    const point = await commit(job.id, [known, fresh.hash, known, fresh.hash]);
    const after = await core.storeMaintenance.collectGarbage({ graceSeconds: 0 });
    assert.deepEqual(after.deleted, { indexes: 0, chunks: 0, bytes: 0 });
    assert.deepEqual(after.marked, { indexes: 1, chunks: 2 });
    const report = await core.storeMaintenance.verify({ deep: true });
    assert.deepEqual(report.problems, [], `point ${point.id} must be intact`);
    const events = await core.events.list({ limit: 10 });
    assert.ok(events.some((event) => event.code === 'store-gc' && /deleted 1 chunk/.test(event.message)), 'the collection is recorded with its counts');
  });

  test('a job running for longer than the grace period holds the cutoff back to its creation', async (t) => {
    const { core, store, newChunk, startJob } = await setUp(t);
    let clock = Date.now();
    core.context.now = () => clock;
    const job = await startJob();
    const uploaded = newChunk();
    await core.storeGuard.putChunk(uploaded.hash, uploaded.data);
    clock += 3 * HOUR; // the job is still reading a large disk

    const result = await core.storeMaintenance.collectGarbage({});
    assert.equal(result.heldBackByJob, job.id);
    assert.equal(result.graceSeconds, 3600);
    assert.ok(Date.parse(result.cutoff) < Date.parse(job.createdAt), `cutoff ${result.cutoff} must be before the job (${job.createdAt})`);
    assert.equal(await store.hasChunk(uploaded.hash), true, 'uploaded three hours ago by a job still running: kept');
    assert.equal(result.keptRecent.chunks, 1);
  });

  test('a referenced index that cannot be read stops the collection: nothing deleted, an error event', async (t) => {
    const { core, store, newChunk, oldChunk, startJob, commit } = await setUp(t);
    const data = newChunk();
    await core.storeGuard.putChunk(data.hash, data.data);
    const point = await commit((await startJob()).id, [data.hash, data.hash, data.hash, data.hash]);
    await store.deleteObject(store.indexObjectKey(point.disks[0]!.indexHash));
    const garbage = await oldChunk();
    await assert.rejects(core.storeMaintenance.collectGarbage({ graceSeconds: 0 }), ferryError('corrupt-data', [point.disks[0]!.indexHash]));
    assert.equal(await store.hasChunk(garbage), true);
    assert.equal(await store.hasChunk(data.hash), true);
    const [event] = await core.events.list({ limit: 1 });
    assert.equal(event?.code, 'store-gc-failed');
    assert.equal(event?.severity, 'error');
  });

  test('only one collection runs at a time', async (t) => {
    const { core } = await setUp(t);
    const first = core.storeMaintenance.collectGarbage({});
    await assert.rejects(core.storeMaintenance.collectGarbage({}), (error: unknown) => {
      ferryError('conflict', ['already running'])(error);
      assert.equal((error as { retryable: boolean }).retryable, true);
      return true;
    });
    await first;
  });

  test('a collection is due with no earlier one, after points expired, and once a day; not otherwise', async (t) => {
    const { core } = await setUp(t);
    let clock = Date.now();
    core.context.now = () => clock;
    assert.ok(await core.storeMaintenance.collectIfDue(), 'never collected: due');
    assert.equal(await core.storeMaintenance.collectIfDue(), null);
    clock += HOUR;
    assert.equal(await core.storeMaintenance.collectIfDue(), null);
    await core.events.record({ severity: 'info', code: 'points-expired', message: 'vm: 1 point(s) past retention removed' });
    assert.ok(await core.storeMaintenance.collectIfDue(), 'points expired since the last collection: due');
    assert.equal(await core.storeMaintenance.collectIfDue(), null);
    clock += 24 * HOUR;
    assert.ok(await core.storeMaintenance.collectIfDue(), 'a day since the last collection: due');
  });
});

describe('store verify and stats in the server', () => {
  test('a flipped byte in a chunk of the first point is named with that point only; stats count both points', async (t) => {
    const { core, store, fileOf, newChunk, startJob, commit } = await setUp(t);
    const [a, b, c] = [newChunk(), newChunk(), newChunk()];
    for (const chunk of [a, b, c]) await core.storeGuard.putChunk(chunk.hash, chunk.data);
    const first = await commit((await startJob()).id, [a.hash, b.hash, a.hash, b.hash]);
    const second = await commit((await startJob()).id, [a.hash, c.hash, a.hash, c.hash]);

    await flipChunkByte(store, b.hash, -100);

    assert.deepEqual((await core.storeMaintenance.verify({ deep: false })).problems, [], 'a quick verify only checks presence');
    const report = await core.storeMaintenance.verify({ deep: true });
    assert.deepEqual(
      report.problems.map((problem) => ({ kind: problem.kind, chunk: problem.chunk, points: problem.points })),
      [{ kind: 'corrupt-chunk', chunk: b.hash, points: [{ machine: 'vm', pointId: first.id }] }],
    );
    assert.deepEqual(report.affectedPoints, [{ machine: 'vm', pointId: first.id }]);
    assert.equal(report.checked.points, 2);
    assert.notEqual(second.id, first.id);

    const stats = await core.storeMaintenance.stats();
    assert.equal(stats.points, 2);
    assert.equal(stats.logicalBytes, 2 * 4 * CHUNK);
    assert.equal(stats.uniqueChunks, 3);
    assert.equal(stats.dedupeRatio, 2.667); // (2 points x 4 chunks) / 3 unique, to three decimals
    assert.equal(stats.location, path.join(path.dirname(fileOf('x')), ''));
  });
});
