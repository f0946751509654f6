/** The lock StoreGuard coordinates requests and garbage collection with. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SharedExclusiveLock } from '../../src/store/store-guard.js';

/** A promise and the function that resolves it, so a test decides when a section ends. */
function gate(): { opened: Promise<void>; open: () => void } {
  let open!: () => void;
  const opened = new Promise<void>((resolve) => (open = resolve));
  return { opened, open };
}

const tick = () => new Promise<void>((resolve) => setImmediate(resolve));

test('shared holders run together; an exclusive section waits for them and runs alone', async () => {
  const lock = new SharedExclusiveLock();
  const log: string[] = [];
  const first = gate();
  const second = gate();
  const a = lock.shared(async () => {
    log.push('a in');
    await first.opened;
    log.push('a out');
  });
  const b = lock.shared(async () => {
    log.push('b in');
    await second.opened;
    log.push('b out');
  });
  const x = lock.exclusive(async () => {
    log.push('x');
  });
  await tick();
  assert.deepEqual(log, ['a in', 'b in'], 'both shared sections entered; the exclusive one waits');
  first.open();
  await tick();
  assert.deepEqual(log, ['a in', 'b in', 'a out'], 'still one shared holder: the exclusive section waits');
  second.open();
  await Promise.all([a, b, x]);
  assert.deepEqual(log, ['a in', 'b in', 'a out', 'b out', 'x']);
});

test('a waiting exclusive section is not overtaken by later shared ones', async () => {
  const lock = new SharedExclusiveLock();
  const log: string[] = [];
  const holder = gate();
  const a = lock.shared(async () => {
    await holder.opened;
    log.push('a');
  });
  const x = lock.exclusive(async () => {
    log.push('x');
  });
  const b = lock.shared(async () => {
    log.push('b');
  });
  await tick();
  assert.deepEqual(log, [], 'b queues behind the waiting exclusive section');
  holder.open();
  await Promise.all([a, x, b]);
  assert.deepEqual(log, ['a', 'x', 'b']);
});

test('a section that throws releases the lock', async () => {
  const lock = new SharedExclusiveLock();
  await assert.rejects(lock.exclusive(async () => Promise.reject(new Error('boom'))), /boom/);
  await assert.rejects(lock.shared(async () => Promise.reject(new Error('bang'))), /bang/);
  assert.equal(await lock.exclusive(async () => 'free'), 'free');
});
