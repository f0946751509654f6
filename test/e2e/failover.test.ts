/**
 * Failover end to end, through the CLI with a real server and agent:
 * - unplanned failover to an older point, change of point, commit, and refused transitions;
 * - planned failover of a loop-mounted ext4 disk with a live writer (root; fails in CI without it):
 *   every record the writer acknowledged before its shutdown command stopped it is on the failed-over
 *   disk.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { makeExt4Image, readFileInImage, writeFilesInImage } from '../../src/demo/ext4-image.js';
import type { MachineView, PointView } from '../../src/protocol/views.js';
import { connectAgent, ext4Disk, ferry, ferryJson, startServer, tempDir } from './harness.js';
import { loopMount, requireRootTools, startWriter } from './root-tools.js';

test('unplanned failover to an older point, change of point, commit; refused transitions say why', async (t) => {
  const root = await tempDir(t);
  const disk = await ext4Disk(root, 'app', 16, { 'data.bin': randomBytes(1024 * 1024), 'version.txt': 'v1\n' });
  const server = await startServer(t, path.join(root, 'server'));
  await connectAgent(t, server, root, { app: [disk] });
  await ferryJson(server, ['site', 'add', 'dr', '--path', path.join(root, 'site')]);

  const refusedCommit = await ferry(server, ['commit', 'app', '--json']);
  assert.equal(refusedCommit.code, 4, 'conflict exits 4');
  assert.match(refusedCommit.json().error.message, /machine 'app' is unprotected; cannot commit \(allowed there: protect\)/);

  await ferryJson(server, ['protect', 'app', '--site', 'dr', '--wait']);
  const atFirst = path.join(root, 'at-first.img');
  await fs.copyFile(disk, atFirst);
  await writeFilesInImage(disk, [{ fsPath: '/version.txt', data: 'v2\n' }, { fsPath: '/data.bin', data: randomBytes(256 * 1024) }]);
  await ferryJson(server, ['points', 'create', 'app', '--wait']);
  const atSecond = path.join(root, 'at-second.img');
  await fs.copyFile(disk, atSecond);
  const [second, first] = (await ferryJson<{ points: PointView[] }>(server, ['points', 'list', 'app'])).points;

  const planned = await ferry(server, ['failover', 'app', '--planned', '--json']);
  assert.equal(planned.code, 2, 'planned failover without a shutdown command is refused');
  assert.match(planned.json().error.message, /ferry machine set app --shutdown/);

  const failedOver = await ferryJson(server, ['failover', 'app', '--unplanned', '--point', first!.id, '--wait']);
  assert.equal(failedOver.failover.pointId, first!.id);
  const status = await ferryJson<MachineView>(server, ['status', 'app']);
  assert.equal(status.state, 'failed-over');
  assert.deepEqual(await fs.readFile(status.failover!.disks[0]!.path), await fs.readFile(atFirst), 'the older point, byte for byte');
  assert.equal((await readFileInImage(status.failover!.disks[0]!.path, '/version.txt')).toString(), 'v1\n');

  const noPoints = await ferry(server, ['points', 'create', 'app', '--json']);
  assert.equal(noPoints.code, 4, 'no points while failed over');

  const changed = await ferryJson(server, ['failover', 'app', '--change-point', '--point', 'latest', '--wait']);
  assert.equal(changed.failover.pointId, second!.id);
  assert.deepEqual(await fs.readFile(changed.failover.disks[0].path), await fs.readFile(atSecond));

  const committed = await ferryJson(server, ['commit', 'app']);
  assert.equal(committed.job.state, 'succeeded');
  const again = await ferry(server, ['failover', 'app', '--change-point', '--point', first!.id, '--json']);
  assert.equal(again.code, 4);
  assert.match(again.json().error.message, /machine 'app' is committed; cannot change-point/);
  const human = await ferry(server, ['status', 'app']);
  assert.match(human.stdout, /failover: +unplanned, committed at /);
});

test('planned failover with a live writer on a mounted ext4 disk loses no acknowledged record', { timeout: 240_000 }, async (t) => {
  if (!(await requireRootTools(t, ['losetup', 'mount', 'fsfreeze', 'mke2fs', 'debugfs']))) return;
  const root = await tempDir(t);
  const empty = path.join(root, 'empty');
  await fs.mkdir(empty);
  const image = path.join(root, 'db.img');
  await makeExt4Image(image, 32 * 1024 * 1024, empty);
  const mount = path.join(root, 'mnt');
  const device = await loopMount(t, image, mount);

  const writer = startWriter(t, 'acked-writer.mjs', [path.join(mount, 'log')], 'pipe');
  let acknowledged = 0;
  let pending = '';
  writer.stdout!.on('data', (piece: Buffer) => {
    pending += piece.toString();
    const lines = pending.split('\n');
    pending = lines.pop()!;
    for (const line of lines) acknowledged = Number(line);
  });
  const writerExited = new Promise<void>((resolve) => writer.once('exit', () => resolve()));

  const server = await startServer(t, path.join(root, 'server'));
  await connectAgent(t, server, root, { db: [device] });
  await ferryJson(server, ['site', 'add', 'dr', '--path', path.join(root, 'site')]);
  await ferryJson(server, ['protect', 'db', '--site', 'dr', '--wait']);
  await ferryJson(server, ['points', 'create', 'db', '--wait']);
  // The shutdown command stops the workload the way a service manager would: signal, then wait for it to exit.
  const pid = writer.pid!;
  await ferryJson(server, ['machine', 'set', 'db', '--shutdown', `kill -TERM ${pid}; while kill -0 ${pid} 2>/dev/null; do sleep 0.05; done`]);
  assert.ok(acknowledged > 0, 'the writer is running');

  const result = await ferryJson(server, ['failover', 'db', '--planned', '--wait']);
  await writerExited;
  const lastAcknowledged = acknowledged;
  assert.ok(lastAcknowledged > 0);
  const [point] = (await ferryJson<{ points: PointView[] }>(server, ['points', 'list', 'db'])).points;
  assert.equal(result.failover.pointId, point!.id, 'failed over to the final point');
  assert.equal(point!.consistency, 'app', `the final point was taken with the workload stopped: ${point!.note}`);

  const log = (await readFileInImage(result.failover.disks[0].path, '/log')).toString();
  const records = log.split('\n').filter(Boolean);
  assert.ok(records.length >= lastAcknowledged, `every acknowledged record is on the failed-over disk: ${records.length} records, ${lastAcknowledged} acknowledged`);
  records.forEach((line, index) => assert.equal(line, `record ${index + 1}`));
  const status = await ferryJson<MachineView>(server, ['status', 'db']);
  assert.equal(status.state, 'failed-over');
  assert.equal(status.failover?.kind, 'planned');
});
