/**
 * The semaphore (src/util/semaphore.ts): never more holders than its limit, waiters served in arrival
 * order, a slot given back however a section ends, and given back once however often released.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Semaphore } from '../../src/util/semaphore.js';

test('at most `limit` sections run at once, the waiting ones start in arrival order', async () => {
  const slots = new Semaphore(2);
  let running = 0;
  let most = 0;
  const started: number[] = [];
  const finishers: (() => void)[] = [];
  const sections = Array.from({ length: 5 }, (_, index) =>
    slots.run(async () => {
      started.push(index);
      running++;
      most = Math.max(most, running);
      await new Promise<void>((resolve) => finishers.push(resolve));
      running--;
      return index;
    }),
  );
  for (let step = 0; step < 5; step++) {
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(running, Math.min(2, 5 - step), `step ${step}: the free slots are all taken, no more`);
    finishers.shift()!();
  }
  assert.deepEqual(await Promise.all(sections), [0, 1, 2, 3, 4]);
  assert.deepEqual(started, [0, 1, 2, 3, 4]);
  assert.equal(most, 2);
});

test('a failing section gives its slot back, and releasing twice frees one slot only', async () => {
  const slots = new Semaphore(1);
  await assert.rejects(slots.run(async () => { throw new Error('boom'); }), /boom/);
  const release = await slots.acquire();
  release();
  release(); // harmless: had it freed a second slot, two holders would run below
  const first = await slots.acquire();
  let secondHeld = false;
  const second = slots.acquire().then((give) => { secondHeld = true; return give; });
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(secondHeld, false, 'the one slot is held');
  first();
  (await second)();
  assert.equal(secondHeld, true);
});
