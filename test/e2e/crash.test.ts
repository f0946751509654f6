/**
 * SIGKILL in the middle of a replication cycle, of the agent and of the server: after a restart the
 * cycle completes, and every earlier point still restores byte-identical. The disk is large and
 * random enough that a cycle takes a few seconds, so the kill lands while chunks are being sent.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import type { JobView } from '../../src/protocol/views.js';
import { connectAgent, ferryJson, freePort, startAgent, startServer, tempDir, type TestServer, waitFor, waitForJob, restoresIdentical } from './harness.js';

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
