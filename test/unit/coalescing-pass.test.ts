/** CoalescingPass and FollowingPass (src/util/coalescing-pass.ts): passes never overlap, wake-ups during a pass are not lost, many coalesce into one, and a following pass listens from start to stop. */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { CoalescingPass, FollowingPass } from '../../src/util/coalescing-pass.js';

describe('CoalescingPass', () => {
  test('calls during a pass coalesce into exactly one more pass; passes never overlap', async () => {
    let running = 0;
    let passes = 0;
    let release: () => void = () => {};
    const pass = new CoalescingPass(async () => {
      assert.equal(running, 0, 'no overlap');
      running++;
      passes++;
      if (passes === 1) await new Promise<void>((resolve) => (release = resolve));
      running--;
    });
    const first = pass.run();
    const during = [pass.run(), pass.run(), pass.run()];
    release();
    await Promise.all([first, ...during]);
    assert.equal(passes, 2, 'one pass, then one more for all the calls made during it');
    await pass.run();
    assert.equal(passes, 3, 'a call after the passes ended starts a new one');
  });

  test('a failed pass rejects its callers; idle() still resolves; the next call runs again', async () => {
    let fail = true;
    const pass = new CoalescingPass(async () => {
      if (fail) throw new Error('database fault');
    });
    const failed = pass.run();
    const idle = pass.idle();
    await assert.rejects(failed, /database fault/);
    await idle;
    fail = false;
    await pass.run();
  });

  test('stopped() ends the repetition after the current pass', async () => {
    let stopped = false;
    let passes = 0;
    let release: () => void = () => {};
    const pass = new CoalescingPass(
      async () => {
        passes++;
        if (passes === 1) await new Promise<void>((resolve) => (release = resolve));
      },
      () => stopped,
    );
    const first = pass.run();
    void pass.run();
    stopped = true;
    release();
    await first;
    assert.equal(passes, 1);
  });
});

test('FollowingPass: a pass at start and on each event, errors reported, nothing after stop', async () => {
  const source = new EventEmitter();
  const errors: unknown[] = [];
  let passes = 0;
  let fail = false;
  const follower = new FollowingPass(source, 'work', async () => {
    passes++;
    if (fail) throw new Error('boom');
  }, (error) => errors.push(error));
  follower.start();
  await follower.run();
  const afterStart = passes;
  assert.ok(afterStart >= 1, 'a pass at start');
  fail = true;
  source.emit('work');
  await new Promise((resolve) => setImmediate(resolve));
  await follower.run().catch(() => undefined);
  assert.ok(errors.length >= 1 && (errors[0] as Error).message === 'boom', 'a failed pass goes to onError');
  fail = false;
  await follower.stop();
  assert.equal(follower.stopping, true);
  const atStop = passes;
  source.emit('work');
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(passes, atStop, 'no pass after stop');
  assert.equal(source.listenerCount('work'), 0, 'no listener left');
});
