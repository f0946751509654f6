/**
 * SIGKILL in the middle of a replication cycle, of the agent and of the server: after a restart the
 * cycle completes, and every earlier point still restores byte-identical. The disk is large and
 * random enough that a cycle takes a few seconds, so the kill lands while chunks are being sent.
 *
 * The kills at the two most delicate instants of a commit cannot be hit from outside, so there the
 * server kills itself at a fault point (FERRY_FAULT, src/util/fault-injection.ts).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import SqliteDatabase from 'better-sqlite3';
import { writeFilesInImage } from '../../src/demo/ext4-image.js';
import type { JobView } from '../../src/protocol/views.js';
import type { FaultPoint } from '../../src/util/fault-injection.js';
import {
  connectAgent,
  defer,
  ext4Disk,
  ferry,
  ferryJson,
  freePort,
  startAgent,
  startServer,
  tempDir,
  type TestServer,
  waitFor,
  waitForJob,
  restoresIdentical,
} from './harness.js';

const DISK_BYTES = 192 * 1024 * 1024;

/** Fills a raw disk with random data in 8 MiB pieces, leaving every fourth piece zero. */
async function randomDisk(file: string): Promise<void> {
  const handle = await fs.open(file, 'w');
  await handle.truncate(DISK_BYTES);
  for (let offset = 0; offset < DISK_BYTES; offset += 8 * 1024 * 1024) {
    if ((offset / (8 * 1024 * 1024)) % 4 !== 3) await handle.write(randomBytes(8 * 1024 * 1024), 0, 8 * 1024 * 1024, offset);
  }
  await handle.close();
}

/** Overwrites `count` random 4 KiB blocks. */
async function scribble(file: string, count: number): Promise<void> {
  const handle = await fs.open(file, 'r+');
  for (let n = 0; n < count; n++) {
    const block = Math.floor(Math.random() * (DISK_BYTES / 4096));
    await handle.write(randomBytes(4096), 0, 4096, block * 4096);
  }
  await handle.close();
}

/** Waits until the job has sent part (but not all) of the disk. */
async function waitUntilMidway(server: TestServer, jobId: string): Promise<void> {
  await waitFor(async () => {
    const job = await server.admin.get<JobView>(`/jobs/${jobId}`);
    if (job.state !== 'running' && job.state !== 'queued') throw new Error(`job ended before the kill: ${job.state}`);
    return job.progress.doneBytes > DISK_BYTES * 0.1;
  }, 'replication to be under way', 60_000);
}

test('SIGKILL of the agent, then of the server, mid-cycle: cycles complete, earlier points intact', async (t) => {
  const root = await tempDir(t);
  const disk = path.join(root, 'vm.raw');
  await randomDisk(disk);
  const port = await freePort();
  let server = await startServer(t, path.join(root, 'server'), { port });
  const { agent, token, agentDir } = await connectAgent(t, server, root, { vm: [disk] });
  await ferryJson(server, ['site', 'add', 'dr', '--path', path.join(root, 'site')]);

  // 1. Agent killed during initial replication.
  const protect = await ferryJson(server, ['protect', 'vm', '--site', 'dr']);
  await waitUntilMidway(server, protect.job.id);
  await agent.kill('SIGKILL');
  assert.equal((await server.admin.get<JobView>(`/jobs/${protect.job.id}`)).state, 'running', 'the job waits for its agent');
  startAgent(t, { url: server.url, token, dataDir: agentDir, machines: { vm: [disk] } });
  const initial = await waitForJob(server.admin, protect.job.id);
  assert.equal(initial.state, 'succeeded', JSON.stringify(initial.error));
  const point1 = initial.result!.pointId as string;
  const snapshot1 = path.join(root, 'vm-point1.raw');
  await fs.copyFile(disk, snapshot1);

  // 2. Server killed during an incremental cycle, then restarted on the same address.
  await scribble(disk, 4000);
  const snapshot2 = path.join(root, 'vm-point2.raw');
  await fs.copyFile(disk, snapshot2);
  const { job } = await ferryJson(server, ['points', 'create', 'vm']);
  await waitUntilMidway(server, job.id);
  await server.kill('SIGKILL');
  server = await startServer(t, path.join(root, 'server'), { port });
  const incremental = await waitForJob(server.admin, job.id);
  assert.equal(incremental.state, 'succeeded', JSON.stringify(incremental.error));
  const point2 = incremental.result!.pointId as string;

  const points = (await ferryJson(server, ['points', 'list', 'vm'])).points.map((point: { id: string }) => point.id);
  assert.deepEqual(points, [point2, point1]);
  assert.ok(await restoresIdentical(server, 'vm', point1, [snapshot1]), 'point 1 restores byte-identical');
  assert.ok(await restoresIdentical(server, 'vm', point2, [snapshot2]), 'point 2 restores byte-identical');
  const status = await ferryJson(server, ['status', 'vm']);
  assert.equal(status.state, 'protected');
  assert.equal(status.health.level, 'healthy', status.health.reasons.join('; '));
});

/**
 * Opens a copy of a killed server's database the way the next start will find it: SQLite replays the
 * WAL's committed transactions and drops an unfinished one. A copy, so the server's own files are
 * left exactly as the kill left them for the restart. Closed when the test ends.
 */
async function databaseAsLeft(t: TestContext, dataDir: string, scratch: string): Promise<SqliteDatabase.Database> {
  await fs.mkdir(scratch, { recursive: true });
  for (const suffix of ['', '-wal']) {
    await fs.copyFile(path.join(dataDir, `ferry.db${suffix}`), path.join(scratch, `ferry.db${suffix}`)).catch((error: NodeJS.ErrnoException) => {
      if (error.code !== 'ENOENT') throw error; // no WAL: everything was checkpointed
    });
  }
  const db = new SqliteDatabase(path.join(scratch, 'ferry.db'));
  defer(t, () => db.close());
  return db;
}

test('SIGKILL of the server right after an index is stored and inside a point commit: no half point, earlier points intact, replication resumes', async (t) => {
  const root = await tempDir(t);
  const disk = await ext4Disk(root, 'app', 16, { 'data.bin': randomBytes(2 * 1024 * 1024), 'version.txt': 'v1\n' });
  const port = await freePort();
  const dataDir = path.join(root, 'server');
  let server = await startServer(t, dataDir, { port });
  await connectAgent(t, server, root, { app: [disk] });
  await ferryJson(server, ['site', 'add', 'dr', '--path', path.join(root, 'site')]);

  // What each point must restore to: a copy of the disk, taken while no cycle was reading it.
  const expected = new Map<string, string>();
  const remember = async (pointId: string) => {
    const copy = path.join(root, `expected-${expected.size + 1}.raw`);
    await fs.copyFile(disk, copy);
    expected.set(pointId, copy);
  };
  let version = 1;
  const changeDisk = async () => {
    version += 1;
    await writeFilesInImage(disk, [
      { fsPath: '/version.txt', data: `v${version}\n` },
      { fsPath: '/data.bin', data: randomBytes(2 * 1024 * 1024) },
    ]);
  };
  const pointsOfApp = async () => (await ferryJson(server, ['points', 'list', 'app'])).points.map((point: { id: string }) => point.id) as string[];

  // Two good points.
  const initial = await ferryJson(server, ['protect', 'app', '--site', 'dr', '--wait']);
  assert.equal(initial.job.state, 'succeeded', JSON.stringify(initial.job.error));
  await remember(initial.job.result.pointId);
  await changeDisk();
  const second = (await ferryJson(server, ['points', 'create', 'app', '--wait'])).job;
  assert.equal(second.state, 'succeeded', JSON.stringify(second.error));
  await remember(second.result.pointId);

  for (const fault of ['index-stored', 'commit-point'] satisfies FaultPoint[]) {
    const before = await pointsOfApp();
    await changeDisk();
    const contents = path.join(root, `during-${fault}.raw`);
    await fs.copyFile(disk, contents);

    // A server armed to kill itself at the fault point; the next cycle gets there.
    await server.kill('SIGTERM');
    server = await startServer(t, dataDir, { port, env: { FERRY_FAULT: fault } });
    const { job } = await ferryJson(server, ['points', 'create', 'app']);
    await waitFor(async () => server.process.exitCode !== null || server.process.signalCode !== null, `the server to die at ${fault}`);
    assert.equal(server.process.signalCode, 'SIGKILL', `the server died of SIGKILL (exit code ${server.process.exitCode})`);
    await waitFor(async () => (await fs.readFile(server.log, 'utf8')).includes(`FERRY_FAULT=${fault}: killing`), 'the fault point to be named in the log', 5_000);

    // What the restart will find: the job still running, no point for it, nothing half-written.
    const db = await databaseAsLeft(t, dataDir, path.join(root, `db-after-${fault}`));
    assert.equal((db.prepare('SELECT state FROM jobs WHERE id = ?').get(job.id) as { state: string }).state, 'running');
    assert.equal(db.prepare('SELECT count(*) AS n FROM points WHERE job_id = ?').pluck().get(job.id), 0, 'no point for the killed job');
    assert.equal(db.prepare('SELECT count(*) AS n FROM point_disks WHERE point_id NOT IN (SELECT id FROM points)').pluck().get(), 0, 'no orphan point disks');
    assert.equal(db.prepare('SELECT count(*) AS n FROM points').pluck().get(), before.length, 'the earlier points, no more');

    // Restarted without the fault: the agent, which kept retrying, completes the same cycle.
    server = await startServer(t, dataDir, { port });
    const finished = await waitForJob(server.admin, job.id);
    assert.equal(finished.state, 'succeeded', JSON.stringify(finished.error));
    const pointId = finished.result!.pointId as string;
    assert.deepEqual(await pointsOfApp(), [pointId, ...before], 'one new point, for the killed job');
    assert.ok(await restoresIdentical(server, 'app', pointId, [contents]), 'the completed point restores the disk as it was');
    expected.set(pointId, contents);
    for (const earlier of before) {
      assert.ok(await restoresIdentical(server, 'app', earlier, [expected.get(earlier)!]), `after ${fault}: earlier point ${earlier} restores byte-identical`);
    }
  }

  const verify = await ferry(server, ['store', 'verify', '--deep', '--json']);
  assert.equal(verify.code, 0, `deep verify is clean: ${verify.stdout} ${verify.stderr}`);
  const report = verify.json();
  assert.equal(report.checked.points, expected.size);
  assert.deepEqual(report.problems, []);

  // Replication goes on as before: a new cycle on the restarted server.
  await changeDisk();
  const after = (await ferryJson(server, ['points', 'create', 'app', '--wait'])).job;
  assert.equal(after.state, 'succeeded', JSON.stringify(after.error));
  assert.ok(await restoresIdentical(server, 'app', after.result.pointId, [disk]), 'the new point restores the disk\'s current contents');
  const status = await ferryJson(server, ['status', 'app']);
  assert.equal(status.health.level, 'healthy', status.health.reasons.join('; '));
  assert.equal(status.pointCount, expected.size + 1);
});
