import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { FilesDriver } from '../../src/compute/files-driver.js';
import { ChunkStore } from '../../src/store/chunk-store.js';
import { FilesystemBackend } from '../../src/store/fs-backend.js';
import { buildDisk, makeTempDir, storeDisk, tempDirFor } from './helpers.js';
import { computeDriverConformance } from './compute-driver-conformance.js';

computeDriverConformance('FilesDriver', async () => {
  const directory = await makeTempDir('ferry-files-driver-');
  const sitePath = path.join(directory, 'site');
  await fs.mkdir(sitePath);
  return {
    driver: new FilesDriver(),
    store: new ChunkStore(new FilesystemBackend(path.join(directory, 'store'))),
    sitePath,
    cleanup: () => fs.rm(directory, { recursive: true, force: true }),
  };
});

describe('FilesDriver layout', () => {
  test('test-failover disks are SITE/<machine>/test-failover/disk<N>.raw', () => {
    const planned = new FilesDriver().plan({ sitePath: '/srv/site', machineName: 'web-01', purpose: 'test' }, [
      { position: 0, sizeBytes: 10 },
      { position: 3, sizeBytes: 20 },
    ]);
    assert.deepEqual(planned, [
      { position: 0, sizeBytes: 10, path: '/srv/site/web-01/test-failover/disk0.raw' },
      { position: 3, sizeBytes: 20, path: '/srv/site/web-01/test-failover/disk3.raw' },
    ]);
  });

  // The machine directory is shared with other instances of the machine: removed only once empty.
  test('remove deletes the machine directory once empty but keeps the site directory', async (t) => {
    const directory = await tempDirFor(t);
    const sitePath = path.join(directory, 'site');
    const store = new ChunkStore(new FilesystemBackend(path.join(directory, 'store')));
    const driver = new FilesDriver();
    const instance = { sitePath, machineName: 'web-01', purpose: 'test' as const };
    const disk = buildDisk(4096, ['random', 'zero']);
    const [planned] = driver.plan(instance, [{ position: 0, sizeBytes: disk.length }]);
    await driver.materialize(instance, store, [{ planned: planned!, index: await storeDisk(store, disk, 4096) }], () => {});
    await fs.writeFile(path.join(sitePath, 'unrelated'), 'keep me');

    await driver.remove(instance);
    assert.deepEqual(await fs.readdir(sitePath), ['unrelated']);
  });
});
