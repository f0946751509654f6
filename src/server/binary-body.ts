/**
 * Reading application/octet-stream request bodies (chunk batches, disk indexes) into memory.
 *
 * A route that says `config: { sharedBody: true }` (the chunk upload) gets its body read into one of the
 * store's reused shared buffers when it fits (its Content-Length known and no larger than the buffer),
 * and gives it back with `giveBackSharedBody` once its work has succeeded and nothing reads the body any
 * more. Why: Fastify's own reading gathered the socket's pieces and joined them into a new 8 MiB buffer
 * per upload, garbage until V8 next collected (with four uploads in flight, the server's largest
 * transient memory), and the codec pool then copied every payload again into a shared buffer for its
 * workers; read into a shared buffer, a batch's payloads go to the workers where they lie
 * (`ChunkCodecPool.ingest`). A buffer not given back (the
 * request failed, or the client went away) is dropped, not reused: whatever failed may have left work
 * that still reads it, and a buffer rewritten under a batch being stored could put other bytes into a
 * pack under a checked chunk's name. So the route gives it back, not a hook on the answer.
 *
 * Every other body, and a shared-body request whose length is unknown or too large, is gathered as it
 * arrives and joined (memory only for bytes actually received). Either way the route's body limit holds
 * (413), and a body that ends or breaks off before its Content-Length is refused with invalid-request
 * (400): a client that went away, not a fault of the server.
 */
import { errorCodes, type FastifyInstance, type FastifyRequest } from 'fastify';
import { FerryError } from '../errors.js';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Read this route's octet-stream body into a reused shared buffer (see binary-body.ts). */
    sharedBody?: boolean;
  }
}

/** Where shared bodies come from and go back to: the store's reused shared buffers. */
export interface SharedBodyBuffers {
  /** Buffers of at most this many bytes are taken; a larger body gets a buffer of its own. */
  readonly bufferBytes: number;
  take(length: number): Buffer;
  give(buffer: Buffer): void;
}

/** What a request's body was read into, when it was a shared buffer, and where it goes back to. */
const sharedBodies = new WeakMap<FastifyRequest, { buffer: Buffer; shared: SharedBodyBuffers }>();

/**
 * Gives the shared buffer `request`'s body was read into back for reuse: call once the route's work
 * has succeeded and nothing reads the body any more. Does nothing for a body read into a buffer of its
 * own, or when called again.
 */
export function giveBackSharedBody(request: FastifyRequest): void {
  const body = sharedBodies.get(request);
  if (!body) return;
  sharedBodies.delete(request);
  body.shared.give(body.buffer);
}

/** Installs the application/octet-stream parser. */
export function installBinaryBodies(app: FastifyInstance, shared: SharedBodyBuffers): void {
  app.addContentTypeParser('application/octet-stream', (request, payload, done) => {
    const limit = request.routeOptions.bodyLimit ?? app.initialConfig.bodyLimit ?? 1024 * 1024;
    const declared = request.headers['content-length'] === undefined ? null : Number(request.headers['content-length']);
    if (declared !== null && (!Number.isSafeInteger(declared) || declared < 0)) return done(new errorCodes.FST_ERR_CTP_INVALID_CONTENT_LENGTH(), undefined);
    if (declared !== null && declared > limit) return done(new errorCodes.FST_ERR_CTP_BODY_TOO_LARGE(), undefined);
    const useShared = request.routeOptions.config.sharedBody === true && declared !== null && declared <= shared.bufferBytes;
    const target = useShared ? shared.take(declared) : null;
    if (target) sharedBodies.set(request, { buffer: target, shared });
    const pieces: Buffer[] = []; // when not read into a shared buffer
    let received = 0;
    let finished = false;
    const finish = (error: Error | null, body?: Buffer) => {
      if (finished) return;
      finished = true;
      payload.removeListener('data', onData);
      done(error, body);
    };
    const brokenOff = (why: string) =>
      new FerryError('invalid-request', `request body ${why} after ${received} of ${declared ?? 'an undeclared number of'} bytes`);
    const onData = (piece: Buffer) => {
      if (received + piece.length > (declared ?? limit)) {
        finish(declared === null ? new errorCodes.FST_ERR_CTP_BODY_TOO_LARGE() : new errorCodes.FST_ERR_CTP_INVALID_CONTENT_LENGTH());
        payload.resume(); // drain the rest; the answer is already decided
        return;
      }
      if (target) piece.copy(target, received);
      else pieces.push(piece);
      received += piece.length;
    };
    payload.on('data', onData);
    payload.once('error', (error) => finish(brokenOff(`broke off (${error.message})`)));
    payload.once('close', () => finish(brokenOff('was closed')));
    payload.once('end', () => {
      if (declared !== null && received !== declared) return finish(brokenOff('ended'));
      finish(null, target ? target.subarray(0, received) : Buffer.concat(pieces, received));
    });
  });
}
