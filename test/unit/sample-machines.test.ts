/** The demo's sample machines: real, deterministic ext4 disks that e2fsck accepts. */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { checkExt4Image, readFileInImage } from '../../src/demo/ext4-image.js';
import { buildSampleMachines, generateFileTree } from '../../src/demo/sample-machines.js';

async function treeDigest(root: string): Promise<string> {
  const hash = createHash('sha256');
  for (const entry of (await fs.readdir(root, { recursive: true, withFileTypes: true })).sort((a, b) => path.join(a.parentPath, a.name).localeCompare(path.join(b.parentPath, b.name)))) {
    if (!entry.isFile()) continue;
    const file = path.join(entry.parentPath, entry.name);
    hash.update(path.relative(root, file)).update(await fs.readFile(file));
  }
  return hash.digest('hex');
}

test('file trees are deterministic per seed, of odd sizes too, and differ between seeds', async (t) => {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'ferry-sample-'));
  t.after(() => fs.rm(root, { recursive: true, force: true }));
  await generateFileTree(path.join(root, 'a'), 7, 3);
  await generateFileTree(path.join(root, 'b'), 7, 3);
  await generateFileTree(path.join(root, 'c'), 8, 3);
  assert.equal(await treeDigest(path.join(root, 'a')), await treeDigest(path.join(root, 'b')));
  assert.notEqual(await treeDigest(path.join(root, 'a')), await treeDigest(path.join(root, 'c')));
  const copies = await Promise.all([0, 1, 2].map((n) => fs.readFile(path.join(root, 'a', 'srv', 'dup', `copy-${n}.bin`))));
  assert.ok(copies[0]!.equals(copies[1]!) && copies[1]!.equals(copies[2]!), 'duplicated files are identical');
});

test('sample machines are ext4 disks e2fsck accepts, built once', async (t) => {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'ferry-sample-'));
  t.after(() => fs.rm(root, { recursive: true, force: true }));
  const machines = await buildSampleMachines(root);
  assert.deepEqual(machines.map((machine) => [machine.name, machine.disks.length]), [['web-01', 1], ['db-01', 2]]);
  for (const disk of machines.flatMap((machine) => machine.disks)) {
    const check = await checkExt4Image(disk);
    assert.ok(check.clean, check.output);
  }
  assert.equal((await readFileInImage(machines[0]!.disks[0]!, '/app/counter.txt')).toString(), 'no writes yet\n');
  const before = (await fs.stat(machines[0]!.disks[0]!)).mtimeMs;
  await buildSampleMachines(root);
  assert.equal((await fs.stat(machines[0]!.disks[0]!)).mtimeMs, before, 'existing disks are kept, not rebuilt');
});
