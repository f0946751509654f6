/**
 * The long-poll helper behind `GET /agent/work` and `GET /jobs/ID?waitSeconds=` (listenForJobChange in
 * src/orchestration/context.ts): a change made between starting to listen and awaiting is not missed;
 * stop, time-out, the caller's signal and the server's shutdown each end the wait at once; and no wait
 * leaves a listener behind on the long-lived emitter or shutdown signal.
 */
import assert from 'node:assert/strict';
import { EventEmitter, getEventListeners } from 'node:events';
import { test } from 'node:test';
import { type CoreContext, listenForJobChange, signalWork } from '../../src/orchestration/context.js';

function context(): { context: CoreContext; shutdown: AbortController } {
  const shutdown = new AbortController();
  // Only what the helper uses: the emitter and the shutdown signal.
  return { context: { signals: new EventEmitter(), shutdown: shutdown.signal } as unknown as CoreContext, shutdown };
}

async function settlesWithin(promise: Promise<void>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  const result = await Promise.race([promise.then(() => true), late]);
  clearTimeout(timer);
  return result;
}

test('a change signalled after listening starts, before the await, ends the wait at once', async () => {
  const { context: core } = context();
  const wait = listenForJobChange(core, 10_000);
  signalWork(core); // e.g. the job ended while its row was being read
  assert.ok(await settlesWithin(wait.changed, 1000));
});

test('stop, the time limit, the caller signal and shutdown each end a wait at once', async () => {
  const { context: core, shutdown } = context();
  const stopped = listenForJobChange(core, 10_000);
  stopped.stop();
  assert.ok(await settlesWithin(stopped.changed, 1000), 'stop');
  assert.ok(await settlesWithin(listenForJobChange(core, 50).changed, 1000), 'time limit');
  const caller = new AbortController();
  const callerWait = listenForJobChange(core, 10_000, caller.signal);
  caller.abort();
  assert.ok(await settlesWithin(callerWait.changed, 1000), 'caller signal');
  const shutdownWait = listenForJobChange(core, 10_000);
  shutdown.abort();
  assert.ok(await settlesWithin(shutdownWait.changed, 1000), 'shutdown');
  assert.ok(await settlesWithin(listenForJobChange(core, 10_000).changed, 1000), 'already shut down');
});

test('a thousand waits leave no listener on the emitter, the shutdown signal or the caller signal', async () => {
  const { context: core, shutdown } = context();
  const caller = new AbortController();
  const waits = [];
  for (let index = 0; index < 1000; index++) {
    const wait = listenForJobChange(core, index % 2 === 0 ? 10_000 : 1, caller.signal);
    if (index % 2 === 0) wait.stop();
    waits.push(wait.changed);
  }
  await Promise.all(waits);
  assert.equal(core.signals.listenerCount('work'), 0);
  assert.equal(getEventListeners(shutdown.signal, 'abort').length, 0);
  assert.equal(getEventListeners(caller.signal, 'abort').length, 0);
});
