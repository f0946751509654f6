/**
 * Crash-consistent points from snapshots, with a live writer (root only: loop devices, mount,
 * fsfreeze). With CI=true a missing privilege or tool fails the test; elsewhere it is skipped.
 *
 * - fsfreeze: a machine with two loop-mounted ext4 disks and a writer appending numbered, fsynced
 *   records to a log on each in turn. Every point is `crash`, every restored disk passes e2fsck, and
 *   the two logs are at one instant: disk A holds as many records as disk B, or one more.
 * - reflink: an image file on a loop-mounted xfs, rewritten in generations. A point is `crash` and its
 *   restore shows at most one generation boundary; the snapshot clone is removed afterwards.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { promisify } from 'node:util';
import { checkExt4Image, makeExt4Image, readFileInImage } from '../../src/demo/ext4-image.js';
import { connectAgent, ferryJson, startServer, tempDir } from './harness.js';
import { loopMount, requireRootTools, startWriter } from './root-tools.js';

const run = promisify(execFile);

function recordCount(log: string): number {
  const lines = log.split('\n');
  assert.equal(lines.pop(), '', 'the log ends with a whole record');
  lines.forEach((line, index) => assert.equal(line, `record ${index + 1}`, 'records are whole and in order'));
  return lines.length;
}

test('fsfreeze: two mounted disks with a live writer give crash-consistent points at one instant', { timeout: 240_000 }, async (t) => {
  if (!(await requireRootTools(t, ['losetup', 'mount', 'fsfreeze', 'mke2fs', 'e2fsck', 'debugfs']))) return;
  const root = await tempDir(t);
  const empty = path.join(root, 'empty');
  await fs.mkdir(empty);
  const images = [path.join(root, 'a.img'), path.join(root, 'b.img')];
  const mounts = [path.join(root, 'mnt-a'), path.join(root, 'mnt-b')];
  const devices: string[] = [];
  for (const [position, image] of images.entries()) {
    await makeExt4Image(image, 32 * 1024 * 1024, empty);
    devices.push(await loopMount(t, image, mounts[position]!));
  }
  startWriter(t, 'record-writer.mjs', mounts.map((mount) => path.join(mount, 'log')));

  const server = await startServer(t, path.join(root, 'server'));
  await connectAgent(t, server, root, { db: devices });
  await ferryJson(server, ['site', 'add', 'dr', '--path', path.join(root, 'site')]);
  await ferryJson(server, ['protect', 'db', '--site', 'dr', '--wait']);
  for (let n = 0; n < 2; n++) await ferryJson(server, ['points', 'create', 'db', '--wait']);

  const points = (await ferryJson(server, ['points', 'list', 'db'])).points;
  assert.equal(points.length, 3);
  let previousA = 0;
  for (const point of [...points].reverse()) {
    assert.equal(point.consistency, 'crash', `${point.id}: ${point.note}`);
    const failover = await ferryJson(server, ['failover', 'db', '--test', '--point', point.id, '--wait']);
    const [diskA, diskB] = failover.disks.map((disk: { path: string }) => disk.path);
    for (const disk of [diskA, diskB]) {
      const check = await checkExt4Image(disk);
      assert.ok(check.clean, `a frozen file system restores clean: ${check.output}`);
    }
    const a = recordCount((await readFileInImage(diskA, '/log')).toString());
    const b = recordCount((await readFileInImage(diskB, '/log')).toString());
    assert.ok(a === b || a === b + 1, `both disks at one instant: A has ${a} records, B has ${b}`);
    assert.ok(a > previousA, 'the writer went on between points');
    previousA = a;
    await ferryJson(server, ['failover', 'cleanup', 'db']);
  }
});

test('reflink: an image file on xfs rewritten live gives a crash-consistent point', { timeout: 240_000 }, async (t) => {
  if (!(await requireRootTools(t, ['losetup', 'mount', 'mkfs.xfs']))) return;
  const root = await tempDir(t);
  const xfsImage = path.join(root, 'xfs.img');
  const handle = await fs.open(xfsImage, 'w');
  await handle.truncate(512 * 1024 * 1024);
  await handle.close();
  await run('mkfs.xfs', ['-q', '-m', 'reflink=1', xfsImage]);
  const mount = path.join(root, 'xfs');
  await loopMount(t, xfsImage, mount);
  const disk = path.join(mount, 'vm.raw');
  const diskHandle = await fs.open(disk, 'w');
  await diskHandle.truncate(32 * 1024 * 1024);
  await diskHandle.close();
  startWriter(t, 'generation-writer.mjs', [disk]);

  const server = await startServer(t, path.join(root, 'server'));
  await connectAgent(t, server, root, { vm: [disk] });
  await ferryJson(server, ['site', 'add', 'dr', '--path', path.join(root, 'site')]);
  await ferryJson(server, ['protect', 'vm', '--site', 'dr', '--wait']);
  const created = await ferryJson(server, ['points', 'create', 'vm', '--wait']);
  assert.equal(created.point.consistency, 'crash', created.point.note);

  const failover = await ferryJson(server, ['failover', 'vm', '--test', '--wait']);
  const restored = await fs.readFile(failover.disks[0].path);
  const generations: number[] = [];
  for (let offset = 0; offset < restored.length; offset += 4096) generations.push(restored.readUInt32LE(offset));
  const boundaries = generations.filter((generation, index) => index > 0 && generation !== generations[index - 1]!).length;
  assert.ok(boundaries <= 1, `one instant shows at most one generation boundary, found ${boundaries}`);
  if (boundaries === 1) {
    const drop = generations.findIndex((generation, index) => index > 0 && generation !== generations[index - 1]!);
    assert.equal(generations[drop - 1], generations[drop]! + 1, 'the newer generation is a prefix');
  }
  assert.ok(generations[0]! > 0, 'the writer had written before the point');
  const leftovers = (await fs.readdir(mount)).filter((name) => name.startsWith('.ferry-snapshot-'));
  assert.deepEqual(leftovers, [], 'the clone is removed after the read');
});
