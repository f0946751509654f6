/**
 * Resync, end to end: the agent's state directory is removed between cycles, so the next cycle
 * cannot lean on its memory of the last point. `ferry status` shows `resyncing` (with percent, ETA
 * and the reason) while that cycle runs, the job and a warning event record it, and its point
 * restores byte-identical. The cycle after it is incremental again; a disk that grew resyncs too.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { writeFilesInImage } from '../../src/demo/ext4-image.js';
import type { EventView, JobView, MachineView } from '../../src/protocol/views.js';
import { connectAgent, ext4Disk, ferry, ferryJson, restoresIdentical, startServer, tempDir, waitFor, waitForJob } from './harness.js';

test('agent state removed between cycles: the next cycle is a resync shown by ferry status, and its point restores identical', async (t) => {
  const root = await tempDir(t);
  const disk = await ext4Disk(root, 'app', 16, { 'data.bin': randomBytes(2 * 1024 * 1024), 'version.txt': 'v1\n' });
  const server = await startServer(t, path.join(root, 'server'));
  const { agentDir } = await connectAgent(t, server, root, { app: [disk] });
  await ferryJson(server, ['site', 'add', 'dr', '--path', path.join(root, 'site')]);
  let version = 1;
  const changeDisk = async () => {
    version += 1;
    await writeFilesInImage(disk, [
      { fsPath: '/version.txt', data: `v${version}\n` },
      { fsPath: '/data.bin', data: randomBytes(512 * 1024) },
    ]);
  };
  const takePoint = async (): Promise<JobView> => {
    const { job } = await ferryJson<{ job: JobView }>(server, ['points', 'create', 'app', '--wait']);
    assert.equal(job.state, 'succeeded', JSON.stringify(job.error));
    return job;
  };

  // Initial replication, then an incremental point: neither is a resync.
  const initial = await ferryJson<{ job: JobView }>(server, ['protect', 'app', '--site', 'dr', '--wait']);
  assert.equal(initial.job.state, 'succeeded', JSON.stringify(initial.job.error));
  assert.equal(initial.job.resyncReason, null, 'a first copy is an initial replication, not a resync');
  await changeDisk();
  assert.equal((await takePoint()).resyncReason, null, 'the agent remembered the last point');

  // The agent loses its state. A pre-point hook holds the next cycle until the test has looked at it.
  await fs.rm(path.join(agentDir, 'state'), { recursive: true });
  await changeDisk();
  const expected = path.join(root, 'expected-resync.raw');
  await fs.copyFile(disk, expected);
  const gate = path.join(root, 'gate');
  await ferryJson(server, ['machine', 'set', 'app', '--pre-point', `while [ ! -e '${gate}' ]; do sleep 0.1; done`]);
  const { job } = await ferryJson<{ job: JobView }>(server, ['points', 'create', 'app', '--consistency', 'app']);

  await waitFor(async () => (await ferryJson<MachineView>(server, ['status', 'app'])).replication.state === 'resyncing', 'ferry status to show resyncing');
  const resyncing = await ferryJson<MachineView>(server, ['status', 'app']); // the hook holds the cycle: still resyncing
  assert.equal(resyncing.replication.state, 'resyncing');
  assert.equal(resyncing.replication.jobId, job.id);
  assert.equal(typeof resyncing.replication.percent, 'number');
  assert.ok(resyncing.replication.etaSeconds === null || typeof resyncing.replication.etaSeconds === 'number');
  assert.equal(resyncing.replication.resyncReason, 'disk 0: the agent has no record of the last point (its data directory is new, or its state was removed)');
  assert.equal(resyncing.health.level, 'healthy', resyncing.health.reasons.join('; '));
  const table = await ferry(server, ['status']);
  assert.match(table.stdout, /^app\s+protected\s+healthy\s+resyncing \d+(\.\d)?%/m, table.stdout);
  const detail = await ferry(server, ['status', 'app']);
  assert.match(detail.stdout, /^replication:\s+resyncing \d+(\.\d)?%/m, detail.stdout);
  assert.match(detail.stdout, /^resync:\s+disk 0: the agent has no record of the last point/m, detail.stdout);

  await fs.writeFile(gate, '');
  const resynced = await waitForJob(server.admin, job.id);
  assert.equal(resynced.state, 'succeeded', JSON.stringify(resynced.error));
  assert.match(resynced.resyncReason ?? '', /no record of the last point/, 'the job keeps why it was a resync');
  assert.ok(await restoresIdentical(server, 'app', resynced.result!.pointId as string, [expected]), 'the resync point restores byte-identical');
  const after = await ferryJson<MachineView>(server, ['status', 'app']);
  assert.equal(after.replication.state, 'idle');
  assert.equal(after.replication.resyncReason, null);
  const { events } = await ferryJson<{ events: EventView[] }>(server, ['events', '--alerts', '--machine', 'app']);
  const started = events.filter((event) => event.code === 'resync-started');
  assert.equal(started.length, 1, JSON.stringify(events));
  assert.equal(started[0]!.severity, 'warning');
  assert.ok(started[0]!.message.includes(job.id), started[0]!.message);

  // The resync left the agent's memory in place again: the next cycle is incremental.
  await changeDisk();
  assert.equal((await takePoint()).resyncReason, null);

  // A disk that grew cannot be called unchanged: a resync naming both sizes, and still an exact point.
  await fs.truncate(disk, 20 * 1024 * 1024);
  const grown = await takePoint();
  assert.equal(grown.resyncReason, `disk 0: its size changed from ${16 * 1024 * 1024} to ${20 * 1024 * 1024} bytes`);
  assert.ok(await restoresIdentical(server, 'app', grown.result!.pointId as string, [disk]), 'the grown disk restores byte-identical');
});
