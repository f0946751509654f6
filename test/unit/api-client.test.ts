/** The API client over real HTTP on 127.0.0.1: error mapping and how long retries go on. */
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { ApiClient, withRetry } from '../../src/client/api-client.js';
import { FerryError } from '../../src/errors.js';

async function serve(t: test.TestContext, handler: http.RequestListener): Promise<string> {
  const server = http.createServer(handler);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

test('a server error body becomes the same FerryError; an unreachable server is retryable', async (t) => {
  const url = await serve(t, (_request, response) => {
    response.writeHead(409, { 'content-type': 'application/json' });
    response.end(JSON.stringify({ error: { code: 'conflict', message: 'machine is busy', retryable: false } }));
  });
  await assert.rejects(new ApiClient({ baseUrl: url }).get('/x'), (error: FerryError) => error.code === 'conflict' && error.message === 'machine is busy' && !error.retryable);
  await assert.rejects(new ApiClient({ baseUrl: 'http://127.0.0.1:9' }).get('/x'), (error: FerryError) => error.code === 'server-unreachable' && error.retryable);
});

test('withRetry: a retryable error the server sent is retried briefly; an unreachable server for the whole deadline', async () => {
  let serverErrors = 0;
  const started = Date.now();
  await assert.rejects(
    withRetry(async () => {
      serverErrors++;
      throw new FerryError('io-error', 'disk full', { retryable: true });
    }, { deadlineMs: 60_000, serverErrorMs: 1_000 }),
    /disk full/,
  );
  assert.ok(Date.now() - started < 3_000, 'gave up after the short budget');
  assert.ok(serverErrors >= 2, 'but did retry');

  let unreachable = 0;
  const result = await withRetry(async () => {
    if (++unreachable < 4) throw new FerryError('server-unreachable', 'restarting');
    return 'up';
  }, { deadlineMs: 10_000, serverErrorMs: 1 });
  assert.equal(result, 'up', 'kept trying while the server was away');

  let permanent = 0;
  await assert.rejects(withRetry(async () => {
    permanent++;
    throw new FerryError('invalid-request', 'bad');
  }, { deadlineMs: 10_000 }));
  assert.equal(permanent, 1, 'a non-retryable error is not retried');
});
