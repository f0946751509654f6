/**
 * How the CLI waits for a job (`CliContext.waitForJob`, behind every `--wait`), against a scripted
 * server over real HTTP on 127.0.0.1: it asks with a long poll, and does not spin when a server answers
 * at once (one stopping, or one from before long polls).
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { CliContext } from '../../src/cli/context.js';

/** A server for one job that stays `running` for `runningAnswers` answers, each given at once, then `succeeded`. */
async function scriptedJobServer(t: test.TestContext, runningAnswers: number) {
  const asked: { at: number; waitSeconds: string | null }[] = [];
  const server = http.createServer((request, response) => {
    const url = new URL(request.url!, 'http://x');
    asked.push({ at: Date.now(), waitSeconds: url.searchParams.get('waitSeconds') });
    const state = asked.length > runningAnswers ? 'succeeded' : 'running';
    response.writeHead(200, { 'content-type': 'application/json' });
    response.end(JSON.stringify({ id: 'job1', kind: 'point', state, step: state, progress: { percent: 50 }, error: null }));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, asked };
}

test('waitForJob asks with a long poll, and waits between answers that come at once', async (t) => {
  const { url, asked } = await scriptedJobServer(t, 4);
  const cli = new CliContext({ server: url, token: 'test-token', json: true });

  const job = await cli.waitForJob('job1');

  assert.equal(job.state, 'succeeded');
  assert.equal(asked.length, 5);
  assert.equal(asked[0]!.waitSeconds, null, 'the first look is plain');
  assert.deepEqual(asked.slice(1).map((each) => each.waitSeconds), ['20', '20', '20', '20'], 'then long polls of 20 s (no terminal)');
  for (let i = 2; i < asked.length; i++) {
    const gap = asked[i]!.at - asked[i - 1]!.at;
    assert.ok(gap >= 240, `answers that came at once are followed by a pause, not another question at once (${gap} ms)`);
  }
});

test('waitForJob never asks to wait past its own deadline', async (t) => {
  const { url, asked } = await scriptedJobServer(t, 1000);
  const cli = new CliContext({ server: url, token: 'test-token', json: true });

  await assert.rejects(cli.waitForJob('job1', { timeoutMs: 600 }), (error: { code: string }) => error.code === 'conflict');
  for (const each of asked.slice(1)) assert.ok(Number(each.waitSeconds) <= 0.6, `asked to wait ${each.waitSeconds} s`);
});
