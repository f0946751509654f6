/** CoalescingPass (src/util/coalescing-pass.ts): passes never overlap, wake-ups during a pass are not lost, and many coalesce into one. */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { CoalescingPass } from '../../src/util/coalescing-pass.js';

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
