/**
 * The whole path on real ext4 images: protect, change files, take points, test failover to the newest
 * and to an older point, check each recovered disk with e2fsck and by its files, compare every restore
 * byte for byte with the source as it was when its point was taken, and clean up.
 */
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { checkExt4Image, readFileInImage, writeFilesInImage } from '../../src/demo/ext4-image.js';
import { connectAgent, ext4Disk, ferry, ferryJson, sameBytes, startServer, tempDir } from './harness.js';

test('protect, change, point, test failover to newest and older points, cleanup', async (t) => {
  const root = await tempDir(t);
  const server = await startServer(t, path.join(root, 'server'));
  const disk = await ext4Disk(root, 'web', 48, {
    'app/hello.txt': 'version 1\n',
    'etc/motd': 'welcome\n',
    'bin/tool': Buffer.alloc(3 * 1024 * 1024, 7),
  });
  // A second machine with two disks: a point covers all of a machine's disks.
  const dbSystem = await ext4Disk(root, 'db-system', 32, { 'etc/hostname': 'db\n' });
  const dbData = await ext4Disk(root, 'db-data', 24, { 'db/table.dat': 'row 1\n' });
  await connectAgent(t, server, root, { web: [disk], db: [dbSystem, dbData] });

  const sitePath = path.join(root, 'site');
  const site = await ferryJson(server, ['site', 'add', 'dr', '--path', sitePath]);
  assert.equal(site.path, sitePath);

  const protectedWeb = await ferryJson(server, ['protect', 'web', '--site', 'dr', '--wait']);
  assert.equal(protectedWeb.machine.state, 'protected');
  assert.equal(protectedWeb.job.kind, 'initial-replication');
  assert.equal(protectedWeb.job.state, 'succeeded');
  const snapshot1 = path.join(root, 'web-at-point1.img');
  await fs.copyFile(disk, snapshot1);
  const [point1] = (await ferryJson(server, ['points', 'list', 'web'])).points;
  assert.equal(point1.consistency, 'inconsistent', 'no hook and no snapshot: never labelled more than it is');

  await writeFilesInImage(disk, [
    { fsPath: '/app/hello.txt', data: 'version 2\n' },
    { fsPath: '/etc/motd', data: 'changed after point 1\n' },
  ]);
  const snapshot2 = path.join(root, 'web-at-point2.img');
  await fs.copyFile(disk, snapshot2);
  const created = await ferryJson(server, ['points', 'create', 'web', '--wait']);
  const point2 = created.point;
  assert.notEqual(point2.id, point1.id);
  assert.ok(point2.disks[0].changedBytes > 0 && point2.disks[0].changedBytes < 2 * 1024 * 1024, `only the changed chunks count: ${point2.disks[0].changedBytes}`);

  const listed = (await ferryJson(server, ['points', 'list', 'web'])).points;
  assert.deepEqual(listed.map((point: { id: string }) => point.id), [point2.id, point1.id], 'newest first');

  // Test failover to the newest point.
  const newest = await ferryJson(server, ['failover', 'web', '--test', '--wait']);
  assert.equal(newest.pointId, point2.id);
  const newestDisk = newest.disks[0].path as string;
  assert.ok(newestDisk.startsWith(sitePath));
  assert.equal((await checkExt4Image(newestDisk)).clean, true);
  assert.equal((await readFileInImage(newestDisk, '/app/hello.txt')).toString(), 'version 2\n');
  assert.ok(await sameBytes(newestDisk, snapshot2), 'restore of point 2 is byte-identical to the disk when point 2 was taken');

  // Replication goes on during a test failover.
  const duringTest = await ferryJson(server, ['points', 'create', 'web', '--wait']);
  assert.equal(duringTest.job.state, 'succeeded');
  const status = await ferryJson(server, ['status', 'web']);
  assert.equal(status.testFailover.state, 'ready');
  assert.equal(status.testFailover.disks[0].path, newestDisk);

  // A second test failover is refused until the first is cleaned up.
  const refused = await ferry(server, ['failover', 'web', '--test']);
  assert.equal(refused.code, 4);
  assert.match(refused.stderr, /already has a test failover/);

  const cleaned = await ferryJson(server, ['failover', 'cleanup', 'web']);
  assert.equal(cleaned.job.state, 'succeeded');
  await assert.rejects(fs.stat(newestDisk), 'cleanup removes the files');

  // Test failover to the older point.
  const older = await ferryJson(server, ['failover', 'web', '--test', '--point', point1.id, '--wait']);
  const olderDisk = older.disks[0].path as string;
  assert.equal((await checkExt4Image(olderDisk)).clean, true);
  assert.equal((await readFileInImage(olderDisk, '/app/hello.txt')).toString(), 'version 1\n');
  assert.equal((await readFileInImage(olderDisk, '/etc/motd')).toString(), 'welcome\n');
  assert.ok(await sameBytes(olderDisk, snapshot1), 'restore of point 1 is byte-identical to the disk when point 1 was taken');
  await ferryJson(server, ['failover', 'cleanup', 'web']);
  assert.deepEqual(await fs.readdir(sitePath), [], 'nothing left at the site');

  // Both disks of a two-disk machine come back, each identical to its source.
  await ferryJson(server, ['protect', 'db', '--site', 'dr', '--wait']);
  const db = await ferryJson(server, ['failover', 'db', '--test', '--wait']);
  assert.equal(db.disks.length, 2);
  assert.ok(await sameBytes(db.disks[0].path, dbSystem));
  assert.ok(await sameBytes(db.disks[1].path, dbData));
  assert.equal((await readFileInImage(db.disks[1].path, '/db/table.dat')).toString(), 'row 1\n');
  await ferryJson(server, ['failover', 'cleanup', 'db']);

  const all = (await ferryJson(server, ['status'])).machines;
  for (const machine of all) {
    assert.equal(machine.state, 'protected');
    assert.equal(machine.health.level, 'healthy', `${machine.name}: ${machine.health.reasons.join('; ')}`);
    assert.ok(machine.rpoSeconds !== null && machine.rpoSeconds < 120);
  }
  const jobs = (await ferryJson(server, ['jobs', '--machine', 'web'])).jobs;
  assert.ok(jobs.every((job: { state: string }) => job.state === 'succeeded'));
});

test('hooks make points app-consistent; a failing pre-point hook labels the point inconsistent', async (t) => {
  const root = await tempDir(t);
  const server = await startServer(t, path.join(root, 'server'));
  const disk = await ext4Disk(root, 'app', 16, { 'data.txt': 'x\n' });
  await connectAgent(t, server, root, { app: [disk] });
  await ferryJson(server, ['site', 'add', 'dr', '--path', path.join(root, 'site')]);
  const marker = path.join(root, 'quiesced');
  const log = path.join(root, 'hook.log');
  await ferryJson(server, [
    'machine', 'set', 'app',
    '--pre-point', `touch '${marker}' && echo "pre $FERRY_MACHINE" >> '${log}'`,
    '--post-point', `rm '${marker}' && echo post >> '${log}'`,
    '--hook-timeout', '10s',
  ]);
  await ferryJson(server, ['protect', 'app', '--site', 'dr', '--wait']);
  const [first] = (await ferryJson(server, ['points', 'list', 'app'])).points;
  assert.equal(first.consistency, 'app');
  assert.equal(await fs.readFile(log, 'utf8'), 'pre app\npost\n', 'pre ran before post, once each');
  await assert.rejects(fs.stat(marker), 'the post-point hook ran');

  await ferryJson(server, ['machine', 'set', 'app', '--pre-point', 'echo cannot quiesce >&2; exit 7']);
  const failedHook = await ferryJson(server, ['points', 'create', 'app', '--wait']);
  assert.equal(failedHook.point.consistency, 'inconsistent');
  assert.match(failedHook.point.note, /pre-point hook exited with code 7: cannot quiesce/);

  await ferryJson(server, ['machine', 'set', 'app', '--pre-point', 'sleep 30', '--hook-timeout', '1s']);
  const started = Date.now();
  const timedOut = await ferryJson(server, ['points', 'create', 'app', '--wait']);
  assert.equal(timedOut.point.consistency, 'inconsistent');
  assert.match(timedOut.point.note, /timed out after 1s/);
  assert.ok(Date.now() - started < 15_000, 'a hung hook is killed at its timeout');
});

test('only chunks the server lacks are sent: unchanged cycles and identical disks send nothing', async (t) => {
  const root = await tempDir(t);
  const server = await startServer(t, path.join(root, 'server'));
  const original = await ext4Disk(root, 'one', 24, { 'data/file.bin': Buffer.alloc(4 * 1024 * 1024, 5), 'data/note.txt': 'same\n' });
  const twin = path.join(root, 'two.img');
  await fs.copyFile(original, twin);
  await connectAgent(t, server, root, { one: [original], two: [twin] });
  await ferryJson(server, ['site', 'add', 'dr', '--path', path.join(root, 'site')]);

  await ferryJson(server, ['protect', 'one', '--site', 'dr', '--wait']);
  const [first] = (await ferryJson(server, ['points', 'list', 'one'])).points;
  const used = first.disks[0].changedBytes;
  assert.ok(used > 0 && used < 8 * 1024 * 1024, `the first point sends the used part of the disk, not its 24 MiB: ${used}`);
  assert.ok(first.disks[0].sentBytes <= used, 'duplicate chunks within the disk are sent once');

  const again = (await ferryJson(server, ['points', 'create', 'one', '--wait'])).point;
  assert.equal(again.disks[0].changedBytes, 0, 'nothing changed');
  assert.equal(again.disks[0].sentBytes, 0, 'so nothing is sent');
  // The file has been quiet for a while now: the next cycle does not even read it.
  await new Promise((resolve) => setTimeout(resolve, 2100));
  await ferryJson(server, ['points', 'create', 'one', '--wait']);
  const notRead = (await ferryJson(server, ['points', 'create', 'one', '--wait'])).point;
  assert.match(notRead.note ?? '', /disk 0 unchanged since the last point \(file-ctime\): not read/);
  await writeFilesInImage(original, [{ fsPath: '/data/note.txt', data: 'changed\n' }]);
  const afterWrite = (await ferryJson(server, ['points', 'create', 'one', '--wait'])).point;
  assert.doesNotMatch(afterWrite.note ?? '', /not read/, 'a written file is read again');
  assert.ok(afterWrite.disks[0].changedBytes > 0);
  const restoredOne = await ferryJson(server, ['failover', 'one', '--test', '--wait']);
  assert.ok(await sameBytes(restoredOne.disks[0].path, original), 'the latest point is the file as written');
  await ferryJson(server, ['failover', 'cleanup', 'one']);

  await ferryJson(server, ['protect', 'two', '--site', 'dr', '--wait']);
  const [twinPoint] = (await ferryJson(server, ['points', 'list', 'two'])).points;
  assert.ok(twinPoint.disks[0].changedBytes > 0, 'a new machine has data');
  assert.equal(twinPoint.disks[0].sentBytes, 0, 'but the server already holds every chunk of it');
  const restored = await ferryJson(server, ['failover', 'two', '--test', '--wait']);
  assert.ok(await sameBytes(restored.disks[0].path, twin));
});
