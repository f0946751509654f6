/**
 * Octet-stream bodies (src/server/binary-body.ts) over real HTTP on 127.0.0.1 with Fastify: a route that
 * asks for a shared body gets it read into a buffer from the given source, which goes back only when
 * the route gives it back; too large a body, or another route, gets a buffer of its own; the
 * body limit and Content-Length are enforced as Fastify does.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { test, type TestContext } from 'node:test';
import Fastify from 'fastify';
import { FerryError } from '../../src/errors.js';
import { giveBackSharedBody, installBinaryBodies } from '../../src/server/binary-body.js';
import { isShared, sharedBuffer } from '../../src/util/worker-pool.js';

const BUFFER_BYTES = 64 * 1024;

async function server(t: TestContext) {
  const taken: Buffer[] = [];
  const given: Buffer[] = [];
  const app = Fastify({ bodyLimit: 256 * 1024 });
  const errors: Error[] = [];
  app.setErrorHandler((error: Error, _request, reply) => {
    errors.push(error);
    void reply.status((error as { statusCode?: number }).statusCode ?? 400).send({ error: error.message });
  });
  installBinaryBodies(app, {
    bufferBytes: BUFFER_BYTES,
    take: (length) => {
      const buffer = sharedBuffer(Math.max(length, BUFFER_BYTES));
      taken.push(buffer);
      return buffer;
    },
    give: (buffer) => given.push(buffer),
  });
  const describe = (body: Buffer) => ({ shared: isShared(body), length: body.length, sha: body.toString('base64').slice(0, 16) });
  app.post('/shared', { config: { sharedBody: true } }, async (request) => {
    const described = describe(request.body as Buffer);
    giveBackSharedBody(request);
    giveBackSharedBody(request); // a second call gives nothing back twice
    return described;
  });
  app.post('/shared-failing', { config: { sharedBody: true } }, async (_request, reply) => reply.status(409).send({ refused: true }));
  app.post('/own', async (request) => describe(request.body as Buffer));
  app.post('/small-limit', { bodyLimit: 1000 }, async (request) => describe(request.body as Buffer));
  const url = await app.listen({ host: '127.0.0.1', port: 0 });
  t.after(() => app.close());
  const post = async (path: string, body: Buffer | ReadableStream<Uint8Array>) => {
    const response = await fetch(`${url}${path}`, { method: 'POST', headers: { 'content-type': 'application/octet-stream' }, body, duplex: 'half' } as RequestInit);
    return { status: response.status, json: (await response.json()) as Record<string, unknown> };
  };
  return { url, taken, given, post, errors };
}

test("a shared-body route reads into a taken buffer, given back once by the route; a failing route's is not", async (t) => {
  const { taken, given, post } = await server(t);
  const body = randomBytes(50_000);

  const answer = await post('/shared', body);
  assert.equal(answer.status, 200);
  assert.deepEqual(answer.json, { shared: true, length: body.length, sha: body.toString('base64').slice(0, 16) });
  assert.equal(taken.length, 1);
  assert.ok(taken[0]!.subarray(0, body.length).equals(body), 'the body was read into the taken buffer');
  assert.deepEqual(given, [taken[0]], 'given back whole, once');

  assert.equal((await post('/shared-failing', body)).status, 409);
  assert.equal(taken.length, 2);
  assert.equal(given.length, 1, 'a failed request does not give its buffer back');
});

test('a body larger than the shared buffers, or for another route, gets a buffer of its own; a body without a length is read too', async (t) => {
  const { taken, post } = await server(t);
  const large = randomBytes(BUFFER_BYTES + 1);
  assert.deepEqual((await post('/shared', large)).json, { shared: false, length: large.length, sha: large.toString('base64').slice(0, 16) });
  const small = randomBytes(100);
  assert.deepEqual((await post('/own', small)).json, { shared: false, length: 100, sha: small.toString('base64').slice(0, 16) });
  const pieces = [randomBytes(30_000), randomBytes(30_000)];
  const streamed = new ReadableStream<Uint8Array>({
    start(controller) {
      for (const piece of pieces) controller.enqueue(piece);
      controller.close();
    },
  });
  const joined = Buffer.concat(pieces);
  assert.deepEqual((await post('/shared', streamed)).json, { shared: false, length: joined.length, sha: joined.toString('base64').slice(0, 16) });
  assert.equal(taken.length, 0, 'no shared buffer taken for any of them');
});

test('the body limit and Content-Length hold: 413 over the limit, invalid-request for a body broken off before its length', async (t) => {
  const { url, post, errors } = await server(t);
  assert.equal((await post('/small-limit', randomBytes(1001))).status, 413);
  assert.equal((await post('/own', randomBytes(300 * 1024))).status, 413, "the app's limit");
  const streamedTooMuch = new ReadableStream<Uint8Array>({
    start(controller) {
      controller.enqueue(randomBytes(1500));
      controller.close();
    },
  });
  assert.equal((await post('/small-limit', streamedTooMuch)).status, 413, 'a body without a length is cut at the limit');

  // A client that says 1000 bytes, sends 10 and goes away: the body is refused as invalid-request (a
  // client's doing, answered 400, not logged as the server's fault), nothing is read from it.
  const { port } = new URL(url);
  errors.length = 0;
  const socket = net.connect(Number(port), '127.0.0.1', () => {
    socket.write('POST /shared HTTP/1.1\r\nhost: x\r\ncontent-type: application/octet-stream\r\ncontent-length: 1000\r\n\r\n0123456789');
    setTimeout(() => socket.destroy(), 100);
  });
  socket.on('error', () => undefined);
  const deadline = Date.now() + 5000;
  while (errors.length === 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
  assert.equal(errors.length, 1, 'the broken-off body reached the error handler');
  assert.ok(errors[0] instanceof FerryError, `a FerryError, not ${errors[0]!.constructor.name}: ${errors[0]!.message}`);
  assert.equal(errors[0].code, 'invalid-request');
  assert.match(errors[0].message, /after 10 of 1000 bytes/);
});
