/** Change tracking on real files: the ctime path says "nothing changed" only when that is certain. */
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { fileChangeTime, fullScan, trackerFor } from '../../src/agent/change-tracking.js';

test('file ctime: unknown while the ctime is recent, nothing once quiet, unknown again after a write', async (t) => {
  const directory = await fs.mkdtemp(path.join(os.tmpdir(), 'ferry-tracking-'));
  t.after(() => fs.rm(directory, { recursive: true, force: true }));
  const disk = path.join(directory, 'disk.raw');
  await fs.writeFile(disk, Buffer.alloc(65536, 1));
  assert.equal(await trackerFor(disk), fileChangeTime);

  const fresh = await fileChangeTime.mark(disk);
  assert.equal(await fileChangeTime.changedSince(disk, fresh), 'unknown', 'a ctime this recent could hide a write in the same tick');
  assert.equal(await fileChangeTime.changedSince(disk, null), 'unknown');

  await new Promise((resolve) => setTimeout(resolve, 2100));
  const quiet = await fileChangeTime.mark(disk);
  assert.equal(await fileChangeTime.changedSince(disk, quiet), 'nothing');

  const handle = await fs.open(disk, 'r+');
  await handle.write(Buffer.from([2]), 0, 1, 100);
  await handle.close();
  assert.equal(await fileChangeTime.changedSince(disk, quiet), 'unknown', 'a write moves the ctime');

  await new Promise((resolve) => setTimeout(resolve, 2100));
  const again = await fileChangeTime.mark(disk);
  const old = new Date(Date.now() - 86_400_000);
  await fs.utimes(disk, old, old); // putting mtime back cannot hide a change: ctime still moves
  assert.equal(await fileChangeTime.changedSince(disk, again), 'unknown');
  await fs.truncate(disk, 131072);
  assert.equal(await fileChangeTime.changedSince(disk, quiet), 'unknown', 'a size change is a change');
});

test('full scan knows nothing, and is the tracker for anything that is not a regular file', async () => {
  assert.equal(await fullScan.changedSince('/dev/null', null), 'unknown');
  assert.equal(await fullScan.mark('/dev/null'), null);
  assert.equal(await trackerFor('/dev/null'), fullScan);
});
