/**
 * The shared conformance suite for `ComputeDriver` (contract in src/compute/driver.ts). Every driver
 * registers it from its own test file with a real chunk store, so failover code can rely on the
 * contract whatever brings the recovered disks to life.
 */
import { existsSync, readFileSync, promises as fs } from 'node:fs';
import { describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import type { ComputeDriver, PlannedDisk, RecoveryInstance } from '../../src/compute/driver.js';
import type { ChunkStore } from '../../src/store/chunk-store.js';
import { hashChunk } from '../../src/store/chunking.js';
import type { DiskIndex } from '../../src/store/disk-index.js';
import { buildDisk, loseChunk, storeDisk } from './helpers.js';

/** A driver under test, the store it restores from, the site directory it works in, and disposal. */
export interface DriverUnderTest {
  driver: ComputeDriver;
  store: ChunkStore;
  sitePath: string;
  cleanup: () => Promise<void>;
}

const CHUNK_SIZE = 4096;

/** Every file and directory under `directory`, relative, so a test can tell whether anything changed. */
async function snapshot(directory: string): Promise<string[]> {
  const entries = await fs.readdir(directory, { recursive: true });
  return entries.map(String).sort();
}

/** Two disks with data, zero runs and a short last chunk, stored in `store`, with their indexes. */
async function storedDisks(store: ChunkStore): Promise<{ data: Buffer; index: DiskIndex }[]> {
  const disks = [
    buildDisk(CHUNK_SIZE, ['random', 'zero', 'zero', 'random', 'random', 'zero', 'random'], 1000),
    buildDisk(CHUNK_SIZE, ['zero', 'random', 'random', 'zero'], CHUNK_SIZE),
  ];
  return Promise.all(disks.map(async (data) => ({ data, index: await storeDisk(store, data, CHUNK_SIZE) })));
}

/**
 * Registers the ComputeDriver conformance tests under `describe(name)`. `makeDriver` is called once per
 * test and must return a driver with an empty store and an empty, existing site directory.
 */
export function computeDriverConformance(name: string, makeDriver: () => Promise<DriverUnderTest>): void {
  describe(`ComputeDriver conformance: ${name}`, () => {
    const setUp = async (t: TestContext) => {
      const setup = await makeDriver();
      t.after(setup.cleanup);
      const instance: RecoveryInstance = { sitePath: setup.sitePath, machineName: 'web-01', purpose: 'test' };
      const disks = await storedDisks(setup.store);
      const planned = setup.driver.plan(
        instance,
        disks.map((disk, position) => ({ position, sizeBytes: disk.data.length })),
      );
      const work = planned.map((plannedDisk, position) => ({ planned: plannedDisk, index: disks[position]!.index }));
      return { ...setup, instance, disks, planned, work };
    };

    test('plan names one distinct path per disk, keeps position and size, and touches nothing', async (t) => {
      const { driver, sitePath, instance } = await setUp(t);
      const before = await snapshot(sitePath);
      const request = [
        { position: 0, sizeBytes: 1 << 20 },
        { position: 1, sizeBytes: 4096 },
        { position: 2, sizeBytes: 0 },
      ];
      const planned = driver.plan(instance, request);
      assert.deepEqual(
        planned.map(({ position, sizeBytes }) => ({ position, sizeBytes })),
        request,
      );
      for (const disk of planned) assert.ok(typeof disk.path === 'string' && disk.path.length > 0);
      assert.equal(new Set(planned.map((disk) => disk.path)).size, planned.length);
      assert.deepEqual(driver.plan(instance, request), planned, 'plan must be deterministic');
      assert.deepEqual(await snapshot(sitePath), before, 'plan must not create anything');
      for (const disk of planned) assert.equal(existsSync(disk.path), false);
    });

    test('plan gives different machines different paths', async (t) => {
      const { driver, instance } = await setUp(t);
      const request = [{ position: 0, sizeBytes: 4096 }];
      const [first] = driver.plan(instance, request);
      const [second] = driver.plan({ ...instance, machineName: 'db-01' }, request);
      assert.notEqual(first!.path, second!.path);
    });

    test('materialize writes every disk byte-identical and reports progress up to the total', async (t) => {
      const { driver, store, instance, disks, planned, work } = await setUp(t);
      const progress: number[] = [];
      const result = await driver.materialize(instance, store, work, (doneBytes) => progress.push(doneBytes));
      assert.deepEqual(result, planned);
      for (const [position, disk] of planned.entries()) {
        assert.deepEqual(await fs.readFile(disk.path), disks[position]!.data, `disk ${position} differs`);
      }
      const total = disks.reduce((sum, disk) => sum + disk.data.length, 0);
      assert.ok(progress.length > 0);
      assert.equal(progress.at(-1), total);
      for (let i = 1; i < progress.length; i++) assert.ok(progress[i]! >= progress[i - 1]!, 'progress went backwards');
    });

    // Checked from inside the progress callback, which runs while disks are being written.
    test('a disk file exists under its planned path only when complete', async (t) => {
      const { driver, store, instance, disks, planned, work } = await setUp(t);
      const checkVisibleDisksComplete = () => {
        for (const [position, disk] of planned.entries()) {
          if (existsSync(disk.path)) assert.ok(readFileSync(disk.path).equals(disks[position]!.data), `disk ${position} visible while incomplete`);
        }
      };
      await driver.materialize(instance, store, work, checkVisibleDisksComplete);
      // Again over complete files: a driver rewriting them in place would expose partial contents now.
      await driver.materialize(instance, store, work, checkVisibleDisksComplete);
    });

    test('a failed materialize leaves no file for the disk it could not finish, and a retry completes', async (t) => {
      const { driver, store, instance, disks, planned, work } = await setUp(t);
      const lost = buildDisk(CHUNK_SIZE, ['random', 'random']);
      const lostIndex = await storeDisk(store, lost, CHUNK_SIZE);
      const missingHash = lostIndex.hashAt(1).toString('hex');
      await loseChunk(store, missingHash);
      const [broken] = driver.plan(instance, [{ position: 2, sizeBytes: lost.length }]);
      const withBroken = [...work, { planned: broken!, index: lostIndex }];

      await assert.rejects(driver.materialize(instance, store, withBroken, () => {}));
      assert.equal(existsSync(broken!.path), false, 'an incomplete disk file was left under its final name');

      await store.putChunk(missingHash, lost.subarray(CHUNK_SIZE));
      await driver.materialize(instance, store, withBroken, () => {});
      for (const [position, disk] of planned.entries()) assert.deepEqual(await fs.readFile(disk.path), disks[position]!.data);
      assert.deepEqual(await fs.readFile(broken!.path), lost);
    });

    test('materialize twice gives the same disks', async (t) => {
      const { driver, store, instance, disks, planned, work } = await setUp(t);
      const first = await driver.materialize(instance, store, work, () => {});
      const second = await driver.materialize(instance, store, work, () => {});
      assert.deepEqual(second, first);
      for (const [position, disk] of planned.entries()) assert.deepEqual(await fs.readFile(disk.path), disks[position]!.data);
    });

    test('remove deletes every disk, and removing again (or before materialize) is harmless', async (t) => {
      const { driver, store, instance, planned, work } = await setUp(t);
      await driver.remove({ ...instance, machineName: 'never-materialized' });
      await driver.materialize(instance, store, work, () => {});
      await driver.remove(instance);
      for (const disk of planned) assert.equal(existsSync(disk.path), false, `${disk.path} survived remove`);
      await driver.remove(instance);
    });

    test('remove leaves other machines at the same site alone', async (t) => {
      const { driver, store, instance, disks, work } = await setUp(t);
      const other: RecoveryInstance = { ...instance, machineName: 'db-01' };
      const otherPlanned: PlannedDisk[] = driver.plan(other, disks.map((disk, position) => ({ position, sizeBytes: disk.data.length })));
      await driver.materialize(instance, store, work, () => {});
      await driver.materialize(other, store, otherPlanned.map((planned, position) => ({ planned, index: disks[position]!.index })), () => {});
      await driver.remove(instance);
      for (const [position, disk] of otherPlanned.entries()) {
        assert.equal(hashChunk(await fs.readFile(disk.path)).toString('hex'), hashChunk(disks[position]!.data).toString('hex'));
      }
    });
  });
}
