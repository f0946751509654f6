/**
 * Reprotect and failback end to end, through the CLI with a real server (and its site agent, which reads
 * the failed-over disks at the recovery site) and a real agent at the source site, on a real ext4 image:
 * fail over, commit, change a file at the recovery site, reprotect (about that change is sent, and the
 * source disk is made equal to the recovered one), fail back (the recovery site's workload stopped by its
 * shutdown command), commit, reprotect to the original direction; the source disk equals the recovered
 * one byte for byte at every step, and the refused transitions say why.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { readFileInImage, writeFilesInImage } from '../../src/demo/ext4-image.js';
import type { MachineView, PointView } from '../../src/protocol/views.js';
import { connectAgent, ext4Disk, ferry, ferryJson, startServer, tempDir } from './harness.js';

const MiB = 1024 * 1024;

test('failover, reprotect (only the change is sent), failback, reprotect back: nothing lost, disks equal', { timeout: 240_000 }, async (t) => {
  const root = await tempDir(t);
  const disk = await ext4Disk(root, 'app', 32, { 'data.bin': randomBytes(8 * MiB), 'version.txt': 'v1 at the source site\n' });
  const server = await startServer(t, path.join(root, 'server'));
  await connectAgent(t, server, root, { app: [disk] });
  await ferryJson(server, ['site', 'add', 'dr', '--path', path.join(root, 'site')]);

  const unprotected = await ferry(server, ['failback', 'app', '--json']);
  assert.equal(unprotected.code, 4);
  assert.match(unprotected.json().error.message, /machine 'app' is unprotected; cannot failback \(allowed there: protect\)/);
  await ferryJson(server, ['protect', 'app', '--site', 'dr', '--wait']);
  const forwardOnly = await ferry(server, ['failback', 'app', '--json']);
  assert.equal(forwardOnly.code, 4);
  assert.match(forwardOnly.json().error.message, /replicates forward.*nothing to fail back/);

  // Disaster: fail over to the latest point and commit. The machine now runs at the recovery site.
  const failedOver = await ferryJson(server, ['failover', 'app', '--unplanned', '--wait']);
  const recoveredDisk = failedOver.failover.disks[0].path as string;
  const tooEarly = await ferry(server, ['reprotect', 'app', '--json']);
  assert.equal(tooEarly.code, 4);
  assert.match(tooEarly.json().error.message, /machine 'app' is failed-over; cannot reprotect \(allowed there: change-point, commit\)/);
  await ferryJson(server, ['commit', 'app']);

  // Work happens at the recovery site (about 1 MiB), while the source disk also took a stray write.
  await writeFilesInImage(recoveredDisk, [{ fsPath: '/version.txt', data: 'v2 written at the recovery site\n' }, { fsPath: '/dr.bin', data: randomBytes(MiB) }]);
  await writeFilesInImage(disk, [{ fsPath: '/stray.txt', data: 'written at the source after the failover\n' }]);

  const reprotected = await ferryJson(server, ['reprotect', 'app', '--wait']);
  assert.equal(reprotected.job.state, 'succeeded');
  const reverse = await ferryJson<MachineView>(server, ['status', 'app']);
  assert.equal(reverse.state, 'protected');
  assert.equal(reverse.direction, 'reverse');
  assert.equal(reverse.recoveryAgent?.name, 'ferry-site-agent', "the server's site agent reads the recovered disk");
  const sent = reverse.reprotect!.result!;
  t.diagnostic(`reprotect: first reverse point sent ${sent.pointSentBytes} bytes, source disk took ${sent.appliedChangedBytes} (${sent.appliedReceivedBytes} sent)`);
  assert.ok(sent.pointSentBytes > 0 && sent.pointSentBytes < 3 * MiB, `about the change was sent, not the 32 MiB disk: ${sent.pointSentBytes}`);
  assert.ok(sent.appliedReceivedBytes! > 0 && sent.appliedReceivedBytes! < 3 * MiB, `only chunks that differ went to the source disk: ${sent.appliedReceivedBytes}`);
  assert.deepEqual(await fs.readFile(disk), await fs.readFile(recoveredDisk), 'the source disk equals the recovered one');

  // Failback: the site agent stops the workload at the recovery site, takes a final point, which is written home.
  const noShutdown = await ferry(server, ['failback', 'app', '--json']);
  assert.equal(noShutdown.code, 2);
  assert.match(noShutdown.json().error.message, /--recovery-shutdown/);
  const marker = path.join(root, 'recovery-workload-stopped');
  await ferryJson(server, ['machine', 'set', 'app', '--recovery-shutdown', `touch ${marker}`]);
  await writeFilesInImage(recoveredDisk, [{ fsPath: '/version.txt', data: 'v3 last write at the recovery site\n' }]);
  const wrongWay = await ferry(server, ['failover', 'app', '--unplanned', '--json']);
  assert.equal(wrongWay.code, 4);
  assert.match(wrongWay.json().error.message, /replicates in reverse.*ferry failback app/);
  const failedBack = await ferryJson(server, ['failback', 'app', '--wait']);
  await fs.access(marker); // the recovery shutdown command ran
  assert.equal(failedBack.job.kind, 'failback');
  assert.ok(failedBack.job.result.receivedBytes < MiB, `failback sent only what changed since the reprotect: ${failedBack.job.result.receivedBytes}`);
  assert.equal((await readFileInImage(disk, '/version.txt')).toString(), 'v3 last write at the recovery site\n', 'the last write made it home');
  assert.deepEqual(await fs.readFile(disk), await fs.readFile(recoveredDisk), 'the whole round trip loses nothing');
  const [finalPoint] = (await ferryJson<{ points: PointView[] }>(server, ['points', 'list', 'app'])).points;
  assert.equal(failedBack.failover.pointId, finalPoint!.id);
  assert.equal(finalPoint!.consistency, 'app', 'the final point was taken with the workload stopped');
  assert.equal((await ferryJson<MachineView>(server, ['status', 'app'])).state, 'failed-back');
  await ferryJson(server, ['commit', 'app']);

  // Reprotect again restores the original direction: the source agent reads its disk; the store has it all.
  const home = await ferryJson(server, ['reprotect', 'app', '--wait']);
  assert.equal(home.reprotect.direction, 'forward');
  const forward = await ferryJson<MachineView>(server, ['status', 'app']);
  assert.equal(forward.state, 'protected');
  assert.equal(forward.direction, 'forward');
  assert.equal(forward.failover, null);
  assert.ok(forward.reprotect!.result!.pointSentBytes < 256 * 1024, `the first forward point sent almost nothing: ${forward.reprotect!.result!.pointSentBytes}`);
  await assert.rejects(fs.stat(recoveredDisk), { code: 'ENOENT' }, 'the stale recovered disk is removed');
  await writeFilesInImage(disk, [{ fsPath: '/version.txt', data: 'v4 back home\n' }]);
  const point = await ferryJson(server, ['points', 'create', 'app', '--wait']);
  assert.equal(point.job.state, 'succeeded', 'forward replication goes on');
  const human = await ferry(server, ['status', 'app']);
  assert.match(human.stdout, /direction: +forward/);
  assert.match(human.stdout, /reprotect: +forward, done/);
});
