/**
 * Migration end to end, through the CLI with real agents: test migration and its cleanup; migrate (the
 * agent stops the workload, a final point is taken, the disks are written at the target site); complete
 * (points deleted, their space reclaimed, measured with `ferry store stats`); then an agent at the target
 * site adopts the machine and protects it to a third site: region to region.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import type { MachineView, PointView } from '../../src/protocol/views.js';
import { connectAgent, ext4Disk, ferry, ferryJson, restoresIdentical, startServer, tempDir, waitFor } from './harness.js';

test('test migration, migrate, complete (space reclaimed), then protection from the new site to a third', async (t) => {
  const root = await tempDir(t);
  const disk = await ext4Disk(root, 'app', 24, { 'data.bin': randomBytes(6 * 1024 * 1024), 'notes.txt': 'before the move\n' });
  const server = await startServer(t, path.join(root, 'server'));
  await connectAgent(t, server, root, { app: [disk] });
  await ferryJson(server, ['site', 'add', 'target', '--path', path.join(root, 'target')]);
  await ferryJson(server, ['protect', 'app', '--site', 'target', '--wait']);
  await ferryJson(server, ['points', 'create', 'app', '--wait']);

  const trial = await ferryJson(server, ['migrate', 'app', '--test', '--wait']);
  assert.deepEqual(await fs.readFile(trial.disks[0].path), await fs.readFile(disk), 'the test migration is the disk');
  await ferryJson(server, ['migrate', 'cleanup', 'app']);
  assert.equal((await ferryJson<MachineView>(server, ['status', 'app'])).testFailover, null);

  const noShutdown = await ferry(server, ['migrate', 'app', '--json']);
  assert.equal(noShutdown.code, 2, 'migration stops the workload first: it needs a shutdown command');
  await ferryJson(server, ['machine', 'set', 'app', '--shutdown', 'true']);
  const migrated = await ferryJson(server, ['migrate', 'app', '--wait']);
  const status = await ferryJson<MachineView>(server, ['status', 'app']);
  assert.equal(status.state, 'migrated');
  assert.equal(status.failover?.kind, 'migration');
  const migratedDisk = migrated.failover.disks[0].path as string;
  assert.ok(migratedDisk.startsWith(path.join(root, 'target', 'app', 'failover')));
  assert.deepEqual(await fs.readFile(migratedDisk), await fs.readFile(disk), 'the migrated disk is the source at its final point');
  const refusedFailback = await ferry(server, ['commit', 'app', '--json']);
  assert.equal(refusedFailback.code, 4, 'a migration is not a failover: nothing to commit');

  await new Promise((resolve) => setTimeout(resolve, 6000)); // past every collection's 5 s margin for timestamps
  const before = await ferryJson(server, ['store', 'stats']);
  assert.ok(before.points >= 3 && before.stored.chunkBytes > 5 * 1024 * 1024, JSON.stringify(before.stored));
  const completed = await ferryJson(server, ['migrate', 'complete', 'app']);
  assert.equal(completed.job.state, 'succeeded');
  assert.ok(completed.job.result.deletedPoints >= 3);
  const after = await ferryJson(server, ['store', 'stats']);
  assert.equal(after.points, 0, 'its points are deleted');
  assert.ok(after.stored.chunkBytes < before.stored.chunkBytes / 10, `space reclaimed: ${before.stored.chunkBytes} -> ${after.stored.chunkBytes} bytes`);
  assert.ok(completed.job.result.reclaimedBytes > 5 * 1024 * 1024, `reported: ${completed.job.result.reclaimedBytes} bytes reclaimed`);
  t.diagnostic(`store chunk bytes ${before.stored.chunkBytes} -> ${after.stored.chunkBytes}; reclaimed ${completed.job.result.reclaimedBytes}`);
  assert.equal((await ferryJson<MachineView>(server, ['status', 'app'])).state, 'migration-completed');
  assert.equal((await ferry(server, ['points', 'create', 'app', '--json'])).code, 4, 'no replication after completion');

  // Region to region: an agent at the target site adopts the machine, which is protected to a third site.
  const targetRoot = path.join(root, 'at-target');
  await fs.mkdir(targetRoot);
  await connectAgent(t, server, targetRoot, { app: [migratedDisk] }, ['--name', 'target-agent']);
  await waitFor(async () => (await ferryJson<MachineView>(server, ['status', 'app'])).agent.name === 'target-agent', 'the target agent to adopt the machine');
  const adopted = await ferryJson<MachineView>(server, ['status', 'app']);
  assert.equal(adopted.state, 'unprotected');
  assert.equal(adopted.agent.name, 'target-agent');
  assert.equal(adopted.disks[0]!.path, migratedDisk);
  await ferryJson(server, ['site', 'add', 'third', '--path', path.join(root, 'third')]);
  await ferryJson(server, ['protect', 'app', '--site', 'third', '--wait']);
  const [point] = (await ferryJson<{ points: PointView[] }>(server, ['points', 'list', 'app'])).points;
  assert.ok(await restoresIdentical(server, 'app', point!.id, [migratedDisk]), 'protected from its new site');
});
