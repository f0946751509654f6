import path from 'node:path';
import { existsSync, promises as fs } from 'node:fs';
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { runHook } from '../../src/agent/hooks.js';
import { ferryError, tempDirFor } from './helpers.js';

const options = { timeoutSeconds: 10, env: {}, name: 'pre-point' };

describe('runHook', () => {
  test('resolves for a command that exits 0, with its output', async () => {
    assert.deepEqual(await runHook('true', options), { output: '' });
    assert.deepEqual(await runHook('echo ready', options), { output: 'ready\n' });
  });

  test('a failing command is hook-failed with its exit code and the tail of its output', async () => {
    await assert.rejects(runHook('echo boom >&2; exit 3', options), ferryError('hook-failed', ['pre-point hook', 'exited with code 3', 'boom']));
  });

  test('only the last lines of a noisy failure reach the message', async () => {
    await assert.rejects(runHook('for i in $(seq 1 50); do echo line$i; done; exit 1', options), (error: unknown) => {
      ferryError('hook-failed', ['line48', 'line49', 'line50'])(error);
      assert.ok(!(error as Error).message.includes('line47'));
      return true;
    });
  });

  test('a command still running at the timeout is killed, with its children, and reported as timed out', async (t) => {
    const marker = path.join(await tempDirFor(t), 'child-survived');
    const started = Date.now();
    await assert.rejects(
      runHook(`(sleep 2; touch ${marker}) & sleep 30`, { ...options, timeoutSeconds: 1 }),
      ferryError('hook-failed', ['timed out after 1s']),
    );
    const elapsed = Date.now() - started;
    assert.ok(elapsed < 5000, `took ${elapsed}ms to give up`);
    await new Promise((resolve) => setTimeout(resolve, 1500));
    assert.equal(existsSync(marker), false, 'a child of the hook outlived the timeout');
  });

  test('a hook that exits 0 but leaves a background process holding its output succeeds at once', async () => {
    const started = Date.now();
    const result = await runHook('sleep 3 & echo started; exit 0', { ...options, timeoutSeconds: 5 });
    assert.match(result.output, /started/);
    assert.ok(Date.now() - started < 2000, `returned after ${Date.now() - started} ms`);
  });

  test('env vars are passed through on top of the agent environment', async () => {
    const { output } = await runHook('echo "$FERRY_MACHINE:$FERRY_POINT_ID:$PATH"', { ...options, env: { FERRY_MACHINE: 'web-01', FERRY_POINT_ID: 'pt-1' } });
    assert.equal(output.trim(), `web-01:pt-1:${process.env.PATH}`);
  });

  test('the command runs under sh -c, so shell syntax works', async (t) => {
    const directory = await tempDirFor(t);
    await runHook(`cd ${directory} && printf '%s' "$((6 * 7))" > answer`, options);
    assert.equal(await fs.readFile(path.join(directory, 'answer'), 'utf8'), '42');
  });
});
