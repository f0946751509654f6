/** The API client over real HTTP on 127.0.0.1: error mapping, binary answers and how long retries go on. */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { ApiClient, withRetry } from '../../src/client/api-client.js';
import { FerryError } from '../../src/errors.js';
import { ferryError } from './helpers.js';

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

test('getBinary and postForBinary return the body as bytes, sending the token, the query and the JSON', async (t) => {
  const payload = randomBytes(3 * 1024 * 1024 + 17); // several socket reads' worth
  const seen: { method?: string; url?: string; authorization?: string; contentType?: string; body?: string }[] = [];
  const url = await serve(t, (request, response) => {
    const received: Buffer[] = [];
    request.on('data', (piece: Buffer) => received.push(piece));
    request.on('end', () => {
      seen.push({
        method: request.method,
        url: request.url,
        authorization: request.headers.authorization,
        contentType: request.headers['content-type'],
        body: Buffer.concat(received).toString('utf8'),
      });
      response.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': payload.length });
      response.end(payload);
    });
  });
  const client = new ApiClient({ baseUrl: url, token: 'agent-token' });

  const fetched = await client.getBinary('/agent/jobs/j1/disks/0/index', { pass: 2, skipped: undefined });
  assert.ok(fetched.equals(payload), 'every byte comes back, in order');
  assert.equal(seen[0]?.method, 'GET');
  assert.equal(seen[0]?.url, '/api/v1/agent/jobs/j1/disks/0/index?pass=2');
  assert.equal(seen[0]?.authorization, 'Bearer agent-token');

  const read = await client.postForBinary('/agent/jobs/j1/chunks/read', { hashes: ['ab'] });
  assert.ok(read.equals(payload));
  assert.equal(seen[1]?.method, 'POST');
  assert.equal(seen[1]?.contentType, 'application/json');
  assert.deepEqual(JSON.parse(seen[1]?.body ?? ''), { hashes: ['ab'] });
});

test('getBinary and postForBinary: an error body becomes its FerryError, a bare status a generic one, an absent server server-unreachable', async (t) => {
  const url = await serve(t, (request, response) => {
    if (request.url?.includes('bare')) {
      response.writeHead(502);
      response.end('<html>bad gateway</html>');
      return;
    }
    response.writeHead(404, { 'content-type': 'application/json' });
    response.end(JSON.stringify({ error: { code: 'not-found', message: "point 'p9' not found", retryable: false } }));
  });
  const client = new ApiClient({ baseUrl: url });
  await assert.rejects(client.getBinary('/x'), ferryError('not-found', ["point 'p9' not found"]));
  await assert.rejects(client.postForBinary('/x', { hashes: [] }), ferryError('not-found'));
  await assert.rejects(client.getBinary('/bare'), (error: FerryError) => error.code === 'server-unreachable' && error.retryable && /HTTP 502/.test(error.message));
  const gone = new ApiClient({ baseUrl: 'http://127.0.0.1:9' });
  await assert.rejects(gone.getBinary('/x'), (error: FerryError) => error.code === 'server-unreachable' && error.retryable);
  await assert.rejects(gone.postForBinary('/x', {}), (error: FerryError) => error.code === 'server-unreachable' && error.retryable);
});

test('getBinary: an answer cut short, or slower than the timeout, is server-unreachable (retryable), never a short buffer', async (t) => {
  const url = await serve(t, (request, response) => {
    if (request.url?.includes('slow')) return; // never answers
    response.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': 1_000_000 });
    response.write(Buffer.alloc(1000));
    setTimeout(() => response.destroy(), 20);
  });
  const client = new ApiClient({ baseUrl: url });
  await assert.rejects(client.getBinary('/cut'), (error: FerryError) => error.code === 'server-unreachable' && error.retryable);
  await assert.rejects(client.getBinary('/slow', undefined, 200), (error: FerryError) => error.code === 'server-unreachable' && error.retryable);
});
